//! The connect service against stand-ins for Salesforce's Pub/Sub API and HubSpot (the test
//! kit's fakes, which follow each vendor's documented protocol and payloads), with the real
//! ingest, Postgres and broker behind it.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use serde_json::json;
use spm_proto::connect::v1 as cpb;
use spm_proto::connect::v1::connect_service_client::ConnectServiceClient;
use spm_proto::ingest::v1 as ingpb;
use spm_proto::ingest::v1::ingest_admin_service_client::IngestAdminServiceClient;
use spm_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use spm_testkit::salesforce::{self as sf, Change, F, FakePubSub, s};
use spm_testkit::{Service, TestEnv, authed, create_tenant, eventually, hubspot, wait_key_known};

const CHANNEL: &str = "/data/SpmSales__chn";
const PAYMENTS: &str = "/event/Payment_Received__e";
const T: &str = "acme";

struct World {
    env: TestEnv,
    ingest: Service,
    admin_key: String,
    key: String,
}

async fn world(name: &str) -> World {
    let env = TestEnv::new(name).await;
    let ingest = env.start("ingest").await;
    let tenant = create_tenant(&env, &ingest, T).await;
    let mut admin = IngestAdminServiceClient::new(ingest.channel().await);
    let key = admin
        .issue_api_key(authed(
            ingpb::IssueApiKeyRequest {
                role: spm_proto::events::v1::ApiKeyRole::Integration as i32,
                label: "connect".into(),
            },
            &tenant.admin_key,
        ))
        .await
        .expect("issue key")
        .into_inner()
        .api_key;
    let mut c = IngestServiceClient::new(ingest.channel().await);
    let reps = ["rep-a", "rep-b"].map(|r| spm_testkit::events::rep(r, "", ""));
    c.submit_events(authed(
        ingpb::SubmitEventsRequest {
            events: reps.to_vec(),
        },
        &key,
    ))
    .await
    .expect("reps");
    World {
        env,
        ingest,
        admin_key: tenant.admin_key,
        key,
    }
}

fn sf_mapping() -> serde_json::Value {
    json!({
        "deal": {
            "object": "Opportunity", "stage": "StageName",
            "won_stages": ["Closed Won"], "lost_stages": ["Closed Lost"],
            "open_stages": ["Prospecting", "Negotiation/Review"],
            "amount": "Amount", "currency": "CurrencyIsoCode", "default_currency": "EUR",
            "close_date": "CloseDate", "owner": "OwnerId", "name": "Name", "customer": "AccountId"
        },
        "owners": {"reps": {"005A": "rep-a", "005B": "rep-b"}},
        "splits": {"object": "OpportunitySplit", "deal": "OpportunityId",
                   "owner": "SplitOwnerId", "percent": "SplitPercentage"},
        "payments": [{"object": "Payment_Received__e", "id": "Payment_Id__c",
                      "deal": "Opportunity__c", "amount": "Amount__c", "default_currency": "EUR"}]
    })
}

impl World {
    async fn connect(&self, cfg: serde_json::Value) -> Service {
        let path = self.env.log_dir.join("connectors.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        let svc = self
            .env
            .start_with(
                "connect",
                &[
                    ("SPM_CONNECT_CONFIG", path.to_str().unwrap()),
                    ("SPM_INGEST_URL", &format!("http://{}", self.ingest.grpc)),
                ],
            )
            .await;
        wait_key_known(&svc, &self.admin_key).await;
        svc
    }

    fn sf_config(&self, fake: &FakePubSub, topics: &[&str], batch: i32) -> serde_json::Value {
        json!({"tenants": [{
            "tenant_id": T, "ingest_key": self.key,
            "salesforce": {
                "pubsub_url": fake.url, "instance_url": sf::INSTANCE_URL, "org_id": sf::ORG_ID,
                "access_token": sf::TOKEN, "topics": topics, "batch": batch, "mapping": sf_mapping()
            }
        }]})
    }

    /// The same with the connected app's client credentials instead of a token.
    fn sf_oauth_config(&self, fake: &FakePubSub, topics: &[&str], batch: i32) -> serde_json::Value {
        let mut c = self.sf_config(fake, topics, batch);
        let sf = &mut c["tenants"][0]["salesforce"];
        sf.as_object_mut().expect("object").remove("access_token");
        sf["oauth"] = json!({"token_url": fake.oauth_url, "client_id": sf::CLIENT_ID, "client_secret": sf::CLIENT_SECRET});
        c
    }

    /// How many of `ids` ingest recorded, and how many events it recorded in all.
    async fn recorded(&self, ids: &[uuid::Uuid]) -> (i64, i64) {
        let pool = self.env.pool("ingest").await;
        let of: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM idempotency WHERE tenant_id = $1 AND event_id = ANY($2)",
        )
        .bind(T)
        .bind(ids)
        .fetch_one(&pool)
        .await
        .unwrap();
        let all: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency WHERE tenant_id = $1")
            .bind(T)
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        (of, all)
    }

