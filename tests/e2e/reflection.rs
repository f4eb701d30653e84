//! Discovery through server reflection from a client in another language (Python grpcio
//! with grpcio-reflection, which asks `grpc.reflection.v1alpha`): every port lists exactly
//! the services it serves, and a method found that way can be called.

use std::collections::BTreeSet;

use serde_json::Value;
use spm_testkit::{Service, TestEnv, create_tenant, repo_root, wait_key_known};

const INFRA: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

async fn reflect(svc: &Service, key: &str, call: Option<(&str, &str)>) -> Value {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(repo_root().join("tests/e2e/reflect.py"))
        .arg(svc.grpc.to_string())
        .arg(key);
    if let Some((method, body)) = call {
        cmd.arg(method).arg(body);
    }
    let out = cmd.output().await.expect("python3 runs");
    assert!(
        out.status.success(),
        "reflect.py failed (grpcio and grpcio-reflection come from `deploy/local/stack install`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn listed(v: &Value) -> BTreeSet<String> {
    v["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn expect(own: &[&str]) -> BTreeSet<String> {
    own.iter()
        .chain(INFRA.iter())
        .map(|s| (*s).to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_port_lists_its_own_services_over_v1alpha_and_serves_what_it_lists() {
    let env = TestEnv::new("reflection").await;
    let ingest = env.start("ingest").await;
    let scoring = env.start("scoring").await;
    let incentive = env.start("incentive").await;
    let notification = env.start("notification").await;
    let t = create_tenant(&env, &ingest, "acme").await;
    wait_key_known(&ingest, &t.admin_key).await;
    wait_key_known(&scoring, &t.admin_key).await;
    let k = &t.admin_key;

    for (svc, own) in [
        (
            &ingest,
            &[
                "spm.ingest.v1.IngestService",
                "spm.ingest.v1.IngestAdminService",
                "spm.audit.v1.AuditService",
            ][..],
        ),
        (
            &scoring,
            &[
                "spm.scoring.v1.ScoringService",
                "spm.scoring.v1.ScoringAdminService",
                "spm.audit.v1.AuditService",
            ][..],
        ),
        (
            &incentive,
            &[
                "spm.incentive.v1.IncentiveService",
                "spm.incentive.v1.IncentiveAdminService",
                "spm.audit.v1.AuditService",
            ][..],
        ),
        (
            &notification,
            &[
                "spm.notification.v1.NotificationService",
                "spm.notification.v1.NotificationAdminService",
                "spm.audit.v1.AuditService",
            ][..],
        ),
    ] {
        assert_eq!(
            listed(&reflect(svc, k, None).await),
            expect(own),
            "{}",
            svc.name
        );
    }

    // A method learnt by reflection, called with JSON: a write and a read.
    let submitted = reflect(
        &ingest,
        k,
        Some((
            "spm.ingest.v1.IngestService/SubmitEvent",
            r#"{"event": {"eventId": "6f1c2b9e-3d4a-4e5f-8a7b-1c2d3e4f5a6b", "occurredAt": "2026-01-05T10:00:00Z",
                "source": "python", "repUpserted": {"repId": "py-1", "displayName": "Py One", "active": true}}}"#,
        )),
    )
    .await;
    assert_eq!(
        submitted["response"]["ack"]["status"], "ACK_STATUS_ACCEPTED",
        "{submitted}"
    );
    let tenant = reflect(
        &ingest,
        k,
        Some(("spm.ingest.v1.IngestAdminService/GetTenant", "{}")),
    )
    .await;
    assert_eq!(tenant["response"]["tenant"]["tenantId"], "acme", "{tenant}");
    // Bad input over the same path is the same clear error.
    let bad = reflect(
        &ingest,
        k,
        Some((
            "spm.ingest.v1.IngestService/SubmitEvent",
            r#"{"event": {"eventId": "nope"}}"#,
        )),
    )
    .await;
    assert_eq!(bad["error"]["code"], "INVALID_ARGUMENT", "{bad}");
}
