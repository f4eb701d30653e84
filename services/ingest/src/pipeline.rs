//! Accepting events, shared by the gRPC API and the HTTP webhook.
//!
//! Concurrent requests of a tenant are accepted together (group commit): while batches
//! are in flight, requests that arrive queue and then go as one batch of up to
//! [`MAX_COALESCED`] events, so a thousand one-event requests a second cost a few dozen
//! transactions, not a thousand. Alone, a request goes at once. A request is never split.
//!
//! Per batch, in ONE transaction: claim an idempotency record per new event id (a
//! concurrent submission of the same id waits on the row), load what validation needs,
//! accept the events, save state; then publish every record and wait for the broker's
//! acknowledgements; only then commit. A crash or broker failure before the commit leaves
//! no record, so a retry publishes again (consumers deduplicate the derived event ids):
//! an event is never marked seen without having been published.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use spm_bus::{KafkaConfig, Producer};
use spm_core::validation::FieldViolation;
use spm_proto::ingest::v1::{AckStatus, CrmEvent, EventAck};
use spm_server::ApiError;
use spm_server::error::violation_to_proto;
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use crate::domain::accept::{Accepted, Parked, Ref, Released, Tenant};
use crate::domain::{IngestState, Limits, Outgoing, ValidEvent, validate_event};
use crate::store;

/// The accept path.
#[derive(Clone)]
pub struct Pipeline {
    pub pool: PgPool,
    pub producer: Producer,
    pub kafka: KafkaConfig,
    pub limits: Limits,
    tenants: Arc<Mutex<HashMap<String, (Instant, Tenant)>>>,
    /// Reps known to exist, per tenant. Acceptance only asks whether a rep exists and reps
    /// are never deleted, so a positive cache is safe; it spares a lookup per batch.
    known_reps: Arc<Mutex<HashMap<String, std::collections::HashSet<String>>>>,
    queues: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Job>>>>,
}

/// At most this many reps are cached (all tenants); beyond it the cache starts over.
const REP_CACHE: usize = 1_000_000;

/// Requests are combined into batches of at most this many events.
pub const MAX_COALESCED: usize = 1000;

/// Batches of one tenant in flight at once; further requests wait and combine.
const IN_FLIGHT: usize = 2;

/// SHA-256 of an event's protobuf encoding: what a duplicate must match.
type Hash = [u8; 32];

/// A request waiting to be accepted.
struct Job {
    tenant: Tenant,
    events: Vec<CrmEvent>,
    /// The request's span: its records carry this trace.
    span: tracing::Span,
    reply: oneshot::Sender<Result<Vec<EventAck>, ApiError>>,
}

impl Pipeline {
    pub fn new(pool: PgPool, producer: Producer, kafka: KafkaConfig, limits: Limits) -> Self {
        Self {
            pool,
            producer,
            kafka,
            limits,
            tenants: Arc::default(),
            known_reps: Arc::default(),
            queues: Arc::default(),
        }
    }

    /// The tenant of an authenticated caller (cached for a few seconds).
    pub async fn tenant(&self, tenant_id: &str) -> Result<Tenant, ApiError> {
        if let Some((at, t)) = self.tenants.lock().expect("tenant cache").get(tenant_id)
            && at.elapsed() < Duration::from_secs(5)
        {
            return Ok(t.clone());
        }
        let (t, _, active) = store::tenant(&self.pool, tenant_id).await?.ok_or_else(|| {
            ApiError::NotFound(format!("tenant {tenant_id} is not known to ingest"))
        })?;
        if !active {
            return Err(ApiError::PermissionDenied(format!(
                "tenant {tenant_id} is deactivated"
            )));
        }
        self.tenants
            .lock()
            .expect("tenant cache")
            .insert(tenant_id.to_owned(), (Instant::now(), t.clone()));
        Ok(t)
    }

    /// Forgets a cached tenant (after an admin change).
    pub fn forget_tenant(&self, tenant_id: &str) {
        self.tenants.lock().expect("tenant cache").remove(tenant_id);
    }

