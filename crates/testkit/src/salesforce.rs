//! A stand-in for Salesforce's Pub/Sub API (no SaaS is reachable here), following its
//! documented protocol: `Subscribe` is a bidirectional stream where each `FetchRequest`
//! adds `num_requested` to what the server may send and the server never sends more;
//! replay ids are opaque bytes (here 8 big-endian bytes of a sequence); a replay id older
//! than the retained events is refused with `INVALID_ARGUMENT` ("The Replay ID validation
//! failed"); idle subscriptions get keepalive responses with the latest replay id; payloads
//! are Avro binary datums of the schema `GetSchema` returns. Change events carry the
//! documented `ChangeEventHeader`, with `changedFields` and `nulledFields` as hex bitmaps
//! over the schema's field positions. Sessions are checked (`accesstoken`, `instanceurl`,
//! `tenantid` metadata).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apache_avro::Schema;
use apache_avro::types::Value as Avro;
use spm_proto::eventbus::v1 as pb;
use spm_proto::eventbus::v1::pub_sub_server::{PubSub, PubSubServer};
use tokio::sync::Notify;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status, Streaming};

pub const ORG_ID: &str = "00D000000000001EAA";
/// The first session's token (a connector may be given it directly, or fetch one from the
/// fake's OAuth endpoint with [`CLIENT_ID`] and [`CLIENT_SECRET`]).
pub const TOKEN: &str = "00D000000000001!fake-session-token";
pub const CLIENT_ID: &str = "3MVG9fake-connected-app";
pub const CLIENT_SECRET: &str = "fake-connected-app-secret";
pub const INSTANCE_URL: &str = "https://spm-test.my.salesforce.com";

/// The change event header, as Salesforce documents it (first field of every CDC schema).
const HEADER: &str = r#"{"name": "ChangeEventHeader", "type": {"type": "record", "name": "ChangeEventHeader",
  "namespace": "com.sforce.eventbus", "fields": [
    {"name": "entityName", "type": "string"},
    {"name": "recordIds", "type": {"type": "array", "items": "string"}},
    {"name": "changeType", "type": {"type": "enum", "name": "ChangeType", "namespace": "com.sforce.eventbus",
      "symbols": ["CREATE", "UPDATE", "DELETE", "UNDELETE", "GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE", "GAP_OVERFLOW", "SNAPSHOT"]}},
    {"name": "changeOrigin", "type": "string"},
    {"name": "transactionKey", "type": "string"},
    {"name": "sequenceNumber", "type": "int"},
    {"name": "commitTimestamp", "type": "long"},
    {"name": "commitNumber", "type": "long"},
    {"name": "commitUser", "type": "string"},
    {"name": "nulledFields", "type": {"type": "array", "items": "string"}},
    {"name": "diffFields", "type": {"type": "array", "items": "string"}},
    {"name": "changedFields", "type": {"type": "array", "items": "string"}}]}}"#;

fn cdc_schema(name: &str, fields: &[(&str, &str)]) -> String {
    let fs: Vec<String> = fields
        .iter()
        .map(|(n, t)| format!(r#"{{"name": "{n}", "type": ["null", {t}], "default": null}}"#))
        .collect();
    format!(
        r#"{{"type": "record", "name": "{name}", "namespace": "com.sforce.eventbus", "fields": [{HEADER}, {}]}}"#,
        fs.join(", ")
    )
}

const STRING: &str = r#""string""#;
const DOUBLE: &str = r#""double""#;
const DATE: &str = r#"{"type": "int", "logicalType": "date"}"#;
const TS: &str = r#"{"type": "long", "logicalType": "timestamp-millis"}"#;

/// OpportunityChangeEvent (the fields the tests use, in Salesforce's names and types).
pub fn opportunity_schema() -> String {
    cdc_schema(
        "OpportunityChangeEvent",
        &[
            ("Name", STRING),
            ("AccountId", STRING),
            ("OwnerId", STRING),
            ("StageName", STRING),
            ("Amount", DOUBLE),
            ("CurrencyIsoCode", STRING),
            ("CloseDate", DATE),
            ("LastModifiedDate", TS),
        ],
    )
}

/// The same entity after an admin replaced Amount with a custom field: a schema change.
pub fn opportunity_schema_without_amount() -> String {
    cdc_schema(
        "OpportunityChangeEvent",
        &[
            ("Name", STRING),
            ("AccountId", STRING),
            ("OwnerId", STRING),
            ("StageName", STRING),
            ("Amount_Net__c", DOUBLE),
            ("CurrencyIsoCode", STRING),
            ("CloseDate", DATE),
            ("LastModifiedDate", TS),
        ],
    )
}

pub fn split_schema() -> String {
    cdc_schema(
        "OpportunitySplitChangeEvent",
        &[
            ("OpportunityId", STRING),
            ("SplitOwnerId", STRING),
            ("SplitPercentage", DOUBLE),
            ("SplitTypeId", STRING),
        ],
    )
}

/// A custom platform event for payments (`/event/Payment_Received__e`).
pub fn payment_schema() -> String {
    r#"{"type": "record", "name": "Payment_Received__e", "namespace": "com.sforce.eventbus", "fields": [
        {"name": "CreatedDate", "type": "long"},
        {"name": "CreatedById", "type": "string"},
        {"name": "Payment_Id__c", "type": ["null", "string"], "default": null},
        {"name": "Opportunity__c", "type": ["null", "string"], "default": null},
        {"name": "Amount__c", "type": ["null", "double"], "default": null}]}"#
        .into()
}

