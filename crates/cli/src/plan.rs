//! `spm plan`: plan versions through their lifecycle (services/incentive/README.md, "Plan
//! lifecycle"): list and show them, draft a new version from an existing one, run it in
//! shadow, propose, approve, reject, retire, compare what the shadow would pay.

use anyhow::{Context as _, bail};
use spm_proto::incentive::v1 as ipb;
use spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient;
use spm_testkit::authed;

use crate::Cli;
use crate::commands::{channel, key, period, status_error};
use crate::out::{note, num, table, title};

#[derive(Debug, clap::Subcommand)]
pub enum PlanCmd {
    /// Every plan's live version and the versions in the works (--history: all).
    List {
        #[arg(long)]
        history: bool,
    },
    /// One version (default: the latest) with its transitions and approvals.
    Show {
        plan: String,
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// A new DRAFT version copied from an existing one (default: the latest), with changes.
    Draft {
        plan: String,
        /// The version to start from.
        #[arg(long, default_value_t = 0)]
        from: u32,
        #[arg(long)]
        name: Option<String>,
        /// YYYY-MM-DD.
        #[arg(long)]
        effective_from: Option<String>,
        /// The period quota.
        #[arg(long)]
        quota: Option<String>,
        /// A tier's rate: INDEX=RATE (0=0.06 sets the first tier to 6%); repeatable.
        #[arg(long = "tier-rate")]
        tier_rates: Vec<String>,
    },
    /// Run a version in shadow on the live stream (from DRAFT; it catches up on open periods).
    Shadow {
        plan: String,
        version: u32,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Propose a version for approval.
    Propose {
        plan: String,
        version: u32,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Approve a proposed version (signed in as a person other than its author and proposer).
    Approve {
        plan: String,
        version: u32,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Send a proposed version back to DRAFT, saying why.
    Reject {
        plan: String,
        version: u32,
        #[arg(long)]
        reason: String,
    },
    /// Retire a version, saying why.
    Retire {
        plan: String,
        version: u32,
        #[arg(long)]
        reason: String,
    },
    /// Show or set how many approvals a version needs to go live.
    Policy {
        /// The new number (0 to 5; admins only).
        #[arg(long)]
        set: Option<u32>,
    },
    /// What a version in shadow would pay against the live plans, per rep and line.
    Compare {
        plan: String,
        /// Default: the latest version in shadow.
        #[arg(long, default_value_t = 0)]
        version: u32,
        /// The period key, e.g. 2026-12.
        #[arg(long)]
        period: String,
        #[arg(long, default_value = "month")]
        kind: String,
        #[arg(long, default_value = "")]
        rep: String,
        /// Also print every line.
        #[arg(long)]
        lines: bool,
    },
}

fn state(s: i32) -> &'static str {
    match ipb::PlanState::try_from(s).unwrap_or_default() {
        ipb::PlanState::Draft => "DRAFT",
        ipb::PlanState::Shadow => "SHADOW",
        ipb::PlanState::PendingApproval => "PENDING_APPROVAL",
        ipb::PlanState::Live => "LIVE",
        ipb::PlanState::Retired => "RETIRED",
        ipb::PlanState::Unspecified => "-",
    }
}

fn when(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(spm_proto::ext::datetime)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

fn print_versions(plans: &[ipb::Plan]) {
    let mut t = table(&[
        "plan",
        "version",
        "state",
        "effective from",
        "created by",
        "approvals",
    ]);
    for p in plans {
        t.add_row(vec![
            comfy_table::Cell::new(format!("{} ({})", p.plan_id, p.name)),
            num(p.version),
            comfy_table::Cell::new(state(p.state)),
            comfy_table::Cell::new(&p.effective_from),
            comfy_table::Cell::new(&p.created_by),
            comfy_table::Cell::new(if p.state == ipb::PlanState::PendingApproval as i32 {
                format!("{} of {}", p.approvals.len(), p.approvals_required.max(1))
            } else {
                String::new()
            }),
        ]);
    }
    println!("{t}");
}

async fn transition(
    adm: &mut IncentiveAdminServiceClient<tonic::transport::Channel>,
    key: &str,
    (plan, version): (&str, u32),
    to: ipb::PlanState,
    reason: &str,
) -> anyhow::Result<()> {
    let r = adm
        .transition_plan(authed(
            ipb::TransitionPlanRequest {
                plan_id: plan.to_owned(),
                version,
                to: to as i32,
                reason: reason.to_owned(),
            },
            key,
        ))
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "{plan} v{version} is {}: {} rep-periods recomputed, {} postings, {} shadow postings",
        state(r.plan.as_ref().map_or(0, |p| p.state)),
        r.rep_periods_recomputed,
        r.postings,
        r.shadow_postings
    );
    Ok(())
}

pub async fn run(cli: &Cli, cmd: &PlanCmd) -> anyhow::Result<()> {
    let key = key(cli)?;
    let mut adm = IncentiveAdminServiceClient::new(channel(&cli.incentive).await?);
    match cmd {
        PlanCmd::List { history } => {
            let r = adm
                .list_plans(authed(ipb::ListPlansRequest { history: *history }, &key))
                .await
                .map_err(status_error)?
                .into_inner();
            print_versions(&r.plans);
        }
        PlanCmd::Show { plan, version } => {
            let r = adm
                .get_plan(authed(
                    ipb::GetPlanRequest {
                        plan_id: plan.clone(),
                        version: *version,
                    },
                    &key,
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            let p = r.plan.unwrap_or_default();
            print_versions(std::slice::from_ref(&p));
            title("transitions");
            let mut t = table(&["at", "from", "to", "by", "role", "reason"]);
            for x in &r.transitions {
                t.add_row(vec![
                    when(x.at.as_ref()),
                    state(x.from).to_owned(),
                    state(x.to).to_owned(),
                    x.actor.clone(),
                    x.role.clone(),
                    x.reason.clone(),
                ]);
            }
            println!("{t}");
            if !r.approvals.is_empty() {
                title("approvals of the current proposal");
                for a in &r.approvals {
                    println!(
                        "{}  {} ({}) {}",
                        when(a.at.as_ref()),
                        a.approver,
                        a.role,
                        a.reason
                    );
                }
            }
        }
        PlanCmd::Draft {
            plan,
            from,
            name,
            effective_from,
            quota,
            tier_rates,
        } => {
            let base = adm
                .get_plan(authed(
                    ipb::GetPlanRequest {
                        plan_id: plan.clone(),
                        version: *from,
                    },
                    &key,
                ))
                .await
                .map_err(status_error)?
                .into_inner()
                .plan
                .context("no plan in the reply")?;
            let mut p = base.clone();
            if let Some(n) = name {
                p.name.clone_from(n);
            }
            if let Some(d) = effective_from {
                p.effective_from.clone_from(d);
            }
            let c = p.commission.get_or_insert_with(Default::default);
            if let Some(q) = quota {
                c.quota.clone_from(q);
            }
            for tr in tier_rates {
                let Some((i, rate)) = tr.split_once('=') else {
                    bail!("--tier-rate {tr:?}: INDEX=RATE, e.g. 0=0.06");
                };
                let i: usize = i
                    .parse()
                    .with_context(|| format!("--tier-rate {tr:?}: the index is a number"))?;
                let n = c.tiers.len();
                let tier = c.tiers.get_mut(i).with_context(|| {
                    format!("--tier-rate {tr:?}: {plan} v{} has {n} tiers", base.version)
                })?;
                tier.rate = rate.to_owned();
            }
            let r = adm
                .put_plan(authed(
                    ipb::PutPlanRequest {
                        plan: Some(p),
                        draft: true,
                    },
                    &key,
                ))
                .await
                .map_err(status_error)?
                .into_inner()
                .plan
                .unwrap_or_default();
            println!(
                "{plan} v{} is DRAFT (from v{}); next: spm plan shadow {plan} {}",
                r.version, base.version, r.version
            );
        }
        PlanCmd::Shadow {
            plan,
            version,
            reason,
        } => {
            transition(
                &mut adm,
                &key,
                (plan, *version),
                ipb::PlanState::Shadow,
                reason,
            )
            .await?
        }
        PlanCmd::Propose {
            plan,
            version,
            reason,
        } => {
            transition(
                &mut adm,
                &key,
                (plan, *version),
                ipb::PlanState::PendingApproval,
                reason,
            )
            .await?;
        }
        PlanCmd::Reject {
            plan,
            version,
            reason,
        } => {
            transition(
                &mut adm,
                &key,
                (plan, *version),
                ipb::PlanState::Draft,
                reason,
            )
            .await?
        }
        PlanCmd::Retire {
            plan,
            version,
            reason,
        } => {
            transition(
                &mut adm,
                &key,
                (plan, *version),
                ipb::PlanState::Retired,
                reason,
            )
            .await?
        }
        PlanCmd::Approve {
            plan,
            version,
            reason,
        } => {
            let r = adm
                .approve_plan(authed(
                    ipb::ApprovePlanRequest {
                        plan_id: plan.clone(),
                        version: *version,
                        reason: reason.clone(),
                    },
                    &key,
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            if r.went_live {
                println!(
                    "{plan} v{version} is LIVE ({} of {} approvals): {} rep-periods recomputed, {} postings",
                    r.approvals, r.approvals_required, r.rep_periods_recomputed, r.postings
                );
            } else {
                println!(
                    "approval recorded: {} of {} for {plan} v{version}",
                    r.approvals, r.approvals_required
                );
            }
        }
        PlanCmd::Policy { set } => {
            let p = match set {
                Some(n) => {
                    adm.set_plan_policy(authed(
                        ipb::SetPlanPolicyRequest {
                            approvals_required: *n,
                        },
                        &key,
                    ))
                    .await
                    .map_err(status_error)?
                    .into_inner()
                    .approvals_required
                }
                None => {
                    adm.get_plan_policy(authed(ipb::GetPlanPolicyRequest {}, &key))
                        .await
                        .map_err(status_error)?
                        .into_inner()
                        .approvals_required
                }
            };
            println!(
                "a plan version needs {p} approval(s) by someone other than its author and proposer to go live{}",
                if p == 0 {
                    " (a put plan is live at once)"
                } else {
                    ""
                }
            );
        }
        PlanCmd::Compare {
            plan,
            version,
            period: p,
            kind,
            rep,
            lines,
        } => {
            let r = adm
                .compare_plan(authed(
                    ipb::ComparePlanRequest {
                        plan_id: plan.clone(),
                        version: *version,
                        period: Some(period(kind, p)?),
                        rep_id: rep.clone(),
                    },
                    &key,
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            title(&format!(
                "{plan} v{} ({}) against the live plans, {} {}: live {} / shadow {} / difference {}",
                r.version,
                state(r.state),
                r.period.as_ref().map_or("", |p| p.key.as_str()),
                r.currency,
                r.live_total,
                r.shadow_total,
                r.difference
            ));
            let mut t = table(&["rep", "live", "shadow", "difference"]);
            for x in &r.reps {
                t.add_row(vec![
                    comfy_table::Cell::new(&x.rep_id),
                    num(&x.live_total),
                    num(&x.shadow_total),
                    num(&x.difference),
                ]);
            }
            println!("{t}");
            if *lines {
                let mut t = table(&["rep", "line", "live", "shadow", "difference", "shadow says"]);
                for x in &r.reps {
                    for l in &x.lines {
                        t.add_row(vec![
                            comfy_table::Cell::new(&x.rep_id),
                            comfy_table::Cell::new(&l.line_key),
                            num(&l.live),
                            num(&l.shadow),
                            num(&l.difference),
                            comfy_table::Cell::new(&l.summary),
                        ]);
                    }
                }
                println!("{t}");
            }
            note(&format!(
                "in shadow since {}; as of {}",
                when(r.shadow_since.as_ref()),
                when(r.as_of.as_ref())
            ));
        }
    }
    Ok(())
}
