//! Everyday commands: tenants, ingest a file, scores, leaderboards.

use std::collections::BTreeMap;
use std::io::BufRead as _;

use anyhow::{Context as _, bail};
use comfy_table::Cell;
use spm_proto::common::v1 as common;
use spm_proto::incentive::v1 as incentive;
use spm_proto::incentive::v1::incentive_service_client::IncentiveServiceClient;
use spm_proto::ingest::v1 as ingest;
use spm_proto::ingest::v1::ingest_admin_service_client::IngestAdminServiceClient;
use spm_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use spm_proto::scoring::v1 as scoring;
use spm_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use spm_testkit::authed;
use tonic::transport::Channel;

use crate::Cli;
use crate::out::{note, num, table, title};

pub async fn channel(url: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(url.to_owned())?
        .connect()
        .await
        .with_context(|| format!("connecting to {url} (is SPM running? try `spm up`)"))
}

/// The demo tenant's credentials, written by `spm demo`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Creds {
    pub tenant: String,
    pub admin_key: String,
    pub webhook_secret: String,
}

pub fn creds_path() -> anyhow::Result<std::path::PathBuf> {
    Ok(crate::local::state_dir()?.join("demo-tenant.json"))
}

/// `--key`, or the token of the person signed in with `spm login`, or the demo tenant's
/// admin key.
pub fn key(cli: &Cli) -> anyhow::Result<String> {
    if let Some(k) = &cli.key {
        return Ok(k.clone());
    }
    if let Some(t) = crate::login::stored_token()? {
        return Ok(t);
    }
    let c: Creds = serde_json::from_str(
        &std::fs::read_to_string(creds_path()?)
            .context("no --key / SPM_API_KEY and no demo tenant (run `spm demo`)")?,
    )?;
    Ok(c.admin_key)
}

#[derive(Debug, clap::Subcommand)]
pub enum TenantCmd {
    /// Create a tenant (needs the operator token: SPM_ADMIN_TOKEN or .local/admin-token).
    Create {
        id: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "EUR")]
        currency: String,
        #[arg(long, default_value = "UTC")]
        time_zone: String,
        #[arg(long, default_value_t = 1)]
        fiscal_start_month: u32,
    },
    /// Issue an API key for the tenant of --key.
    Key {
        #[arg(long, default_value = "integration")]
        role: String,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Set an FX rate (units of base currency per unit of CURRENCY from DATE).
    Fx {
        currency: String,
        rate: String,
        from: String,
    },
}