    /// Accepts what it can of `events`; one acknowledgement per event, in order. `Err` only
    /// when nothing could be decided (database unavailable). Violation paths are relative
    /// to each event. The events are accepted together, in one transaction, possibly with
    /// other requests of the tenant.
    pub async fn submit(
        &self,
        tenant: &Tenant,
        events: Vec<CrmEvent>,
    ) -> Result<Vec<EventAck>, ApiError> {
        let span = tracing::Span::current();
        if events.len() >= MAX_COALESCED {
            return self.accept_batch(tenant, &events, &[0; 0], &[span]).await;
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            tenant: tenant.clone(),
            events,
            span,
            reply,
        };
        if let Err(mpsc::error::SendError(job)) = self.queue(&tenant.tenant_id).send(job) {
            // The tenant's queue is gone (its worker panicked): go alone.
            self.queues
                .lock()
                .expect("queues")
                .remove(&tenant.tenant_id);
            return self
                .accept_batch(tenant, &job.events, &[0; 0], &[job.span])
                .await;
        }
        answer.await.unwrap_or_else(|_| {
            Err(ApiError::Internal(
                "the batch carrying these events failed; nothing was recorded for them".into(),
            ))
        })
    }

    fn queue(&self, tenant_id: &str) -> mpsc::UnboundedSender<Job> {
        let mut queues = self.queues.lock().expect("queues");
        if let Some(q) = queues.get(tenant_id)
            && !q.is_closed()
        {
            return q.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(self.clone().coalesce(rx));
        queues.insert(tenant_id.to_owned(), tx.clone());
        tx
    }

    /// A tenant's worker: takes what has queued (up to [`MAX_COALESCED`] events) whenever a
    /// batch slot is free.
    async fn coalesce(self, mut rx: mpsc::UnboundedReceiver<Job>) {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut held: Option<Job> = None;
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let first = match held.take() {
                Some(j) => j,
                None => match rx.recv().await {
                    Some(j) => j,
                    None => return,
                },
            };
            let mut n = first.events.len();
            let mut jobs = vec![first];
            while n < MAX_COALESCED {
                match rx.try_recv() {
                    Ok(j) if n + j.events.len() <= MAX_COALESCED => {
                        n += j.events.len();
                        jobs.push(j);
                    }
                    Ok(j) => {
                        held = Some(j);
                        break;
                    }
                    Err(_) => break,
                }
            }
            let this = self.clone();
            tokio::spawn(async move {
                this.run_jobs(jobs).await;
                drop(slot);
            });
        }
    }

