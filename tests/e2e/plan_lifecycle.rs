//! Plan lifecycle end to end: a draft version runs in shadow on the live stream into its
//! own ledger, is proposed, approved by someone else (people signed in with the stack's
//! real OpenID provider), and goes live; what it shadowed is what the live ledger then
//! holds. A shadow never pays, notifies or emits.

use std::collections::BTreeMap;
use std::time::Duration;

use rust_decimal::Decimal;
use spm_core::topics;
use spm_proto::common::v1 as common;
use spm_proto::events::v1 as ev;
use spm_proto::incentive::v1 as pb;
use spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient;
use spm_testkit::events::{deal, rep};
use spm_testkit::kafka::read_topic;
use spm_testkit::oidc::{Idp, audience_for};
use spm_testkit::{TestEnv, authed, create_tenant, eventually, wait_key_known};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

use crate::incentive::plan;
use crate::people::{put_person, set_idp};
use crate::scoring::submit;

type Adm = IncentiveAdminServiceClient<Channel>;

fn email(who: &str) -> String {
    format!("{who}@example.com")
}

/// The version under test: 6% instead of 5% up to quota, a bigger bonus.
fn v2() -> pb::Plan {
    let mut p = plan();
    let c = p.commission.as_mut().expect("commission");
    c.tiers[0].rate = "0.06".into();
    p.attainment_bonuses[0].amount = "1500".into();
    p
}

fn err<T: std::fmt::Debug>(
    what: &str,
    code: Code,
    r: Result<tonic::Response<T>, Status>,
) -> Status {
    match r {
        Ok(r) => panic!("{what}: expected {code:?}, got {:?}", r.into_inner()),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {}", s.message());
            s
        }
    }
}

async fn move_to(
    adm: &mut Adm,
    cred: &str,
    version: u32,
    to: pb::PlanState,
    reason: &str,
) -> Result<tonic::Response<pb::TransitionPlanResponse>, Status> {
    adm.transition_plan(authed(
        pb::TransitionPlanRequest {
            plan_id: "ae".into(),
            version,
            to: to as i32,
            reason: reason.into(),
        },
        cred,
    ))
    .await
}

async fn approve(
    adm: &mut Adm,
    cred: &str,
    version: u32,
) -> Result<tonic::Response<pb::ApprovePlanResponse>, Status> {
    adm.approve_plan(authed(
        pb::ApprovePlanRequest {
            plan_id: "ae".into(),
            version,
            reason: "checked the comparison".into(),
        },
        cred,
    ))
    .await
}

async fn compare(adm: &Adm, cred: &str, version: u32, month: &str) -> pb::ComparePlanResponse {
    adm.clone()
        .compare_plan(authed(
            pb::ComparePlanRequest {
                plan_id: "ae".into(),
                version,
                period: Some(common::Period {
                    kind: common::PeriodKind::Month as i32,
                    key: month.into(),
                }),
                rep_id: String::new(),
            },
            cred,
        ))
        .await
        .expect("compare")
        .into_inner()
}

/// Net amounts per (rep, line key, status) of a ledger's rows for a month (the live
/// ledger's by the period they are about).
async fn net(
    pool: &sqlx::PgPool,
    sql: &str,
    month: &str,
) -> BTreeMap<(String, String, String), Decimal> {
    let rows: Vec<(String, String, String, Decimal)> = sqlx::query_as(sql)
        .bind(month)
        .fetch_all(pool)
        .await
        .expect("ledger");
    rows.into_iter()
        .filter(|r| !r.3.is_zero())
        .map(|(a, b, c, d)| ((a, b, c), d.normalize()))
        .collect()
}

const LIVE_NET: &str = "SELECT rep_id, line_key, status, sum(amount) FROM ledger
    WHERE period_kind = 'month' AND source_period_key = $1 GROUP BY 1, 2, 3";
