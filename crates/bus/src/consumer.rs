//! The at-least-once consumer loop with idempotent apply.
//!
//! For each batch of records (whatever is ready, up to `max_batch`), in ONE Postgres
//! transaction: record the event ids in the inbox (ids already there are skipped), let the
//! handler apply the new events and emit output events into the outbox, commit. Only then
//! are the offsets stored (and auto-committed by librdkafka). A crash anywhere before the
//! commit replays the batch; a crash after it replays records whose ids the inbox already
//! has. Records that cannot be decoded or that the handler rejects permanently go to the
//! DLQ; transient failures (database down) are retried with backoff without moving on.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{FutureExt as _, StreamExt as _};
use prost::Message as _;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers as _, OwnedMessage};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use spm_proto::events::v1::EventEnvelope;
use spm_telemetry::metrics::{self, labels};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info_span};
use uuid::Uuid;

use crate::dlq::Dlq;
use crate::{KafkaConfig, Producer, envelope_record};

/// One new (not yet applied) event handed to a [`Handler`].
#[derive(Debug)]
pub struct Incoming {
    pub event_id: Uuid,
    pub envelope: EventEnvelope,
    /// Base topic name (without the environment prefix), e.g. `spm.crm.deals.v1`.
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The "process" span of this record, a child of the producer's trace context.
    pub span: tracing::Span,
}

/// Why a handler could not apply a batch.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Retry later (database unavailable, serialization failure...).
    #[error("transient: {0}")]
    Transient(String),
    /// The event can never be applied; it goes to the DLQ. `event_id` names it when known;
    /// otherwise the loop finds it by applying the batch one event at a time.
    #[error("permanent: {reason}")]
    Permanent {
        event_id: Option<Uuid>,
        reason: String,
    },
}

impl HandlerError {
    pub fn permanent(event_id: Uuid, reason: impl Into<String>) -> Self {
        Self::Permanent {
            event_id: Some(event_id),
            reason: reason.into(),
        }
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        // Data and integrity errors (SQLSTATE classes 22, 23) will fail again on retry;
        // everything else (connection loss, serialization, shutdown) may succeed later.
        let permanent = e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23"));
        if permanent {
            Self::Permanent {
                event_id: None,
                reason: e.to_string(),
            }
        } else {
            Self::Transient(e.to_string())
        }
    }
}

/// Output events of a transaction, written to the outbox table in the same transaction.
#[derive(Debug)]
pub struct Outbox {
    prefix: String,
    rows: Vec<crate::Record>,
    /// Rows already written by [`Outbox::spill`] in this transaction.
    spilled: usize,
}

impl Outbox {
    pub fn new(cfg: &KafkaConfig) -> Self {
        Self {
            prefix: cfg.topic_prefix.clone(),
            rows: Vec::new(),
            spilled: 0,
        }
    }

    /// Emits `envelope` to base topic `topic` with `key`, carrying the trace context of
    /// `span` (the span of the event that caused it).
    pub fn emit(
        &mut self,
        span: &tracing::Span,
        topic: &str,
        key: String,
        envelope: &EventEnvelope,
    ) {
        self.rows.push(envelope_record(
            format!("{}{topic}", self.prefix),
            key,
            envelope,
            span,
        ));
    }

    /// Whether nothing was emitted (spilled rows count as emitted).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows emitted so far, spilled ones included.
    pub fn len(&self) -> usize {
        self.spilled + self.rows.len()
    }

    /// Writes the collected rows into the outbox table through `conn` (inside the caller's
    /// transaction) and clears them: one insert per [`OUTBOX_CHUNK_BYTES`] of payload, so a
    /// batch that emits thousands of events does not build (and leave the connection
    /// holding) one statement of many MiB.
    /// Writes the rows collected so far if there are at least `above` of them, in the
    /// caller's transaction (where [`Outbox::write`] would put them later): a long
    /// computation that emits as it goes (a plan change over a year of deals) holds at
    /// most `above` events in memory. Order is kept: the outbox's ids follow the writes.
    pub async fn spill(
        &mut self,
        conn: &mut PgConnection,
        above: usize,
    ) -> Result<(), sqlx::Error> {
        if self.rows.len() >= above {
            let n = self.rows.len();
            self.write(conn).await?;
            self.spilled += n;
        }
        Ok(())
    }

