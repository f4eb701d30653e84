//! Salesforce through the Pub/Sub API: one `Subscribe` stream per configured topic, with
//! flow control by requested event count. Each batch of events is decoded with its schema
//! (`GetSchema`, cached by schema id), merged into the records it changes, mapped, and
//! submitted through ingest; then, in one transaction with the merged records and the
//! problems found, the checkpoint moves to the batch's last replay id. A restart resumes
//! after that id, so what was submitted and not checkpointed is submitted again with the same
//! ids, which ingest answers as duplicates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema;
use chrono::{DateTime, Utc};
use spm_proto::eventbus::v1 as pb;
use spm_proto::eventbus::v1::pub_sub_client::PubSubClient;
use spm_proto::ingest::v1::{CrmEvent, crm_event::Payload};
use sqlx::{PgConnection, PgPool};
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::domain::cdc::{self, ChangeType, Decoded};
use crate::domain::mapping::{DealDecision, DealState, Fields, Mapping, Problem, Reason, text};
use crate::settings::Salesforce;
use crate::store::{self, Origin};
use crate::submit::{Ingest, Outcome};

pub const SOURCE: &str = "salesforce";

/// The most events merged into one batch (one transaction and one submission to ingest).
const MAX_BATCH: usize = 500;

pub struct Subscriber {
    pub tenant: String,
    pub ingest_key: String,
    pub sf: Arc<Salesforce>,
    pub topic: String,
    pub pool: PgPool,
    pub ingest: Ingest,
    /// How long the CRM keeps events (72 hours): an older checkpoint cannot be resumed.
    pub retention: Duration,
    pub cancel: CancellationToken,
    /// For the OAuth token endpoint.
    pub http: reqwest::Client,
    /// The session's access token (from the file, or the last one OAuth gave).
    pub token: std::sync::Mutex<String>,
}

enum End {
    Cancelled,
    /// Salesforce refused or ended the session.
    Unauthenticated(String),
    Stale(String),
    Failed(String),
}

/// A schema `GetSchema` returned.
struct Known {
    schema: Schema,
}