/// A field value of a change.
#[derive(Debug, Clone)]
pub enum F {
    S(String),
    D(f64),
    Date(i32),
    Ts(i64),
    /// Set to null by the change (goes into `nulledFields`).
    Null,
}

pub fn s(v: &str) -> F {
    F::S(v.to_owned())
}

/// One change event to publish.
#[derive(Debug, Clone)]
pub struct Change {
    pub entity: String,
    pub record_id: String,
    /// CREATE, UPDATE, DELETE, UNDELETE, GAP_UPDATE...
    pub change_type: String,
    pub fields: Vec<(String, F)>,
    pub commit_ms: i64,
}

impl Change {
    pub fn new(entity: &str, record_id: &str, change_type: &str, fields: &[(&str, F)]) -> Self {
        Self {
            entity: entity.into(),
            record_id: record_id.into(),
            change_type: change_type.into(),
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            commit_ms: chrono::Utc::now().timestamp_millis(),
        }
    }
}

fn bitmap(positions: &[usize]) -> String {
    let top = positions.iter().max().map_or(0, |m| m / 4);
    let mut digits = vec![0u32; top + 1];
    for p in positions {
        digits[p / 4] |= 1 << (p % 4);
    }
    let s: String = digits
        .iter()
        .rev()
        .map(|d| {
            char::from_digit(*d, 16)
                .expect("nibble")
                .to_ascii_uppercase()
        })
        .collect();
    format!("0x{s}")
}

/// The fake org's system change number: every change commits after the previous one.
static COMMIT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1_000_000);

fn avro(v: &F) -> Avro {
    match v {
        F::S(s) => Avro::Union(1, Box::new(Avro::String(s.clone()))),
        F::D(d) => Avro::Union(1, Box::new(Avro::Double(*d))),
        F::Date(d) => Avro::Union(1, Box::new(Avro::Date(*d))),
        F::Ts(t) => Avro::Union(1, Box::new(Avro::TimestampMillis(*t))),
        F::Null => Avro::Union(0, Box::new(Avro::Null)),
    }
}

