//! The portal end to end: a real browser (headless Chromium driven by playwright-core from
//! tests/browser/portal.mjs) signs people in through the stack's OpenID provider and reads
//! the pages, which call the real services with the person's token.

use std::time::Duration;

use spm_proto::events::v1 as ev;
use spm_proto::incentive::v1 as pb;
use spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient;
use spm_proto::incentive::v1::incentive_service_client::IncentiveServiceClient;
use spm_testkit::events::{deal, rep, team};
use spm_testkit::oidc::{Idp, audience_for};
use spm_testkit::process::{binary, free_port};
use spm_testkit::{TestEnv, authed, create_tenant, eventually, repo_root, wait_key_known};

use crate::incentive::plan;
use crate::people::{put_person, set_idp};
use crate::scoring::submit;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_use_the_portal_in_a_real_browser() {
    let idp = Idp::from_env();
    let env = TestEnv::new("portal").await;
    let ingest = env.start("ingest").await;
    let incentive = env.start("incentive").await;
    let scoring = env.start("scoring").await;
    let notification = env.start("notification").await;
    let t = create_tenant(&env, &ingest, "acme").await;
    for s in [&ingest, &incentive, &scoring, &notification] {
        wait_key_known(s, &t.admin_key).await;
    }
    set_idp(&ingest, &t.admin_key, &idp.issuer, &audience_for("acme"))
        .await
        .expect("idp");
    submit(
        &ingest,
        &t.admin_key,
        vec![
            team("east", "", "dee"),
            team("west", "", "eli"),
            rep("dee", "", ""),
            rep("eli", "", ""),
            rep("ana", "east", "dee"),
            rep("bo", "east", "dee"),
            rep("cy", "west", "eli"),
        ],
    )
    .await;
    IncentiveAdminServiceClient::new(incentive.channel().await)
        .put_plan(authed(
            pb::PutPlanRequest {
                plan: Some(plan()),
                draft: false,
            },
            &t.admin_key,
        ))
        .await
        .expect("plan");
    submit(
        &ingest,
        &t.admin_key,
        vec![
            deal("d-ana", "8000.00", &[("ana", "100")]),
            deal("d-bo", "3000.00", &[("bo", "100")]),
            deal("d-cy", "5000.00", &[("cy", "100")]),
        ],
    )
    .await;
    put_person(
        &ingest,
        &t.admin_key,
        "eve@example.com",
        ev::PersonRole::CompAdmin,
        "",
        true,
    )
    .await;
    let inc = IncentiveServiceClient::new(incentive.channel().await);
    for r in ["ana", "bo", "cy"] {
        eventually(Duration::from_secs(30), "deals on statements", || {
            let (mut inc, key) = (inc.clone(), t.admin_key.clone());
            async move {
                let s = inc
                    .get_statement(authed(
                        pb::GetStatementRequest {
                            as_of: None,
                            rep_id: r.into(),
                            period: None,
                            with_explanations: false,
                        },
                        &key,
                    ))
                    .await
                    .ok()?
                    .into_inner()
                    .statement?;
                (!s.lines.is_empty()).then_some(())
            }
        })
        .await;
    }

    let start_portal = |session_secs: u32| {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let log = std::fs::File::create(env.log_dir.join(format!("portal-{port}.log"))).unwrap();
        let child = tokio::process::Command::new(binary("spm-portal"))
            .env("SPM_PORTAL_ADDR", format!("127.0.0.1:{port}"))
            .env("SPM_PORTAL_PUBLIC_URL", &url)
            .env("SPM_INGEST_URL", format!("http://{}", ingest.grpc))
            .env("SPM_SCORING_URL", format!("http://{}", scoring.grpc))
            .env("SPM_INCENTIVE_URL", format!("http://{}", incentive.grpc))
            .env(
                "SPM_NOTIFICATION_URL",
                format!("http://{}", notification.grpc),
            )
            .env("SPM_PORTAL_SESSION_SECS", session_secs.to_string())
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spm-portal");
        (url, child)
    };
    let (url, mut portal) = start_portal(3600);
    let (short_url, _short) = start_portal(3);
    for u in [url.clone(), short_url.clone()] {
        eventually(Duration::from_secs(20), "the portal to listen", || {
            let u = u.clone();
            async move {
                spm_testkit::http()
                    .get(&u)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
    }

    let shots = repo_root().join("target/screenshots/portal");
    let mut node = tokio::process::Command::new("node")
        .arg(repo_root().join("tests/browser/portal.mjs"))
        .env("PORTAL", &url)
        .env("PORTAL_SHORT", &short_url)
        .env("TENANT", "acme")
        .env("OUT", &shots)
        .env("NODE_MODULES", repo_root().join(".local/node_modules"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    // The script says READY with ana's page open; then a deal of hers arrives.
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(node.stdout.take().unwrap()));
    let mut stdout = String::new();
    while let Some(l) = lines.next_line().await.unwrap() {
        if l == "READY" {
            submit(
                &ingest,
                &t.admin_key,
                vec![deal("d-ana-live", "2000.00", &[("ana", "100")])],
            )
            .await;
        }
        stdout.push_str(&l);
        stdout.push('\n');
    }
    let status = tokio::time::timeout(Duration::from_secs(120), node.wait())
        .await
        .expect("the browser checks end")
        .unwrap();
    println!("{stdout}");
    assert!(status.success(), "the browser checks failed:\n{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap();
    assert!(report["checks"].as_array().unwrap().len() >= 60, "{report}");
    for page in [
        "start",
        "rep-home",
        "line",
        "manager-report",
        "no-rep",
        "rep-home-zh",
        "whatif",
        "team",
        "disputes",
        "plans",
        "simulation",
        "plan-error",
        "periods",
    ] {
        for size in ["desktop", "375"] {
            let f = shots.join(format!("{page}-{size}.png"));
            assert!(
                std::fs::metadata(&f)
                    .map(|m| m.len() > 1000)
                    .unwrap_or(false),
                "{} saved",
                f.display()
            );
        }
    }
    // The dispute the browser opened is on ana's line, opened by her login and accepted by
    // her manager with the adjustment he typed.
    let disputes = inc
        .clone()
        .list_disputes(authed(
            pb::ListDisputesRequest {
                rep_id: "ana".into(),
                open_only: false,
            },
            &t.admin_key,
        ))
        .await
        .unwrap()
        .into_inner()
        .disputes;
    assert_eq!(
        disputes.len(),
        1,
        "one dispute, none from the forged forms: {disputes:?}"
    );
    assert_eq!(disputes[0].opened_by, "ana@example.com");
    assert_eq!(disputes[0].status, pb::DisputeStatus::Accepted as i32);
    assert_eq!(disputes[0].resolved_by, "dee@example.com");
    assert_eq!(
        disputes[0].adjustment.parse::<rust_decimal::Decimal>().ok(),
        Some(rust_decimal_macros::dec!(50))
    );
    // The plan: the bad version left nothing, the good one is version 2 with the new rate.
    let plans = IncentiveAdminServiceClient::new(incentive.channel().await)
        .list_plans(authed(pb::ListPlansRequest { history: true }, &t.admin_key))
        .await
        .unwrap()
        .into_inner()
        .plans;
    assert_eq!(plans.len(), 3, "{plans:?}");
    // Version 3 was saved as a draft, run in shadow and proposed from the plans page; its
    // proposer's own approval was refused.
    assert_eq!(plans[2].state, pb::PlanState::PendingApproval as i32);
    assert_eq!(plans[2].created_by, "eve@example.com");
    assert!(plans[2].approvals.is_empty(), "{:?}", plans[2].approvals);
    assert!(plans[2].shadow_since.is_some());
    let v2 = &plans[1];
    assert_eq!((v2.version, v2.name.as_str()), (2, "AE (2027 rates)"));
    assert_eq!(v2.commission.as_ref().unwrap().tiers[0].rate, "0.06");
    // What the form does not show is kept from version 1.
    assert_eq!(v2.gates, plans[0].gates);
    assert_eq!(v2.payout, plans[0].payout);
    portal.kill().await.ok();
}