impl Subscriber {
    pub async fn run(self) {
        let t = &self.tenant;
        if let Err(e) = store::ensure_stream(&self.pool, t, SOURCE, &self.topic).await {
            tracing::error!(error = %e, "connect: cannot record the stream");
        }
        let mut delay = Duration::from_millis(500);
        let mut schemas: HashMap<String, Arc<Known>> = HashMap::new();
        // When the last new token was fetched: a token refused again at once (a revoked app,
        // a wrong org) is retried with backoff, not in a tight loop.
        let mut refreshed: Option<std::time::Instant> = None;
        loop {
            match self.session(&mut schemas).await {
                End::Cancelled => return,
                End::Stale(why) => {
                    tracing::error!(tenant = %t, topic = %self.topic, %why, "checkpoint is older than the CRM's retention: waiting for the operator (spm connect resolve --resync | --skip)");
                    let _ = store::set_state(
                        &self.pool,
                        t,
                        SOURCE,
                        &self.topic,
                        "stale_checkpoint",
                        &why,
                    )
                    .await;
                    if !self.wait_resolved().await {
                        return;
                    }
                    delay = Duration::from_millis(500);
                }
                End::Unauthenticated(why)
                    if self.sf.oauth.is_some()
                        && refreshed.is_none_or(|r| r.elapsed() > Duration::from_secs(10)) =>
                {
                    refreshed = Some(std::time::Instant::now());
                    tracing::info!(tenant = %t, topic = %self.topic, %why, "session ended; fetching a new access token");
                    self.set_token(String::new());
                    crate::metrics::crm_retry(SOURCE, "session");
                }
                End::Unauthenticated(why) | End::Failed(why) => {
                    if self.sf.oauth.is_some() {
                        // The next attempt starts from a new token.
                        self.set_token(String::new());
                    }
                    tracing::warn!(tenant = %t, topic = %self.topic, error = %why, retry_in = ?delay, "Pub/Sub subscription ended; reconnecting");
                    let _ = store::set_state(&self.pool, t, SOURCE, &self.topic, "retrying", &why)
                        .await;
                    crate::metrics::crm_retry(SOURCE, "subscribe");
                    tokio::select! {
                        () = self.cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Waits until the operator chose (state no longer stale); false when cancelled.
    async fn wait_resolved(&self) -> bool {
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return false,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            match store::checkpoint(&self.pool, &self.tenant, SOURCE, &self.topic).await {
                Ok(c) if c.state != "stale_checkpoint" => return true,
                _ => {}
            }
        }
    }

    fn set_token(&self, t: String) {
        *self.token.lock().expect("token lock") = t;
    }

    /// An access token: the configured one, or (OAuth) the current one, fetched when there
    /// is none.
    async fn ensure_token(&self) -> Result<(), End> {
        let Some(o) = &self.sf.oauth else {
            return Ok(());
        };
        if !self.token.lock().expect("token lock").is_empty() {
            return Ok(());
        }
        let resp = self
            .http
            .post(&o.token_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", o.client_id.as_str()),
                ("client_secret", o.client_secret.as_str()),
            ])
            .send()
            .await
            .map_err(|e| End::Failed(format!("OAuth token request to {}: {e}", o.token_url)))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        match body.get("access_token").and_then(serde_json::Value::as_str) {
            Some(t) if status.is_success() => {
                self.set_token(t.to_owned());
                Ok(())
            }
            _ => Err(End::Failed(format!(
                "OAuth token request to {}: HTTP {status}: {}",
                o.token_url,
                body.get("error_description")
                    .or(body.get("error"))
                    .unwrap_or(&body)
            ))),
        }
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        let md = r.metadata_mut();
        let token = self.token.lock().expect("token lock").clone();
        for (k, v) in [
            ("accesstoken", token.as_str()),
            ("instanceurl", self.sf.instance_url.as_str()),
            ("tenantid", self.sf.org_id.as_str()),
        ] {
            if let Ok(v) = v.parse() {
                md.insert(k, v);
            }
        }
        r
    }

    async fn channel(&self) -> Result<Channel, String> {
        let mut ep = Endpoint::from_shared(self.sf.pubsub_url.clone())
            .map_err(|e| format!("pubsub_url {:?}: {e}", self.sf.pubsub_url))?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(30));
        if self.sf.pubsub_url.starts_with("https://") {
            ep = ep
                .tls_config(ClientTlsConfig::new().with_webpki_roots())
                .map_err(|e| format!("TLS: {e}"))?;
        }
        ep.connect()
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.sf.pubsub_url))
    }