/// Encodes a change event as the Avro datum of `schema_json`.
pub fn encode_change(schema_json: &str, c: &Change) -> Vec<u8> {
    let schema = Schema::parse_str(schema_json).expect("fake schema parses");
    let Schema::Record(r) = &schema else {
        panic!("record schema")
    };
    let mut changed = Vec::new();
    let mut nulled = Vec::new();
    let mut items = Vec::new();
    for (i, f) in r.fields.iter().enumerate() {
        if f.name == "ChangeEventHeader" {
            continue;
        }
        match c.fields.iter().find(|(n, _)| *n == f.name) {
            Some((_, v)) => {
                changed.push(i);
                if matches!(v, F::Null) {
                    nulled.push(i);
                }
                items.push((f.name.clone(), avro(v)));
            }
            None => items.push((f.name.clone(), Avro::Union(0, Box::new(Avro::Null)))),
        }
    }
    for (n, _) in &c.fields {
        assert!(
            r.fields.iter().any(|f| f.name == *n),
            "field {n} is not in the schema"
        );
    }
    let strs = |v: Vec<String>| Avro::Array(v.into_iter().map(Avro::String).collect());
    let bitmaps = |p: &[usize]| {
        if p.is_empty() {
            vec![]
        } else {
            vec![bitmap(p)]
        }
    };
    let symbols = [
        "CREATE",
        "UPDATE",
        "DELETE",
        "UNDELETE",
        "GAP_CREATE",
        "GAP_UPDATE",
        "GAP_DELETE",
        "GAP_UNDELETE",
        "GAP_OVERFLOW",
        "SNAPSHOT",
    ];
    let idx = symbols
        .iter()
        .position(|s| *s == c.change_type)
        .expect("known change type");
    let header = Avro::Record(vec![
        ("entityName".into(), Avro::String(c.entity.clone())),
        ("recordIds".into(), strs(vec![c.record_id.clone()])),
        (
            "changeType".into(),
            Avro::Enum(u32::try_from(idx).expect("small"), c.change_type.clone()),
        ),
        (
            "changeOrigin".into(),
            Avro::String("com/salesforce/api/soap/62.0;client=spm-test".into()),
        ),
        (
            "transactionKey".into(),
            Avro::String(uuid::Uuid::new_v4().to_string()),
        ),
        ("sequenceNumber".into(), Avro::Int(1)),
        ("commitTimestamp".into(), Avro::Long(c.commit_ms)),
        (
            "commitNumber".into(),
            Avro::Long(COMMIT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)),
        ),
        (
            "commitUser".into(),
            Avro::String("005000000000001AAA".into()),
        ),
        ("nulledFields".into(), strs(bitmaps(&nulled))),
        ("diffFields".into(), strs(vec![])),
        ("changedFields".into(), strs(bitmaps(&changed))),
    ]);
    let mut all = vec![("ChangeEventHeader".to_owned(), header)];
    all.extend(items);
    apache_avro::to_avro_datum(&schema, Avro::Record(all)).expect("encode change event")
}

/// Encodes a platform event of [`payment_schema`].
pub fn encode_payment(payment_id: &str, opportunity: &str, amount: f64) -> Vec<u8> {
    let schema = Schema::parse_str(&payment_schema()).expect("schema");
    apache_avro::to_avro_datum(
        &schema,
        Avro::Record(vec![
            (
                "CreatedDate".into(),
                Avro::Long(chrono::Utc::now().timestamp_millis()),
            ),
            (
                "CreatedById".into(),
                Avro::String("005000000000001AAA".into()),
            ),
            ("Payment_Id__c".into(), avro(&s(payment_id))),
            ("Opportunity__c".into(), avro(&s(opportunity))),
            ("Amount__c".into(), avro(&F::D(amount))),
        ]),
    )
    .expect("encode platform event")
}

struct Stored {
    replay: u64,
    event: pb::ProducerEvent,
}

#[derive(Default)]
struct State {
    schemas: BTreeMap<String, String>,
    topics: BTreeMap<String, Vec<Stored>>,
    next_replay: u64,
    /// Events with a smaller replay id are past retention.
    earliest: u64,
    /// The most events sent in one response, and requested and not yet sent at any time.
    max_batch: usize,
    over_sent: bool,
    subscribes: usize,
    delivered: u64,
    /// The valid session token; every expiry makes a new one and ends open subscriptions.
    token: String,
    session: u64,
    tokens_issued: usize,
}

/// The running fake.
#[derive(Clone)]
pub struct FakePubSub {
    pub url: String,
    /// The OAuth 2.0 token endpoint (client credentials flow).
    pub oauth_url: String,
    state: Arc<Mutex<State>>,
    published: Arc<Notify>,
    keepalive: Duration,
}

fn replay_bytes(r: u64) -> Vec<u8> {
    r.to_be_bytes().to_vec()
}

