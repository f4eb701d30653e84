//! `spm demo`: SPM end to end on this machine.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{Datelike as _, Utc};
use comfy_table::Cell;
use spm_proto::common::v1 as common;
use spm_proto::events::v1::Pillar;
use spm_proto::incentive::v1 as incentive;
use spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient;
use spm_proto::incentive::v1::incentive_service_client::IncentiveServiceClient;
use spm_proto::ingest::v1 as ingest;
use spm_proto::ingest::v1::ingest_admin_service_client::IngestAdminServiceClient;
use spm_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use spm_proto::notification::v1 as notification;
use spm_proto::notification::v1::notification_admin_service_client::NotificationAdminServiceClient;
use spm_proto::notification::v1::notification_service_client::NotificationServiceClient;
use spm_proto::scoring::v1 as scoring;
use spm_proto::scoring::v1::scoring_admin_service_client::ScoringAdminServiceClient;
use spm_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use spm_testkit::authed;

use crate::Cli;
use crate::commands::{
    Creds, channel, creds_path, print_leaderboard, print_score, status_error, submit_all,
};
use crate::out::{note, num, table, title};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Teams of reps.
    #[arg(long, default_value_t = 3)]
    pub teams: usize,
    /// Reps per team.
    #[arg(long, default_value_t = 12)]
    pub reps_per_team: usize,
    /// Days of history.
    #[arg(long, default_value_t = 60)]
    pub days: i64,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

fn month(key: &str) -> common::Period {
    common::Period {
        kind: common::PeriodKind::Month as i32,
        key: key.to_owned(),
    }
}

/// The local provider of `deploy/local/stack up`.
const DEMO_ISSUER: &str = "http://127.0.0.1:59400";

/// People of the demo tenant who are not reps.
const DEMO_GRANTS: &[(&str, spm_proto::events::v1::PersonRole)] = &[
    (
        "comp@demo.example",
        spm_proto::events::v1::PersonRole::CompAdmin,
    ),
    (
        "finance@demo.example",
        spm_proto::events::v1::PersonRole::Finance,
    ),
    (
        "auditor@demo.example",
        spm_proto::events::v1::PersonRole::Auditor,
    ),
];

