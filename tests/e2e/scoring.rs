//! Scoring end to end: ingest -> Kafka -> scoring -> gRPC, against the real stack.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{Datelike as _, Duration as Days, TimeZone as _, Utc};
use spm_core::period::{Calendar, PeriodKind};
use spm_core::topics;
use spm_proto::common::v1 as common;
use spm_proto::events::v1 as ev;
use spm_proto::events::v1::event_envelope::Payload as Out;
use spm_proto::ingest::v1 as ipb;
use spm_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use spm_proto::scoring::v1 as pb;
use spm_proto::scoring::v1::scoring_admin_service_client::ScoringAdminServiceClient;
use spm_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use spm_testkit::events::{activity, deal, rep, team};
use spm_testkit::kafka::read_topic;
use spm_testkit::{Service, TestEnv, authed, create_tenant, eventually, wait_key_known};
use tonic::Code;
use tonic_types::StatusExt as _;

pub async fn submit(ingest: &Service, key: &str, events: Vec<ipb::CrmEvent>) {
    let mut c = IngestServiceClient::new(ingest.channel().await);
    let acks = c
        .submit_events(authed(ipb::SubmitEventsRequest { events }, key))
        .await
        .expect("submit")
        .into_inner()
        .acks;
    for a in &acks {
        assert!(
            a.status == ipb::AckStatus::Accepted as i32
                || a.status == ipb::AckStatus::Duplicate as i32,
            "{a:?}"
        );
    }
}

fn month(key: &str) -> common::Period {
    common::Period {
        kind: common::PeriodKind::Month as i32,
        key: key.into(),
    }
}

pub(crate) fn kpi(
    id: &str,
    metric: &str,
    weight: &str,
    target: pb::kpi_target::Kind,
    cap: &str,
    pillar: ev::Pillar,
) -> pb::Kpi {
    pb::Kpi {
        kpi_id: id.into(),
        metric: metric.into(),
        weight: weight.into(),
        target: Some(pb::KpiTarget { kind: Some(target) }),
        curve: Some(pb::Curve {
            kind: Some(pb::curve::Kind::LinearCapped(pb::LinearCapped {
                cap: cap.into(),
            })),
        }),
        pillar: pillar as i32,
    }
}

pub fn card(kpis: Vec<pb::Kpi>) -> pb::Scorecard {
    pb::Scorecard {
        scorecard_id: "sc".into(),
        name: "AE".into(),
        assignment: Some(pb::ScorecardAssignment {
            kind: Some(pb::scorecard_assignment::Kind::TenantDefault(true)),
        }),
        kpis,
        cap: "120".into(),
        ..Default::default()
    }
}

fn goal(rep: &str, metric: &str, period: common::Period, target: &str) -> pb::SetGoalRequest {
    pb::SetGoalRequest {
        subject_kind: pb::SubjectKind::Rep as i32,
        subject_id: rep.into(),
        metric: metric.into(),
        period: Some(period),
        target: target.into(),
        effective_from: None,
    }
}

struct World {
    env: TestEnv,
    ingest: Service,
    scoring: Service,
    key: String,
}