    pub async fn write(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let mut rows = self.rows.drain(..).peekable();
        while rows.peek().is_some() {
            let mut topics = Vec::new();
            let mut keys = Vec::new();
            let mut payloads = Vec::new();
            let mut headers = Vec::new();
            let mut bytes = 0;
            while bytes < OUTBOX_CHUNK_BYTES
                && let Some(r) = rows.next()
            {
                bytes += r.payload.len() + r.key.len();
                topics.push(r.topic);
                keys.push(r.key);
                payloads.push(r.payload);
                headers.push(serde_json::to_value(&r.headers).expect("headers serialize"));
            }
            sqlx::query(
                "INSERT INTO outbox (topic, key, payload, headers)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::jsonb[])",
            )
            .bind(&topics)
            .bind(&keys)
            .bind(&payloads)
            .bind(&headers)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

/// Payload bytes per outbox insert (see [`Outbox::write`]).
const OUTBOX_CHUNK_BYTES: usize = 256 << 10;

/// A service's business logic plugged into the loop.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Applies `batch` (events never applied before, in partition order per partition)
    /// inside the loop's transaction, emitting output events into `out`.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        batch: &[&Incoming],
        out: &mut Outbox,
    ) -> Result<(), HandlerError>;

    /// Called after the transaction of `batch` committed (wake watchers, caches...).
    fn committed(&self, _batch: &[&Incoming]) {}
}

/// Where the loop is to stop in tests: `SPM_FAILPOINT=hang_after_db_commit` makes it stall
/// forever right after a database commit and before storing the offsets, so that a test
/// can SIGKILL the process at exactly that point.
fn failpoint_hang_after_commit() -> bool {
    std::env::var("SPM_FAILPOINT").is_ok_and(|v| v == "hang_after_db_commit")
}

/// The consumer loop of one consumer group.
pub struct ConsumerLoop {
    cfg: KafkaConfig,
    group: String,
    topics: Vec<String>,
    pool: PgPool,
    handler: Arc<dyn Handler>,
    dlq: Dlq,
    relay_wake: Option<Arc<Notify>>,
    /// Overrides the prefetch of the live loop (not of replays): records, fetch bytes.
    prefetch: Option<(u32, u32)>,
    max_batch: usize,
    /// Group members this loop runs (each its own consumer, see [`ConsumerLoop::members`]).
    members: usize,
}

/// A partition to replay: topic, partition, end offset.
type Part = (String, i32, i64);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("a replay worker failed: {0}")]
    Join(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "the topics hold no records but {0} events were applied here: refusing to rebuild \
         (is KAFKA_BROKERS/KAFKA_TOPIC_PREFIX right? did the broker lose its data?)"
    )]
    NothingToRebuildFrom(i64),
}

impl ConsumerLoop {
    /// A loop for consumer group `group` (base name) over base topics `topics`.
    pub fn new(
        cfg: &KafkaConfig,
        group: &str,
        topics: &[&str],
        pool: PgPool,
        producer: Producer,
        handler: Arc<dyn Handler>,
    ) -> Self {
        let group = cfg.group(group);
        Self {
            dlq: Dlq::new(cfg, producer, &group),
            cfg: cfg.clone(),
            topics: topics.iter().map(|t| cfg.topic(t)).collect(),
            group,
            pool,
            handler,
            relay_wake: None,
            max_batch: 1000,
            prefetch: None,
            members: 1,
        }
    }

    /// Runs `n` members of the group in this process, each its own consumer with its own
    /// share of the partitions and its own batches, exactly as `n` instances of the
    /// service would (the inbox, the handler's locks and the per-partition order are
    /// what make that safe). A handler whose batches compute and then wait for Postgres
    /// (incentive) keeps both busy this way: while one member's batch waits for its
    /// statements, another's computes.
    pub fn members(mut self, n: usize) -> Self {
        self.members = n.max(1);
        self
    }

    /// Keeps about `records` records queued and fetches at most `fetch_bytes` per request
    /// (a quarter of it per partition) instead of 10,000 records and 8 MiB: a fetch
    /// response is decompressed whole, so a loop whose batches take long anyway (incentive
    /// recomputes rep-periods) holds less memory at no cost in throughput. Replays keep
    /// the large defaults. Settings in `KAFKA_CONFIG` win.
    pub fn prefetch(mut self, records: u32, fetch_bytes: u32) -> Self {
        self.prefetch = Some((records.max(1), fetch_bytes));
        self
    }

