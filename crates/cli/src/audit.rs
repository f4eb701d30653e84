//! `spm audit`: verify the ledger and the audit trails, export a period for auditors, list
//! who changed what.

use std::io::Write as _;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use comfy_table::Cell;
use spm_proto::audit::v1 as apb;
use spm_proto::audit::v1::audit_service_client::AuditServiceClient;
use spm_proto::incentive::v1 as ipb;
use spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient;
use spm_testkit::authed;

use crate::Cli;
use crate::commands::{channel, key, period, status_error};
use crate::out::{note, table, title};

#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {
    /// Recompute every ledger posting's hash, chain head and seal, and every service's
    /// audit chain; name where they break (exit status 1 when anything does).
    Verify {
        /// Only this period of the ledger (with --kind).
        #[arg(long, default_value = "")]
        period: String,
        #[arg(long, default_value = "month")]
        kind: String,
        /// Whose audit trails: ingest, scoring, incentive, notification (default: all four).
        #[arg(long)]
        service: Vec<String>,
    },
    /// Write a period's postings, hashes, chain heads and seals as JSON lines
    /// (docs/audit.md; checkable without SPM).
    Export {
        /// The period key, e.g. 2026-11.
        #[arg(long)]
        period: String,
        #[arg(long, default_value = "month")]
        kind: String,
        /// The file to write (default: standard output).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Who changed what, newest first, from every service's audit trail.
    Log {
        /// `key:<id>` or `person:<login>`.
        #[arg(long, default_value = "")]
        actor: String,
        /// An action (`plan.put`) or a prefix ending in "." (`period.`).
        #[arg(long, default_value = "")]
        action: String,
        /// A target (`plan:standard`) or a prefix ending in ":".
        #[arg(long, default_value = "")]
        target: String,
        /// RFC 3339, e.g. 2026-12-01T00:00:00Z.
        #[arg(long)]
        since: Option<String>,
        /// ingest, scoring, incentive, notification (default: all four).
        #[arg(long)]
        service: Vec<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Also print each event's before and after.
        #[arg(long)]
        changes: bool,
    },
}

/// Parses an RFC 3339 instant given on the command line.
pub fn instant(flag: &str, s: &str) -> anyhow::Result<prost_types::Timestamp> {
    let t: DateTime<Utc> = DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("{flag} must be RFC 3339, e.g. 2026-12-01T09:30:00Z"))?
        .with_timezone(&Utc);
    Ok(spm_proto::ext::timestamp(t))
}

fn services(cli: &Cli, only: &[String]) -> anyhow::Result<Vec<(&'static str, String)>> {
    let all = [
        ("ingest", cli.ingest.clone()),
        ("scoring", cli.scoring.clone()),
        ("incentive", cli.incentive.clone()),
        ("notification", cli.notification.clone()),
    ];
    for s in only {
        if !all.iter().any(|(n, _)| n == s) {
            bail!("--service {s:?}: one of ingest, scoring, incentive, notification");
        }
    }
    Ok(all
        .into_iter()
        .filter(|(n, _)| only.is_empty() || only.iter().any(|o| o == n))
        .collect())
}

pub async fn run(cli: &Cli, cmd: &AuditCmd) -> anyhow::Result<()> {
    let key = key(cli)?;
    match cmd {
        AuditCmd::Verify {
            period: p,
            kind,
            service,
        } => {
            let mut adm = IncentiveAdminServiceClient::new(channel(&cli.incentive).await?);
            let period = if p.is_empty() {
                None
            } else {
                Some(period(kind, p)?)
            };
            let v = adm
                .verify_ledger(authed(ipb::VerifyLedgerRequest { period }, &key))
                .await
                .map_err(status_error)?
                .into_inner();
            title(&format!(
                "ledger: {} postings in {} chains, {} seals, checked in {} ms: {}",
                v.postings,
                v.chains,
                v.seals,
                v.took_ms,
                if v.ok { "intact" } else { "BROKEN" }
            ));
            let mut broken = !v.ok;
            // One line per break (grep-able): chain, number, posting, why.
            for b in &v.breaks {
                println!("  {} #{} {}: {}", b.chain, b.seq, b.id, b.problem);
            }
            for (name, url) in services(cli, service)? {
                let mut c = AuditServiceClient::new(channel(&url).await?);
                let a = c
                    .verify_audit_log(authed(apb::VerifyAuditLogRequest {}, &key))
                    .await
                    .map_err(status_error)?
                    .into_inner();
                println!(
                    "audit trail of {name}: {} events: {}",
                    a.events,
                    if a.ok { "intact" } else { "BROKEN" }
                );
                for b in &a.breaks {
                    println!("  #{} {}: {}", b.seq, b.event_id, b.problem);
                }
                broken |= !a.ok;
            }
            if broken {
                std::process::exit(1);
            }
            Ok(())
        }
        AuditCmd::Export {
            period: p,
            kind,
            out,
        } => {
            let mut adm = IncentiveAdminServiceClient::new(channel(&cli.incentive).await?);
            let mut stream = adm
                .export_ledger(authed(
                    ipb::ExportLedgerRequest {
                        period: Some(period(kind, p)?),
                    },
                    &key,
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            let mut w: Box<dyn std::io::Write> = match out {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout())),
            };
            let mut n = 0usize;
            while let Some(chunk) = stream.message().await.map_err(status_error)? {
                for l in chunk.lines {
                    writeln!(w, "{l}")?;
                    n += 1;
                }
            }
            w.flush()?;
            if let Some(path) = out {
                note(&format!("{n} lines written to {}", path.display()));
            }
            Ok(())
        }
        AuditCmd::Log {
            actor,
            action,
            target,
            since,
            service,
            limit,
            changes,
        } => {
            let since = since
                .as_deref()
                .map(|s| instant("--since", s))
                .transpose()?;
            let mut all: Vec<apb::AuditEvent> = Vec::new();
            for (_, url) in services(cli, service)? {
                let mut c = AuditServiceClient::new(channel(&url).await?);
                let r = c
                    .list_audit_events(authed(
                        apb::ListAuditEventsRequest {
                            actor: actor.clone(),
                            action: action.clone(),
                            target: target.clone(),
                            since,
                            until: None,
                            limit: *limit,
                            before_seq: 0,
                        },
                        &key,
                    ))
                    .await
                    .map_err(status_error)?
                    .into_inner();
                all.extend(r.events);
            }
            let at = |e: &apb::AuditEvent| e.at.as_ref().and_then(spm_proto::ext::datetime);
            all.sort_by_key(|e| std::cmp::Reverse(at(e)));
            all.truncate(*limit as usize);
            let mut t = table(&["when", "service", "who", "did", "to", "trace"]);
            for e in &all {
                t.add_row(vec![
                    Cell::new(at(e).map(|d| d.to_rfc3339()).unwrap_or_default()),
                    Cell::new(&e.service),
                    Cell::new(format!("{} ({})", e.actor, e.role)),
                    Cell::new(&e.action),
                    Cell::new(&e.target),
                    Cell::new(&e.trace_id),
                ]);
            }
            println!("{t}");
            if *changes {
                for e in &all {
                    println!(
                        "{} {} {}:\n  before {}\n  after  {}",
                        e.service, e.action, e.target, e.before_json, e.after_json
                    );
                }
            }
            Ok(())
        }
    }
}