async fn world(name: &str) -> World {
    let env = TestEnv::new(name).await;
    let ingest = env.start("ingest").await;
    let scoring = env.start("scoring").await;
    let t = create_tenant(&env, &ingest, "acme").await;
    wait_key_known(&ingest, &t.admin_key).await;
    wait_key_known(&scoring, &t.admin_key).await;
    World {
        env,
        ingest,
        scoring,
        key: t.admin_key,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_explains_itself_with_the_contributing_events() {
    let w = world("scoring-explain").await;
    let now_month = Calendar::default()
        .period(PeriodKind::Month, Utc::now())
        .key;
    let mut adm = ScoringAdminServiceClient::new(w.scoring.channel().await);
    adm.put_scorecard(authed(
        pb::PutScorecardRequest {
            scorecard: Some(card(vec![
                kpi(
                    "rev",
                    "revenue",
                    "60",
                    pb::kpi_target::Kind::Goal(true),
                    "1.5",
                    ev::Pillar::Results,
                ),
                kpi(
                    "vis",
                    "visits",
                    "40",
                    pb::kpi_target::Kind::Fixed("10".into()),
                    "1",
                    ev::Pillar::Behaviour,
                ),
            ])),
        },
        &w.key,
    ))
    .await
    .expect("scorecard");
    adm.set_goal(authed(
        goal("r1", "revenue", month(&now_month), "10000"),
        &w.key,
    ))
    .await
    .expect("goal");

    let d1 = deal("d1", "6000.00", &[("r1", "100")]);
    let d2 = deal("d2", "3000.00", &[("r1", "50"), ("r2", "50")]);
    let visits: Vec<ipb::CrmEvent> = (0..8)
        .map(|_| activity("r1", ev::ActivityKind::Visit))
        .collect();
    let mut events = vec![rep("r1", "", ""), rep("r2", "", ""), d1.clone(), d2.clone()];
    events.extend(visits.iter().cloned());
    submit(&w.ingest, &w.key, events).await;

    let mut sc = ScoringServiceClient::new(w.scoring.channel().await);
    // revenue 7500 / 10000 = 0.75 -> 75 x 60% = 45; visits 8 / 10 -> 80 x 40% = 32; score 77.
    let score = eventually(Duration::from_secs(30), "the score of r1", || {
        let mut sc = sc.clone();
        let key = w.key.clone();
        async move {
            let s = sc
                .get_score(authed(
                    pb::GetScoreRequest {
                        rep_id: "r1".into(),
                        period: None,
                    },
                    &key,
                ))
                .await
                .ok()?
                .into_inner()
                .score?;
            (s.score == "77").then_some(s)
        }
    })
    .await;
    let rev = score.kpis.iter().find(|k| k.kpi_id == "rev").unwrap();
    assert_eq!(
        (
            rev.value.as_str(),
            rev.target.as_str(),
            rev.attainment.as_str(),
            rev.points.as_str()
        ),
        ("7500", "10000", "0.75", "75")
    );
    assert_eq!(rev.event_count, 2, "two deals contributed to revenue");
    let vis = score.kpis.iter().find(|k| k.kpi_id == "vis").unwrap();
    assert_eq!(
        (vis.value.as_str(), vis.points.as_str(), vis.event_count),
        ("8", "80", 8)
    );
    assert_eq!(score.pillars["PILLAR_RESULTS"], "45");

    let ex = sc
        .explain_score(authed(
            pb::ExplainScoreRequest {
                rep_id: "r1".into(),
                period: None,
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner();
    let rev_ids: HashSet<String> = ex
        .kpis
        .iter()
        .find(|k| k.kpi.as_ref().unwrap().kpi_id == "rev")
        .unwrap()
        .contributions
        .iter()
        .map(|c| c.event_id.clone())
        .collect();
    assert_eq!(
        rev_ids,
        HashSet::from([d1.event_id.clone(), d2.event_id.clone()])
    );
    let vis_ids: HashSet<String> = ex
        .kpis
        .iter()
        .find(|k| k.kpi.as_ref().unwrap().kpi_id == "vis")
        .unwrap()
        .contributions
        .iter()
        .map(|c| c.event_id.clone())
        .collect();
    assert_eq!(vis_ids, visits.iter().map(|v| v.event_id.clone()).collect());
    assert!(
        ex.kpis[0]
            .rule
            .contains("attainment = value 7500 / target 10000 = 0.75"),
        "{}",
        ex.kpis[0].rule
    );

    // Milestones 50% and 75% of the revenue goal were announced with their numbers.
    // (The outbox relay publishes them just after the commit the score query saw.)
    let milestones = eventually(Duration::from_secs(30), "milestones on the topic", || {
        let env = &w.env;
        async move {
            let m: Vec<u32> = read_topic(env, topics::SCORES)
                .into_iter()
                .filter_map(|r| match r.envelope?.payload? {
                    Out::GoalMilestoneReached(m) if m.rep_id == "r1" => Some(m.milestone_percent),
                    _ => None,
                })
                .collect();
            (m.len() >= 2).then_some(m)
        }
    })
    .await;
    assert_eq!(milestones, [50, 75]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_input_is_rejected_field_by_field() {
    let w = world("scoring-admin").await;
    let mut adm = ScoringAdminServiceClient::new(w.scoring.channel().await);
    let field = |s: tonic::Status| -> Vec<String> {
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        s.get_details_bad_request()
            .unwrap()
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect()
    };
    let bad_weights = card(vec![
        kpi(
            "a",
            "revenue",
            "60",
            pb::kpi_target::Kind::Goal(true),
            "1",
            ev::Pillar::Results,
        ),
        kpi(
            "b",
            "visits",
            "30",
            pb::kpi_target::Kind::Goal(true),
            "1",
            ev::Pillar::Behaviour,
        ),
    ]);
    let e = adm
        .put_scorecard(authed(
            pb::PutScorecardRequest {
                scorecard: Some(bad_weights),
            },
            &w.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(field(e), ["scorecard.kpis"]);
    let unknown = card(vec![kpi(
        "a",
        "happiness",
        "100",
        pb::kpi_target::Kind::Goal(true),
        "1",
        ev::Pillar::Results,
    )]);
    let e = adm
        .put_scorecard(authed(
            pb::PutScorecardRequest {
                scorecard: Some(unknown),
            },
            &w.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(field(e), ["scorecard.kpis[0].metric"]);

    let m = Calendar::default()
        .period(PeriodKind::Month, Utc::now())
        .key;
    let e = adm
        .set_goal(authed(goal("r1", "revenue", month(&m), "-5"), &w.key))
        .await
        .unwrap_err();
    assert_eq!(field(e), ["target"]);
    let e = adm
        .set_goal(authed(goal("r1", "vibes", month(&m), "5"), &w.key))
        .await
        .unwrap_err();
    assert_eq!(field(e), ["metric"]);
    let e = adm
        .set_goal(authed(goal("r1", "revenue", month("2026-13"), "5"), &w.key))
        .await
        .unwrap_err();
    assert_eq!(field(e), ["period.key"]);
    adm.set_goal(authed(goal("r1", "revenue", month(&m), "1000"), &w.key))
        .await
        .expect("a monthly goal");
    let q = Calendar::default()
        .period(PeriodKind::Quarter, Utc::now())
        .key;
    let quarter = common::Period {
        kind: common::PeriodKind::Quarter as i32,
        key: q,
    };
    let e = adm
        .set_goal(authed(goal("r1", "revenue", quarter, "3000"), &w.key))
        .await
        .unwrap_err();
    assert_eq!(
        field(e),
        ["period"],
        "a quarterly goal over the monthly one overlaps"
    );

    // A new target is a new version; history is kept.
    adm.set_goal(authed(goal("r1", "revenue", month(&m), "1200"), &w.key))
        .await
        .expect("second version");
    let all = adm
        .list_goals(authed(
            pb::ListGoalsRequest {
                period: Some(month(&m)),
                history: true,
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .goals;
    let versions: Vec<(u32, String, bool)> = all
        .iter()
        .map(|g| (g.version, g.target.clone(), g.superseded_at.is_some()))
        .collect();
    assert_eq!(
        versions,
        [(1, "1000".into(), true), (2, "1200".into(), false)]
    );

    // Integration keys cannot administer.
    let mut admin_ingest =
        spm_proto::ingest::v1::ingest_admin_service_client::IngestAdminServiceClient::new(
            w.ingest.channel().await,
        );
    let k = admin_ingest
        .issue_api_key(authed(
            ipb::IssueApiKeyRequest {
                role: ev::ApiKeyRole::Integration as i32,
                label: String::new(),
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .api_key;
    wait_key_known(&w.scoring, &k).await;
    let e = adm
        .set_goal(authed(goal("r1", "revenue", month(&m), "5"), &k))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_never_sees_another_tenants_data() {
    let w = world("scoring-tenants").await;
    let b = create_tenant(&w.env, &w.ingest, "beta").await;
    wait_key_known(&w.ingest, &b.admin_key).await;
    wait_key_known(&w.scoring, &b.admin_key).await;
    submit(
        &w.ingest,
        &w.key,
        vec![rep("r1", "", ""), deal("d1", "100.00", &[("r1", "100")])],
    )
    .await;
    submit(
        &w.ingest,
        &b.admin_key,
        vec![
            rep("r1", "", ""),
            rep("only-b", "", ""),
            deal("d1", "999.00", &[("r1", "100")]),
            deal("d2", "5.00", &[("only-b", "100")]),
        ],
    )
    .await;

    let mut sc = ScoringServiceClient::new(w.scoring.channel().await);
    let metric =
        |sc: &mut ScoringServiceClient<tonic::transport::Channel>, key: String, rep: &str| {
            let mut sc = sc.clone();
            let rep = rep.to_owned();
            async move {
                let m = sc
                    .get_metrics(authed(
                        pb::GetMetricsRequest {
                            subject_kind: pb::SubjectKind::Rep as i32,
                            subject_id: rep,
                            period: None,
                        },
                        &key,
                    ))
                    .await
                    .ok()?
                    .into_inner();
                m.metrics
                    .into_iter()
                    .find(|x| x.metric == "revenue")
                    .map(|x| x.value)
            }
        };
    eventually(Duration::from_secs(30), "both tenants scored", || {
        let (mut sc, ka, kb) = (sc.clone(), w.key.clone(), b.admin_key.clone());
        async move {
            let a = metric(&mut sc, ka, "r1").await?;
            let b = metric(&mut sc, kb, "only-b").await?;
            (a == "100" && b == "5").then_some(())
        }
    })
    .await;
    assert_eq!(
        metric(&mut sc, b.admin_key.clone(), "r1").await.as_deref(),
        Some("999")
    );
    // Tenant A asking for B's rep gets nothing; A's leaderboard holds only A's reps.
    let e = sc
        .get_score(authed(
            pb::GetScoreRequest {
                rep_id: "only-b".into(),
                period: None,
            },
            &w.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        metric(&mut sc, w.key.clone(), "only-b").await.as_deref(),
        Some("0")
    );
    let board = sc
        .get_leaderboard(authed(
            pb::GetLeaderboardRequest {
                team_id: String::new(),
                period: None,
                by: "revenue".into(),
                top_n: 10,
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner();
    let reps: Vec<String> = board.entries.iter().map(|e| e.rep_id.clone()).collect();
    assert_eq!(reps, ["r1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_events_land_in_their_period_ties_share_ranks_and_rebuild_is_identical() {
    let mut w = world("scoring-rebuild").await;
    let now = Utc::now();
    let cal = Calendar::default();
    let this = cal.period(PeriodKind::Month, now);
    let last = cal.period(PeriodKind::Month, this.start - Days::seconds(1));
    let mid_last = last.start + Days::days(10);
    let late = |id: &str, amt: &str, reps: &[(&str, &str)]| {
        let mut e = deal(id, amt, reps);
        e.occurred_at = Some(spm_proto::ext::timestamp(mid_last));
        e
    };
    submit(
        &w.ingest,
        &w.key,
        vec![
            team("t1", "", "m1"),
            rep("m1", "t1", ""),
            rep("a", "t1", "m1"),
            rep("b", "t1", "m1"),
            rep("c", "t1", "m1"),
        ],
    )
    .await;
    submit(
        &w.ingest,
        &w.key,
        vec![
            deal("now-a", "300.00", &[("a", "100")]),
            deal("now-b", "300.00", &[("b", "100")]),
            deal("now-c", "100.00", &[("c", "100")]),
        ],
    )
    .await;
    // Arrives after this month's deals but happened last month.
    submit(
        &w.ingest,
        &w.key,
        vec![late("late-a", "50.00", &[("a", "100")])],
    )
    .await;
    let mut sc = ScoringServiceClient::new(w.scoring.channel().await);
    let board = |sc: &ScoringServiceClient<tonic::transport::Channel>, key: String, p: String| {
        let mut sc = sc.clone();
        async move {
            sc.get_leaderboard(authed(
                pb::GetLeaderboardRequest {
                    team_id: "t1".into(),
                    period: Some(month(&p)),
                    by: "revenue".into(),
                    top_n: 10,
                },
                &key,
            ))
            .await
            .ok()
            .map(|r| {
                r.into_inner()
                    .entries
                    .iter()
                    .map(|e| (e.rank, e.rep_id.clone(), e.value.clone()))
                    .collect::<Vec<_>>()
            })
        }
    };
    let got = eventually(Duration::from_secs(30), "this month's board", || {
        let (sc, key, p) = (sc.clone(), w.key.clone(), this.key.clone());
        async move {
            board(&sc, key, p)
                .await
                // Wait for all three reps' deals, not just the first one applied.
                .filter(|b| b.len() == 4 && b.iter().filter(|x| x.2 != "0").count() == 3)
        }
    })
    .await;
    // a and b tie at 300 (rank 1 twice), c is third (rank 3), m1 has nothing (rank 4).
    assert_eq!(
        got,
        vec![
            (1, "a".into(), "300".into()),
            (1, "b".into(), "300".into()),
            (3, "c".into(), "100".into()),
            (4, "m1".into(), "0".into())
        ]
    );
    let lastb = eventually(Duration::from_secs(30), "last month's board", || {
        let (sc, key, p) = (sc.clone(), w.key.clone(), last.key.clone());
        async move {
            board(&sc, key, p)
                .await
                .filter(|b| b.first().is_some_and(|x| x.2 == "50"))
        }
    })
    .await;
    assert_eq!(lastb[0], (1, "a".into(), "50".into()));
    // Team rollup through the hierarchy.
    let roll = sc
        .get_team_rollup(authed(
            pb::GetTeamRollupRequest {
                team_id: "t1".into(),
                period: Some(month(&this.key)),
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner();
    let rev = roll
        .team
        .unwrap()
        .metrics
        .into_iter()
        .find(|m| m.metric == "revenue")
        .unwrap()
        .value;
    assert_eq!(rev, "700");

    // Rebuild from the topics gives identical rows.
    let pool = w.env.pool("scoring").await;
    let snapshot = |pool: sqlx::PgPool| async move {
        let mut out = Vec::new();
        for (t, q) in [
            (
                "facts",
                "SELECT tenant_id, rep_id, event_id::text, kind, month_key, amount::text FROM facts ORDER BY 1,2,3",
            ),
            (
                "cells",
                "SELECT tenant_id, rep_id, period_kind, period_key, cell, sum::text || '/' || n::text FROM cells ORDER BY 1,2,3,4,5",
            ),
            (
                "scores",
                "SELECT tenant_id, rep_id, period_kind, period_key, encode(snapshot, 'hex'), COALESCE(score::text, '') FROM scores ORDER BY 1,2,3,4",
            ),
            (
                "org_reps",
                "SELECT tenant_id, rep_id, team_id, manager_id, display_name, event_id::text FROM org_reps ORDER BY 1,2",
            ),
        ] {
            let rows: Vec<(String, String, String, String, String, String)> =
                sqlx::query_as(q).fetch_all(&pool).await.unwrap();
            out.push((t, rows));
        }
        out
    };
    let before = snapshot(pool.clone()).await;
    assert!(before.iter().all(|(_, r)| !r.is_empty()));
    w.scoring.terminate(Duration::from_secs(20)).await;
    let bin = spm_testkit::process::binary("spm-scoring");
    // Pointed at topics that hold nothing (a wrong prefix, a broker that lost its data),
    // a rebuild refuses instead of wiping the projections.
    let refused = tokio::process::Command::new(&bin)
        .arg("rebuild")
        .env("DATABASE_URL", &w.env.db_url)
        .env("KAFKA_BROKERS", &w.env.stack.brokers)
        .env("KAFKA_TOPIC_PREFIX", format!("{}nothing.", w.env.prefix))
        .env("SPM_GRPC_ADDR", "127.0.0.1:0")
        .env("SPM_HTTP_ADDR", "127.0.0.1:0")
        .output()
        .await
        .expect("run rebuild");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("refusing to rebuild"),
        "{err}"
    );
    assert_eq!(
        snapshot(pool.clone()).await,
        before,
        "a refused rebuild changes nothing"
    );
    let out = tokio::process::Command::new(bin)
        .arg("rebuild")
        .env("DATABASE_URL", &w.env.db_url)
        .env("KAFKA_BROKERS", &w.env.stack.brokers)
        .env("KAFKA_TOPIC_PREFIX", &w.env.prefix)
        .env("SPM_GRPC_ADDR", "127.0.0.1:0")
        .env("SPM_HTTP_ADDR", "127.0.0.1:0")
        .output()
        .await
        .expect("run rebuild");
    assert!(
        out.status.success(),
        "rebuild failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = snapshot(pool.clone()).await;
    for ((t, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(a, b, "{t} differs after rebuild");
    }
    w.scoring.restart().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_alerts_and_calibration() {
    let w = world("scoring-live").await;
    let mut sc = ScoringServiceClient::new(w.scoring.channel().await);
    let mut adm = ScoringAdminServiceClient::new(w.scoring.channel().await);
    adm.put_scorecard(authed(
        pb::PutScorecardRequest {
            scorecard: Some(card(vec![kpi(
                "rev",
                "revenue",
                "100",
                pb::kpi_target::Kind::Fixed("1000".into()),
                "2",
                ev::Pillar::Results,
            )])),
        },
        &w.key,
    ))
    .await
    .unwrap();
    submit(
        &w.ingest,
        &w.key,
        vec![rep("r1", "", "boss"), rep("boss", "", "")],
    )
    .await;

    // WatchScores pushes the change.
    let mut stream = sc
        .watch_scores(authed(
            pb::WatchScoresRequest {
                rep_id: "r1".into(),
                team_id: String::new(),
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(300)).await;
    submit(
        &w.ingest,
        &w.key,
        vec![deal("d1", "500.00", &[("r1", "100")])],
    )
    .await;
    let update = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let m = stream.message().await.unwrap().unwrap();
            let s = m.score.unwrap();
            if s.score == "50" {
                return s;
            }
        }
    })
    .await
    .expect("a score change within 20 s");
    assert_eq!(update.rep_id, "r1");

    // Process alerts, evaluated as of a past Wednesday noon: no visits against a goal of 100.
    let cal = Calendar::default();
    let this = cal.period(PeriodKind::Month, Utc::now());
    let last = cal.period(PeriodKind::Month, this.start - Days::seconds(1));
    let mut wed = last.start + Days::days(14);
    while wed.weekday() != chrono::Weekday::Wed {
        wed += Days::days(1);
    }
    let at = Utc.from_utc_datetime(&wed.date_naive().and_hms_opt(12, 0, 0).unwrap());
    adm.set_goal(authed(
        goal("r1", "visits", month(&last.key), "100"),
        &w.key,
    ))
    .await
    .unwrap();
    let raised = adm
        .evaluate_process_alerts(authed(
            pb::EvaluateProcessAlertsRequest {
                at: Some(spm_proto::ext::timestamp(at)),
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .raised;
    assert_eq!(raised, 1);
    let again = adm
        .evaluate_process_alerts(authed(
            pb::EvaluateProcessAlertsRequest {
                at: Some(spm_proto::ext::timestamp(at)),
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .raised;
    assert_eq!(again, 0, "one alert per rep, metric and week");
    let alerts = sc
        .list_process_alerts(authed(
            pb::ListProcessAlertsRequest {
                rep_id: "r1".into(),
                limit: 10,
            },
            &w.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .alerts;
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        (alerts[0].manager_id.as_str(), alerts[0].actual.as_str()),
        ("boss", "0")
    );
    assert!(alerts[0].expected.parse::<f64>().unwrap() > 0.0);

    // Calibration of last month's revenue goals: everyone far below -> targets too high.
    let mut events = Vec::new();
    for i in 0..5 {
        let r = format!("c{i}");
        events.push(rep(&r, "", ""));
        let mut d = deal(&format!("cd{i}"), "100.00", &[(r.as_str(), "100")]);
        d.occurred_at = Some(spm_proto::ext::timestamp(last.start + Days::days(3)));
        events.push(d);
        adm.set_goal(authed(
            goal(&r, "revenue", month(&last.key), "10000"),
            &w.key,
        ))
        .await
        .unwrap();
    }
    submit(&w.ingest, &w.key, events).await;
    let cal_resp = eventually(
        Duration::from_secs(30),
        "calibration over scored deals",
        || {
            let mut sc = sc.clone();
            let key = w.key.clone();
            let p = last.key.clone();
            async move {
                let r = sc
                    .get_goal_calibration(authed(
                        pb::GetGoalCalibrationRequest {
                            metric: "revenue".into(),
                            period: Some(month(&p)),
                            low_share: String::new(),
                            high_share: String::new(),
                        },
                        &key,
                    ))
                    .await
                    .ok()?
                    .into_inner();
                r.projections.iter().all(|x| x.value == "100").then_some(r)
            }
        },
    )
    .await;
    assert_eq!(
        cal_resp.verdict,
        pb::CalibrationVerdict::TooHigh as i32,
        "{}",
        cal_resp.explanation
    );
    assert_eq!((cal_resp.goals, cal_resp.on_track), (5, 0));
    assert_eq!(cal_resp.distribution[0].goals, 5, "all projected below 50%");
}