    async fn session(&self, schemas: &mut HashMap<String, Arc<Known>>) -> End {
        let cp = match store::checkpoint(&self.pool, &self.tenant, SOURCE, &self.topic).await {
            Ok(c) => c,
            Err(e) => return End::Failed(format!("reading the checkpoint: {e}")),
        };
        let (preset, replay_id) = match (cp.state.as_str(), cp.replay_id) {
            ("stale_checkpoint", _) => return End::Stale("still waiting for the operator".into()),
            ("skip", _) => (pb::ReplayPreset::Latest, Vec::new()),
            ("resync", _) | (_, None) => (pb::ReplayPreset::Earliest, Vec::new()),
            (_, Some(id)) => {
                let age = cp
                    .checkpointed_at
                    .map(|at| Utc::now() - at)
                    .and_then(|d| d.to_std().ok())
                    .unwrap_or_default();
                if age > self.retention {
                    return End::Stale(format!(
                        "the checkpoint was written {}h ago; the CRM keeps events {}h",
                        age.as_secs() / 3600,
                        self.retention.as_secs() / 3600
                    ));
                }
                (pb::ReplayPreset::Custom, id)
            }
        };
        if let Err(e) = self.ensure_token().await {
            return e;
        }
        let channel = match self.channel().await {
            Ok(c) => c,
            Err(e) => return End::Failed(e),
        };
        let mut client = PubSubClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::FetchRequest>(4);
        let first = pb::FetchRequest {
            topic_name: self.topic.clone(),
            replay_preset: preset as i32,
            replay_id,
            num_requested: self.sf.batch,
            auth_refresh: String::new(),
        };
        if tx.send(first).await.is_err() {
            return End::Failed("request stream closed".into());
        }
        let mut stream = match client
            .subscribe(self.request(tokio_stream::wrappers::ReceiverStream::new(rx)))
            .await
        {
            Ok(s) => s.into_inner(),
            Err(s) => return classify(&s),
        };
        tracing::info!(tenant = %self.tenant, topic = %self.topic, preset = ?preset, "subscribed");
        // A resync or skip stays so until the first checkpoint moves (a restart before then
        // starts the same way again).
        let _ = sqlx::query(
            "UPDATE checkpoints SET state = 'running', last_error = '' WHERE tenant_id = $1 AND source = $2 AND stream = $3 AND state = 'retrying'",
        )
        .bind(&self.tenant)
        .bind(SOURCE)
        .bind(&self.topic)
        .execute(&self.pool)
        .await;
        loop {
            let msg = tokio::select! {
                () = self.cancel.cancelled() => return End::Cancelled,
                m = stream.next() => m,
            };
            let resp = match msg {
                None => return End::Failed("the server ended the subscription".into()),
                Some(Err(s)) => return classify(&s),
                Some(Ok(r)) => r,
            };
            let mut resp = resp;
            // Responses already received go into the same batch (one transaction, one
            // submission): a backlog is worked off in large batches, not one response at
            // a time.
            while !resp.events.is_empty() && resp.events.len() < MAX_BATCH {
                match futures::FutureExt::now_or_never(stream.next()) {
                    Some(Some(Ok(next))) => {
                        resp.events.extend(next.events);
                        resp.pending_num_requested = next.pending_num_requested;
                    }
                    Some(Some(Err(s))) => return classify(&s),
                    Some(None) | None => break,
                }
            }
            if resp.events.is_empty() {
                // A keepalive: everything before it is processed, so the position may move
                // and the checkpoint stays fresh on a quiet topic.
                if !resp.latest_replay_id.is_empty() {
                    let mut c = match self.pool.acquire().await {
                        Ok(c) => c,
                        Err(e) => return End::Failed(e.to_string()),
                    };
                    if let Err(e) = store::advance(
                        &mut c,
                        &self.tenant,
                        SOURCE,
                        &self.topic,
                        Some(&resp.latest_replay_id),
                        0,
                        0,
                        0,
                    )
                    .await
                    {
                        return End::Failed(e.to_string());
                    }
                }
            } else {
                let mut client = client.clone();
                match self.batch(&mut client, schemas, resp.events).await {
                    Ok(()) => {}
                    Err(End::Cancelled) => return End::Cancelled,
                    Err(e) => return e,
                }
            }
            if resp.pending_num_requested <= 0 {
                let more = pb::FetchRequest {
                    topic_name: self.topic.clone(),
                    num_requested: self.sf.batch,
                    ..Default::default()
                };
                if tx.send(more).await.is_err() {
                    return End::Failed("request stream closed".into());
                }
            }
        }
    }

    async fn schema(
        &self,
        client: &mut PubSubClient<Channel>,
        schemas: &mut HashMap<String, Arc<Known>>,
        id: &str,
    ) -> Result<Arc<Known>, End> {
        if let Some(k) = schemas.get(id) {
            return Ok(k.clone());
        }
        let info = client
            .get_schema(self.request(pb::SchemaRequest {
                schema_id: id.to_owned(),
            }))
            .await
            .map_err(|s| match classify(&s) {
                End::Unauthenticated(m) => End::Unauthenticated(m),
                _ => End::Failed(format!("GetSchema {id}: {}", s.message())),
            })?
            .into_inner();
        let schema = match cdc::parse_schema(&info.schema_json) {
            Ok(s) => s,
            Err(e) => return Err(End::Failed(format!("schema {id}: {e}"))),
        };
        tracing::info!(tenant = %self.tenant, topic = %self.topic, schema = id, "new schema");
        let k = Arc::new(Known { schema });
        schemas.insert(id.to_owned(), k.clone());
        Ok(k)
    }