    async fn status(&self, connect: &Service) -> Vec<cpb::SourceStatus> {
        ConnectServiceClient::new(connect.channel().await)
            .get_status(authed(cpb::GetStatusRequest {}, &self.admin_key))
            .await
            .expect("status")
            .into_inner()
            .sources
    }

    async fn errors(&self, connect: &Service) -> Vec<cpb::RecordError> {
        ConnectServiceClient::new(connect.channel().await)
            .list_record_errors(authed(
                cpb::ListRecordErrorsRequest { limit: 0 },
                &self.admin_key,
            ))
            .await
            .expect("errors")
            .into_inner()
            .errors
    }
}

/// Runs the `spm` CLI against `connect`: (success, stdout and stderr).
async fn spm(connect: &Service, key: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(spm_testkit::process::binary("spm"))
        .args(args)
        .args(["--key", key])
        .env("SPM_CONNECT_URL", format!("http://{}", connect.grpc))
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run spm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The SPM event id the connector derives for a CRM event.
fn derived(source: &str, crm_event: &str, record: &str, kind: &str) -> uuid::Uuid {
    spm_core::derived_id(&["connect", T, source, crm_event, record, kind])
}

fn open(id: &str, owner: &str, amount: f64) -> Change {
    Change::new(
        "Opportunity",
        id,
        "CREATE",
        &[
            ("Name", s(&format!("Deal {id}"))),
            ("AccountId", s("001ACME")),
            ("OwnerId", s(owner)),
            ("StageName", s("Prospecting")),
            ("Amount", F::D(amount)),
            ("CurrencyIsoCode", s("EUR")),
            ("CloseDate", F::Date(20_780)),
        ],
    )
}

fn stage(id: &str, stage: &str) -> Change {
    Change::new("Opportunity", id, "UPDATE", &[("StageName", s(stage))])
}

#[tokio::test]
async fn salesforce_cdc_is_submitted_exactly_once_across_a_kill_9() {
    let w = world("connect_sf_kill").await;
    let fake = FakePubSub::start().await;
    fake.add_schema("opp-1", &sf::opportunity_schema());
    fake.add_schema("split-1", &sf::split_schema());
    fake.add_topic(CHANNEL);
    // 300 deals published while the connector runs (and while it is down), each created
    // open and closed won in a later change; every fifth split 60/40 between two reps
    // before it closes.
    let n: u32 = 300;
    let (_, before) = w.recorded(&[]).await;
    assert_eq!(before, 2, "the two reps");
    let mut connect = w.connect(w.sf_oauth_config(&fake, &[CHANNEL], 10)).await;
    let publisher = {
        let fake = fake.clone();
        tokio::spawn(async move {
            let mut expected = Vec::new();
            for i in 0..n {
                let id = format!("006{i:06}");
                fake.publish(
                    CHANNEL,
                    "opp-1",
                    sf::encode_change(
                        &sf::opportunity_schema(),
                        &open(&id, "005A", 1000.0 + f64::from(i) + 0.25),
                    ),
                );
                if i % 5 == 0 {
                    for (k, (owner, pct)) in
                        [("005A", 60.0), ("005B", 40.0)].into_iter().enumerate()
                    {
                        let split = Change::new(
                            "OpportunitySplit",
                            &format!("04S{i:06}{k}"),
                            "CREATE",
                            &[
                                ("OpportunityId", s(&id)),
                                ("SplitOwnerId", s(owner)),
                                ("SplitPercentage", F::D(pct)),
                            ],
                        );
                        fake.publish(
                            CHANNEL,
                            "split-1",
                            sf::encode_change(&sf::split_schema(), &split),
                        );
                    }
                }
                let uuid = fake.publish(
                    CHANNEL,
                    "opp-1",
                    sf::encode_change(&sf::opportunity_schema(), &stage(&id, "Closed Won")),
                );
                expected.push(derived("salesforce", &uuid, &id, "closed"));
                if i == 250 {
                    // The session times out mid-stream: the connector gets a new token.
                    fake.expire_session();
                }
                tokio::time::sleep(Duration::from_millis(8)).await;
            }
            expected
        })
    };
    let cpool = w.env.pool("connect").await;
    // Kill it mid-stream, once some batches are checkpointed and before all are.
    eventually(
        Duration::from_secs(60),
        "a few checkpointed batches",
        || {
            let cpool = cpool.clone();
            async move {
                let n: Option<i64> =
                    sqlx::query_scalar("SELECT events_in FROM checkpoints WHERE stream = $1")
                        .bind(CHANNEL)
                        .fetch_optional(&cpool)
                        .await
                        .unwrap();
                n.filter(|n| *n >= 150).map(|_| ())
            }
        },
    )
    .await;
    connect.kill9().await;
    let (_, mid) = w.recorded(&[]).await;
    assert!(
        mid - 2 < i64::from(n),
        "killed before the end ({} of {n} submitted)",
        mid - 2
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    connect.restart().await;
    let expected = publisher.await.expect("publisher");

    let (of, all) = eventually(Duration::from_secs(90), "every deal submitted", || {
        let w = &w;
        let expected = &expected;
        async move {
            let r = w.recorded(expected).await;
            (r.0 == i64::from(n)).then_some(r)
        }
    })
    .await;
    // Let the stream settle, then nothing more may arrive: each deal exactly once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!((of, all), (i64::from(n), i64::from(n) + 2));
    assert_eq!(
        w.recorded(&expected).await.1,
        i64::from(n) + 2,
        "no other event was submitted"
    );

    // The splits went with their deals: split deals have two credited reps in ingest.
    let ipool = w.env.pool("ingest").await;
    let two: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM deals WHERE tenant_id = $1 AND state::text LIKE '%rep-b%'",
    )
    .bind(T)
    .fetch_one(&ipool)
    .await
    .unwrap();
    assert_eq!(two, i64::from(n / 5), "every fifth deal split with rep-b");

    // Flow control: never more than requested; the restart resumed from the checkpoint.
    let (max_batch, over, subscribes, delivered) = fake.stats();
    assert!(
        max_batch <= 10 && !over,
        "sent {max_batch} at once (over: {over})"
    );
    assert!(subscribes >= 3, "start, restart, new session: {subscribes}");
    assert!(
        fake.tokens_issued() >= 3,
        "a token at each start and after the expiry"
    );
    let total = u64::from(n * 2 + 2 * (n / 5));
    assert!(delivered >= total, "{delivered} delivered of {total}");
    assert!(
        delivered < 2 * total,
        "the restart replayed from the checkpoint, not from the start: {delivered}"
    );
    let st = w.status(&connect).await;
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].state, "RUNNING");
    assert!(!st[0].checkpoint.is_empty() && st[0].checkpointed_at.is_some());
    assert_eq!(st[0].rejected, 0, "{:?}", w.errors(&connect).await);
}