    /// Wakes this outbox relay after every commit that wrote outbox rows.
    pub fn wake_relay(mut self, notify: Arc<Notify>) -> Self {
        self.relay_wake = Some(notify);
        self
    }

    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Runs until `cancel`; then commits the stored offsets and leaves the group.
    ///
    /// A watchdog rejoins the group (a new member) when this member, settled in a formed
    /// group, has held no partition for two session timeouts while some partition of its
    /// topics has had records past the group's committed offset and that offset has not
    /// moved meanwhile: nobody consumes it. Healthy groups never trip it (an idle member
    /// of a group with more members than partitions sees the others commit); a group the
    /// broker formed without assignments (Tansu 0.6 did so when a dead leader expired
    /// between a follower's JoinGroup and SyncGroup) is repaired instead of stalling
    /// forever. A member still joining is left alone (see `run_member`).
    pub async fn run(self, cancel: CancellationToken) -> Result<(), Error> {
        if self.members == 1 {
            return self.run_one(&cancel).await;
        }
        let me = Arc::new(self);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..me.members {
            let (me, cancel) = (me.clone(), cancel.clone());
            set.spawn(async move { me.run_one(&cancel).await });
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(())) => {}
                // The others stop with it (dropping the set aborts them: an open batch
                // transaction rolls back, and its records are read again).
                Ok(Err(e)) => return Err(e),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// One member, rejoining the group when the watchdog asks.
    async fn run_one(&self, cancel: &CancellationToken) -> Result<(), Error> {
        loop {
            if !self.run_member(cancel).await? {
                return Ok(());
            }
            metrics::global()
                .consumer_rejoins
                .get_or_create(&labels([("group", &self.group)]))
                .inc();
        }
    }

    /// One group membership; `Ok(true)` when the watchdog wants a new one.
    async fn run_member(&self, cancel: &CancellationToken) -> Result<bool, Error> {
        let assigned = Arc::new(AssignState::default());
        let ctx = LoopContext {
            group: self.group.clone(),
            assigned: assigned.clone(),
        };
        let mut config = self.cfg.consumer_config(&self.group);
        if let Some((records, bytes)) = self.prefetch {
            for (k, v) in [
                ("queued.min.messages", records.to_string()),
                ("queued.max.messages.kbytes", (2 * bytes / 1024).to_string()),
                ("fetch.max.bytes", bytes.to_string()),
                (
                    "max.partition.fetch.bytes",
                    (bytes / 4).max(65_536).to_string(),
                ),
            ] {
                if !self.cfg.sets(k) {
                    config.set(k, v);
                }
            }
        }
        let consumer: StreamConsumer<LoopContext> = config.create_with_context(ctx)?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        tracing::info!(group = %self.group, topics = ?topics, "consumer subscribed");

        let stall_after = self.cfg.session_timeout() * 2;
        let mut watch = StallWatch::new(&self.cfg, &self.group, &self.topics);
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rejoin = false;

        let mut stream = consumer.stream();
        loop {
            let first = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                m = stream.next() => m,
                _ = tick.tick() => {
                    let idle = assigned.idle_for();
                    // Only a member whose group has formed (and left it without
                    // partitions) rejoins: closing a member mid-rebalance sends a
                    // LeaveGroup, and a nisshi 0.7 group whose leader leaves while it
                    // forms keeps that leader, so no later member can ever sync.
                    if idle > Duration::ZERO && assigned.steady() {
                        match watch.check(stall_after, idle).await {
                            Ok(Some(what)) => {
                                tracing::warn!(group = %self.group, stalled = %what,
                                    "no member consumes a partition with unread records; rejoining the group");
                                rejoin = true;
                                break;
                            }
                            Ok(None) => {}
                            Err(e) => tracing::debug!(group = %self.group, error = %e, "stall check"),
                        }
                    } else {
                        watch.reset();
                    }
                    continue;
                }
            };
            let Some(first) = first else { break };
            let mut batch = Vec::with_capacity(64);
            match first {
                Ok(m) => batch.push(m.detach()),
                Err(e) => {
                    tracing::warn!(group = %self.group, error = %e, "consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            // Take whatever else is ready now, without waiting: batch size follows load.
            while batch.len() < self.max_batch {
                match stream.next().now_or_never() {
                    Some(Some(Ok(m))) => batch.push(m.detach()),
                    Some(Some(Err(e))) => {
                        tracing::warn!(group = %self.group, error = %e, "consumer error")
                    }
                    Some(None) | None => break,
                }
            }

            if !self.process_until_done(&batch, cancel).await {
                break;
            }
            if failpoint_hang_after_commit() {
                tracing::warn!("failpoint hang_after_db_commit reached");
                std::future::pending::<()>().await;
            }
            let mut tpl = TopicPartitionList::new();
            let mut last: BTreeMap<(&str, i32), i64> = BTreeMap::new();
            for m in &batch {
                let e = last.entry((m.topic(), m.partition())).or_insert(m.offset());
                *e = (*e).max(m.offset());
            }
            for ((topic, partition), offset) in last {
                // The committed offset is the next record to read.
                tpl.add_partition_offset(topic, partition, Offset::Offset(offset + 1))?;
            }
            if let Err(e) = consumer.store_offsets(&tpl) {
                // A partition revoked meanwhile: its next owner replays; the inbox dedupes.
                tracing::warn!(group = %self.group, error = %e, "could not store offsets");
            }
        }
        drop(stream);
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(group = %self.group, error = %e, "final commit");
        }
        consumer.unsubscribe();
        tracing::info!(group = %self.group, rejoin, "consumer stopped");
        Ok(rejoin)
    }

    /// Replays every partition of the topics from the beginning up to the end offsets seen
    /// at start, through the same inbox + handler + outbox path, then returns the number of
    /// records read. No consumer group offsets are committed (rebuilds, new projections).
    pub async fn replay(self, cancel: CancellationToken) -> Result<u64, Error> {
        self.replay_with(1, cancel).await
    }

    /// Rebuilds projections from scratch: empties `projections` (and the inbox among them,
    /// if listed) and replays every topic from offset 0 with `workers` readers. Refuses
    /// when the topics hold nothing but events were applied here: a broker that lost its
    /// topics (a restarted in-memory broker, a wrong KAFKA_TOPIC_PREFIX) would turn the
    /// rebuild into a wipe.
    pub async fn rebuild(
        self,
        projections: &[&str],
        workers: usize,
        cancel: CancellationToken,
    ) -> Result<u64, Error> {
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
            .fetch_one(&self.pool)
            .await?;
        if applied > 0 && self.records_available()? == 0 {
            return Err(Error::NothingToRebuildFrom(applied));
        }
        sqlx::query(&format!("TRUNCATE {}", projections.join(", ")))
            .execute(&self.pool)
            .await?;
        self.replay_with(workers, cancel).await
    }

    /// Records the topics hold now (high minus low watermark, all partitions).
    pub fn records_available(&self) -> Result<i64, Error> {
        let probe: BaseConsumer = self
            .cfg
            .consumer_config(&format!("{}-probe-{}", self.group, Uuid::new_v4()))
            .create()?;
        let mut n = 0;
        for topic in &self.topics {
            let md = probe.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            for t in md.topics() {
                for p in t.partitions() {
                    let (low, high) =
                        probe.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
                    n += (high - low).max(0);
                }
            }
        }
        Ok(n)
    }

    /// As [`Self::replay`], with the partitions shared among `workers` concurrent readers
    /// (balanced by record count), like as many instances of the service would: records
    /// of one partition stay in order.
    pub async fn replay_with(
        self,
        workers: usize,
        cancel: CancellationToken,
    ) -> Result<u64, Error> {
        let probe: BaseConsumer = self
            .cfg
            .consumer_config(&format!("{}-replay-probe-{}", self.group, Uuid::new_v4()))
            .create()?;
        let mut parts: Vec<Part> = Vec::new();
        for topic in &self.topics {
            let md = probe.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            for t in md.topics() {
                for p in t.partitions() {
                    let (_, high) =
                        probe.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
                    if high > 0 {
                        parts.push((topic.clone(), p.id(), high));
                    }
                }
            }
        }
        drop(probe);
        if parts.is_empty() {
            return Ok(0);
        }
        // Largest first, each to the least loaded worker.
        parts.sort_by_key(|p| std::cmp::Reverse(p.2));
        let n = workers.clamp(1, parts.len());
        let mut groups: Vec<(i64, Vec<Part>)> = vec![(0, Vec::new()); n];
        for p in parts {
            let g = groups
                .iter_mut()
                .min_by_key(|(load, _)| *load)
                .expect("at least one worker");
            g.0 += p.2;
            g.1.push(p);
        }
        let this = Arc::new(self);
        let mut set = tokio::task::JoinSet::new();
        for (_, group) in groups {
            let this = this.clone();
            let cancel = cancel.clone();
            set.spawn(async move { this.replay_partitions(group, cancel).await });
        }
        let mut read = 0;
        while let Some(r) = set.join_next().await {
            read += r.map_err(|e| Error::Join(e.to_string()))??;
        }
        Ok(read)
    }

    async fn replay_partitions(
        &self,
        parts: Vec<Part>,
        cancel: CancellationToken,
    ) -> Result<u64, Error> {
        let ctx = LoopContext {
            group: self.group.clone(),
            assigned: Arc::default(),
        };
        let mut cfg =
            self.cfg
                .consumer_config(&format!("{}-replay-{}", self.group, Uuid::new_v4()));
        cfg.set("enable.auto.commit", "false");
        let consumer: StreamConsumer<LoopContext> = cfg.create_with_context(ctx)?;
        let mut tpl = TopicPartitionList::new();
        let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for (topic, partition, high) in parts {
            tpl.add_partition_offset(&topic, partition, Offset::Beginning)?;
            ends.insert((topic, partition), high);
        }
        consumer.assign(&tpl)?;
        let mut read = 0u64;
        let mut stream = consumer.stream();
        // Some brokers (Tansu) report a high watermark a record short after a multi-record
        // batch: once the reported ends are reached, read on until the topics are quiet.
        let quiet = Duration::from_millis(500);
        loop {
            let first = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                m = stream.next() => m,
                () = tokio::time::sleep(quiet), if ends.is_empty() => break,
            };
            let Some(first) = first else { break };
            let mut batch = vec![first?.detach()];
            while batch.len() < self.max_batch {
                match stream.next().now_or_never() {
                    Some(Some(Ok(m))) => batch.push(m.detach()),
                    _ => break,
                }
            }
            if !self.process_until_done(&batch, &cancel).await {
                break;
            }
            read += batch.len() as u64;
            for m in &batch {
                let key = (m.topic().to_owned(), m.partition());
                if ends.get(&key).is_some_and(|end| m.offset() + 1 >= *end) {
                    ends.remove(&key);
                }
            }
        }
        Ok(read)
    }

    /// Processes `batch`, retrying transient failures with backoff. Returns false when
    /// cancelled before the batch was done (its offsets must not be stored).
    async fn process_until_done(&self, batch: &[OwnedMessage], cancel: &CancellationToken) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.process(batch).await {
                Ok(()) => return true,
                Err(e) => {
                    let m = metrics::global();
                    m.events_failed
                        .get_or_create(&labels([("group", &self.group), ("kind", "transient")]))
                        .inc();
                    tracing::warn!(group = %self.group, error = %e, retry_in = ?backoff, "batch failed; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return false,
                        () = tokio::time::sleep(jitter(backoff)) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One attempt at a batch. `Err` is transient (nothing was committed).
    async fn process(&self, batch: &[OwnedMessage]) -> Result<(), String> {
        let started = Instant::now();
        let mut poison: Vec<(OwnedMessage, String)> = Vec::new();
        let mut decoded: Vec<Incoming> = Vec::with_capacity(batch.len());
        let mut sources: Vec<&OwnedMessage> = Vec::with_capacity(batch.len());
        for m in batch {
            match self.decode(m) {
                Ok(inc) => {
                    decoded.push(inc);
                    sources.push(m);
                }
                Err(e) => poison.push((m.clone(), e)),
            }
        }

        let all: Vec<&Incoming> = decoded.iter().collect();
        match self.apply_in_tx(&all).await {
            Ok(applied) => self.after_commit(&all, &applied, started),
            Err(HandlerError::Transient(e)) => return Err(e),
            Err(HandlerError::Permanent { reason, event_id }) => {
                tracing::info!(group = %self.group, %reason, ?event_id, "permanent failure in batch; isolating");
                // Apply one event per transaction to find the poison ones.
                for (inc, m) in all.iter().zip(&sources) {
                    match self.apply_in_tx(&[inc]).await {
                        Ok(applied) => self.after_commit(&[inc], &applied, started),
                        Err(HandlerError::Transient(e)) => return Err(e),
                        Err(HandlerError::Permanent { reason, .. }) => {
                            poison.push(((*m).clone(), reason))
                        }
                    }
                }
            }
        }

        if !poison.is_empty() {
            metrics::global()
                .events_failed
                .get_or_create(&labels([("group", &self.group), ("kind", "permanent")]))
                .inc_by(poison.len() as u64);
            self.dlq
                .send_all(&poison)
                .await
                .map_err(|e| format!("dlq: {e}"))?;
        }
        Ok(())
    }

    fn after_commit(&self, decoded: &[&Incoming], applied: &Applied, started: Instant) {
        let m = metrics::global();
        let elapsed = started.elapsed().as_secs_f64();
        let now = chrono::Utc::now();
        let mut new_events = Vec::new();
        for inc in decoded {
            let l = labels([("topic", &inc.topic), ("group", &self.group)]);
            if applied.new_ids.contains(&inc.event_id) {
                m.events_consumed.get_or_create(&l).inc();
                if let Some(rec) = inc
                    .envelope
                    .recorded_at
                    .as_ref()
                    .and_then(spm_proto::ext::datetime)
                {
                    let age = (now - rec).num_microseconds().unwrap_or(0);
                    #[allow(clippy::cast_precision_loss)]
                    m.event_age_seconds
                        .get_or_create(&labels([("topic", &inc.topic)]))
                        .observe(age as f64 / 1e6);
                }
                new_events.push(*inc);
            } else {
                m.events_duplicate.get_or_create(&l).inc();
            }
        }
        m.processing_seconds
            .get_or_create(&labels([("group", &self.group)]))
            .observe(elapsed);
        if applied.outbox_rows > 0
            && let Some(n) = &self.relay_wake
        {
            n.notify_one();
        }
        if !new_events.is_empty() {
            self.handler.committed(&new_events);
        }
    }

    /// Inbox + handler + outbox in one transaction.
    async fn apply_in_tx(&self, events: &[&Incoming]) -> Result<Applied, HandlerError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
        let partitions: Vec<i32> = events.iter().map(|e| e.partition).collect();
        let offsets: Vec<i64> = events.iter().map(|e| e.offset).collect();
        let fresh: Vec<Uuid> = sqlx::query_scalar(
            r#"INSERT INTO inbox (event_id, topic, partition, "offset")
               SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::bigint[])
               ON CONFLICT (event_id) DO NOTHING
               RETURNING event_id"#,
        )
        .bind(&ids)
        .bind(&topics)
        .bind(&partitions)
        .bind(&offsets)
        .fetch_all(&mut *tx)
        .await?;
        let fresh: HashSet<Uuid> = fresh.into_iter().collect();

        // First occurrence of each new id, in batch order.
        let mut seen = HashSet::new();
        let new: Vec<&Incoming> = events
            .iter()
            .filter(|e| fresh.contains(&e.event_id) && seen.insert(e.event_id))
            .copied()
            .collect();

        let mut out = Outbox::new(&self.cfg);
        if !new.is_empty() {
            let span = info_span!(
                "apply",
                otel.name = format!("apply {}", self.group),
                otel.kind = "internal",
                messaging.consumer.group.name = %self.group,
                messaging.batch.message_count = new.len(),
            );
            let records: Vec<&tracing::Span> = new.iter().map(|e| &e.span).collect();
            spm_telemetry::propagation::batch_parent(&span, &records);
            self.handler
                .apply(&mut tx, &new, &mut out)
                .instrument(span)
                .await?;
        }
        let outbox_rows = out.len();
        out.write(&mut tx).await?;
        tx.commit().await?;
        // A large batch grows the connection's socket buffers to its largest statement or
        // result, and sqlx keeps that capacity for the connection's life: give it back.
        sqlx::Connection::shrink_buffers(&mut *conn);
        Ok(Applied {
            new_ids: fresh,
            outbox_rows,
        })
    }

    fn decode(&self, m: &OwnedMessage) -> Result<Incoming, String> {
        let payload = m.payload().ok_or("record has no payload")?;
        let envelope =
            EventEnvelope::decode(payload).map_err(|e| format!("not an EventEnvelope: {e}"))?;
        let event_id = Uuid::parse_str(&envelope.event_id)
            .map_err(|e| format!("event_id {:?}: {e}", envelope.event_id))?;
        if envelope.tenant_id.is_empty() {
            return Err("envelope has no tenant_id".into());
        }
        if envelope.payload.is_none() {
            return Err("envelope has no payload".into());
        }
        let topic = self.cfg.base_topic(m.topic()).to_owned();
        let span = info_span!(
            "process",
            otel.name = format!("process {topic}"),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.destination.name = %topic,
            messaging.destination.partition.id = m.partition(),
            messaging.kafka.offset = m.offset(),
            messaging.consumer.group.name = %self.group,
            messaging.message.id = %event_id,
            tenant = %envelope.tenant_id,
            event_type = envelope.event_type(),
        );
        if let Some(headers) = m.headers() {
            let pairs: Vec<(&str, &str)> = headers
                .iter()
                .filter_map(|h| Some((h.key, std::str::from_utf8(h.value?).ok()?)))
                .collect();
            spm_telemetry::propagation::set_parent(
                &span,
                spm_telemetry::propagation::extract_pairs(pairs),
            );
        }
        Ok(Incoming {
            event_id,
            envelope,
            topic,
            partition: m.partition(),
            offset: m.offset(),
            span,
        })
    }
}

struct Applied {
    new_ids: HashSet<Uuid>,
    outbox_rows: usize,
}

fn jitter(d: Duration) -> Duration {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(ms / 2 + rand::random_range(0..=ms / 2 + 1))
}

/// Commits stored offsets when partitions are revoked, and exports consumer lag.
struct LoopContext {
    group: String,
    assigned: Arc<AssignState>,
}

/// How many partitions this member holds, since when it has held none, and whether its
/// group membership is settled (librdkafka's join state `steady` in the last statistics:
/// not waiting for a JoinGroup or SyncGroup answer).
#[derive(Debug)]
struct AssignState(std::sync::Mutex<(usize, Instant)>, AtomicBool);

impl Default for AssignState {
    fn default() -> Self {
        Self(
            std::sync::Mutex::new((0, Instant::now())),
            AtomicBool::new(false),
        )
    }
}

impl AssignState {
    fn set_steady(&self, steady: bool) {
        self.1.store(steady, Ordering::Relaxed);
    }

    fn steady(&self) -> bool {
        self.1.load(Ordering::Relaxed)
    }

    fn set(&self, n: usize) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if n == 0 && s.0 != 0 {
            s.1 = Instant::now();
        }
        s.0 = n;
    }

    /// How long this member has held no partition (zero while it holds some).
    fn idle_for(&self) -> Duration {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if s.0 > 0 {
            Duration::ZERO
        } else {
            s.1.elapsed()
        }
    }
}

/// Finds partitions with records past the group's committed offset whose committed offset
/// has not moved for a while, reading offsets as the group without joining it. The probe
/// client is only created once this member is idle.
struct StallWatch {
    cfg: KafkaConfig,
    group: String,
    topics: Vec<String>,
    probe: Option<Arc<BaseConsumer>>,
    stalls: Stalls,
}

impl StallWatch {
    fn new(cfg: &KafkaConfig, group: &str, topics: &[String]) -> Self {
        Self {
            cfg: cfg.clone(),
            group: group.to_owned(),
            topics: topics.to_vec(),
            probe: None,
            stalls: Stalls::default(),
        }
    }