    async fn batch(
        &self,
        client: &mut PubSubClient<Channel>,
        schemas: &mut HashMap<String, Arc<Known>>,
        events: Vec<pb::ConsumerEvent>,
    ) -> Result<(), End> {
        let n = events.len();
        crate::metrics::events_in(SOURCE, n);
        let last = events
            .last()
            .map(|e| e.replay_id.clone())
            .unwrap_or_default();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| End::Failed(e.to_string()))?;
        let mut out = Vec::new();
        let mut problems: Vec<(String, String, Problem)> = Vec::new();
        for ce in events {
            let Some(ev) = ce.event else { continue };
            let known = self.schema(client, schemas, &ev.schema_id).await?;
            let decoded = match cdc::decode(&known.schema, &ev.payload) {
                Ok(d) => d,
                Err(e) => {
                    problems.push((
                        ev.id.clone(),
                        String::new(),
                        Problem::new("payload", Reason::BadPayload, e.0),
                    ));
                    continue;
                }
            };
            let mapping = &self.sf.mapping;
            let object = match &decoded.change {
                Some(c) => c.entity.clone(),
                None => self.topic.trim_start_matches("/event/").to_owned(),
            };
            let wanted = mapping.fields_of(&object);
            let missing = cdc::missing_fields(&known.schema, &wanted);
            if !wanted.is_empty() && !missing.is_empty() {
                for rid in record_ids(&decoded) {
                    problems.push((
                        ev.id.clone(),
                        rid,
                        Problem::new(
                            missing.join(","),
                            Reason::Schema,
                            format!(
                                "schema {} of {} has no field {}: update the mapping",
                                ev.schema_id,
                                object,
                                missing.join(", ")
                            ),
                        ),
                    ));
                }
                continue;
            }
            let r = self
                .handle(&mut tx, mapping, &ev.id, &object, &decoded)
                .await
                .map_err(|e| End::Failed(format!("database: {e}")))?;
            for item in r {
                match item {
                    Item::Submit(e, revert) => out.push((ev.id.clone(), *e, revert)),
                    Item::Problem(rid, p) => problems.push((ev.id.clone(), rid, p)),
                }
            }
        }
        let events_out: Vec<CrmEvent> = out.iter().map(|(_, e, _)| e.clone()).collect();
        let outcomes = self
            .ingest
            .submit(&self.ingest_key, SOURCE, events_out, &self.cancel)
            .await
            .map_err(|_| End::Cancelled)?;
        let mut submitted = 0;
        for ((crm_id, e, revert), o) in out.into_iter().zip(outcomes) {
            match o {
                Outcome::Done(_) => submitted += 1,
                Outcome::Refused(p) => {
                    let rid = crate::subject(&e);
                    if let Some((deal, before)) = revert {
                        store::put_deal(&mut tx, &self.tenant, SOURCE, &deal, &before)
                            .await
                            .map_err(|e| End::Failed(e.to_string()))?;
                    }
                    problems.push((crm_id, rid, p));
                }
            }
        }
        let rejected = problems.len();
        for (crm_id, rid, p) in &problems {
            let o = Origin {
                tenant: &self.tenant,
                source: SOURCE,
                stream: &self.topic,
                crm_event_id: crm_id,
                record_id: rid,
            };
            store::add_error(&mut tx, &o, p)
                .await
                .map_err(|e| End::Failed(e.to_string()))?;
        }
        store::advance(
            &mut tx,
            &self.tenant,
            SOURCE,
            &self.topic,
            Some(&last),
            n as i64,
            submitted,
            rejected as i64,
        )
        .await
        .map_err(|e| End::Failed(e.to_string()))?;
        tx.commit().await.map_err(|e| End::Failed(e.to_string()))?;
        Ok(())
    }

    /// One decoded event: the SPM events it asks for and the problems it has.
    async fn handle(
        &self,
        conn: &mut PgConnection,
        mapping: &Mapping,
        crm_id: &str,
        object: &str,
        d: &Decoded,
    ) -> sqlx::Result<Vec<Item>> {
        let t = self.tenant.as_str();
        let mut items = Vec::new();
        let Some(change) = &d.change else {
            // A platform event.
            let at = time_field(&d.fields, "CreatedDate").unwrap_or_else(Utc::now);
            if let Some(r) = mapping.payment(object, &d.fields) {
                match r {
                    Ok(p) => {
                        let id = p.payment_id.clone();
                        items.push(Item::submit(
                            crate::spm_event(
                                SOURCE,
                                t,
                                crm_id,
                                &id,
                                "payment",
                                at,
                                Payload::PaymentReceived(p),
                            ),
                            None,
                        ));
                    }
                    Err(p) => items.push(Item::Problem(String::new(), p)),
                }
            } else if let Some(r) = mapping.activity(object, crm_id, &d.fields) {
                match r {
                    Ok(a) => items.push(Item::submit(
                        crate::spm_event(
                            SOURCE,
                            t,
                            crm_id,
                            crm_id,
                            "activity",
                            at,
                            Payload::ActivityLogged(a),
                        ),
                        None,
                    )),
                    Err(p) => items.push(Item::Problem(String::new(), p)),
                }
            }
            return Ok(items);
        };
        let at =
            DateTime::from_timestamp_millis(change.commit_timestamp_ms).unwrap_or_else(Utc::now);
        let is_deal = mapping.deal.object == object;
        let child = mapping
            .splits
            .as_ref()
            .filter(|s| s.object == object)
            .map(|s| s.deal.clone())
            .or_else(|| {
                mapping
                    .products
                    .as_ref()
                    .filter(|p| p.object == object)
                    .map(|p| p.deal.clone())
            });
        for rid in &change.record_ids {
            if change.change_type == ChangeType::Gap && (is_deal || child.is_some()) {
                items.push(Item::Problem(rid.clone(), Problem::new(
                    "ChangeEventHeader.changeType",
                    Reason::Gap,
                    "a gap event carries no field values: the record must be re-read in Salesforce and changed again",
                )));
                continue;
            }
            if is_deal || child.is_some() {
                let stored = store::record(conn, t, SOURCE, object, rid)
                    .await?
                    .unwrap_or_default();
                let position = (change.commit_number, change.sequence_number);
                if stored.position.is_some_and(|p| p >= position) {
                    // A change already merged, replayed (a re-sync from the earliest
                    // retained event): the record is newer than it.
                    tracing::debug!(record = %rid, "older change skipped");
                    continue;
                }
                let (mut fields, mut deleted) = (stored.fields, stored.deleted);
                match change.change_type {
                    ChangeType::Create => {
                        fields = d.fields.clone();
                        deleted = false;
                    }
                    ChangeType::Update | ChangeType::Undelete => {
                        fields.extend(d.fields.iter().map(|(k, v)| (k.clone(), v.clone())));
                        deleted = false;
                    }
                    ChangeType::Delete => deleted = true,
                    ChangeType::Gap => {}
                }
                for n in &change.nulled {
                    fields.remove(n);
                }
                let parent = child
                    .as_ref()
                    .and_then(|f| text(&fields, f).ok().map(str::to_owned));
                store::put_record(
                    conn,
                    t,
                    SOURCE,
                    object,
                    rid,
                    parent.as_deref(),
                    &fields,
                    deleted,
                    Some(position),
                )
                .await?;
                if let Some(parent) = parent {
                    let st = store::deal(conn, t, SOURCE, &parent).await?;
                    if st.closed.is_some() && !st.reversed {
                        items.push(Item::Problem(rid.clone(), Problem::new(
                            object,
                            Reason::ChangedAfterClose,
                            format!("{object} {rid} of deal {parent} changed after the deal was closed; the credits were not changed"),
                        )));
                    }
                    continue;
                }
                if !is_deal {
                    continue;
                }
                let before = store::deal(conn, t, SOURCE, rid).await?;
                let splits = match &mapping.splits {
                    Some(s) => store::children(conn, t, SOURCE, &s.object, rid).await?,
                    None => Vec::new(),
                };
                let lines = match &mapping.products {
                    Some(p) => store::children(conn, t, SOURCE, &p.object, rid).await?,
                    None => Vec::new(),
                };
                match mapping.decide(rid, &fields, deleted, &before, &splits, &lines) {
                    Ok(DealDecision::Close(dc, close_at)) => {
                        let amount = dc.amount.as_ref().expect("set");
                        let after = DealState {
                            closed: Some((
                                amount.amount.parse().expect("decimal text"),
                                amount.currency.clone(),
                            )),
                            reversed: false,
                        };
                        store::put_deal(conn, t, SOURCE, rid, &after).await?;
                        items.push(Item::submit(
                            crate::spm_event(
                                SOURCE,
                                t,
                                crm_id,
                                rid,
                                "closed",
                                close_at,
                                Payload::DealClosed(dc),
                            ),
                            Some((rid.clone(), before)),
                        ));
                    }
                    Ok(DealDecision::Reverse(r)) => {
                        let after = DealState {
                            closed: before.closed.clone(),
                            reversed: true,
                        };
                        store::put_deal(conn, t, SOURCE, rid, &after).await?;
                        items.push(Item::submit(
                            crate::spm_event(
                                SOURCE,
                                t,
                                crm_id,
                                rid,
                                "reversed",
                                at,
                                Payload::DealReversed(r),
                            ),
                            Some((rid.clone(), before)),
                        ));
                    }
                    Ok(DealDecision::Nothing) => {}
                    Err(p) => items.push(Item::Problem(rid.clone(), p)),
                }
            } else if change.change_type == ChangeType::Create
                && let Some(r) = mapping.activity(object, rid, &d.fields)
            {
                match r {
                    Ok(a) => items.push(Item::submit(
                        crate::spm_event(
                            SOURCE,
                            t,
                            crm_id,
                            rid,
                            "activity",
                            at,
                            Payload::ActivityLogged(a),
                        ),
                        None,
                    )),
                    Err(p) => items.push(Item::Problem(rid.clone(), p)),
                }
            } else if change.change_type == ChangeType::Create
                && let Some(r) = mapping.payment(object, &d.fields)
            {
                // A payment recorded as a custom object (its change events).
                match r {
                    Ok(p) => {
                        let id = p.payment_id.clone();
                        items.push(Item::submit(
                            crate::spm_event(
                                SOURCE,
                                t,
                                crm_id,
                                &id,
                                "payment",
                                at,
                                Payload::PaymentReceived(p),
                            ),
                            None,
                        ));
                    }
                    Err(p) => items.push(Item::Problem(rid.clone(), p)),
                }
            }
        }
        Ok(items)
    }
}

enum Item {
    /// An event, and for a deal the state to put back if ingest refuses it.
    Submit(Box<CrmEvent>, Option<(String, DealState)>),
    Problem(String, Problem),
}

impl Item {
    fn submit(e: CrmEvent, revert: Option<(String, DealState)>) -> Self {
        Self::Submit(Box::new(e), revert)
    }
}

fn record_ids(d: &Decoded) -> Vec<String> {
    d.change
        .as_ref()
        .map(|c| c.record_ids.clone())
        .unwrap_or_else(|| vec![String::new()])
}

fn time_field(f: &Fields, name: &str) -> Option<DateTime<Utc>> {
    f.get(name)?
        .as_i64()
        .and_then(DateTime::from_timestamp_millis)
}

fn classify(s: &tonic::Status) -> End {
    let m = s.message().to_ascii_lowercase();
    if s.code() == tonic::Code::InvalidArgument && m.contains("replay") {
        End::Stale(format!("Salesforce refused the replay id: {}", s.message()))
    } else if s.code() == tonic::Code::Unauthenticated {
        End::Unauthenticated(format!("Salesforce refused the session: {}", s.message()))
    } else {
        End::Failed(format!("{:?}: {}", s.code(), s.message()))
    }
}
