//! Audit-grade history: the hash-chained ledger verifies after a stream with a kill and late
//! events, names each tampering made behind SPM's back (an UPDATE, a DELETE, an INSERT, on a
//! posting and on an audit event), and its export checks out in Python without SPM;
//! statements asked `as_of` a moment answer exactly what they answered then; every admin
//! action lands in its service's audit trail with who, what, before and after.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{Duration as Days, Utc};
use spm_core::period::{Calendar, PeriodKind};
use spm_proto::audit::v1 as apb;
use spm_proto::audit::v1::audit_service_client::AuditServiceClient;
use spm_proto::common::v1 as common;
use spm_proto::incentive::v1 as pb;
use spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient;
use spm_proto::incentive::v1::incentive_service_client::IncentiveServiceClient;
use spm_proto::ingest::v1 as ingpb;
use spm_proto::ingest::v1::ingest_admin_service_client::IngestAdminServiceClient;
use spm_testkit::events::{deal, payment, rep};
use spm_testkit::{Service, TestEnv, authed, create_tenant, eventually, wait_key_known};
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::incentive::plan;
use crate::scoring::submit;

type Adm = IncentiveAdminServiceClient<tonic::transport::Channel>;

fn month(key: &str) -> common::Period {
    common::Period {
        kind: common::PeriodKind::Month as i32,
        key: key.into(),
    }
}

async fn verify(adm: &Adm, key: &str, period: Option<common::Period>) -> pb::VerifyLedgerResponse {
    adm.clone()
        .verify_ledger(authed(pb::VerifyLedgerRequest { period }, key))
        .await
        .expect("verify")
        .into_inner()
}