const SHADOW_NET: &str = "SELECT rep_id, line_key, status, sum(amount) FROM shadow_ledger
    WHERE plan_id = 'ae' AND plan_version = 2 AND period_kind = 'month' AND period_key = $1 GROUP BY 1, 2, 3";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_version_is_approved_by_someone_else_and_pays_what_it_shadowed() {
    let idp = Idp::from_env();
    let env = TestEnv::new("lifecycle").await;
    let ingest = env.start("ingest").await;
    let incentive = env.start("incentive").await;
    let t = create_tenant(&env, &ingest, "acme").await;
    wait_key_known(&incentive, &t.admin_key).await;
    let aud = audience_for("acme");
    set_idp(&ingest, &t.admin_key, &idp.issuer, &aud)
        .await
        .expect("idp");
    for (who, role) in [
        ("eli", ev::PersonRole::CompAdmin),
        ("dee", ev::PersonRole::CompAdmin),
        ("eve", ev::PersonRole::CompAdmin),
        ("ana", ev::PersonRole::Rep),
    ] {
        put_person(&ingest, &t.admin_key, &email(who), role, "", true).await;
    }
    let mut adm = IncentiveAdminServiceClient::new(incentive.channel().await);
    let token = |who: &'static str| {
        let (idp, aud) = (&idp, aud.clone());
        async move { idp.token(&email(who), &aud).await }
    };
    let (cara, dan, eve, ana) = (
        token("eli").await,
        token("dee").await,
        token("eve").await,
        token("ana").await,
    );
    // People reach incentive over Kafka.
    eventually(Duration::from_secs(30), "cara known to incentive", || {
        let (mut adm, cara) = (adm.clone(), cara.clone());
        async move {
            adm.get_plan_policy(authed(pb::GetPlanPolicyRequest {}, &cara))
                .await
                .ok()
        }
    })
    .await;

    // v1 is live at once: the tenant requires no approvals yet.
    let v1 = adm
        .put_plan(authed(
            pb::PutPlanRequest {
                plan: Some(plan()),
                draft: false,
            },
            &t.admin_key,
        ))
        .await
        .expect("v1")
        .into_inner()
        .plan
        .unwrap();
    assert_eq!(v1.state, pb::PlanState::Live as i32);
    // Only an admin sets the four-eyes rule; out of range is a field error.
    err(
        "a comp admin lifting the rule",
        Code::PermissionDenied,
        adm.set_plan_policy(authed(
            pb::SetPlanPolicyRequest {
                approvals_required: 0,
            },
            &cara,
        ))
        .await,
    );
    let e = err(
        "six approvers",
        Code::InvalidArgument,
        adm.set_plan_policy(authed(
            pb::SetPlanPolicyRequest {
                approvals_required: 6,
            },
            &t.admin_key,
        ))
        .await,
    );
    assert_eq!(
        e.get_details_bad_request()
            .expect("details")
            .field_violations[0]
            .field,
        "approvals_required"
    );
    adm.set_plan_policy(authed(
        pb::SetPlanPolicyRequest {
            approvals_required: 1,
        },
        &t.admin_key,
    ))
    .await
    .expect("policy");

    let month = chrono::Utc::now().format("%Y-%m").to_string();
    submit(
        &ingest,
        &t.admin_key,
        vec![rep("ana", "", ""), rep("bo", "", "")],
    )
    .await;
    submit(
        &ingest,
        &t.admin_key,
        vec![
            deal("d1", "4000.00", &[("ana", "100")]),
            deal("d2", "3000.00", &[("bo", "100")]),
        ],
    )
    .await;

    // With a policy, a version goes in as a draft; an invalid one is refused in any state
    // with its fields, and nothing is stored.
    let e = err(
        "a live put under the policy",
        Code::FailedPrecondition,
        adm.put_plan(authed(
            pb::PutPlanRequest {
                plan: Some(v2()),
                draft: false,
            },
            &cara,
        ))
        .await,
    );
    assert!(e.message().contains("draft"), "{}", e.message());
    let mut bad = v2();
    bad.commission.as_mut().unwrap().tiers[1].rate = "eight".into();
    let e = err(
        "an invalid draft",
        Code::InvalidArgument,
        adm.put_plan(authed(
            pb::PutPlanRequest {
                plan: Some(bad),
                draft: true,
            },
            &cara,
        ))
        .await,
    );
    let fields: Vec<String> = e
        .get_details_bad_request()
        .expect("details")
        .field_violations
        .into_iter()
        .map(|f| f.field)
        .collect();
    assert!(
        fields.iter().any(|f| f == "plan.commission.tiers[1].rate"),
        "{fields:?}"
    );
    let put = adm
        .put_plan(authed(
            pb::PutPlanRequest {
                plan: Some(v2()),
                draft: true,
            },
            &cara,
        ))
        .await
        .expect("v2 draft")
        .into_inner()
        .plan
        .unwrap();
    assert_eq!((put.version, put.state), (2, pb::PlanState::Draft as i32));
    assert_eq!(put.created_by, email("eli"));

    // Not allowed: named by the current state. Reps configure nothing.
    for (to, why) in [
        (pb::PlanState::Live, "going live without approval"),
        (pb::PlanState::Draft, "draft to draft"),
    ] {
        let e = err(
            why,
            Code::FailedPrecondition,
            move_to(&mut adm, &cara, 2, to, "").await,
        );
        assert!(e.message().contains("is DRAFT"), "{why}: {}", e.message());
    }
    err(
        "a rep moving a plan",
        Code::PermissionDenied,
        move_to(&mut adm, &ana, 2, pb::PlanState::Shadow, "").await,
    );
    err(
        "an unknown version",
        Code::NotFound,
        move_to(&mut adm, &cara, 9, pb::PlanState::Shadow, "").await,
    );
    err(
        "a draft has no shadow ledger",
        Code::FailedPrecondition,
        adm.compare_plan(authed(
            pb::ComparePlanRequest {
                plan_id: "ae".into(),
                version: 2,
                period: Some(common::Period {
                    kind: common::PeriodKind::Month as i32,
                    key: month.clone(),
                }),
                rep_id: String::new(),
            },
            &cara,
        ))
        .await,
    );

    // Into shadow: it catches up on the open period, then follows the stream.
    eventually(Duration::from_secs(30), "both deals credited", || {
        let pool = env.pool("incentive");
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM credits WHERE kind = 'deal'")
                .fetch_one(&pool.await)
                .await
                .ok()?;
            (n == 2).then_some(())
        }
    })
    .await;
    let moved = move_to(
        &mut adm,
        &cara,
        2,
        pb::PlanState::Shadow,
        "try 6% on the first tier",
    )
    .await
    .expect("shadow")
    .into_inner();
    assert_eq!(moved.rep_periods_recomputed, 2);
    assert!(moved.shadow_postings > 0);
    assert_eq!(moved.postings, 0, "entering shadow posts nothing live");
    let c = compare(&adm, &cara, 2, &month).await;
    assert_eq!(c.state, pb::PlanState::Shadow as i32);
    // ana: 4000 × 5% = 200 live, × 6% = 240 in shadow (half at close, half on collection).
    let ana_c = c
        .reps
        .iter()
        .find(|r| r.rep_id == "ana")
        .expect("ana compared");
    assert_eq!(
        (ana_c.live_total.as_str(), ana_c.shadow_total.as_str()),
        ("200.00", "240.00")
    );
    assert_eq!(ana_c.difference, "40.00");
    assert_eq!(
        (c.live_total.as_str(), c.shadow_total.as_str()),
        ("350.00", "420.00")
    );

    // A deal that arrives now is paid by both, past quota (bonuses come at the close).
    submit(
        &ingest,
        &t.admin_key,
        vec![deal("d3", "9000.00", &[("ana", "100")])],
    )
    .await;
    let c = eventually(Duration::from_secs(30), "the shadow to follow d3", || {
        let (adm, cara, month) = (adm.clone(), cara.clone(), month.clone());
        async move {
            let c = compare(&adm, &cara, 2, &month).await;
            let ana = c.reps.iter().find(|r| r.rep_id == "ana")?;
            ana.lines
                .iter()
                .any(|l| l.deal_id == "d3" && l.shadow != "0.00")
                .then_some(c)
        }
    })
    .await;
    let ana_c = c.reps.iter().find(|r| r.rep_id == "ana").unwrap();
    // Live: 10000 × 5% + 3000 × 8% = 740; shadow: 10000 × 6% + 240 = 840. Line by line:
    // d3 straddles the quota.
    assert_eq!(
        (ana_c.live_total.as_str(), ana_c.shadow_total.as_str()),
        ("740.00", "840.00"),
        "{ana_c:?}"
    );
    let d3 = ana_c
        .lines
        .iter()
        .find(|l| l.deal_id == "d3")
        .expect("d3's line");
    // 6000 × 5% + 3000 × 8% = 540 live; 6000 × 6% + 240 = 600 in shadow.
    assert_eq!(
        (d3.live.as_str(), d3.shadow.as_str(), d3.difference.as_str()),
        ("540.00", "600.00", "60.00")
    );
    let pool = env.pool("incentive").await;
    let shadowed = net(&pool, SHADOW_NET, &month).await;
    assert!(shadowed.len() >= 3, "{shadowed:?}");

    // Maker-checker: propose, the proposer and API keys cannot approve, someone else does.
    move_to(&mut adm, &cara, 2, pb::PlanState::PendingApproval, "ready")
        .await
        .expect("propose");
    let e = err(
        "the proposer approving",
        Code::PermissionDenied,
        approve(&mut adm, &cara, 2).await,
    );
    assert!(e.message().contains("someone else"), "{}", e.message());
    err(
        "a key approving",
        Code::PermissionDenied,
        approve(&mut adm, &t.admin_key, 2).await,
    );
    err(
        "a rep approving",
        Code::PermissionDenied,
        approve(&mut adm, &ana, 2).await,
    );
    // Sending it back needs a reason; a new proposal starts with no approvals.
    err(
        "a rejection without a reason",
        Code::InvalidArgument,
        move_to(&mut adm, &dan, 2, pb::PlanState::Draft, "").await,
    );
    let live_before = net(&pool, LIVE_NET, &month).await;
    let ok = approve(&mut adm, &dan, 2)
        .await
        .expect("dan approves")
        .into_inner();
    assert!(ok.went_live);
    assert_eq!((ok.approvals, ok.approvals_required), (1, 1));
    assert_eq!(ok.plan.as_ref().unwrap().state, pb::PlanState::Live as i32);
    assert!(ok.postings > 0);

    // What the shadow held is what the live ledger now holds for the period, line for line
    // and status for status; the live ledger changed by adjustments only.
    let live_after = net(&pool, LIVE_NET, &month).await;
    assert_ne!(live_before, live_after);
    assert_eq!(
        live_after, shadowed,
        "live after approval vs the shadow ledger"
    );
    let e = err(
        "comparing a live version",
        Code::FailedPrecondition,
        adm.compare_plan(authed(
            pb::ComparePlanRequest {
                plan_id: "ae".into(),
                version: 2,
                period: Some(common::Period {
                    kind: common::PeriodKind::Month as i32,
                    key: month.clone(),
                }),
                rep_id: String::new(),
            },
            &cara,
        ))
        .await,
    );
    assert!(e.message().contains("is LIVE"), "{}", e.message());
    // LIVE goes only to RETIRED.
    let e = err(
        "live back to draft",
        Code::FailedPrecondition,
        move_to(&mut adm, &cara, 2, pb::PlanState::Draft, "oops").await,
    );
    assert!(e.message().contains("ae v2 is LIVE"), "{}", e.message());

    // Every transition is recorded: who, when, why.
    let got = adm
        .get_plan(authed(
            pb::GetPlanRequest {
                plan_id: "ae".into(),
                version: 2,
            },
            &dan,
        ))
        .await
        .expect("get plan")
        .into_inner();
    let trail: Vec<(i32, String, String)> = got
        .transitions
        .iter()
        .map(|t| (t.to, t.actor.clone(), t.reason.clone()))
        .collect();
    assert_eq!(
        trail,
        vec![
            (pb::PlanState::Draft as i32, email("eli"), "put".into()),
            (
                pb::PlanState::Shadow as i32,
                email("eli"),
                "try 6% on the first tier".into()
            ),
            (
                pb::PlanState::PendingApproval as i32,
                email("eli"),
                "ready".into()
            ),
            (
                pb::PlanState::Live as i32,
                email("dee"),
                format!("approved by {}", email("dee"))
            ),
        ]
    );
    assert!(got.transitions.iter().all(|t| t.at.is_some()));

    // Two approvers at once, with two required: both are recorded, exactly one takes it
    // live. With one required, the second finds it LIVE.
    adm.set_plan_policy(authed(
        pb::SetPlanPolicyRequest {
            approvals_required: 2,
        },
        &t.admin_key,
    ))
    .await
    .expect("policy 2");
    for (required, version) in [(2u32, 3u32), (1, 4)] {
        if required == 1 {
            adm.set_plan_policy(authed(
                pb::SetPlanPolicyRequest {
                    approvals_required: 1,
                },
                &t.admin_key,
            ))
            .await
            .expect("policy 1");
        }
        let mut p = v2();
        p.commission.as_mut().unwrap().tiers[0].rate = format!("0.0{}", version + 4);
        adm.put_plan(authed(
            pb::PutPlanRequest {
                plan: Some(p),
                draft: true,
            },
            &cara,
        ))
        .await
        .expect("draft");
        move_to(&mut adm, &cara, version, pb::PlanState::PendingApproval, "")
            .await
            .expect("propose");
        let (mut a1, mut a2) = (adm.clone(), adm.clone());
        let (a, b) = tokio::join!(
            approve(&mut a1, &dan, version),
            approve(&mut a2, &eve, version)
        );
        let results = [a, b];
        let went: Vec<bool> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|r| r.get_ref().went_live))
            .collect();
        if required == 2 {
            assert_eq!(went.len(), 2, "both approvals recorded: {results:?}");
        } else {
            let refused: Vec<&Status> = results.iter().filter_map(|r| r.as_ref().err()).collect();
            assert_eq!(refused.len(), 1, "{results:?}");
            assert_eq!(refused[0].code(), Code::FailedPrecondition);
            assert!(
                refused[0].message().contains("is LIVE"),
                "{}",
                refused[0].message()
            );
        }
        assert_eq!(went.iter().filter(|w| **w).count(), 1, "{results:?}");
        let got = adm
            .get_plan(authed(
                pb::GetPlanRequest {
                    plan_id: "ae".into(),
                    version,
                },
                &dan,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            got.transitions
                .iter()
                .filter(|t| t.to == pb::PlanState::Live as i32)
                .count(),
            1
        );
        // Approving twice is refused too.
        err(
            "approving again",
            Code::FailedPrecondition,
            approve(&mut adm, &dan, version).await,
        );
    }

    // Retiring needs a reason; a retired version is final.
    err(
        "retiring without a reason",
        Code::InvalidArgument,
        move_to(&mut adm, &cara, 1, pb::PlanState::Retired, "").await,
    );
    move_to(&mut adm, &cara, 1, pb::PlanState::Retired, "replaced by v2")
        .await
        .expect("retire v1");
    let e = err(
        "out of retirement",
        Code::FailedPrecondition,
        move_to(&mut adm, &cara, 1, pb::PlanState::Live, "").await,
    );
    assert!(e.message().contains("RETIRED"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_plan_never_pays_notifies_or_emits() {
    let env = TestEnv::new("lifecycle-quiet").await;
    let ingest = env.start("ingest").await;
    let incentive = env.start("incentive").await;
    let notification = env.start("notification").await;
    let t = create_tenant(&env, &ingest, "quiet").await;
    wait_key_known(&incentive, &t.admin_key).await;
    wait_key_known(&notification, &t.admin_key).await;
    let mut adm = IncentiveAdminServiceClient::new(incentive.channel().await);
    // The tenant's only plan is in shadow.
    adm.put_plan(authed(
        pb::PutPlanRequest {
            plan: Some(plan()),
            draft: true,
        },
        &t.admin_key,
    ))
    .await
    .expect("draft");
    move_to(&mut adm, &t.admin_key, 1, pb::PlanState::Shadow, "trial")
        .await
        .expect("shadow");
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    submit(&ingest, &t.admin_key, vec![rep("ana", "", "")]).await;
    submit(
        &ingest,
        &t.admin_key,
        vec![
            deal("q1", "12000.00", &[("ana", "100")]),
            deal("q2", "1000.00", &[("ana", "100")]),
        ],
    )
    .await;
    // The deals were applied: the shadow pays them.
    let c = eventually(
        Duration::from_secs(30),
        "the shadow to pay both deals",
        || {
            let (adm, key, month) = (adm.clone(), t.admin_key.clone(), month.clone());
            async move {
                let c = adm
                    .clone()
                    .compare_plan(authed(
                        pb::ComparePlanRequest {
                            plan_id: "ae".into(),
                            version: 1,
                            period: Some(common::Period {
                                kind: common::PeriodKind::Month as i32,
                                key: month,
                            }),
                            rep_id: "ana".into(),
                        },
                        &key,
                    ))
                    .await
                    .ok()?
                    .into_inner();
                let ana = c.reps.first()?;
                (ana.lines.iter().filter(|l| l.kind == "commission").count() == 2).then_some(c)
            }
        },
    )
    .await;
    // 10000 × 5% + 3000 × 8%.
    assert_eq!(
        (c.live_total.as_str(), c.shadow_total.as_str()),
        ("0.00", "740.00")
    );
    // The same from the command line; approvals are people's, not keys'.
    let spm = spm_testkit::process::binary("spm");
    let cli = |args: &[&str]| {
        let mut c = std::process::Command::new(&spm);
        c.args(args)
            .env("SPM_API_KEY", &t.admin_key)
            .env("SPM_INCENTIVE_URL", format!("http://{}", incentive.grpc));
        c.output().expect("spm")
    };
    let out = cli(&["plan", "compare", "ae", "--period", &month, "--lines"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("shadow 740.00"), "{text}");
    assert!(text.contains("commission:q1"), "{text}");
    let out = cli(&["plan", "show", "ae"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SHADOW") && text.contains("trial"), "{text}");
    let out = cli(&["plan", "approve", "ae", "1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not by an API key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing live: no posting, nothing payable, no earnings event, no notification.
    let pool = env.pool("incentive").await;
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(live, 0);
    let s = spm_proto::incentive::v1::incentive_service_client::IncentiveServiceClient::new(
        incentive.channel().await,
    )
    .get_statement(authed(
        pb::GetStatementRequest {
            as_of: None,
            with_explanations: false,
            rep_id: "ana".into(),
            period: None,
        },
        &t.admin_key,
    ))
    .await
    .expect("statement")
    .into_inner()
    .statement
    .unwrap_or_default();
    assert_eq!(s.total, "0.00", "{s:?}");
    assert!(s.lines.is_empty(), "{s:?}");
    let earnings = read_topic(&env, topics::EARNINGS);
    assert!(earnings.is_empty(), "{} earnings events", earnings.len());
    let npool = env.pool("notification").await;
    let notes: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(&npool)
        .await
        .unwrap();
    assert_eq!(notes, 0);
}