    async fn run_jobs(&self, jobs: Vec<Job>) {
        let tenant = jobs[jobs.len() - 1].tenant.clone();
        let mut events = Vec::with_capacity(jobs.iter().map(|j| j.events.len()).sum());
        let mut origin = Vec::with_capacity(events.capacity());
        let mut spans = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        for (k, j) in jobs.into_iter().enumerate() {
            origin.extend(std::iter::repeat_n(k, j.events.len()));
            replies.push((j.events.len(), j.reply));
            events.extend(j.events);
            spans.push(j.span);
        }
        let result = self.accept_batch(&tenant, &events, &origin, &spans).await;
        match result {
            Ok(acks) => {
                let mut acks = acks.into_iter();
                for (n, reply) in replies {
                    let _ = reply.send(Ok(acks.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                for (_, reply) in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Accepts one batch. `origin[i]` is the request of event i (all request 0 when empty);
    /// `spans[k]` is request k's span.
    async fn accept_batch(
        &self,
        tenant: &Tenant,
        events: &[CrmEvent],
        origin: &[usize],
        spans: &[tracing::Span],
    ) -> Result<Vec<EventAck>, ApiError> {
        crate::metrics::batch(events.len(), spans.len());
        // Postgres keeps microseconds: the acknowledgement of a duplicate must equal the first.
        let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        let mut acks: Vec<Option<EventAck>> = vec![None; events.len()];

        // 1. Stateless validation; repeated ids within the request are settled at the end.
        let mut candidates: Vec<(usize, ValidEvent, Hash)> = Vec::with_capacity(events.len());
        let mut first_of: HashMap<Uuid, usize> = HashMap::with_capacity(events.len());
        let mut repeats: Vec<(usize, usize, Hash)> = Vec::new();
        let mut encoded = Vec::new();
        for (i, e) in events.iter().enumerate() {
            match validate_event(e, now, &self.limits) {
                Ok(v) => {
                    encoded.clear();
                    e.encode(&mut encoded).expect("a Vec grows to fit");
                    let hash: Hash = Sha256::digest(&encoded).into();
                    if let Some(&first) = first_of.get(&v.client_id) {
                        repeats.push((i, first, hash));
                    } else {
                        first_of.insert(v.client_id, i);
                        candidates.push((i, v, hash));
                    }
                }
                Err(violations) => acks[i] = Some(rejected(&e.event_id, violations)),
            }
        }

        if !candidates.is_empty() {
            self.accept(tenant, events, &candidates, &mut acks, now, origin, spans)
                .await?;
        }

        for (i, first, hash) in repeats {
            let first_hash = candidates
                .iter()
                .find(|(j, ..)| *j == first)
                .map(|(.., h)| h);
            let mut ack = acks[first].clone().expect("first occurrence has an ack");
            if first_hash != Some(&hash) {
                ack = conflict(&events[i].event_id);
            } else if ack.status == AckStatus::Accepted as i32 {
                ack.status = AckStatus::Duplicate as i32;
            } else if ack.status == AckStatus::AcceptedPending as i32 {
                ack.status = AckStatus::Duplicate as i32;
                ack.message = format!(
                    "already accepted; still waiting for {}",
                    ack.waiting_for.join(", ")
                );
            }
            acks[i] = Some(ack);
        }
        Ok(acks
            .into_iter()
            .map(|a| a.expect("every event has an ack"))
            .collect())
    }

    #[allow(clippy::too_many_arguments, clippy::too_many_lines)]
    async fn accept(
        &self,
        tenant: &Tenant,
        events: &[CrmEvent],
        candidates: &[(usize, ValidEvent, Hash)],
        acks: &mut [Option<EventAck>],
        now: chrono::DateTime<Utc>,
        origin: &[usize],
        spans: &[tracing::Span],
    ) -> Result<(), ApiError> {
        let ids: Vec<Uuid> = candidates.iter().map(|(_, v, _)| v.client_id).collect();
        let hashes: Vec<&[u8]> = candidates.iter().map(|(.., h)| h.as_slice()).collect();

        let mut tx = self.pool.begin().await?;
        let claimed: std::collections::HashSet<Uuid> =
            store::claim(&mut tx, &tenant.tenant_id, &ids, &hashes, now)
                .await?
                .into_iter()
                .collect();

        // 2. Ids seen before: the original acknowledgement, or a conflict.
        let seen: Vec<Uuid> = ids
            .iter()
            .filter(|id| !claimed.contains(id))
            .copied()
            .collect();
        if !seen.is_empty() {
            let earlier = store::existing(&mut tx, &tenant.tenant_id, &seen).await?;
            for (i, v, hash) in candidates {
                if let Some(e) = earlier.get(&v.client_id) {
                    acks[*i] = Some(if e.content_sha256.as_slice() == hash.as_slice() {
                        duplicate(v.client_id, e)
                    } else {
                        conflict(&v.client_id.to_string())
                    });
                }
            }
        }

        // 3. Accept the new ones against what ingest knows.
        let fresh: Vec<&(usize, ValidEvent, Hash)> = candidates
            .iter()
            .filter(|(_, v, _)| claimed.contains(&v.client_id))
            .collect();
        if fresh.is_empty() {
            tx.commit().await?;
            return Ok(());
        }
        let mut reps = BTreeSet::new();
        let mut deals = BTreeSet::new();
        let mut currencies = BTreeSet::new();
        for (_, v, _) in &fresh {
            reps.extend(v.payload.reps());
            deals.extend(v.payload.deal_id());
            currencies.extend(v.payload.currency());
        }
        let (cached, unknown): (Vec<&str>, Vec<&str>) = {
            let cache = self.known_reps.lock().expect("rep cache");
            let known = cache.get(&tenant.tenant_id);
            reps.into_iter()
                .partition(|r| known.is_some_and(|k| k.contains(*r)))
        };
        let (deals, currencies): (Vec<&str>, Vec<&str>) = (
            deals.into_iter().collect(),
            currencies.into_iter().collect(),
        );
        let mut state =
            store::load_state(&mut tx, &tenant.tenant_id, &unknown, &deals, &currencies).await?;
        for r in cached {
            state
                .reps
                .entry(r.to_owned())
                .or_insert(crate::domain::RepState { active: true });
        }

        // Events that refer to reps or deals not known yet are parked; those a later event
        // of the batch makes known are applied right away, in business order.
        let mut outgoing: Vec<(Option<usize>, Uuid, Vec<Outgoing>)> = Vec::new();
        let mut published = Vec::new();
        let mut rejected_ids = Vec::new();
        let mut index_of: HashMap<Uuid, usize> = HashMap::new();
        for (i, v, _) in &fresh {
            match state.accept(tenant, v, now) {
                Ok(Accepted::Published(out)) => {
                    published.push((v.client_id, i32::try_from(out.len()).unwrap_or(i32::MAX)));
                    outgoing.push((Some(*i), v.client_id, out));
                }
                Ok(Accepted::Waiting(waits)) => {
                    index_of.insert(v.client_id, *i);
                    state.parked.push(Parked {
                        event: v.clone(),
                        waits,
                        stored: false,
                        changed: false,
                    });
                }
                Err(violations) => {
                    acks[*i] = Some(rejected(&v.client_id.to_string(), violations));
                    rejected_ids.push(v.client_id);
                }
            }
        }
        let mut changes = store::ParkedChanges::default();
        let mut republished = Vec::new();
        let mut released = state.release(tenant, now);
        let parks = !state.parked.is_empty();
        if parks || !state.created.is_empty() {
            store::lock_parking(&mut tx, &tenant.tenant_id, parks).await?;
            let (more, unreadable) = self
                .release_parked(&mut tx, tenant, &mut state, now)
                .await?;
            released.extend(more);
            changes.failed.extend(unreadable);
        }
        for r in released {
            let id = r.event.client_id;
            match (r.outcome, r.stored) {
                (Ok(out), stored) => {
                    let n = i32::try_from(out.len()).unwrap_or(i32::MAX);
                    if stored {
                        republished.push((id, n));
                        changes.released.push(id);
                        outgoing.push((None, id, out));
                    } else {
                        published.push((id, n));
                        outgoing.push((index_of.get(&id).copied(), id, out));
                    }
                }
                (Err(violations), true) => {
                    crate::metrics::parked_failed();
                    changes.failed.push((id, describe(&violations)));
                }
                // Parked and released within this batch: as if it had arrived after its
                // referents, so it is rejected now.
                (Err(violations), false) => {
                    if let Some(i) = index_of.get(&id) {
                        acks[*i] = Some(rejected(&id.to_string(), violations));
                    }
                    rejected_ids.push(id);
                }
            }
        }
        let mut pending = Vec::new();
        for p in &state.parked {
            let waits: Vec<String> = p.waits.iter().map(Ref::key).collect();
            if p.stored {
                if p.changed {
                    changes.waits.push((p.event.client_id, waits));
                }
            } else if let Some(&i) = index_of.get(&p.event.client_id) {
                published.push((p.event.client_id, 0));
                changes.parked.push((
                    p.event.client_id,
                    p.event.payload.kind(),
                    p.event.occurred_at,
                    events[i].encode_to_vec(),
                    waits.clone(),
                ));
                pending.push((i, p.event.client_id, waits, p.waits.clone()));
            }
        }
        store::save_state(&mut tx, &tenant.tenant_id, &state).await?;
        store::save_parked(&mut tx, &tenant.tenant_id, &changes, now).await?;
        store::settle(&mut tx, &tenant.tenant_id, &published, &rejected_ids).await?;
        store::set_published(&mut tx, &tenant.tenant_id, &republished).await?;

        // 4. Publish everything, then commit only if the broker has it all. One publish
        // span per request, child of the request's span; its records carry its context.
        // Records of events released from parking go with the batch's first request.
        let request_of = |i: &Option<usize>| i.and_then(|i| origin.get(i).copied()).unwrap_or(0);
        let mut counts = vec![0usize; spans.len()];
        for (i, _, out) in &outgoing {
            counts[request_of(i)] += out.len();
        }
        let publish: Vec<(tracing::Span, Vec<(String, String)>)> = spans
            .iter()
            .zip(&counts)
            .map(|(parent, n)| {
                let span = tracing::info_span!(
                    parent: parent,
                    "publish",
                    otel.name = "publish",
                    otel.kind = "producer",
                    messaging.system = "kafka",
                    messaging.operation.type = "publish",
                    messaging.batch.message_count = *n,
                );
                let headers = spm_bus::trace_headers(&span);
                (span, headers)
            })
            .collect();
        let records: Vec<spm_bus::Record> = outgoing
            .iter_mut()
            .flat_map(|(i, _, out)| {
                let headers = &publish[request_of(i)].1;
                out.iter_mut().map(move |o| {
                    spm_bus::envelope_record_with(
                        self.kafka.topic(o.topic),
                        std::mem::take(&mut o.key),
                        &o.envelope,
                        headers,
                    )
                })
            })
            .collect();
        // Batches that change no state (activities, surveys) need no synchronous commit:
        // acceptance is durable on the broker, and a lost idempotency record only means a
        // retry publishes again, which consumers deduplicate.
        if state.dirty_deals.is_empty() && state.dirty_reps.is_empty() && changes.is_empty() {
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
        }
        let results = self.producer.send_all(&records).await;
        drop(publish);
        let failures: Vec<String> = results
            .iter()
            .filter_map(|r| r.as_ref().err().map(ToString::to_string))
            .collect();
        let committed = if failures.is_empty() {
            match tx.commit().await {
                Ok(()) => Ok(()),
                Err(e) => Err(format!("recording the events failed: {e}")),
            }
        } else {
            let _ = tx.rollback().await;
            Err(format!(
                "the broker did not acknowledge {} of {} records: {}",
                failures.len(),
                records.len(),
                failures[0]
            ))
        };
        match committed {
            Ok(()) => {
                let mut cache = self.known_reps.lock().expect("rep cache");
                if cache
                    .values()
                    .map(std::collections::HashSet::len)
                    .sum::<usize>()
                    > REP_CACHE
                {
                    cache.clear();
                }
                cache
                    .entry(tenant.tenant_id.clone())
                    .or_default()
                    .extend(state.reps.keys().cloned());
                drop(cache);
                crate::metrics::accepted(outgoing.len(), records.len());
                crate::metrics::parked(pending.len(), changes.released.len());
                for (i, id, waits, refs) in pending {
                    acks[i] = Some(EventAck {
                        event_id: id.to_string(),
                        status: AckStatus::AcceptedPending as i32,
                        accepted_at: Some(spm_proto::ext::timestamp(now)),
                        message: format!(
                            "accepted; applied once ingest knows {}",
                            refs.iter()
                                .map(Ref::describe)
                                .collect::<Vec<_>>()
                                .join(" and ")
                        ),
                        waiting_for: waits,
                        ..Default::default()
                    });
                }
                for (i, id, out) in outgoing {
                    let Some(i) = i else { continue };
                    acks[i] = Some(EventAck {
                        event_id: id.to_string(),
                        status: AckStatus::Accepted as i32,
                        accepted_at: Some(spm_proto::ext::timestamp(now)),
                        published: u32::try_from(out.len()).unwrap_or(u32::MAX),
                        ..Default::default()
                    });
                }
            }
            Err(why) => {
                tracing::warn!(error = %why, "events not accepted");
                let batch = outgoing
                    .iter()
                    .filter_map(|(i, id, _)| i.map(|i| (i, *id)))
                    .chain(pending.iter().map(|(i, id, ..)| (*i, *id)));
                for (i, id) in batch {
                    acks[i] = Some(EventAck {
                        event_id: id.to_string(),
                        status: AckStatus::Unavailable as i32,
                        message: format!("{why}; nothing was recorded, retry later"),
                        ..Default::default()
                    });
                }
                // Events rejected in this transaction were rolled back too: they stay rejected.
            }
        }
        Ok(())
    }

    /// Brings in the parked events that what became known in this batch releases, and the
    /// referents the database knows of events parked by it, then releases what it can;
    /// repeated while releases make more known. Runs under the parking lock. Also returns
    /// the stored events that no longer pass validation (id, why).
    async fn release_parked(
        &self,
        tx: &mut sqlx::PgConnection,
        tenant: &Tenant,
        state: &mut IngestState,
        now: chrono::DateTime<Utc>,
    ) -> Result<(Vec<Released>, Vec<(Uuid, String)>), ApiError> {
        let mut released = Vec::new();
        let mut unreadable = Vec::new();
        let mut queried: BTreeSet<Ref> = BTreeSet::new();
        let mut checked: BTreeSet<Ref> = BTreeSet::new();
        let mut loaded: std::collections::HashSet<Uuid> = std::collections::HashSet::new();
        loop {
            let keys: Vec<String> = state
                .created
                .iter()
                .filter(|r| !queried.contains(*r))
                .map(Ref::key)
                .collect();
            queried.extend(state.created.iter().cloned());
            let rows = if keys.is_empty() {
                Vec::new()
            } else {
                store::parked_waiting_on(tx, &tenant.tenant_id, &keys).await?
            };
            let mut wanted: Vec<ValidEvent> = Vec::new();
            for row in rows {
                if !loaded.insert(row.event_id) {
                    continue;
                }
                let event = match CrmEvent::decode(row.event.as_slice()) {
                    Ok(e) => validate_event(&e, row.parked_at, &self.limits),
                    Err(e) => Err(vec![FieldViolation::new(
                        "event",
                        format!("unreadable: {e}"),
                    )]),
                };
                match event {
                    Ok(v) => {
                        wanted.push(v.clone());
                        state.parked.push(Parked {
                            event: v,
                            waits: row.waits.iter().filter_map(|w| Ref::parse(w)).collect(),
                            stored: true,
                            changed: false,
                        });
                    }
                    Err(violations) => unreadable.push((row.event_id, describe(&violations))),
                }
            }
            // What the parked events in hand refer to: a concurrent batch may have made it
            // known since this one loaded its state.
            let unchecked: Vec<Ref> = state
                .parked
                .iter()
                .flat_map(|p| p.waits.iter())
                .filter(|r| !checked.contains(*r))
                .cloned()
                .collect();
            if wanted.is_empty() && unchecked.is_empty() {
                return Ok((released, unreadable));
            }
            checked.extend(unchecked.iter().cloned());
            let mut reps: BTreeSet<&str> = BTreeSet::new();
            let mut deals: BTreeSet<&str> = BTreeSet::new();
            let mut currencies: BTreeSet<&str> = BTreeSet::new();
            for v in &wanted {
                reps.extend(v.payload.reps());
                deals.extend(v.payload.deal_id());
                currencies.extend(v.payload.currency());
            }
            for r in &unchecked {
                match r {
                    Ref::Rep(id) => reps.insert(id),
                    Ref::Deal(id) => deals.insert(id),
                };
            }
            let (reps, deals, currencies): (Vec<&str>, Vec<&str>, Vec<&str>) = (
                reps.into_iter().collect(),
                deals.into_iter().collect(),
                currencies.into_iter().collect(),
            );
            store::load_into(tx, &tenant.tenant_id, state, &reps, &deals, &currencies).await?;
            released.extend(state.release(tenant, now));
        }
    }
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The acknowledgement of an event seen before with the same content.
fn duplicate(id: Uuid, e: &store::Earlier) -> EventAck {
    let mut ack = EventAck {
        event_id: id.to_string(),
        status: AckStatus::Duplicate as i32,
        accepted_at: Some(spm_proto::ext::timestamp(e.accepted_at)),
        published: u32::try_from(e.published).unwrap_or(0),
        message: "already accepted with the same content".into(),
        ..Default::default()
    };
    let Some(p) = &e.parked else { return ack };
    match p.state.as_str() {
        "waiting" => {
            ack.message = format!("already accepted; still waiting for {}", p.waits.join(", "));
            ack.waiting_for.clone_from(&p.waits);
        }
        "failed" => {
            ack.message = format!(
                "already accepted, but it could not be applied when what it waited for arrived: {} (see ListParkedEvents)",
                p.error.as_deref().unwrap_or("")
            );
        }
        "discarded" => {
            ack.message =
                "already accepted, then discarded by an admin (see ListParkedEvents)".into();
        }
        _ => {}
    }
    ack
}

fn rejected(event_id: &str, violations: Vec<FieldViolation>) -> EventAck {
    crate::metrics::rejected();
    EventAck {
        event_id: event_id.to_owned(),
        status: AckStatus::Rejected as i32,
        message: describe(&violations),
        violations: violations.into_iter().map(violation_to_proto).collect(),
        ..Default::default()
    }
}

fn conflict(event_id: &str) -> EventAck {
    EventAck {
        event_id: event_id.to_owned(),
        status: AckStatus::Conflict as i32,
        message: "this event_id was already accepted with different content".into(),
        ..Default::default()
    }
}