#[tokio::test]
async fn bad_salesforce_payloads_are_reported_and_the_stream_goes_on_and_stale_checkpoints_wait() {
    let w = world("connect_sf_bad").await;
    let fake = FakePubSub::start().await;
    fake.add_schema("opp-1", &sf::opportunity_schema());
    fake.add_schema("opp-2", &sf::opportunity_schema_without_amount());
    fake.add_schema("pay-1", &sf::payment_schema());
    fake.add_topic(CHANNEL);
    fake.add_topic(PAYMENTS);
    let opp = sf::opportunity_schema();
    let publish = |c: &Change| fake.publish(CHANNEL, "opp-1", sf::encode_change(&opp, c));

    // An unknown stage, a won deal without an amount, an unmapped owner.
    publish(&stage("006BAD1", "Verbal Yes"));
    let mut no_amount = open("006BAD2", "005A", 10.0);
    no_amount.fields.retain(|(k, _)| k != "Amount");
    publish(&no_amount);
    publish(&stage("006BAD2", "Closed Won"));
    publish(&open("006BAD3", "005Z", 10.0));
    publish(&stage("006BAD3", "Closed Won"));
    // A schema change the mapping does not follow, and a payload that does not decode.
    let mut renamed = Change::new(
        "Opportunity",
        "006BAD4",
        "CREATE",
        &[("StageName", s("Closed Won")), ("Amount_Net__c", F::D(5.0))],
    );
    renamed.commit_ms = 0;
    fake.publish(
        CHANNEL,
        "opp-2",
        sf::encode_change(&sf::opportunity_schema_without_amount(), &renamed),
    );
    fake.publish(CHANNEL, "opp-1", vec![0xff, 0xff, 0xff]);
    // Then a good deal and its payment (on a platform-event topic).
    publish(&open("006GOOD", "005B", 4321.5));
    let good = publish(&stage("006GOOD", "Closed Won"));
    let pay = fake.publish(
        PAYMENTS,
        "pay-1",
        sf::encode_payment("PAY-1", "006GOOD", 1000.1),
    );

    let mut connect = w
        .connect(w.sf_config(&fake, &[CHANNEL, PAYMENTS], 100))
        .await;
    let ids = [
        derived("salesforce", &good, "006GOOD", "closed"),
        derived("salesforce", &pay, "PAY-1", "payment"),
    ];
    eventually(
        Duration::from_secs(60),
        "the good deal and its payment",
        || {
            let (w, ids) = (&w, &ids);
            async move { (w.recorded(ids).await.0 == 2).then_some(()) }
        },
    )
    .await;
    let errors = eventually(Duration::from_secs(30), "five problems reported", || {
        let (w, c) = (&w, &connect);
        async move {
            let e = w.errors(c).await;
            (e.len() >= 5).then_some(e)
        }
    })
    .await;
    let got: BTreeSet<(String, String, String)> = errors
        .iter()
        .map(|e| (e.record_id.clone(), e.field.clone(), e.reason.clone()))
        .collect();
    for want in [
        ("006BAD1", "StageName", "unknown_stage"),
        ("006BAD2", "Amount", "missing_field"),
        ("006BAD3", "OwnerId", "unmapped_owner"),
        ("006BAD4", "Amount", "schema"),
        ("", "payload", "bad_payload"),
    ] {
        assert!(
            got.contains(&(want.0.into(), want.1.into(), want.2.into())),
            "{want:?} not in {got:?}"
        );
    }
    assert_eq!(errors.len(), 5, "{got:?}");
    assert!(
        errors
            .iter()
            .all(|e| !e.message.is_empty() && !e.crm_event_id.is_empty())
    );
    // Nothing was submitted for any of them.
    assert_eq!(w.recorded(&ids).await.1, 2 + 2);
    let m = connect.metrics().await;
    assert_eq!(
        spm_testkit::process::parse_metric_sum(
            &m,
            "spm_connect_rejected_total",
            &["reason=\"unknown_stage\""]
        ),
        1.0,
        "{m}"
    );

    // A checkpoint older than the CRM's retention is reported, not resumed.
    connect.terminate(Duration::from_secs(10)).await;
    let cpool = w.env.pool("connect").await;
    sqlx::query(
        "UPDATE checkpoints SET checkpointed_at = now() - interval '73 hours' WHERE stream = $1",
    )
    .bind(CHANNEL)
    .execute(&cpool)
    .await
    .unwrap();
    publish(&open("006LATE", "005A", 77.0));
    let late = publish(&stage("006LATE", "Closed Won"));
    let late_id = [derived("salesforce", &late, "006LATE", "closed")];
    connect.restart().await;
    let stale = eventually(
        Duration::from_secs(30),
        "the stale checkpoint reported",
        || {
            let (w, c) = (&w, &connect);
            async move {
                w.status(c)
                    .await
                    .into_iter()
                    .find(|s| s.stream == CHANNEL && s.state == "STALE_CHECKPOINT")
            }
        },
    )
    .await;
    assert!(stale.last_error.contains("73h"), "{}", stale.last_error);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        w.recorded(&late_id).await.0,
        0,
        "nothing is submitted while the operator decides"
    );
    let age = spm_testkit::process::parse_metric_sum(
        &connect.metrics().await,
        "spm_connect_checkpoint_age_seconds",
        &["stream=\"/data/SpmSales__chn\""],
    );
    assert!(age > 72.0 * 3600.0, "checkpoint age {age}");
    // The operator picks a re-sync: the retained events are replayed; what was submitted
    // before is a duplicate in ingest, the late deal is new.
    let mut cc = ConnectServiceClient::new(connect.channel().await);
    let wrong = cc
        .resolve_checkpoint(authed(
            cpb::ResolveCheckpointRequest {
                stream: CHANNEL.into(),
                action: 0,
            },
            &w.admin_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::InvalidArgument);
    cc.resolve_checkpoint(authed(
        cpb::ResolveCheckpointRequest {
            stream: CHANNEL.into(),
            action: cpb::CheckpointAction::Resync as i32,
        },
        &w.admin_key,
    ))
    .await
    .expect("resolve");
    eventually(
        Duration::from_secs(30),
        "the late deal after the re-sync",
        || {
            let (w, ids) = (&w, &late_id);
            async move { (w.recorded(ids).await.0 == 1).then_some(()) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        w.recorded(&ids).await.1,
        2 + 2 + 1,
        "the replayed events were duplicates"
    );
    let again = cc
        .resolve_checkpoint(authed(
            cpb::ResolveCheckpointRequest {
                stream: CHANNEL.into(),
                action: cpb::CheckpointAction::Skip as i32,
            },
            &w.admin_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");

    // Salesforce itself refusing the replay id (expired server-side) is the same choice;
    // a skip starts with what is published from then on.
    fake.expire_all();
    let subs = fake.stats().2;
    connect.kill9().await;
    connect.restart().await;
    eventually(
        Duration::from_secs(30),
        "the refused replay id reported",
        || {
            let (w, c) = (&w, &connect);
            async move {
                w.status(c).await.into_iter().find(|s| {
                    s.stream == CHANNEL
                        && s.state == "STALE_CHECKPOINT"
                        && s.last_error.contains("Replay ID validation failed")
                })
            }
        },
    )
    .await;
    // The operator sees it and skips, with the CLI.
    let (ok, printed) = spm(&connect, &w.admin_key, &["connect", "status"]).await;
    assert!(ok, "{printed}");
    assert!(
        printed.contains(CHANNEL)
            && printed.contains("STALE_CHECKPOINT")
            && printed.contains("spm connect resolve"),
        "{printed}"
    );
    let (ok, printed) = spm(&connect, &w.admin_key, &["connect", "errors"]).await;
    assert!(
        ok && printed.contains("unknown_stage") && printed.contains("006BAD1"),
        "{printed}"
    );
    let (ok, printed) = spm(
        &connect,
        &w.admin_key,
        &["connect", "resolve", CHANNEL, "--skip"],
    )
    .await;
    assert!(ok, "{printed}");
    // Both topics were refused once; the skipped one subscribes again.
    eventually(Duration::from_secs(30), "subscribed again", || {
        let fake = &fake;
        async move { (fake.stats().2 >= subs + 3).then_some(()) }
    })
    .await;
    publish(&open("006NEW", "005A", 12.0));
    let new = publish(&stage("006NEW", "Closed Won"));
    let new_id = [derived("salesforce", &new, "006NEW", "closed")];
    eventually(
        Duration::from_secs(30),
        "the deal published after the skip",
        || {
            let (w, ids) = (&w, &new_id);
            async move { (w.recorded(ids).await.0 == 1).then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn hubspot_webhooks_are_verified_read_back_and_submitted_once() {
    let w = world("connect_hubspot").await;
    let crm = hubspot::FakeHubSpot::start().await;
    crm.put(
        "deals",
        101,
        &[
            ("dealname", "Northwind"),
            ("dealstage", "closedwon"),
            ("amount", "2500.50"),
            ("deal_currency_code", "EUR"),
            ("closedate", "2026-11-20T10:00:00Z"),
            ("hubspot_owner_id", "77"),
        ],
    );
    crm.put(
        "deals",
        102,
        &[
            ("dealstage", "appointmentscheduled"),
            ("hubspot_owner_id", "77"),
        ],
    );
    crm.put(
        "deals",
        103,
        &[
            ("dealstage", "mystery"),
            ("amount", "10"),
            ("hubspot_owner_id", "77"),
        ],
    );
    // Two won deals with line items: 104's sum to its amount, 105's do not (ingest refuses it).
    for (deal, amount, lines) in [
        (104, "1000", [(7001, "600.00"), (7002, "400")]),
        (105, "1000", [(7003, "600"), (7004, "300")]),
    ] {
        crm.put(
            "deals",
            deal,
            &[
                ("dealstage", "closedwon"),
                ("amount", amount),
                ("closedate", "2026-11-21"),
                ("hubspot_owner_id", "78"),
            ],
        );
        for (line, amount) in lines {
            crm.put(
                "line_items",
                line,
                &[
                    ("hs_product_id", "prod-9"),
                    ("quantity", "2"),
                    ("amount", amount),
                ],
            );
        }
        crm.associate_line_items(deal, &lines.map(|l| l.0));
    }
    crm.put(
        "calls",
        501,
        &[("hubspot_owner_id", "78"), ("hs_call_title", "Intro call")],
    );
    let cfg = json!({"tenants": [{
        "tenant_id": T, "ingest_key": w.key,
        "hubspot": {
            "app_secret": hubspot::APP_SECRET, "api_base": crm.base, "token": hubspot::TOKEN,
            "mapping": {
                "deal": {"object": "deal", "stage": "dealstage", "won_stages": ["closedwon"],
                         "lost_stages": ["closedlost"], "open_stages": ["appointmentscheduled", "qualifiedtobuy"],
                         "amount": "amount", "currency": "deal_currency_code", "default_currency": "EUR",
                         "close_date": "closedate", "owner": "hubspot_owner_id", "name": "dealname"},
                "owners": {"reps": {"77": "rep-a", "78": "rep-b"}},
                "products": {"object": "line_item", "product": "hs_product_id", "quantity": "quantity", "amount": "amount"},
                "activities": [{"object": "call", "owner": "hubspot_owner_id", "kind": "call", "subject": "hs_call_title"}]
            }
        }
    }]});
    let connect = w.connect(cfg).await;
    let url = format!("http://{}/hubspot/{T}/webhooks", connect.http);
    let batch = json!([
        hubspot::event(
            9001,
            "deal.propertyChange",
            101,
            Some(("dealstage", "closedwon"))
        ),
        hubspot::event(9002, "deal.creation", 102, None),
        hubspot::event(9003, "deal.creation", 103, None),
        hubspot::event(9004, "call.creation", 501, None),
        hubspot::event(9005, "contact.creation", 1, None),
        hubspot::event(9008, "deal.creation", 104, None),
        hubspot::event(9009, "deal.creation", 105, None)
    ]);

    // Refused: a bad signature, a stale timestamp, another tenant's path. Nothing stored.
    let (st, body) = hubspot::send(
        &url,
        hubspot::APP_SECRET,
        &batch,
        hubspot::Send {
            bad_signature: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        (st, body["reason"].as_str()),
        (401, Some("bad_signature")),
        "{body}"
    );
    let (st, body) = hubspot::send(
        &url,
        hubspot::APP_SECRET,
        &batch,
        hubspot::Send {
            age_ms: 6 * 60 * 1000,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        (st, body["reason"].as_str()),
        (401, Some("stale_timestamp")),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("5 minutes"),
        "{body}"
    );
    let other = format!("http://{}/hubspot/nobody/webhooks", connect.http);
    let (st, _) = hubspot::send(
        &other,
        hubspot::APP_SECRET,
        &batch,
        hubspot::Send::default(),
    )
    .await;
    assert_eq!(st, 404);
    let (st, body) = hubspot::send(
        &url,
        hubspot::APP_SECRET,
        &json!({"not": "an array"}),
        hubspot::Send::default(),
    )
    .await;
    assert_eq!(
        (st, body["reason"].as_str()),
        (400, Some("bad_payload")),
        "{body}"
    );
    let cpool = w.env.pool("connect").await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM hubspot_inbox")
        .fetch_one(&cpool)
        .await
        .unwrap();
    assert_eq!(stored, 0);

    // Accepted; the CRM API rate-limits the first two reads, which are retried.
    crm.rate_limit_next(2);
    let (st, body) =
        hubspot::send(&url, hubspot::APP_SECRET, &batch, hubspot::Send::default()).await;
    assert_eq!((st, body["new"].as_u64()), (200, Some(7)), "{body}");
    let ids = [
        derived("hubspot", "9001", "101", "closed"),
        derived("hubspot", "9004", "501", "activity"),
        derived("hubspot", "9008", "104", "closed"),
    ];
    eventually(
        Duration::from_secs(30),
        "the won deals and the call",
        || {
            let (w, ids) = (&w, &ids);
            async move { (w.recorded(ids).await.0 == 3).then_some(()) }
        },
    )
    .await;
    assert_eq!(crm.batch_reads(), 2, "the line items of 104 and 105");
    assert_eq!(crm.reads().1, 2, "two reads were rate limited");
    eventually(Duration::from_secs(10), "the inbox drained", || {
        let cpool = cpool.clone();
        async move {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM hubspot_inbox WHERE done_at IS NULL")
                    .fetch_one(&cpool)
                    .await
                    .unwrap();
            (n == 0).then_some(())
        }
    })
    .await;
    let errors = w.errors(&connect).await;
    let got: HashSet<(String, String, String)> = errors
        .iter()
        .map(|e| (e.record_id.clone(), e.field.clone(), e.reason.clone()))
        .collect();
    assert_eq!(
        got,
        HashSet::from([
            (
                "103".to_owned(),
                "dealstage".to_owned(),
                "unknown_stage".to_owned()
            ),
            (
                "105".to_owned(),
                "deal_closed.lines".to_owned(),
                "rejected_by_ingest".to_owned()
            )
        ]),
        "{errors:?}"
    );
    let e105 = errors.iter().find(|e| e.record_id == "105").expect("105");
    assert!(e105.message.contains("line amounts sum to 900"), "{e105:?}");

    // HubSpot delivers again (at least once): stored once, submitted once. Another change
    // of the won deal that moves nothing sends nothing.
    let (st, body) =
        hubspot::send(&url, hubspot::APP_SECRET, &batch, hubspot::Send::default()).await;
    assert_eq!((st, body["new"].as_u64()), (200, Some(0)), "{body}");
    hubspot::send(
        &url,
        hubspot::APP_SECRET,
        &json!([hubspot::event(
            9006,
            "deal.propertyChange",
            101,
            Some(("dealname", "Northwind 2"))
        )]),
        hubspot::Send::default(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.recorded(&ids).await.1, 2 + 3);

    // The won deal is lost after all: its close is reversed in full.
    crm.put(
        "deals",
        101,
        &[
            ("dealstage", "closedlost"),
            ("amount", "2500.50"),
            ("hubspot_owner_id", "77"),
        ],
    );
    hubspot::send(
        &url,
        hubspot::APP_SECRET,
        &json!([hubspot::event(
            9007,
            "deal.propertyChange",
            101,
            Some(("dealstage", "closedlost"))
        )]),
        hubspot::Send::default(),
    )
    .await;
    let rev = [derived("hubspot", "9007", "101", "reversed")];
    eventually(Duration::from_secs(30), "the reversal", || {
        let (w, ids) = (&w, &rev);
        async move { (w.recorded(ids).await.0 == 1).then_some(()) }
    })
    .await;
    let st = w.status(&connect).await;
    let hs = st
        .iter()
        .find(|s| s.source == "hubspot")
        .expect("hubspot status");
    assert_eq!((hs.pending, hs.rejected), (0, 2), "{hs:?}");
    assert!(hs.events_in >= 10, "{hs:?}");
    let m = connect.metrics().await;
    for (name, label) in [
        ("spm_connect_webhooks_total", "result=\"bad_signature\""),
        ("spm_connect_webhooks_total", "result=\"stale_timestamp\""),
        ("spm_connect_retries_total", "what=\"rate_limited\""),
    ] {
        assert!(
            spm_testkit::process::parse_metric_sum(&m, name, &[label]) >= 1.0,
            "{name}{{{label}}} in {m}"
        );
    }
}

/// Webhooks HubSpot was answered 200 for are processed after a kill -9 mid-stream: each
/// deal submitted exactly once; webhooks sent while the connector is down are redelivered
/// by HubSpot and taken then; a redelivery of processed ones changes nothing.
#[tokio::test]
async fn hubspot_webhooks_acknowledged_before_a_kill_9_are_each_submitted_once() {
    let w = world("connect_hubspot_kill").await;
    let crm = hubspot::FakeHubSpot::start().await;
    let n: u64 = 200;
    for i in 0..n + 20 {
        crm.put(
            "deals",
            1000 + i,
            &[
                ("dealstage", "closedwon"),
                ("amount", &format!("{}.25", 100 + i)),
                ("closedate", "2026-11-20"),
                ("hubspot_owner_id", if i % 2 == 0 { "77" } else { "78" }),
            ],
        );
    }
    // The CRM API is slow, so the kill lands mid-stream.
    crm.set_latency(15);
    let cfg = json!({"tenants": [{
        "tenant_id": T, "ingest_key": w.key,
        "hubspot": {
            "app_secret": hubspot::APP_SECRET, "api_base": crm.base, "token": hubspot::TOKEN,
            "mapping": {
                "deal": {"object": "deal", "stage": "dealstage", "won_stages": ["closedwon"],
                         "lost_stages": ["closedlost"], "open_stages": ["appointmentscheduled"],
                         "amount": "amount", "default_currency": "EUR",
                         "close_date": "closedate", "owner": "hubspot_owner_id"},
                "owners": {"reps": {"77": "rep-a", "78": "rep-b"}}
            }
        }
    }]});
    let mut connect = w.connect(cfg).await;
    let url = format!("http://{}/hubspot/{T}/webhooks", connect.http);
    let ev = |i: u64| hubspot::event(20_000 + i, "deal.creation", 1000 + i, None);
    let ids: Vec<uuid::Uuid> = (0..n + 20)
        .map(|i| {
            derived(
                "hubspot",
                &(20_000 + i).to_string(),
                &(1000 + i).to_string(),
                "closed",
            )
        })
        .collect();
    for chunk in (0..n).collect::<Vec<_>>().chunks(20) {
        let batch = json!(chunk.iter().map(|i| ev(*i)).collect::<Vec<_>>());
        let (st, body) =
            hubspot::send(&url, hubspot::APP_SECRET, &batch, hubspot::Send::default()).await;
        assert_eq!((st, body["new"].as_u64()), (200, Some(20)), "{body}");
    }
    eventually(Duration::from_secs(60), "some deals submitted", || {
        let (w, ids) = (&w, &ids);
        async move { (w.recorded(ids).await.0 >= 30).then_some(()) }
    })
    .await;
    connect.kill9().await;
    let (mid, _) = w.recorded(&ids).await;
    assert!(
        mid < i64::try_from(n).unwrap(),
        "killed before the end ({mid} of {n} submitted)"
    );

    // While it is down HubSpot's delivery fails; HubSpot retries it later.
    let late = json!((n..n + 20).map(ev).collect::<Vec<_>>());
    let down = reqwest::Client::new()
        .post(&url)
        .body(late.to_string())
        .send()
        .await;
    assert!(down.is_err(), "the connector is down");
    connect.restart().await;
    let (st, body) =
        hubspot::send(&url, hubspot::APP_SECRET, &late, hubspot::Send::default()).await;
    assert_eq!((st, body["new"].as_u64()), (200, Some(20)), "{body}");

    let total = i64::try_from(n + 20).unwrap();
    eventually(Duration::from_secs(90), "every deal submitted", || {
        let (w, ids) = (&w, &ids);
        async move { (w.recorded(ids).await.0 == total).then_some(()) }
    })
    .await;
    // A redelivery of the first batch (HubSpot delivers at least once) changes nothing.
    let again = json!((0..20).map(ev).collect::<Vec<_>>());
    let (st, body) =
        hubspot::send(&url, hubspot::APP_SECRET, &again, hubspot::Send::default()).await;
    assert_eq!((st, body["new"].as_u64()), (200, Some(0)), "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        w.recorded(&ids).await,
        (total, total + 2),
        "each deal exactly once, nothing else"
    );
    let st = w.status(&connect).await;
    let hs = st.iter().find(|s| s.source == "hubspot").expect("status");
    assert_eq!((hs.pending, hs.rejected), (0, 0), "{hs:?}");
}