    fn reset(&mut self) {
        self.stalls = Stalls::default();
    }

    /// The first partition nobody has consumed for `after`, if this member has also been
    /// `idle` (without partitions) that long.
    async fn check(&mut self, after: Duration, idle: Duration) -> Result<Option<String>, Error> {
        let probe = match &self.probe {
            Some(p) => p.clone(),
            None => {
                let p: Arc<BaseConsumer> =
                    Arc::new(self.cfg.consumer_config(&self.group).create()?);
                self.probe = Some(p.clone());
                p
            }
        };
        let topics = self.topics.clone();
        let positions = tokio::task::spawn_blocking(move || unread(&probe, &topics))
            .await
            .map_err(|e| Error::Join(e.to_string()))??;
        Ok(self.stalls.observe(positions, Instant::now(), after, idle))
    }
}

/// The stall rule, apart from the I/O: a partition is stalled when it has records past the
/// group's committed offset and that offset has not moved for `after`, while this member has
/// held no partition for `after` either.
#[derive(Debug, Default)]
struct Stalls {
    seen: BTreeMap<(String, i32), (i64, Instant)>,
}

impl Stalls {
    fn observe(
        &mut self,
        positions: Vec<Position>,
        now: Instant,
        after: Duration,
        idle: Duration,
    ) -> Option<String> {
        let mut stalled = None;
        let mut next = BTreeMap::new();
        for (key, committed, high) in positions {
            if committed >= high {
                continue;
            }
            let since = match self.seen.get(&key) {
                Some((c, since)) if *c == committed => *since,
                _ => now,
            };
            if stalled.is_none() && idle >= after && now.duration_since(since) >= after {
                stalled = Some(format!(
                    "{}[{}] at {committed} of {high} for {:.0?}",
                    key.0,
                    key.1,
                    now.duration_since(since)
                ));
            }
            next.insert(key, (committed, since));
        }
        self.seen = next;
        stalled
    }
}

/// (topic, partition), the group's committed offset (the low watermark when none) and the
/// high watermark of every partition of `topics`.
type Position = ((String, i32), i64, i64);

fn unread(probe: &BaseConsumer, topics: &[String]) -> Result<Vec<Position>, Error> {
    let timeout = Duration::from_secs(5);
    let mut tpl = TopicPartitionList::new();
    let mut marks = BTreeMap::new();
    for topic in topics {
        let md = probe.fetch_metadata(Some(topic), timeout)?;
        for t in md.topics() {
            for p in t.partitions() {
                tpl.add_partition(topic, p.id());
                marks.insert(
                    (topic.clone(), p.id()),
                    probe.fetch_watermarks(topic, p.id(), timeout)?,
                );
            }
        }
    }
    let committed = probe.committed_offsets(tpl, timeout)?;
    let mut out = Vec::new();
    for e in committed.elements() {
        let key = (e.topic().to_owned(), e.partition());
        let Some(&(low, high)) = marks.get(&key) else {
            continue;
        };
        let at = match e.offset() {
            Offset::Offset(n) => n,
            _ => low,
        };
        out.push((key, at, high));
    }
    Ok(out)
}

impl ClientContext for LoopContext {
    fn stats(&self, stats: Statistics) {
        if let Some(cgrp) = &stats.cgrp {
            self.assigned.set_steady(cgrp.join_state == "steady");
        }
        let m = metrics::global();
        for (topic, t) in &stats.topics {
            for (p, ps) in &t.partitions {
                if *p >= 0 && ps.consumer_lag >= 0 {
                    m.consumer_lag
                        .get_or_create(&labels([
                            ("group", &self.group),
                            ("topic", topic),
                            ("partition", &p.to_string()),
                        ]))
                        .set(ps.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // The loop stores offsets only for committed batches and is not mid-batch while
        // polling, so everything stored is safe to commit before the partitions go.
        if let Rebalance::Revoke(tpl) = rebalance {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(group = %self.group, error = %e, "commit on revoke");
            }
            self.assigned.set(0);
            tracing::info!(group = %self.group, partitions = tpl.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.assigned.set(tpl.count());
            tracing::info!(group = %self.group, partitions = tpl.count(), "partitions assigned");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(p: i32, committed: i64, high: i64) -> Position {
        (("t.deals".to_owned(), p), committed, high)
    }

    #[test]
    fn a_partition_is_stalled_only_when_unread_unmoved_and_this_member_idle_long_enough() {
        let after = Duration::from_secs(40);
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut w = Stalls::default();
        // Caught up partitions never count; an unread one starts its clock.
        assert_eq!(
            w.observe(vec![at(0, 5, 5), at(1, 3, 9)], s(0), after, after),
            None
        );
        // Not yet long enough.
        assert_eq!(
            w.observe(vec![at(0, 5, 5), at(1, 3, 9)], s(39), after, after),
            None
        );
        // 40 s without the committed offset moving, and idle as long: stalled.
        let got = w.observe(vec![at(0, 5, 5), at(1, 3, 9)], s(40), after, after);
        assert_eq!(got.as_deref(), Some("t.deals[1] at 3 of 9 for 40s"));

        // Somebody consumes it (the offset moves): the clock restarts.
        let mut w = Stalls::default();
        w.observe(vec![at(1, 3, 9)], s(0), after, after);
        assert_eq!(w.observe(vec![at(1, 4, 9)], s(30), after, after), None);
        assert_eq!(w.observe(vec![at(1, 4, 9)], s(60), after, after), None);
        assert!(w.observe(vec![at(1, 4, 9)], s(70), after, after).is_some());

        // This member only just lost its partitions: not yet its business.
        let mut w = Stalls::default();
        w.observe(vec![at(1, 3, 9)], s(0), after, Duration::from_secs(1));
        assert_eq!(
            w.observe(vec![at(1, 3, 9)], s(50), after, Duration::from_secs(10)),
            None
        );

        // A partition that catches up is forgotten.
        let mut w = Stalls::default();
        w.observe(vec![at(1, 3, 9)], s(0), after, after);
        w.observe(vec![at(1, 9, 9)], s(20), after, after);
        assert_eq!(w.observe(vec![at(1, 9, 12)], s(45), after, after), None);
    }
}