/// Exports a period and runs the Python verifier on it: (exit ok, its output).
async fn python_check(adm: &Adm, key: &str, period: &str, name: &str) -> (bool, String) {
    let mut s = adm
        .clone()
        .export_ledger(authed(
            pb::ExportLedgerRequest {
                period: Some(month(period)),
            },
            key,
        ))
        .await
        .expect("export")
        .into_inner();
    let mut text = String::new();
    while let Some(c) = s.message().await.expect("export stream") {
        for l in c.lines {
            text.push_str(&l);
            text.push('\n');
        }
    }
    let dir = spm_testkit::repo_root().join("target/audit-exports");
    std::fs::create_dir_all(&dir).expect("export dir");
    let path = dir.join(format!("{name}-{}.jsonl", std::process::id()));
    std::fs::write(&path, &text).expect("write export");
    let out = tokio::process::Command::new("python3")
        .arg(spm_testkit::repo_root().join("tests/e2e/verify_export.py"))
        .arg(&path)
        .output()
        .await
        .expect("python3 runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

/// `spm audit verify` of ingest's and incentive's trails and the ledger: (exit code, stdout).
async fn spm_verify(ingest: &Service, incentive: &Service, key: &str) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(spm_testkit::process::binary("spm"))
        .args([
            "audit",
            "verify",
            "--service",
            "ingest",
            "--service",
            "incentive",
            "--key",
            key,
        ])
        .env("SPM_INGEST_URL", format!("http://{}", ingest.grpc))
        .env("SPM_INCENTIVE_URL", format!("http://{}", incentive.grpc))
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("spm runs");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs SQL as the attacker: the schema owner, with the append-only triggers off for the
/// statement.
async fn tamper(pool: &sqlx::PgPool, table: &str, sql: &str) {
    let mut tx = pool.begin().await.expect("tx");
    for s in [
        format!("ALTER TABLE {table} DISABLE TRIGGER USER"),
        sql.to_owned(),
        format!("ALTER TABLE {table} ENABLE TRIGGER USER"),
    ] {
        sqlx::query(&s)
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    tx.commit().await.expect("commit");
}

async fn wait_deals(pool: &sqlx::PgPool, n: i64) {
    eventually(Duration::from_secs(60), "every deal credited", || {
        let pool = pool.clone();
        async move {
            let got: i64 = sqlx::query_scalar(
                "SELECT count(DISTINCT deal_id) FROM credits WHERE kind = 'deal'",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (got >= n).then_some(())
        }
    })
    .await;
}

/// Waits until the consumer has nothing left: the ledger stops growing.
async fn settled(pool: &sqlx::PgPool) {
    let mut last = -1i64;
    loop {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
            .fetch_one(pool)
            .await
            .expect("count");
        if n == last {
            return;
        }
        last = n;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_verifies_and_names_every_tampering() {
    let env = TestEnv::new("audit-ledger").await;
    let ingest = env.start("ingest").await;
    let mut incentive = env.start("incentive").await;
    let t = create_tenant(&env, &ingest, "acme").await;
    let key = t.admin_key.clone();
    wait_key_known(&incentive, &key).await;
    let adm = IncentiveAdminServiceClient::new(incentive.channel().await);
    adm.clone()
        .put_plan(authed(
            pb::PutPlanRequest {
                plan: Some(plan()),
                draft: false,
            },
            &key,
        ))
        .await
        .unwrap();
    let cal = Calendar::default();
    let this = cal.period(PeriodKind::Month, Utc::now());
    let last = cal.period(PeriodKind::Month, this.start - Days::seconds(1));
    let reps: Vec<String> = (1..=6).map(|i| format!("r{i}")).collect();
    submit(&ingest, &key, reps.iter().map(|r| rep(r, "", "")).collect()).await;
    // A long stream over two months, with payments, and incentive killed in the middle.
    let mut n = 0i64;
    for wave in 0..8 {
        let mut batch = Vec::new();
        for i in 0..30 {
            let id = format!("d-{wave}-{i}");
            let r = &reps[(wave * 30 + i) % reps.len()];
            let mut d = deal(&id, &format!("{}.00", 700 + 37 * i), &[(r.as_str(), "100")]);
            let base = if wave < 4 { last.start } else { this.start };
            let at = base + Days::minutes(1 + i64::try_from(i).unwrap());
            d.occurred_at = Some(spm_proto::ext::timestamp(
                at.min(Utc::now() - Days::minutes(1)),
            ));
            batch.push(d);
            if i.is_multiple_of(5) {
                batch.push(payment(&format!("p-{id}"), &id, "300.00"));
            }
            n += 1;
        }
        submit(&ingest, &key, batch).await;
        if wave == 3 {
            incentive.kill9().await;
            // Postings made by a version before chaining: chained at the next start.
            let pool = env.pool("incentive").await;
            for i in 0..3 {
                sqlx::query(
                    "INSERT INTO ledger (posting_id, tenant_id, rep_id, period_kind, period_key, source_period_key, line_key,
                                         line_id, kind, status, amount, currency, summary, explanation, posted_at)
                     VALUES (gen_random_uuid(), $1, 'legacy', 'month', $2, $2, $3, gen_random_uuid(), 'spiff', 'payable',
                             $4, 'EUR', 'made before chains', '{\"why\": \"legacy\", \"n\": 1.50}', now() - interval '1 day')",
                )
                .bind(&t.id)
                .bind(&last.key)
                .bind(format!("spiff:legacy-{i}"))
                .bind(rust_decimal::Decimal::new(1250 + i64::from(i), 2))
                .execute(&pool)
                .await
                .unwrap();
            }
            incentive.restart().await;
            let chained: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM ledger WHERE rep_id = 'legacy' AND hash IS NOT NULL",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(chained, 3, "the legacy postings were chained at start");
        }
    }
    let pool = env.pool("incentive").await;
    wait_deals(&pool, n).await;
    settled(&pool).await;
    let adm = IncentiveAdminServiceClient::new(incentive.channel().await);
    adm.clone()
        .close_period(authed(
            pb::ClosePeriodRequest {
                period: Some(month(&last.key)),
            },
            &key,
        ))
        .await
        .unwrap();
    // Late deals of the closed month: adjustments in this one.
    let late: Vec<_> = (0..10)
        .map(|i| {
            let mut d = deal(
                &format!("late-{i}"),
                "900.00",
                &[(reps[i % 6].as_str(), "100")],
            );
            d.occurred_at = Some(spm_proto::ext::timestamp(last.start + Days::days(20)));
            d
        })
        .collect();
    submit(&ingest, &key, late).await;
    wait_deals(&pool, n + 10).await;
    settled(&pool).await;
    adm.clone()
        .mark_period_paid(authed(
            pb::MarkPeriodPaidRequest {
                period: Some(month(&last.key)),
            },
            &key,
        ))
        .await
        .unwrap();

    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(&pool)
        .await
        .unwrap();
    let chains: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_chains")
        .fetch_one(&pool)
        .await
        .unwrap();
    let v = verify(&adm, &key, None).await;
    assert!(v.ok, "an untouched ledger verifies: {:?}", v.breaks);
    assert_eq!(
        (v.postings, v.chains, v.seals),
        (
            u64::try_from(all).unwrap(),
            u64::try_from(chains).unwrap(),
            2
        )
    );
    assert!(all > 300, "a long stream: {all} postings");
    let (code, out) = spm_verify(&ingest, &incentive, &key).await;
    assert!(
        code == Some(0) && out.contains("intact") && !out.contains("BROKEN"),
        "{code:?} {out}"
    );
    let (ok, out) = python_check(&adm, &key, &last.key, "clean").await;
    assert!(ok && out.contains("OK") && out.contains("2 seals"), "{out}");
    let (ok, out) = python_check(&adm, &key, &this.key, "clean-open").await;
    assert!(ok, "an open period's export checks too: {out}");

    // The attacker's targets: a chain of the sealed month with a few postings.
    let (rep_id, len): (String, i64) = sqlx::query_as(
        "SELECT rep_id, length FROM ledger_chains WHERE period_key = $1 AND length >= 4 ORDER BY rep_id LIMIT 1",
    )
    .bind(&last.key)
    .fetch_one(&pool)
    .await
    .unwrap();
    let at = |seq: i64| {
        let pool = pool.clone();
        let rep_id = rep_id.clone();
        let key = last.key.clone();
        async move {
            sqlx::query_scalar::<_, uuid::Uuid>(
                "SELECT posting_id FROM ledger WHERE rep_id = $1 AND period_key = $2 AND chain_seq = $3",
            )
            .bind(rep_id)
            .bind(key)
            .bind(seq)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let broken_at = |v: &pb::VerifyLedgerResponse| {
        v.breaks
            .iter()
            .map(|b| (b.chain.clone(), b.seq, b.id.clone()))
            .collect::<Vec<_>>()
    };
    let chain = format!("{rep_id}/month/{}", last.key);

    // 1. UPDATE: an amount raised by a cent.
    let p2 = at(2).await;
    tamper(
        &pool,
        "ledger",
        &format!("UPDATE ledger SET amount = amount + 0.01 WHERE posting_id = '{p2}'"),
    )
    .await;
    let v = verify(&adm, &key, None).await;
    assert!(!v.ok);
    let b = broken_at(&v);
    assert_eq!(b[0], (chain.clone(), 2, p2.to_string()), "{:?}", v.breaks);
    assert!(
        v.breaks[0].problem.contains("content does not match"),
        "{:?}",
        v.breaks[0]
    );
    assert!(
        v.breaks
            .iter()
            .any(|b| b.chain == "seals" && b.problem.contains("does not verify")),
        "the seals no longer match the chain either: {:?}",
        v.breaks
    );
    // `spm audit verify` says the same, and fails.
    let (code, out) = spm_verify(&ingest, &incentive, &key).await;
    assert!(
        code == Some(1) && out.contains(&p2.to_string()) && out.contains("BROKEN"),
        "{code:?} {out}"
    );
    let (ok, out) = python_check(&adm, &key, &last.key, "updated").await;
    assert!(
        !ok && out.contains(&p2.to_string()) && out.contains("changed"),
        "{out}"
    );
    tamper(
        &pool,
        "ledger",
        &format!("UPDATE ledger SET amount = amount - 0.01 WHERE posting_id = '{p2}'"),
    )
    .await;
    assert!(
        verify(&adm, &key, None).await.ok,
        "restored exactly, it verifies again"
    );

    // 2. DELETE: a posting in the middle of the chain; named at the next one.
    let p3 = at(3).await;
    sqlx::query("CREATE TABLE stolen AS SELECT * FROM ledger WHERE posting_id = $1")
        .bind(p3)
        .execute(&pool)
        .await
        .unwrap();
    tamper(
        &pool,
        "ledger",
        &format!("DELETE FROM ledger WHERE posting_id = '{p3}'"),
    )
    .await;
    let v = verify(&adm, &key, Some(month(&last.key))).await;
    let p4 = at(4).await;
    assert_eq!(
        broken_at(&v)[0],
        (chain.clone(), 4, p4.to_string()),
        "{:?}",
        v.breaks
    );
    assert!(
        v.breaks[0].problem.contains("#3 before it is missing"),
        "{:?}",
        v.breaks[0]
    );
    let (ok, out) = python_check(&adm, &key, &last.key, "deleted").await;
    assert!(
        !ok && out.contains(&format!("{rep_id} #4")) && out.contains("missing"),
        "{out}"
    );
    tamper(&pool, "ledger", "INSERT INTO ledger SELECT * FROM stolen").await;
    sqlx::query("DROP TABLE stolen")
        .execute(&pool)
        .await
        .unwrap();
    assert!(verify(&adm, &key, None).await.ok);

    // 3. INSERT: a forged posting appended to the chain, linked to its real last hash.
    let forged = uuid::Uuid::new_v4();
    tamper(
        &pool,
        "ledger",
        &format!(
            "INSERT INTO ledger (posting_id, tenant_id, rep_id, period_kind, period_key, source_period_key, line_key, line_id,
                                 kind, status, amount, currency, summary, explanation, chain_seq, prev_hash, hash)
             SELECT '{forged}', tenant_id, rep_id, period_kind, period_key, source_period_key, 'bonus:forged', gen_random_uuid(),
                    'bonus', 'payable', 5000, currency, 'a bonus nobody granted', '{{}}', chain_seq + 1, hash, sha256(hash)
               FROM ledger WHERE rep_id = '{rep_id}' AND period_key = '{}' AND chain_seq = {len}",
            last.key
        ),
    )
    .await;
    let v = verify(&adm, &key, None).await;
    assert_eq!(
        broken_at(&v)[0],
        (chain.clone(), len + 1, forged.to_string()),
        "{:?}",
        v.breaks
    );
    let (ok, out) = python_check(&adm, &key, &last.key, "inserted").await;
    assert!(!ok && out.contains(&forged.to_string()), "{out}");
    tamper(
        &pool,
        "ledger",
        &format!("DELETE FROM ledger WHERE posting_id = '{forged}'"),
    )
    .await;
    assert!(verify(&adm, &key, None).await.ok);
    // The last posting deleted: only the head and the seal can tell.
    let last_id = at(len).await;
    sqlx::query("CREATE TABLE stolen AS SELECT * FROM ledger WHERE posting_id = $1")
        .bind(last_id)
        .execute(&pool)
        .await
        .unwrap();
    tamper(
        &pool,
        "ledger",
        &format!("DELETE FROM ledger WHERE posting_id = '{last_id}'"),
    )
    .await;
    let v = verify(&adm, &key, None).await;
    assert!(
        v.breaks
            .iter()
            .any(|b| b.chain == chain && b.seq == 0 && b.problem.contains("missing")),
        "{:?}",
        v.breaks
    );
    tamper(&pool, "ledger", "INSERT INTO ledger SELECT * FROM stolen").await;
    sqlx::query("DROP TABLE stolen")
        .execute(&pool)
        .await
        .unwrap();
    assert!(verify(&adm, &key, None).await.ok);

    // The audit trail: plan, close and pay were recorded; the same three tamperings.
    let mut audit = AuditServiceClient::new(incentive.channel().await);
    let check = |audit: &mut AuditServiceClient<tonic::transport::Channel>| {
        let mut audit = audit.clone();
        let key = key.clone();
        async move {
            audit
                .verify_audit_log(authed(apb::VerifyAuditLogRequest {}, &key))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let a = check(&mut audit).await;
    assert!(a.ok && a.events == 3, "{a:?}");
    let first: uuid::Uuid = sqlx::query_scalar("SELECT event_id FROM audit_log WHERE seq = 2")
        .fetch_one(&pool)
        .await
        .unwrap();
    tamper(
        &pool,
        "audit_log",
        "UPDATE audit_log SET actor = 'person:someone-else' WHERE seq = 2",
    )
    .await;
    let a = check(&mut audit).await;
    assert!(
        !a.ok && a.breaks[0].seq == 2 && a.breaks[0].event_id == first.to_string(),
        "{a:?}"
    );
    tamper(
        &pool,
        "audit_log",
        "UPDATE audit_log SET actor = (SELECT actor FROM audit_log WHERE seq = 1) WHERE seq = 2",
    )
    .await;
    assert!(check(&mut audit).await.ok);
    sqlx::query("CREATE TABLE stolen AS SELECT * FROM audit_log WHERE seq = 2")
        .execute(&pool)
        .await
        .unwrap();
    tamper(&pool, "audit_log", "DELETE FROM audit_log WHERE seq = 2").await;
    let a = check(&mut audit).await;
    assert!(
        !a.ok && a.breaks[0].seq == 3 && a.breaks[0].problem.contains("#2 before it is missing"),
        "{a:?}"
    );
    tamper(
        &pool,
        "audit_log",
        "INSERT INTO audit_log SELECT * FROM stolen",
    )
    .await;
    sqlx::query("DROP TABLE stolen")
        .execute(&pool)
        .await
        .unwrap();
    assert!(check(&mut audit).await.ok);
    tamper(
        &pool,
        "audit_log",
        "INSERT INTO audit_log SELECT tenant_id, seq + 1, gen_random_uuid(), at, service, actor, role, 'period.reopen', target,
                before_json, after_json, trace_id, hash, sha256(hash) FROM audit_log WHERE seq = 3",
    )
    .await;
    let a = check(&mut audit).await;
    assert!(!a.ok && a.breaks[0].seq == 4, "{a:?}");
}

/// A statement's content without the field that says when it was read.
fn at_moment(s: &pb::Statement) -> (String, pb::Statement) {
    let t = s
        .as_of
        .as_ref()
        .and_then(spm_proto::ext::datetime)
        .map(spm_core::chain::instant)
        .unwrap_or_default();
    (t, s.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_as_of_a_moment_answer_what_they_answered_then() {
    let env = TestEnv::new("audit-asof").await;
    let ingest = env.start("ingest").await;
    let incentive = env.start("incentive").await;
    let t = create_tenant(&env, &ingest, "acme").await;
    let key = t.admin_key.clone();
    wait_key_known(&incentive, &key).await;
    let adm = IncentiveAdminServiceClient::new(incentive.channel().await);
    adm.clone()
        .put_plan(authed(
            pb::PutPlanRequest {
                plan: Some(plan()),
                draft: false,
            },
            &key,
        ))
        .await
        .unwrap();
    let inc = IncentiveServiceClient::new(incentive.channel().await);
    let cal = Calendar::default();
    let this = cal.period(PeriodKind::Month, Utc::now());
    let last = cal.period(PeriodKind::Month, this.start - Days::seconds(1));
    let reps = ["r1", "r2", "r3"];
    submit(&ingest, &key, reps.iter().map(|r| rep(r, "", "")).collect()).await;
    let snapshots = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::<(
        String,
        String,
        pb::Statement,
    )>::new()));
    // Snapshots are taken all along, while events stream in and admins act.
    let stop = tokio_util::sync::CancellationToken::new();
    let snapper = {
        let (inc, key, snaps, stop) = (inc.clone(), key.clone(), snapshots.clone(), stop.clone());
        let periods = [last.key.clone(), this.key.clone()];
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.is_cancelled() {
                let rep = reps[i % 3];
                let p = &periods[(i / 3) % 2];
                let s = inc
                    .clone()
                    .get_statement(authed(
                        pb::GetStatementRequest {
                            rep_id: rep.into(),
                            period: Some(month(p)),
                            with_explanations: i.is_multiple_of(2),
                            as_of: None,
                        },
                        &key,
                    ))
                    .await
                    .expect("statement")
                    .into_inner()
                    .statement
                    .expect("statement");
                snaps.lock().await.push((rep.to_owned(), p.clone(), s));
                i += 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    let in_month = |id: &str, rep: &str, amt: &str, start: chrono::DateTime<Utc>, h: i64| {
        let mut d = deal(id, amt, &[(rep, "100")]);
        d.occurred_at = Some(spm_proto::ext::timestamp(
            (start + Days::minutes(h)).min(Utc::now() - Days::minutes(1)),
        ));
        d
    };
    let pool = env.pool("incentive").await;
    let mut deals = 0i64;
    for wave in 0..4 {
        let batch: Vec<_> = (0..12)
            .map(|i| {
                let start = if i % 2 == 0 { last.start } else { this.start };
                in_month(
                    &format!("w{wave}-{i}"),
                    reps[i % 3],
                    &format!("{}.00", 1500 + 250 * i),
                    start,
                    i64::try_from(wave * 12 + i).unwrap(),
                )
            })
            .collect();
        deals += 12;
        submit(&ingest, &key, batch).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        match wave {
            // A plan change: a new version recomputes the open months.
            1 => {
                let mut p = plan();
                p.commission.as_mut().unwrap().tiers[0].rate = "0.06".into();
                adm.clone()
                    .put_plan(authed(
                        pb::PutPlanRequest {
                            plan: Some(p),
                            draft: false,
                        },
                        &key,
                    ))
                    .await
                    .unwrap();
            }
            // Last month closes; later deals of it become adjustments of this one.
            2 => {
                wait_deals(&pool, deals).await;
                adm.clone()
                    .close_period(authed(
                        pb::ClosePeriodRequest {
                            period: Some(month(&last.key)),
                        },
                        &key,
                    ))
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }
    submit(&ingest, &key, vec![payment("pay-1", "w0-1", "1000.00")]).await;
    wait_deals(&pool, deals).await;
    settled(&pool).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    snapper.await.unwrap();
    let snaps = snapshots.lock().await.clone();
    assert!(snaps.len() >= 30, "{} snapshots", snaps.len());
    let distinct: std::collections::BTreeSet<String> =
        snaps.iter().map(|s| s.2.total.clone()).collect();
    assert!(
        distinct.len() >= 4,
        "the statements changed while snapshotted: {distinct:?}"
    );
    assert!(
        snaps.iter().any(|s| s.2.closed) && snaps.iter().any(|s| !s.2.closed && s.1 == last.key)
    );

    // Later: every snapshot again, asked as of its moment.
    let mut by_moment: BTreeMap<String, usize> = BTreeMap::new();
    for (rep, p, s) in &snaps {
        let (t, want) = at_moment(s);
        *by_moment.entry(t).or_default() += 1;
        let got = inc
            .clone()
            .get_statement(authed(
                pb::GetStatementRequest {
                    rep_id: rep.clone(),
                    period: Some(month(p)),
                    with_explanations: !s.lines.iter().all(|l| l.explanation_json.is_empty()),
                    as_of: s.as_of,
                },
                &key,
            ))
            .await
            .unwrap()
            .into_inner()
            .statement
            .unwrap();
        assert_eq!(got, want, "{rep} {p} as of {:?}", s.as_of);
    }
    // A line explained as of a moment shows the postings made until then.
    let (rep0, p0, early) = snaps
        .iter()
        .find(|s| !s.2.lines.is_empty())
        .cloned()
        .unwrap();
    let l0 = &early.lines[0];
    let e = inc
        .clone()
        .explain_line(authed(
            pb::ExplainLineRequest {
                line_id: l0.line_id.clone(),
                as_of: early.as_of,
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    let early_at = early
        .as_of
        .as_ref()
        .and_then(spm_proto::ext::datetime)
        .unwrap();
    assert!(e.postings.iter().all(|p| {
        p.posted_at
            .as_ref()
            .and_then(spm_proto::ext::datetime)
            .unwrap()
            <= early_at
    }));
    assert_eq!(
        e.line.as_ref().map(|l| l.amount.clone()),
        Some(l0.amount.clone()),
        "{rep0} {p0}"
    );

    // The diff between the first and the last snapshot of a statement: the postings in
    // between, and totals that are the snapshots'.
    let of_r1: Vec<&pb::Statement> = snaps
        .iter()
        .filter(|s| s.0 == "r1" && s.1 == this.key)
        .map(|s| &s.2)
        .collect();
    let (first, final_) = (of_r1[0], of_r1[of_r1.len() - 1]);
    let d = inc
        .clone()
        .diff_statement(authed(
            pb::DiffStatementRequest {
                rep_id: "r1".into(),
                period: Some(month(&this.key)),
                from: first.as_of,
                to: final_.as_of,
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (d.total_from.as_str(), d.total_to.as_str()),
        (first.total.as_str(), final_.total.as_str())
    );
    assert!(
        !d.postings.is_empty()
            && d.postings
                .iter()
                .all(|p| !p.posting.as_ref().unwrap().reason.is_empty())
    );
    assert!(
        d.postings.iter().any(|p| p.plan_version == 2),
        "the plan change's recomputation is among them: {:?}",
        d.postings
            .iter()
            .map(|p| (&p.line_key, p.plan_version))
            .collect::<Vec<_>>()
    );

    // The future is not a moment one can ask about.
    let e = inc
        .clone()
        .get_statement(authed(
            pb::GetStatementRequest {
                rep_id: "r1".into(),
                period: None,
                with_explanations: false,
                as_of: Some(spm_proto::ext::timestamp(Utc::now() + Days::hours(1))),
            },
            &key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let fields: Vec<String> = e
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default();
    assert_eq!(fields, vec!["as_of".to_owned()], "{e:?}");
}

async fn events(
    svc: &Service,
    key: &str,
    req: apb::ListAuditEventsRequest,
) -> Vec<apb::AuditEvent> {
    AuditServiceClient::new(svc.channel().await)
        .list_audit_events(authed(req, key))
        .await
        .expect("audit events")
        .into_inner()
        .events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_action_is_in_its_services_audit_trail() {
    let env = TestEnv::new("audit-trail").await;
    let ingest = env.start("ingest").await;
    let scoring = env.start("scoring").await;
    let incentive = env.start("incentive").await;
    let notification = env.start("notification").await;
    let t = create_tenant(&env, &ingest, "acme").await;
    let key = t.admin_key.clone();
    for s in [&scoring, &incentive, &notification] {
        wait_key_known(s, &key).await;
    }
    let mut ing = IngestAdminServiceClient::new(ingest.channel().await);
    ing.set_fx_rate(authed(
        ingpb::SetFxRateRequest {
            rate: Some(ingpb::FxRate {
                currency: "USD".into(),
                rate: "0.9".into(),
                effective_from: "2026-01-01".into(),
            }),
        },
        &key,
    ))
    .await
    .unwrap();
    ing.set_fx_rate(authed(
        ingpb::SetFxRateRequest {
            rate: Some(ingpb::FxRate {
                currency: "USD".into(),
                rate: "0.92".into(),
                effective_from: "2026-01-01".into(),
            }),
        },
        &key,
    ))
    .await
    .unwrap();
    let issued = ing
        .issue_api_key(authed(
            ingpb::IssueApiKeyRequest {
                role: spm_proto::events::v1::ApiKeyRole::Integration as i32,
                label: "crm".into(),
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    ing.revoke_api_key(authed(
        ingpb::RevokeApiKeyRequest {
            key_id: issued.key_id.clone(),
        },
        &key,
    ))
    .await
    .unwrap();
    // A refused change is not an action: nothing recorded.
    let bad = ing
        .set_fx_rate(authed(
            ingpb::SetFxRateRequest {
                rate: Some(ingpb::FxRate {
                    currency: "USD".into(),
                    rate: "-1".into(),
                    effective_from: "2026-01-01".into(),
                }),
            },
            &key,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    IncentiveAdminServiceClient::new(incentive.channel().await)
        .put_plan(authed(
            pb::PutPlanRequest {
                plan: Some(plan()),
                draft: false,
            },
            &key,
        ))
        .await
        .unwrap();
    spm_proto::scoring::v1::scoring_admin_service_client::ScoringAdminServiceClient::new(
        scoring.channel().await,
    )
    .set_alert_settings(authed(
        spm_proto::scoring::v1::SetAlertSettingsRequest {
            threshold_share: "0.5".into(),
            min_elapsed: "0.25".into(),
        },
        &key,
    ))
    .await
    .unwrap();
    spm_proto::notification::v1::notification_admin_service_client::NotificationAdminServiceClient::new(notification.channel().await)
        .put_webhook(authed(
            spm_proto::notification::v1::PutWebhookRequest { url: "https://example.com/hook".into(), rules: vec![] },
            &key,
        ))
        .await
        .unwrap();

    let ing_events = events(&ingest, &key, apb::ListAuditEventsRequest::default()).await;
    let actions: Vec<&str> = ing_events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "api_key.revoke",
            "api_key.issue",
            "fx_rate.set",
            "fx_rate.set",
            "tenant.create"
        ],
        "newest first"
    );
    let fx = &ing_events[2];
    assert_eq!(fx.target, "fx_rate:USD/2026-01-01");
    assert_eq!(
        (fx.before_json.as_str(), fx.after_json.as_str()),
        (
            r#"{"currency":"USD","effective_from":"2026-01-01","rate":"0.9"}"#,
            r#"{"currency":"USD","effective_from":"2026-01-01","rate":"0.92"}"#,
        )
    );
    assert_eq!(
        ing_events[3].before_json, "null",
        "the first rate replaced nothing"
    );
    assert!(fx.actor.starts_with("key:") && fx.role == "admin", "{fx:?}");
    assert_eq!(fx.trace_id.len(), 32, "the request's trace: {fx:?}");
    assert!(
        !ing_events[1].after_json.contains(&issued.api_key),
        "a key's secret is never recorded"
    );
    assert_eq!(ing_events[4].actor, "operator");
    // Filters: an action prefix, a target, a moment.
    let only_fx = events(
        &ingest,
        &key,
        apb::ListAuditEventsRequest {
            action: "fx_rate.".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(only_fx.len(), 2);
    let the_key = events(
        &ingest,
        &key,
        apb::ListAuditEventsRequest {
            target: format!("api_key:{}", issued.key_id),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        the_key
            .iter()
            .map(|e| e.action.as_str())
            .collect::<Vec<_>>(),
        ["api_key.revoke", "api_key.issue"]
    );
    let page = events(
        &ingest,
        &key,
        apb::ListAuditEventsRequest {
            limit: 2,
            before_seq: ing_events[1].seq,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        page.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [ing_events[2].seq, ing_events[3].seq]
    );
    let plan_ev = events(&incentive, &key, apb::ListAuditEventsRequest::default()).await;
    assert_eq!(plan_ev[0].action, "plan.put");
    assert!(
        plan_ev[0].after_json.contains(r#""plan_id":"ae""#),
        "{}",
        plan_ev[0].after_json
    );
    assert_eq!(
        events(&scoring, &key, apb::ListAuditEventsRequest::default()).await[0].action,
        "alert_settings.set"
    );
    assert_eq!(
        events(&notification, &key, apb::ListAuditEventsRequest::default()).await[0].action,
        "webhook.put"
    );
    for s in [&ingest, &scoring, &incentive, &notification] {
        let v = AuditServiceClient::new(s.channel().await)
            .verify_audit_log(authed(apb::VerifyAuditLogRequest {}, &key))
            .await
            .unwrap()
            .into_inner();
        assert!(v.ok && v.events > 0, "{v:?}");
    }
    // Integration keys read none of it; another tenant sees only its own.
    let integ = ing
        .issue_api_key(authed(
            ingpb::IssueApiKeyRequest {
                role: spm_proto::events::v1::ApiKeyRole::Integration as i32,
                label: "etl".into(),
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    wait_key_known(&incentive, &integ.api_key).await;
    let e = AuditServiceClient::new(incentive.channel().await)
        .list_audit_events(authed(
            apb::ListAuditEventsRequest::default(),
            &integ.api_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let b = create_tenant(&env, &ingest, "beta").await;
    wait_key_known(&incentive, &b.admin_key).await;
    assert!(
        events(
            &incentive,
            &b.admin_key,
            apb::ListAuditEventsRequest::default()
        )
        .await
        .is_empty()
    );
    let bad = AuditServiceClient::new(ingest.channel().await)
        .list_audit_events(authed(
            apb::ListAuditEventsRequest {
                limit: 501,
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}