pub async fn tenant(cli: &Cli, cmd: &TenantCmd) -> anyhow::Result<()> {
    let mut admin = IngestAdminServiceClient::new(channel(&cli.ingest).await?);
    match cmd {
        TenantCmd::Create {
            id,
            name,
            currency,
            time_zone,
            fiscal_start_month,
        } => {
            let token =
                std::env::var("SPM_ADMIN_TOKEN").or_else(|_| crate::local::admin_token())?;
            let r = admin
                .create_tenant(authed(
                    ingest::CreateTenantRequest {
                        tenant_id: id.clone(),
                        name: if name.is_empty() {
                            id.clone()
                        } else {
                            name.clone()
                        },
                        context: Some(common::TenantContext {
                            time_zone: time_zone.clone(),
                            fiscal_year_start_month: *fiscal_start_month,
                            base_currency: currency.clone(),
                        }),
                    },
                    &token,
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            println!("tenant         {id}");
            println!("admin key      {}", r.admin_api_key);
            println!("webhook secret {}", r.webhook_secret);
            crate::out::note("Both are shown once. Keep them.");
        }
        TenantCmd::Key { role, label } => {
            let role = match role.as_str() {
                "admin" => spm_proto::events::v1::ApiKeyRole::Admin,
                "integration" => spm_proto::events::v1::ApiKeyRole::Integration,
                other => bail!("role must be admin or integration, not {other}"),
            };
            let r = admin
                .issue_api_key(authed(
                    ingest::IssueApiKeyRequest {
                        role: role as i32,
                        label: label.clone(),
                    },
                    &key(cli)?,
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            println!("key id  {}\napi key {}", r.key_id, r.api_key);
        }
        TenantCmd::Fx {
            currency,
            rate,
            from,
        } => {
            let r = admin
                .set_fx_rate(authed(
                    ingest::SetFxRateRequest {
                        rate: Some(ingest::FxRate {
                            currency: currency.clone(),
                            rate: rate.clone(),
                            effective_from: from.clone(),
                        }),
                    },
                    &key(cli)?,
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{:?}", r.rate);
        }
    }
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub enum ParkedCmd {
    /// What waits (and what could not be applied), oldest first.
    List {
        /// `rep`, `deal`, `rep:<rep_id>` or `deal:<deal_id>`.
        #[arg(long, default_value = "")]
        waiting_for: String,
        /// Only events parked at least this long ago: `90s`, `15m`, `2h`, `3d`.
        #[arg(long)]
        older_than: Option<String>,
        /// waiting, failed, released, discarded (repeatable; default waiting and failed).
        #[arg(long = "state")]
        states: Vec<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Give up on a waiting or failed event; the reason is recorded.
    Discard {
        event_id: String,
        #[arg(long)]
        reason: String,
    },
}

/// `90s`, `15m`, `2h`, `3d` in seconds.
fn age_seconds(s: &str) -> anyhow::Result<u32> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u32 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("--older-than {s:?}: a number and s, m, h or d, e.g. 15m"))?;
    let per = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("--older-than {s:?}: the unit must be s, m, h or d"),
    };
    n.checked_mul(per)
        .ok_or_else(|| anyhow::anyhow!("--older-than {s:?} is too long"))
}

pub async fn parked(cli: &Cli, cmd: &ParkedCmd) -> anyhow::Result<()> {
    let mut admin = IngestAdminServiceClient::new(channel(&cli.ingest).await?);
    let k = key(cli)?;
    let when = |t: Option<&_>| {
        t.and_then(spm_proto::ext::datetime)
            .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
    };
    let state_name = |s: i32| {
        ingest::ParkedState::try_from(s)
            .map_or("?", |s| s.as_str_name().trim_start_matches("PARKED_STATE_"))
            .to_lowercase()
    };
    match cmd {
        ParkedCmd::List {
            waiting_for,
            older_than,
            states,
            limit,
        } => {
            let states = states
                .iter()
                .map(|s| {
                    ingest::ParkedState::from_str_name(&format!(
                        "PARKED_STATE_{}",
                        s.to_uppercase()
                    ))
                    .filter(|s| *s != ingest::ParkedState::Unspecified)
                    .map(|s| s as i32)
                    .ok_or_else(|| {
                        anyhow::anyhow!("--state {s:?}: waiting, failed, released or discarded")
                    })
                })
                .collect::<anyhow::Result<Vec<i32>>>()?;
            let r = admin
                .list_parked_events(authed(
                    ingest::ListParkedEventsRequest {
                        waiting_for: waiting_for.clone(),
                        older_than_seconds: older_than
                            .as_deref()
                            .map(age_seconds)
                            .transpose()?
                            .unwrap_or(0),
                        states,
                        limit: *limit,
                    },
                    &k,
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            let mut t = crate::out::table(&[
                "event",
                "kind",
                "occurred",
                "parked",
                "state",
                "waiting for / why",
            ]);
            for p in &r.events {
                let why = if p.error.is_empty() {
                    if p.discard_reason.is_empty() {
                        p.waiting_for.join(", ")
                    } else {
                        format!("{} ({})", p.discard_reason, p.discarded_by)
                    }
                } else {
                    p.error.clone()
                };
                t.add_row(vec![
                    Cell::new(&p.event_id),
                    Cell::new(&p.kind),
                    Cell::new(when(p.occurred_at.as_ref())),
                    Cell::new(when(p.parked_at.as_ref())),
                    Cell::new(state_name(p.state)),
                    Cell::new(why),
                ]);
            }
            println!("{t}");
            crate::out::note(&format!("{} of {} shown", r.events.len(), r.total));
        }
        ParkedCmd::Discard { event_id, reason } => {
            let r = admin
                .discard_parked_event(authed(
                    ingest::DiscardParkedEventRequest {
                        event_id: event_id.clone(),
                        reason: reason.clone(),
                    },
                    &k,
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            let p = r.event.unwrap_or_default();
            println!(
                "{} {} discarded by {}: {}",
                p.kind, p.event_id, p.discarded_by, p.discard_reason
            );
        }
    }
    Ok(())
}

/// A gRPC error with its field violations spelled out.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt as _;
    let mut msg = format!("{:?}: {}", s.code(), s.message());
    if let Some(br) = s.get_details_bad_request() {
        for v in br.field_violations {
            msg.push_str(&format!("\n  {}: {}", v.field, v.description));
        }
    }
    anyhow::anyhow!(msg)
}

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// JSON-lines file; `-` for standard input.
    pub file: String,
    /// Events per request.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
}

pub async fn ingest(cli: &Cli, a: &IngestArgs) -> anyhow::Result<()> {
    let reader: Box<dyn std::io::BufRead> = if a.file == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&a.file).with_context(|| a.file.clone())?,
        ))
    };
    let mut events = Vec::new();
    let mut bad_lines = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match spm_proto::json::from_json::<ingest::CrmEvent>(line.as_bytes()) {
            Ok(e) => events.push(e),
            Err(e) => bad_lines.push(format!("line {}: {e}", i + 1)),
        }
    }
    let summary = submit_all(cli, &key(cli)?, events, a.batch, "ingesting").await?;
    summary.print();
    for b in bad_lines.iter().take(20) {
        println!("  unreadable {b}");
    }
    if !bad_lines.is_empty() {
        println!("{} unreadable lines", bad_lines.len());
    }
    Ok(())
}

/// Outcome counts of a submission.
#[derive(Debug, Default)]
pub struct Summary {
    pub accepted: usize,
    pub duplicate: usize,
    pub rejected: usize,
    pub conflict: usize,
    pub unavailable: usize,
    pub reasons: BTreeMap<String, usize>,
}

impl Summary {
    pub fn print(&self) {
        let mut t = table(&["outcome", "events"]);
        t.add_row(vec![Cell::new("accepted"), num(self.accepted)]);
        t.add_row(vec![Cell::new("duplicate"), num(self.duplicate)]);
        t.add_row(vec![Cell::new("rejected"), num(self.rejected)]);
        t.add_row(vec![Cell::new("conflict"), num(self.conflict)]);
        t.add_row(vec![
            Cell::new("unavailable (retry)"),
            num(self.unavailable),
        ]);
        println!("{t}");
        if !self.reasons.is_empty() {
            let mut r = table(&["rejection reason", "events"]);
            for (why, n) in &self.reasons {
                r.add_row(vec![Cell::new(why), num(n)]);
            }
            println!("{r}");
        }
    }
}

/// Streams events through ingest in batches over one `StreamEvents` call, with a progress bar.
pub async fn submit_all(
    cli: &Cli,
    key: &str,
    events: Vec<ingest::CrmEvent>,
    batch: usize,
    what: &str,
) -> anyhow::Result<Summary> {
    let pb = indicatif::ProgressBar::new(events.len() as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:12} [{bar:40.cyan/blue}] {pos}/{len} events {per_sec} eta {eta}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    let mut client = IngestServiceClient::new(channel(&cli.ingest).await?);
    let batches: Vec<ingest::StreamEventsRequest> = events
        .chunks(batch.max(1))
        .map(|c| ingest::StreamEventsRequest { events: c.to_vec() })
        .collect();
    let mut resp = client
        .stream_events(authed(tokio_stream::iter(batches), key))
        .await
        .map_err(status_error)?
        .into_inner();
    let mut s = Summary::default();
    while let Some(msg) = resp.message().await.map_err(status_error)? {
        pb.inc(msg.acks.len() as u64);
        for a in msg.acks {
            match ingest::AckStatus::try_from(a.status) {
                Ok(ingest::AckStatus::Accepted) => s.accepted += 1,
                Ok(ingest::AckStatus::Duplicate) => s.duplicate += 1,
                Ok(ingest::AckStatus::Rejected) => {
                    s.rejected += 1;
                    for v in a.violations {
                        *s.reasons
                            .entry(format!("{}: {}", v.field, v.description))
                            .or_default() += 1;
                    }
                }
                Ok(ingest::AckStatus::Conflict) => s.conflict += 1,
                _ => s.unavailable += 1,
            }
        }
    }
    pb.finish();
    Ok(s)
}

#[derive(Debug, clap::Args)]
pub struct ScoreArgs {
    pub rep: String,
    /// month, quarter or year.
    #[arg(long, default_value = "month")]
    pub kind: String,
    /// Period key (default: the current one), e.g. 2026-11 or FY2026-Q4.
    #[arg(long, default_value = "")]
    pub period: String,
    /// Show the contributing events of each KPI.
    #[arg(long)]
    pub explain: bool,
}

pub fn period(kind: &str, key: &str) -> anyhow::Result<common::Period> {
    let k = match kind {
        "week" => common::PeriodKind::Week,
        "month" => common::PeriodKind::Month,
        "quarter" => common::PeriodKind::Quarter,
        "year" => common::PeriodKind::Year,
        other => bail!("period kind must be week, month, quarter or year, not {other}"),
    };
    Ok(common::Period {
        kind: k as i32,
        key: key.to_owned(),
    })
}

pub async fn score(cli: &Cli, a: &ScoreArgs) -> anyhow::Result<()> {
    let mut c = ScoringServiceClient::new(channel(&cli.scoring).await?);
    let r = c
        .explain_score(authed(
            scoring::ExplainScoreRequest {
                rep_id: a.rep.clone(),
                period: Some(period(&a.kind, &a.period)?),
            },
            &key(cli)?,
        ))
        .await
        .map_err(status_error)?
        .into_inner();
    print_score(&r, a.explain);
    Ok(())
}

pub fn print_score(r: &scoring::ExplainScoreResponse, explain: bool) {
    let Some(s) = &r.score else { return };
    let period = s.period.as_ref().map(|p| p.key.clone()).unwrap_or_default();
    title(&format!(
        "score of {} for {period}: {} (cap {}, scorecard {} v{})",
        s.rep_id,
        if s.score.is_empty() { "n/a" } else { &s.score },
        s.cap,
        s.scorecard_id,
        s.scorecard_version
    ));
    let mut t = table(&[
        "KPI",
        "metric",
        "pillar",
        "value",
        "target",
        "attainment",
        "points",
        "weight %",
        "events",
    ]);
    for k in &s.kpis {
        let pillar = spm_proto::events::v1::Pillar::try_from(k.pillar)
            .map(|p| p.as_str_name().trim_start_matches("PILLAR_").to_lowercase())
            .unwrap_or_default();
        t.add_row(vec![
            Cell::new(&k.kpi_id),
            Cell::new(&k.metric),
            Cell::new(pillar),
            num(&k.value),
            num(&k.target),
            num(&k.attainment),
            num(&k.points),
            num(&k.weight),
            num(k.event_count),
        ]);
    }
    println!("{t}");
    for k in &r.kpis {
        if !k.rule.is_empty() {
            crate::out::note(&format!(
                "  {}: {}",
                k.kpi
                    .as_ref()
                    .map(|x| x.kpi_id.as_str())
                    .unwrap_or_default(),
                k.rule
            ));
        }
        if explain {
            for c in k.contributions.iter().take(15) {
                println!(
                    "      {} {:<24} {:>12} deal {}",
                    c.event_id, c.kind, c.value, c.deal_id
                );
            }
            if k.contributions.len() > 15 {
                println!("      ... and {} more", k.contributions.len() - 15);
            }
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct LeaderboardArgs {
    #[arg(long, default_value = "")]
    pub team: String,
    /// "score" or a metric (revenue, collection_rate, visits, ...).
    #[arg(long, default_value = "score")]
    pub by: String,
    #[arg(long, default_value = "month")]
    pub kind: String,
    #[arg(long, default_value = "")]
    pub period: String,
    #[arg(long, default_value_t = 10)]
    pub top: u32,
}

pub async fn leaderboard(cli: &Cli, a: &LeaderboardArgs) -> anyhow::Result<()> {
    let mut c = ScoringServiceClient::new(channel(&cli.scoring).await?);
    let r = c
        .get_leaderboard(authed(
            scoring::GetLeaderboardRequest {
                team_id: a.team.clone(),
                period: Some(period(&a.kind, &a.period)?),
                by: a.by.clone(),
                top_n: a.top,
            },
            &key(cli)?,
        ))
        .await
        .map_err(status_error)?
        .into_inner();
    print_leaderboard(&r);
    Ok(())
}

pub fn print_leaderboard(r: &scoring::GetLeaderboardResponse) {
    let period = r.period.as_ref().map(|p| p.key.clone()).unwrap_or_default();
    title(&format!(
        "leaderboard by {} for {period} (top {} of {})",
        r.by,
        r.entries.len(),
        r.total_reps
    ));
    let mut t = table(&["rank", "rep", "name", "team", &r.by]);
    for e in &r.entries {
        t.add_row(vec![
            num(e.rank),
            Cell::new(&e.rep_id),
            Cell::new(&e.display_name),
            Cell::new(&e.team_id),
            num(&e.value),
        ]);
    }
    println!("{t}");
}

#[derive(Debug, clap::Args)]
pub struct StatementArgs {
    pub rep: String,
    /// month or quarter (default: the period kind of the rep's plan).
    #[arg(long)]
    pub kind: Option<String>,
    /// Period key (default: the current one), e.g. 2026-11 or FY2026-Q4.
    #[arg(long, default_value = "")]
    pub period: String,
    /// Show one line's postings and calculation trace (its key, e.g. commission:D-00042).
    #[arg(long)]
    pub line: Option<String>,
    /// The statement as it was at this moment (RFC 3339), later postings left out.
    #[arg(long)]
    pub as_of: Option<String>,
    /// What was posted on the statement since this moment (RFC 3339), with the reasons.
    #[arg(long, conflicts_with = "line")]
    pub changes_since: Option<String>,
}

pub async fn statement(cli: &Cli, a: &StatementArgs) -> anyhow::Result<()> {
    let mut c = IncentiveServiceClient::new(channel(&cli.incentive).await?);
    let key = key(cli)?;
    let period = match &a.kind {
        Some(k) => Some(period(k, &a.period)?),
        None if a.period.is_empty() => None,
        None => bail!("--period needs --kind (month or quarter)"),
    };
    let as_of = a
        .as_of
        .as_deref()
        .map(|t| crate::audit::instant("--as-of", t))
        .transpose()?;
    if let Some(since) = &a.changes_since {
        let d = c
            .diff_statement(authed(
                incentive::DiffStatementRequest {
                    rep_id: a.rep.clone(),
                    period,
                    from: Some(crate::audit::instant("--changes-since", since)?),
                    to: as_of,
                },
                &key,
            ))
            .await
            .map_err(status_error)?
            .into_inner();
        title(&format!(
            "statement of {} for {}: {} then, {} now ({} postings in between)",
            a.rep,
            d.period
                .as_ref()
                .map(|p| p.key.as_str())
                .unwrap_or_default(),
            d.total_from,
            d.total_to,
            d.postings.len()
        ));
        let mut t = table(&["posted", "line", "kind", "status", "amount", "why"]);
        for p in &d.postings {
            let Some(x) = &p.posting else { continue };
            t.add_row(vec![
                Cell::new(
                    x.posted_at
                        .as_ref()
                        .and_then(spm_proto::ext::datetime)
                        .map(|d| d.to_rfc3339())
                        .unwrap_or_default(),
                ),
                Cell::new(&p.line_key),
                Cell::new(spm_proto::ext::earning_kind_name(x.kind)),
                Cell::new(spm_proto::ext::earning_status_name(x.status)),
                num(&x.amount),
                Cell::new(crate::demo::trim(&x.reason, 70)),
            ]);
        }
        println!("{t}");
        return Ok(());
    }
    let s = c
        .get_statement(authed(
            incentive::GetStatementRequest {
                as_of,
                with_explanations: false,
                rep_id: a.rep.clone(),
                period,
            },
            &key,
        ))
        .await
        .map_err(status_error)?
        .into_inner()
        .statement
        .context("no statement")?;
    let Some(line_key) = &a.line else {
        print_statement(&s, None);
        return Ok(());
    };
    let Some(line) = s.lines.iter().find(|l| &l.key == line_key) else {
        bail!(
            "no line {line_key:?} on this statement; its lines: {}",
            s.lines
                .iter()
                .map(|l| l.key.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let e = c
        .explain_line(authed(
            incentive::ExplainLineRequest {
                as_of,
                line_id: line.line_id.clone(),
            },
            &key,
        ))
        .await
        .map_err(status_error)?
        .into_inner();
    title(&format!(
        "{} on the statement of {}: {} {}",
        line.key, s.rep_id, line.amount, s.currency
    ));
    println!("{}", line.summary);
    let mut t = table(&["posted", "kind", "status", "amount", "why"]);
    for p in &e.postings {
        t.add_row(vec![
            Cell::new(
                p.posted_at
                    .as_ref()
                    .map(|x| {
                        spm_proto::ext::datetime(x)
                            .map(|d| d.to_rfc3339())
                            .unwrap_or_default()
                    })
                    .unwrap_or_default(),
            ),
            Cell::new(spm_proto::ext::earning_kind_name(p.kind)),
            Cell::new(spm_proto::ext::earning_status_name(p.status)),
            num(&p.amount),
            Cell::new(format!(
                "{} (posted in {}; {})",
                crate::demo::trim(&p.reason, 60),
                p.period,
                match p.caused_by.as_slice() {
                    [] => "a recomputation".to_owned(),
                    [one] => format!("caused by event {one}"),
                    [first, rest @ ..] =>
                        format!("caused by event {first} and {} more", rest.len()),
                }
            )),
        ]);
    }
    println!("{t}");
    let explained = e.line.as_ref().map_or("", |l| l.explanation_json.as_str());
    let trace: serde_json::Value =
        serde_json::from_str(explained).unwrap_or(serde_json::Value::Null);
    println!(
        "calculation trace:\n{}",
        serde_json::to_string_pretty(&trace)?
    );
    Ok(())
}

/// A statement as a table (the first `limit` lines), with its totals by status.
/// ` --kind month --period 2026-11`: what `spm statement` needs to show `s`'s period again.
fn period_flags(s: &incentive::Statement) -> String {
    s.period.as_ref().map_or_else(String::new, |p| {
        let kind = common::PeriodKind::try_from(p.kind).map_or("month", |k| {
            if k == common::PeriodKind::Quarter {
                "quarter"
            } else {
                "month"
            }
        });
        format!(" --kind {kind} --period {}", p.key)
    })
}

pub fn print_statement(s: &incentive::Statement, limit: Option<usize>) {
    let period = s.period.as_ref().map(|p| p.key.clone()).unwrap_or_default();
    title(&format!(
        "statement of {} for {period}: {} {} (revenue {}, attainment {}, plan {} v{})",
        s.rep_id, s.total, s.currency, s.revenue, s.attainment, s.plan_id, s.plan_version
    ));
    let mut t = table(&["line", "kind", "amount", "status", "how"]);
    for l in s.lines.iter().take(limit.unwrap_or(usize::MAX)) {
        t.add_row(vec![
            Cell::new(&l.key),
            Cell::new(spm_proto::ext::earning_kind_name(l.kind)),
            num(&l.amount),
            Cell::new(statuses(&l.by_status)),
            Cell::new(crate::demo::trim(&l.summary, 70)),
        ]);
    }
    println!("{t}");
    if let Some(n) = limit
        && s.lines.len() > n
    {
        note(&format!(
            "... {} more lines; `spm statement {}{}` shows all",
            s.lines.len() - n,
            s.rep_id,
            s.period
                .as_ref()
                .map_or_else(String::new, |p| format!(" --period {}", p.key))
        ));
    }
    let period = period_flags(s);
    note(&format!(
        "by status: {}; a line's calculation trace: spm statement {}{period} --line KEY",
        statuses(&s.totals_by_status),
        s.rep_id
    ));
}

/// "earned 100.00, payable 100.00".
fn statuses(parts: &[spm_proto::incentive::v1::StatusAmount]) -> String {
    parts
        .iter()
        .map(|x| {
            format!(
                "{} {}",
                spm_proto::ext::earning_status_name(x.status),
                x.amount
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