impl FakePubSub {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake pubsub");
        let addr = listener.local_addr().expect("addr");
        let oauth = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake oauth");
        let oauth_addr = oauth.local_addr().expect("addr");
        let fake = Self {
            url: format!("http://{addr}"),
            oauth_url: format!("http://{oauth_addr}/services/oauth2/token"),
            state: Arc::new(Mutex::new(State {
                next_replay: 1000,
                token: TOKEN.into(),
                ..State::default()
            })),
            published: Arc::new(Notify::new()),
            keepalive: Duration::from_millis(1500),
        };
        let app = axum::Router::new()
            .route("/services/oauth2/token", axum::routing::post(token))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(oauth, app).await.expect("fake oauth serves") });
        let svc = PubSubServer::new(fake.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .expect("fake pubsub serves");
        });
        fake
    }

    pub fn add_schema(&self, id: &str, json: &str) {
        self.state
            .lock()
            .expect("lock")
            .schemas
            .insert(id.into(), json.into());
    }

    pub fn add_topic(&self, topic: &str) {
        self.state
            .lock()
            .expect("lock")
            .topics
            .entry(topic.into())
            .or_default();
    }

    /// Publishes a payload on `topic`; returns the event's UUID.
    pub fn publish(&self, topic: &str, schema_id: &str, payload: Vec<u8>) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        {
            let mut st = self.state.lock().expect("lock");
            assert!(
                st.schemas.contains_key(schema_id),
                "unknown schema {schema_id}"
            );
            st.next_replay += 1;
            let replay = st.next_replay;
            st.topics.entry(topic.into()).or_default().push(Stored {
                replay,
                event: pb::ProducerEvent {
                    id: id.clone(),
                    schema_id: schema_id.into(),
                    payload,
                    headers: vec![],
                },
            });
        }
        self.published.notify_waiters();
        id
    }

    /// Drops every event published so far from retention (as 72 hours passing would).
    pub fn expire_all(&self) {
        let mut st = self.state.lock().expect("lock");
        st.earliest = st.next_replay + 1;
        for t in st.topics.values_mut() {
            t.clear();
        }
    }

    /// Ends the session (as its timeout would): the token stops working, open
    /// subscriptions end with UNAUTHENTICATED, and the OAuth endpoint issues a new one.
    pub fn expire_session(&self) {
        {
            let mut st = self.state.lock().expect("lock");
            st.session += 1;
            st.token = format!(
                "00D000000000001!session-{}-{}",
                st.session,
                uuid::Uuid::new_v4()
            );
        }
        self.published.notify_waiters();
    }

    /// Tokens the OAuth endpoint issued.
    pub fn tokens_issued(&self) -> usize {
        self.state.lock().expect("lock").tokens_issued
    }

    /// (most events in one response, whether more were ever sent than requested,
    /// subscriptions opened, events delivered).
    pub fn stats(&self) -> (usize, bool, usize, u64) {
        let st = self.state.lock().expect("lock");
        (st.max_batch, st.over_sent, st.subscribes, st.delivered)
    }

    fn check_session<T>(&self, req: &Request<T>) -> Result<u64, Status> {
        let md = req.metadata();
        let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let st = self.state.lock().expect("lock");
        if get("accesstoken") != st.token
            || get("tenantid") != ORG_ID
            || get("instanceurl") != INSTANCE_URL
        {
            return Err(Status::unauthenticated(
                "Invalid session: accesstoken, instanceurl and tenantid must name a valid session of the org",
            ));
        }
        Ok(st.session)
    }
}

type FetchStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::FetchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PubSub for FakePubSub {
    type SubscribeStream = FetchStream;

    async fn get_schema(
        &self,
        req: Request<pb::SchemaRequest>,
    ) -> Result<Response<pb::SchemaInfo>, Status> {
        self.check_session(&req)?;
        let id = req.into_inner().schema_id;
        let st = self.state.lock().expect("lock");
        let json = st
            .schemas
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("schema {id} not found")))?;
        Ok(Response::new(pb::SchemaInfo {
            schema_json: json.clone(),
            schema_id: id,
            rpc_id: uuid::Uuid::new_v4().to_string(),
        }))
    }

    async fn get_topic(
        &self,
        req: Request<pb::TopicRequest>,
    ) -> Result<Response<pb::TopicInfo>, Status> {
        self.check_session(&req)?;
        let name = req.into_inner().topic_name;
        let st = self.state.lock().expect("lock");
        if !st.topics.contains_key(&name) {
            return Err(Status::not_found(format!("topic {name} not found")));
        }
        Ok(Response::new(pb::TopicInfo {
            topic_name: name,
            tenant_guid: ORG_ID.into(),
            can_publish: true,
            can_subscribe: true,
            schema_id: String::new(),
            rpc_id: uuid::Uuid::new_v4().to_string(),
        }))
    }

    async fn subscribe(
        &self,
        req: Request<Streaming<pb::FetchRequest>>,
    ) -> Result<Response<FetchStream>, Status> {
        let session = self.check_session(&req)?;
        let mut incoming = req.into_inner();
        let first = incoming
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("no FetchRequest"))??;
        let topic = first.topic_name.clone();
        // The position: index of the next event to send in the topic's retained list.
        let start = {
            let mut st = self.state.lock().expect("lock");
            st.subscribes += 1;
            let earliest = st.earliest;
            let after_latest = st.next_replay + 1;
            if !st.topics.contains_key(&topic) {
                return Err(Status::not_found(format!("topic {topic} not found")));
            }
            match first.replay_preset() {
                pb::ReplayPreset::Latest => after_latest,
                pb::ReplayPreset::Earliest => 0,
                pb::ReplayPreset::Custom => {
                    let r = <[u8; 8]>::try_from(first.replay_id.as_slice())
                        .map(u64::from_be_bytes)
                        .map_err(|_| {
                            Status::invalid_argument(
                                "The Replay ID validation failed: the replay id is malformed",
                            )
                        })?;
                    if r < earliest {
                        return Err(Status::invalid_argument(format!(
                            "The Replay ID validation failed: replay id {r} is outside the retention window"
                        )));
                    }
                    r + 1
                }
            }
        };
        let credit = Arc::new(Mutex::new(i64::from(first.num_requested.max(0))));
        let more = Arc::new(Notify::new());
        {
            let credit = credit.clone();
            let more = more.clone();
            tokio::spawn(async move {
                while let Some(Ok(r)) = incoming.next().await {
                    *credit.lock().expect("lock") += i64::from(r.num_requested.max(0));
                    more.notify_one();
                }
            });
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let fake = self.clone();
        tokio::spawn(async move {
            // `next`: the smallest replay id still to send.
            let mut next = start;
            loop {
                // Registered before looking, so that a publish in between is not missed.
                let published = fake.published.notified();
                tokio::pin!(published);
                published.as_mut().enable();
                let expired = fake.state.lock().expect("lock").session != session;
                if expired {
                    let _ = tx
                        .send(Err(Status::unauthenticated("Session expired or invalid")))
                        .await;
                    return;
                }
                let (events, latest, pending) = {
                    let mut st = fake.state.lock().expect("lock");
                    let mut c = credit.lock().expect("lock");
                    let list = st.topics.get(&topic).map(Vec::as_slice).unwrap_or_default();
                    let avail: Vec<&Stored> = list.iter().filter(|s| s.replay >= next).collect();
                    let n = usize::try_from(*c).unwrap_or(0).min(avail.len()).min(100);
                    let events: Vec<pb::ConsumerEvent> = avail[..n]
                        .iter()
                        .map(|s| pb::ConsumerEvent {
                            event: Some(s.event.clone()),
                            replay_id: replay_bytes(s.replay),
                        })
                        .collect();
                    let latest = list.last().map(|s| s.replay).unwrap_or(st.next_replay);
                    if let Some(last) = avail[..n].last() {
                        next = last.replay + 1;
                    }
                    *c -= i64::try_from(n).expect("small");
                    if *c < 0 {
                        st.over_sent = true;
                    }
                    st.max_batch = st.max_batch.max(n);
                    st.delivered += n as u64;
                    (events, latest, *c)
                };
                let resp = pb::FetchResponse {
                    latest_replay_id: replay_bytes(latest),
                    rpc_id: uuid::Uuid::new_v4().to_string(),
                    pending_num_requested: i32::try_from(pending).unwrap_or(0),
                    events,
                };
                if !resp.events.is_empty() {
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                } else {
                    // Wait for a publish, more credit, or the keepalive interval.
                    let woke = tokio::select! {
                        () = published => true,
                        () = more.notified() => true,
                        () = tokio::time::sleep(fake.keepalive) => false,
                    };
                    if !woke && tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// The OAuth 2.0 token endpoint: client credentials in a form, the session's token out.
async fn token(
    axum::extract::State(fake): axum::extract::State<FakePubSub>,
    body: String,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    if get("grant_type") != "client_credentials"
        || get("client_id") != CLIENT_ID
        || get("client_secret") != CLIENT_SECRET
    {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": "invalid_client", "error_description": "invalid client credentials"})),
        )
            .into_response();
    }
    let mut st = fake.state.lock().expect("lock");
    st.tokens_issued += 1;
    axum::Json(serde_json::json!({
        "access_token": st.token,
        "instance_url": INSTANCE_URL,
        "id": format!("https://login.salesforce.com/id/{ORG_ID}/005000000000001AAA"),
        "token_type": "Bearer",
        "issued_at": chrono::Utc::now().timestamp_millis().to_string(),
        "signature": "fake"
    }))
    .into_response()
}