pub async fn run(cli: &Cli, a: &Args) -> anyhow::Result<()> {
    let t0 = Instant::now();
    title("starting the local stack and the four services");
    crate::local::up().await?;

    // A fresh tenant per run.
    let tenant_id = format!("demo-{}", Utc::now().format("%Y%m%d-%H%M%S"));
    let token = crate::local::admin_token()?;
    let mut admin = IngestAdminServiceClient::new(channel(&cli.ingest).await?);
    let created = admin
        .create_tenant(authed(
            ingest::CreateTenantRequest {
                tenant_id: tenant_id.clone(),
                name: "Demo Trading Co.".into(),
                context: Some(common::TenantContext {
                    time_zone: "Asia/Shanghai".into(),
                    fiscal_year_start_month: 1,
                    base_currency: "EUR".into(),
                }),
            },
            &token,
        ))
        .await
        .map_err(status_error)?
        .into_inner();
    let key = created.admin_api_key.clone();
    let creds = Creds {
        tenant: tenant_id.clone(),
        admin_key: key.clone(),
        webhook_secret: created.webhook_secret.clone(),
    };
    std::fs::write(creds_path()?, serde_json::to_string_pretty(&creds)?)?;
    println!("tenant {tenant_id} created; credentials in .local/demo-tenant.json");
    admin
        .set_fx_rate(authed(
            ingest::SetFxRateRequest {
                rate: Some(ingest::FxRate {
                    currency: "USD".into(),
                    rate: "0.92".into(),
                    effective_from: (Utc::now() - chrono::Duration::days(400))
                        .format("%Y-%m-%d")
                        .to_string(),
                }),
            },
            &key,
        ))
        .await
        .map_err(status_error)?;

    // People sign in with the local OpenID provider (deploy/local/oidc): reps and managers by
    // their e-mail on the org events, the comp admin, finance and the auditor by grants.
    let issuer = std::env::var("SPM_OIDC_ISSUER").unwrap_or_else(|_| DEMO_ISSUER.to_owned());
    admin
        .set_identity_provider(authed(
            ingest::SetIdentityProviderRequest {
                provider: Some(ingest::IdentityProvider {
                    issuer: issuer.clone(),
                    audience: format!("urn:spm:{tenant_id}"),
                    person_claim: "email".into(),
                    jwks_uri: String::new(),
                }),
            },
            &key,
        ))
        .await
        .map_err(status_error)?;
    for (login, role) in DEMO_GRANTS {
        admin
            .put_person(authed(
                ingest::PutPersonRequest {
                    person: Some(ingest::Person {
                        login: (*login).into(),
                        role: *role as i32,
                        rep_id: String::new(),
                        active: true,
                        display_name: String::new(),
                    }),
                },
                &key,
            ))
            .await
            .map_err(status_error)?;
    }

    // Every service learns the key from the tenants topic.
    for (name, port, _) in crate::local::SERVICES {
        let ch = channel(&format!("http://127.0.0.1:{port}")).await?;
        let t = Instant::now();
        while !spm_testkit::process::probe_auth(ch.clone(), &key).await {
            if t.elapsed() > Duration::from_secs(30) {
                bail!("spm-{name} did not learn the tenant's key");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let now = Utc::now();
    let demo = spm_testkit::demo::generate(a.seed, a.teams, a.reps_per_team, a.days, now);
    let cal = spm_core::period::Calendar::new("Asia/Shanghai", 1)?;
    let this_month = shown_month(&cal, now);
    let this_quarter = cal.period(spm_core::period::PeriodKind::Quarter, this_month.start);
    configure_scoring(cli, &key, &demo, &this_month.key, &this_quarter.key).await?;
    configure_incentive(cli, &key, &demo, now).await?;
    let receiver = webhook_receiver().await?;
    let mut nadm = NotificationAdminServiceClient::new(channel(&cli.notification).await?);
    let hook = nadm
        .put_webhook(authed(
            notification::PutWebhookRequest {
                url: format!("http://{}/spm-hook", receiver.addr),
                rules: vec![],
            },
            &key,
        ))
        .await
        .map_err(status_error)?
        .into_inner();
    *receiver.secret.lock().expect("secret") = hook.secret;
    println!(
        "webhook receiver listening on http://{}/spm-hook (signatures verified)",
        receiver.addr
    );

    title(&format!(
        "streaming {} events: {} reps in {} teams, {} days, {} deals, {} payments, {} reversals, {} activities, {} surveys",
        demo.events.len(),
        demo.reps.len(),
        demo.teams.len(),
        a.days,
        demo.deals,
        demo.payments,
        demo.reversals,
        demo.activities,
        demo.surveys
    ));
    let started = Instant::now();
    let summary = submit_all(cli, &key, demo.events.clone(), 500, "ingest").await?;
    let secs = started.elapsed().as_secs_f64();
    summary.print();
    #[allow(clippy::cast_precision_loss)]
    let rate = summary.accepted as f64 / secs.max(0.001);
    note(&format!(
        "accepted {} events in {secs:.1} s ({rate:.0} events/s)",
        summary.accepted
    ));

    // One more deal, with a trace id we choose, to follow through every service.
    let trace_id = format!("{:032x}", rand::random::<u128>());
    let rep = demo.reps[0].0.clone();
    let mut traced = spm_testkit::events::deal(
        &format!("D-TRACE-{}", now.timestamp()),
        "12000.00",
        &[(rep.as_str(), "100")],
    );
    traced.source = "demo-crm".into();
    let mut req = authed(
        ingest::SubmitEventRequest {
            event: Some(traced.clone()),
        },
        &key,
    );
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{:016x}-01", rand::random::<u64>()).parse()?,
    );
    IngestServiceClient::new(channel(&cli.ingest).await?)
        .submit_event(req)
        .await
        .map_err(status_error)?;

    wait_scored(cli, &key, &demo, &cal, now).await?;

    let mut sc = ScoringServiceClient::new(channel(&cli.scoring).await?);
    let board = sc
        .get_leaderboard(authed(
            scoring::GetLeaderboardRequest {
                team_id: String::new(),
                period: Some(month(&this_month.key)),
                by: "score".into(),
                top_n: 10,
            },
            &key,
        ))
        .await
        .map_err(status_error)?
        .into_inner();
    print_leaderboard(&board);

    let top = board
        .entries
        .first()
        .map_or_else(|| rep.clone(), |e| e.rep_id.clone());
    let explained = sc
        .explain_score(authed(
            scoring::ExplainScoreRequest {
                rep_id: top.clone(),
                period: Some(month(&this_month.key)),
            },
            &key,
        ))
        .await
        .map_err(status_error)?
        .into_inner();
    print_score(&explained, false);

    let rollup = sc
        .get_team_rollup(authed(
            scoring::GetTeamRollupRequest {
                team_id: "sales".into(),
                period: Some(month(&this_month.key)),
            },
            &key,
        ))
        .await
        .map_err(status_error)?
        .into_inner();
    title(&format!("team rollup for {}", this_month.key));
    let metrics = [
        "revenue",
        "deals_won",
        "collection_rate",
        "csat_avg",
        "visits",
        "calls",
        "demos",
    ];
    let mut headers = vec!["team", "reps"];
    headers.extend(metrics);
    let mut t = table(&headers);
    for tm in rollup.team.iter().chain(rollup.sub_teams.iter()) {
        let mut row = vec![Cell::new(&tm.name), num(tm.rep_count)];
        for m in metrics {
            let v = tm
                .metrics
                .iter()
                .find(|x| x.metric == m)
                .map(|x| x.value.clone())
                .unwrap_or_default();
            row.push(num(short(&v)));
        }
        t.add_row(row);
    }
    println!("{t}");

    let calib = sc
        .get_goal_calibration(authed(
            scoring::GetGoalCalibrationRequest {
                metric: "revenue".into(),
                period: Some(month(&this_month.key)),
                low_share: String::new(),
                high_share: String::new(),
            },
            &key,
        ))
        .await
        .map_err(status_error)?
        .into_inner();
    title(&format!(
        "goal calibration (revenue, {}): {}",
        this_month.key,
        scoring::CalibrationVerdict::try_from(calib.verdict)
            .map(|v| v
                .as_str_name()
                .trim_start_matches("CALIBRATION_VERDICT_")
                .to_lowercase())
            .unwrap_or_default()
    ));
    println!("{}", calib.explanation);

    wait_incentive(cli, &key, &rep, &traced.event_id).await?;
    let mut inc = IncentiveServiceClient::new(channel(&cli.incentive).await?);
    let stmt = inc
        .get_statement(authed(
            incentive::GetStatementRequest {
                as_of: None,
                with_explanations: false,
                rep_id: top.clone(),
                period: Some(month(&this_month.key)),
            },
            &key,
        ))
        .await
        .map_err(status_error)?
        .into_inner()
        .statement
        .unwrap_or_default();
    crate::commands::print_statement(&stmt, Some(14));

    // Notifications: give the pipeline a moment to deliver what it produced.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut ns = NotificationServiceClient::new(channel(&cli.notification).await?);
    let feed = ns
        .list_notifications(authed(
            notification::ListNotificationsRequest {
                recipient: String::new(),
                unread_only: false,
                limit: 500,
            },
            &key,
        ))
        .await
        .map_err(status_error)?
        .into_inner();
    let mut by_rule: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for n in &feed.notifications {
        *by_rule.entry(n.rule.clone()).or_default() += 1;
    }
    title(&format!(
        "notifications that went out ({} latest shown by rule)",
        feed.notifications.len()
    ));
    let mut t = table(&["rule", "count"]);
    for (r, n) in &by_rule {
        t.add_row(vec![Cell::new(r), num(n)]);
    }
    println!("{t}");
    let mut t = table(&["to", "rule", "title", "why / next"]);
    let mut shown: Vec<&notification::Notification> = Vec::new();
    for rule in [
        "commission_earned",
        "tier_reached",
        "award_granted",
        "goal_milestone",
        "leaderboard_entered",
        "process_alert",
    ] {
        shown.extend(feed.notifications.iter().filter(|n| n.rule == rule).take(2));
    }
    for n in shown {
        t.add_row(vec![
            Cell::new(&n.recipient),
            Cell::new(&n.rule),
            Cell::new(&n.title),
            Cell::new(trim(&n.body, 110)),
        ]);
    }
    println!("{t}");
    let received = receiver.count.load(std::sync::atomic::Ordering::Relaxed);
    let bad = receiver.bad.load(std::sync::atomic::Ordering::Relaxed);
    println!("webhooks received by the local receiver: {received} (bad signatures: {bad})");

    let v =
        spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient::new(
            channel(&cli.incentive).await?,
        )
        .verify_ledger(authed(
            incentive::VerifyLedgerRequest { period: None },
            &key,
        ))
        .await
        .map_err(status_error)?
        .into_inner();
    title("tamper evidence");
    println!(
        "the earnings ledger's {} postings in {} hash chains verified {} in {} ms",
        v.postings,
        v.chains,
        if v.ok { "intact" } else { "BROKEN" },
        v.took_ms
    );
    note(
        "`spm audit verify` checks it and every service's audit trail; `spm audit log` shows who changed what; `spm statement REP --as-of T` shows a statement as it was",
    );

    title("follow one deal");
    println!("deal event {} carries trace id {trace_id}", traced.event_id);
    note("with OTEL_EXPORTER_OTLP_ENDPOINT set for the services, find it in your tracing UI");
    title("sign in as a person");
    println!(
        "portal {}/t/{tenant_id}/ — sign in at the identity provider {issuer} (password {}) as one of these; `target/debug/spm login` signs the CLI in the same way:",
        crate::local::portal_url(),
        spm_testkit::oidc::PASSWORD
    );
    let first_team = demo.teams.first().map(|t| t.0.clone()).unwrap_or_default();
    for (who, what) in [
        (
            format!("{first_team}-01@demo.example"),
            "a rep: own statement, score and notifications".to_owned(),
        ),
        (
            format!("mgr-{first_team}@demo.example"),
            format!("a manager: team {first_team}"),
        ),
        (
            "vp@demo.example".to_owned(),
            "the VP: every team below".to_owned(),
        ),
        (
            "comp@demo.example".to_owned(),
            "comp admin: plans, goals, periods, disputes".to_owned(),
        ),
        (
            "finance@demo.example".to_owned(),
            "finance: reads everything, changes nothing".to_owned(),
        ),
        (
            "auditor@demo.example".to_owned(),
            "auditor: reads everything, changes nothing".to_owned(),
        ),
    ] {
        println!("  {who:<26} {what}");
    }
    note(&format!(
        "done in {:.1} s. Try: target/debug/spm leaderboard --by revenue --period {p} | target/debug/spm score {top} --period {p} --explain | target/debug/spm parked list | target/debug/spm down",
        t0.elapsed().as_secs_f64(),
        p = this_month.key
    ));
    Ok(())
}

fn short(v: &str) -> String {
    match v.parse::<rust_decimal::Decimal>() {
        Ok(d) => d.round_dp(2).normalize().to_string(),
        Err(_) => v.to_owned(),
    }
}

async fn configure_scoring(
    cli: &Cli,
    key: &str,
    demo: &spm_testkit::demo::Demo,
    month_key: &str,
    quarter_key: &str,
) -> anyhow::Result<()> {
    let mut adm = ScoringAdminServiceClient::new(channel(&cli.scoring).await?);
    let kpi = |id: &str,
               metric: &str,
               weight: &str,
               target: scoring::kpi_target::Kind,
               curve: scoring::curve::Kind,
               pillar: Pillar| scoring::Kpi {
        kpi_id: id.into(),
        metric: metric.into(),
        weight: weight.into(),
        target: Some(scoring::KpiTarget { kind: Some(target) }),
        curve: Some(scoring::Curve { kind: Some(curve) }),
        pillar: pillar as i32,
    };
    use scoring::curve::Kind as C;
    use scoring::kpi_target::Kind as T;
    let lin = |cap: &str| C::LinearCapped(scoring::LinearCapped { cap: cap.into() });
    adm.put_scorecard(authed(
        scoring::PutScorecardRequest {
            scorecard: Some(scoring::Scorecard {
                scorecard_id: "ae-standard".into(),
                name: "Account executive scorecard".into(),
                assignment: Some(scoring::ScorecardAssignment {
                    kind: Some(scoring::scorecard_assignment::Kind::TenantDefault(true)),
                }),
                cap: "120".into(),
                kpis: vec![
                    kpi(
                        "revenue",
                        "revenue",
                        "45",
                        T::Goal(true),
                        lin("1.5"),
                        Pillar::Results,
                    ),
                    kpi(
                        "collection",
                        "collection_rate",
                        "15",
                        T::Fixed("0.9".into()),
                        C::Threshold(scoring::Threshold {
                            min: "0.5".into(),
                            cap: "1.1".into(),
                        }),
                        Pillar::Results,
                    ),
                    kpi(
                        "csat",
                        "csat_avg",
                        "15",
                        T::Fixed("4.5".into()),
                        lin("1.1"),
                        Pillar::Results,
                    ),
                    kpi(
                        "visits",
                        "visits",
                        "10",
                        T::Goal(true),
                        lin("1.2"),
                        Pillar::Behaviour,
                    ),
                    kpi(
                        "after_sales",
                        "after_sales_resolved",
                        "5",
                        T::Fixed("4".into()),
                        C::Bands(scoring::Bands {
                            bands: vec![
                                scoring::Band {
                                    from: "0".into(),
                                    points: "0".into(),
                                },
                                scoring::Band {
                                    from: "0.5".into(),
                                    points: "60".into(),
                                },
                                scoring::Band {
                                    from: "1".into(),
                                    points: "100".into(),
                                },
                            ],
                        }),
                        Pillar::Behaviour,
                    ),
                    kpi(
                        "training",
                        "trainings_completed",
                        "10",
                        T::Fixed("1".into()),
                        lin("1"),
                        Pillar::Capability,
                    ),
                ],
                ..Default::default()
            }),
        },
        key,
    ))
    .await
    .map_err(status_error)?;
    let q = common::Period {
        kind: common::PeriodKind::Quarter as i32,
        key: quarter_key.to_owned(),
    };
    for (rep, team, _, _) in &demo.reps {
        // Senior reps (team north) carry a higher quota.
        let (m_rev, q_rev) = if team == "north" {
            ("90000", "270000")
        } else {
            ("70000", "210000")
        };
        // Monthly goals; quarter and year targets roll up from them.
        let _ = (&q, q_rev);
        for (metric, period, target) in [
            ("revenue", month(month_key), m_rev),
            ("visits", month(month_key), "25"),
        ] {
            adm.set_goal(authed(
                scoring::SetGoalRequest {
                    subject_kind: scoring::SubjectKind::Rep as i32,
                    subject_id: rep.clone(),
                    metric: metric.into(),
                    period: Some(period),
                    target: target.into(),
                    effective_from: None,
                },
                key,
            ))
            .await
            .map_err(status_error)
            .with_context(|| format!("goal {metric} of {rep}"))?;
        }
    }
    for (team, _) in &demo.teams {
        adm.set_goal(authed(
            scoring::SetGoalRequest {
                subject_kind: scoring::SubjectKind::Team as i32,
                subject_id: team.clone(),
                metric: "revenue".into(),
                period: Some(month(month_key)),
                target: "800000".into(),
                effective_from: None,
            },
            key,
        ))
        .await
        .map_err(status_error)?;
    }
    println!(
        "scorecard ae-standard and {} goals set",
        demo.reps.len() * 2 + demo.teams.len()
    );
    Ok(())
}

/// Waits until scoring has counted every generated visit and deal credit.
async fn wait_scored(
    cli: &Cli,
    key: &str,
    demo: &spm_testkit::demo::Demo,
    cal: &spm_core::period::Calendar,
    now: chrono::DateTime<Utc>,
) -> anyhow::Result<()> {
    let mut sc = ScoringServiceClient::new(channel(&cli.scoring).await?);
    let months: Vec<String> = cal
        .periods_between(
            spm_core::period::PeriodKind::Month,
            now - chrono::Duration::days(demo_days(demo, now) + 2),
            now,
        )
        .into_iter()
        .map(|p| p.key)
        .collect();
    let want_visits = demo.visits;
    let want_won = demo.deal_credits - demo.reversed_credits + 1;
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message("waiting for scoring to apply every event");
    let t = Instant::now();
    loop {
        pb.tick();
        let (mut visits, mut won) = (0usize, 0usize);
        for m in &months {
            let r = sc
                .get_metrics(authed(
                    scoring::GetMetricsRequest {
                        subject_kind: scoring::SubjectKind::Team as i32,
                        subject_id: "sales".into(),
                        period: Some(month(m)),
                    },
                    key,
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            for v in r.metrics {
                let n = v.value.parse::<rust_decimal::Decimal>().unwrap_or_default();
                let n = usize::try_from(n.trunc().mantissa()).unwrap_or(0);
                match v.metric.as_str() {
                    "visits" => visits += n,
                    "deals_won" => won += n,
                    _ => {}
                }
            }
        }
        if visits >= want_visits && won >= want_won {
            break;
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!(
                "scoring has {visits}/{want_visits} visits and {won}/{want_won} deals after 5 minutes"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pb.finish_with_message(format!(
        "scoring applied everything in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The month the demo shows: the current one once it is half over, else the last complete
/// one, which the demo's days of data fill (on the 1st of a month the current one would be
/// a day old: a near-empty leaderboard and a calibration that says "too early").
fn shown_month(
    cal: &spm_core::period::Calendar,
    now: chrono::DateTime<Utc>,
) -> spm_core::period::Period {
    let current = cal.period(spm_core::period::PeriodKind::Month, now);
    let half = rust_decimal::Decimal::new(5, 1);
    if current.elapsed_fraction(now) >= half {
        note(&format!(
            "showing {}, the current month ({}% under way)",
            current.key,
            (current.elapsed_fraction(now) * rust_decimal::Decimal::ONE_HUNDRED).round()
        ));
        return current;
    }
    let last = cal.period(
        spm_core::period::PeriodKind::Month,
        current.start - chrono::Duration::seconds(1),
    );
    note(&format!(
        "showing {}, the last complete month ({} is {}% under way)",
        last.key,
        current.key,
        (current.elapsed_fraction(now) * rust_decimal::Decimal::ONE_HUNDRED).round()
    ));
    last
}

fn demo_days(_demo: &spm_testkit::demo::Demo, now: chrono::DateTime<Utc>) -> i64 {
    // The demo spans at most 62 days plus the org events a day earlier.
    let _ = now.day();
    63
}

pub fn trim(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

async fn configure_incentive(
    cli: &Cli,
    key: &str,
    demo: &spm_testkit::demo::Demo,
    now: chrono::DateTime<Utc>,
) -> anyhow::Result<()> {
    let mut adm = IncentiveAdminServiceClient::new(channel(&cli.incentive).await?);
    let start = (now - chrono::Duration::days(120))
        .format("%Y-%m-%d")
        .to_string();
    let spiff_from = (now - chrono::Duration::days(20))
        .format("%Y-%m-%d")
        .to_string();
    let spiff_to = (now + chrono::Duration::days(10))
        .format("%Y-%m-%d")
        .to_string();
    let rep_quotas = demo
        .reps
        .iter()
        .filter(|(_, team, _, _)| team == "north")
        .map(|(r, ..)| (r.clone(), "90000".to_owned()))
        .collect();
    let plan = incentive::Plan {
        plan_id: "ae-2026".into(),
        name: "Account executives 2026".into(),
        effective_from: start,
        period_kind: common::PeriodKind::Month as i32,
        assignment: Some(incentive::PlanAssignment {
            tenant_default: true,
            ..Default::default()
        }),
        commission: Some(incentive::Commission {
            basis: incentive::TierBasis::Attainment as i32,
            mode: incentive::TierMode::Marginal as i32,
            quota: "70000".into(),
            rep_quotas,
            tiers: vec![
                incentive::Tier {
                    from: "0".into(),
                    rate: "0.04".into(),
                },
                incentive::Tier {
                    from: "1".into(),
                    rate: "0.07".into(),
                },
                incentive::Tier {
                    from: "1.5".into(),
                    rate: "0.1".into(),
                },
            ],
            threshold: "0.3".into(),
            per_deal_cap: "5000".into(),
            period_cap: "20000".into(),
        }),
        gates: vec![
            incentive::Gate {
                metric: "collection_rate".into(),
                op: incentive::GateOp::Below as i32,
                value: "0.5".into(),
                action: incentive::GateAction::Multiply as i32,
                factor: "0.8".into(),
            },
            incentive::Gate {
                metric: "csat_avg".into(),
                op: incentive::GateOp::Below as i32,
                value: "3.5".into(),
                action: incentive::GateAction::Hold as i32,
                factor: String::new(),
            },
        ],
        payout: Some(incentive::PayoutSplit {
            at_close_percent: "50".into(),
            on_collection_percent: "50".into(),
        }),
        attainment_bonuses: vec![incentive::AttainmentBonus {
            at: "1".into(),
            amount: "1000".into(),
        }],
        score_bonus: vec![incentive::ScoreBand {
            min_score: "100".into(),
            amount: "500".into(),
        }],
        spiffs: vec![incentive::Spiff {
            spiff_id: "analytics-push".into(),
            name: "Analytics push".into(),
            product_ids: vec!["analytics".into()],
            from_date: spiff_from,
            to_date: spiff_to,
            reward: Some(incentive::spiff::Reward::Rate("0.02".into())),
        }],
        clawback_window_days: 90,
        badges: vec![
            incentive::BadgeRule {
                code: "first-deal".into(),
                title: "First deal".into(),
                kind: incentive::BadgeKind::FirstDeal as i32,
                threshold: String::new(),
                periods: 0,
            },
            incentive::BadgeRule {
                code: "club-120".into(),
                title: "120% club".into(),
                kind: incentive::BadgeKind::AttainmentClub as i32,
                threshold: "1.2".into(),
                periods: 0,
            },
            incentive::BadgeRule {
                code: "streak-3".into(),
                title: "Three in a row".into(),
                kind: incentive::BadgeKind::Streak as i32,
                threshold: "1".into(),
                periods: 3,
            },
        ],
        promotion: Some(incentive::PromotionRule {
            periods: 3,
            min_attainment: "1.1".into(),
            min_score: "95".into(),
        }),
        ..Default::default()
    };
    adm.put_plan(authed(
        incentive::PutPlanRequest {
            plan: Some(plan),
            draft: false,
        },
        key,
    ))
    .await
    .map_err(status_error)?;
    println!(
        "plan ae-2026: marginal tiers 4% / 7% above quota / 10% above 150%, collection gate, SPIFF, badges"
    );
    Ok(())
}

/// Waits until incentive has posted the traced deal (the rep's last event).
async fn wait_incentive(cli: &Cli, key: &str, rep: &str, traced_event: &str) -> anyhow::Result<()> {
    let mut inc = IncentiveServiceClient::new(channel(&cli.incentive).await?);
    let t = Instant::now();
    loop {
        let s = inc
            .get_statement(authed(
                incentive::GetStatementRequest {
                    as_of: None,
                    with_explanations: true,
                    rep_id: rep.to_owned(),
                    period: None,
                },
                key,
            ))
            .await
            .map_err(status_error)?
            .into_inner()
            .statement
            .unwrap_or_default();
        if s.lines
            .iter()
            .any(|l| l.explanation_json.contains(traced_event))
        {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("incentive did not post the traced deal within 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

struct Receiver {
    addr: std::net::SocketAddr,
    secret: std::sync::Arc<std::sync::Mutex<String>>,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    bad: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// A local webhook endpoint that checks each delivery's signature.
async fn webhook_receiver() -> anyhow::Result<Receiver> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let secret = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let bad = std::sync::Arc::new(AtomicUsize::new(0));
    let (s2, c2, b2) = (secret.clone(), count.clone(), bad.clone());
    let app = axum::Router::new().route(
        "/spm-hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (s, c, b) = (s2.clone(), c2.clone(), b2.clone());
                async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let secret = s.lock().expect("secret").clone();
                    if spm_core::signature::verify(
                        &secret,
                        &h("x-spm-timestamp"),
                        &body,
                        &h("x-spm-signature"),
                    ) {
                        c.fetch_add(1, Ordering::Relaxed);
                        axum::http::StatusCode::OK
                    } else {
                        b.fetch_add(1, Ordering::Relaxed);
                        axum::http::StatusCode::UNAUTHORIZED
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Receiver {
        addr,
        secret,
        count,
        bad,
    })
}
