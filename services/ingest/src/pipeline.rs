//! Accepting events, shared by the gRPC API and the HTTP webhook.
//!
//! Per request, in ONE transaction: claim an idempotency record per new event id (a
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
use spm_bus::{KafkaConfig, Producer, envelope_record};
use spm_core::validation::FieldViolation;
use spm_proto::ingest::v1::{AckStatus, CrmEvent, EventAck};
use spm_server::ApiError;
use spm_server::error::violation_to_proto;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::accept::Tenant;
use crate::domain::{Limits, ValidEvent, validate_event};
use crate::store;

/// The accept path.
#[derive(Clone)]
pub struct Pipeline {
    pub pool: PgPool,
    pub producer: Producer,
    pub kafka: KafkaConfig,
    pub limits: Limits,
    tenants: Arc<Mutex<HashMap<String, (Instant, Tenant)>>>,
}

impl Pipeline {
    pub fn new(pool: PgPool, producer: Producer, kafka: KafkaConfig, limits: Limits) -> Self {
        Self {
            pool,
            producer,
            kafka,
            limits,
            tenants: Arc::default(),
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
    /// to each event.
    pub async fn submit(
        &self,
        tenant: &Tenant,
        events: &[CrmEvent],
    ) -> Result<Vec<EventAck>, ApiError> {
        // Postgres keeps microseconds: the acknowledgement of a duplicate must equal the first.
        let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        let mut acks: Vec<Option<EventAck>> = vec![None; events.len()];

        // 1. Stateless validation; repeated ids within the request are settled at the end.
        let mut candidates: Vec<(usize, ValidEvent, Vec<u8>)> = Vec::new();
        let mut first_of: HashMap<Uuid, usize> = HashMap::new();
        let mut repeats: Vec<(usize, usize, Vec<u8>)> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            match validate_event(e, now, &self.limits) {
                Ok(v) => {
                    let hash = Sha256::digest(e.encode_to_vec()).to_vec();
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
            self.accept(tenant, &candidates, &mut acks, now).await?;
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
            }
            acks[i] = Some(ack);
        }
        Ok(acks
            .into_iter()
            .map(|a| a.expect("every event has an ack"))
            .collect())
    }

    async fn accept(
        &self,
        tenant: &Tenant,
        candidates: &[(usize, ValidEvent, Vec<u8>)],
        acks: &mut [Option<EventAck>],
        now: chrono::DateTime<Utc>,
    ) -> Result<(), ApiError> {
        let ids: Vec<Uuid> = candidates.iter().map(|(_, v, _)| v.client_id).collect();
        let hashes: Vec<Vec<u8>> = candidates.iter().map(|(.., h)| h.clone()).collect();

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
                if let Some((h, at, published)) = earlier.get(&v.client_id) {
                    acks[*i] = Some(if h == hash {
                        EventAck {
                            event_id: v.client_id.to_string(),
                            status: AckStatus::Duplicate as i32,
                            accepted_at: Some(spm_proto::ext::timestamp(*at)),
                            published: u32::try_from(*published).unwrap_or(0),
                            message: "already accepted with the same content".into(),
                            ..Default::default()
                        }
                    } else {
                        conflict(&v.client_id.to_string())
                    });
                }
            }
        }

        // 3. Accept the new ones against what ingest knows.
        let fresh: Vec<&(usize, ValidEvent, Vec<u8>)> = candidates
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
            reps.extend(v.payload.reps().into_iter().map(str::to_owned));
            deals.extend(v.payload.deal_id().map(str::to_owned));
            currencies.extend(v.payload.currency().map(str::to_owned));
        }
        let (reps, deals, currencies): (Vec<String>, Vec<String>, Vec<String>) = (
            reps.into_iter().collect(),
            deals.into_iter().collect(),
            currencies.into_iter().collect(),
        );
        let mut state =
            store::load_state(&mut tx, &tenant.tenant_id, &reps, &deals, &currencies).await?;

        let mut outgoing = Vec::new();
        let mut published = Vec::new();
        let mut rejected_ids = Vec::new();
        for (i, v, _) in &fresh {
            match state.accept(tenant, v, now) {
                Ok(out) => {
                    published.push((v.client_id, i32::try_from(out.len()).unwrap_or(i32::MAX)));
                    outgoing.push((*i, v.client_id, out));
                }
                Err(violations) => {
                    acks[*i] = Some(rejected(&v.client_id.to_string(), violations));
                    rejected_ids.push(v.client_id);
                }
            }
        }
        store::save_state(&mut tx, &tenant.tenant_id, &state).await?;
        store::settle(&mut tx, &tenant.tenant_id, &published, &rejected_ids).await?;

        // 4. Publish everything, then commit only if the broker has it all.
        let mut spans = Vec::new();
        let records: Vec<spm_bus::Record> = outgoing
            .iter()
            .flat_map(|(_, _, out)| out.iter())
            .map(|o| {
                let topic = self.kafka.topic(o.topic);
                let span = tracing::info_span!(
                    "publish",
                    otel.name = format!("publish {}", o.topic),
                    otel.kind = "producer",
                    messaging.system = "kafka",
                    messaging.operation.type = "publish",
                    messaging.destination.name = o.topic,
                    messaging.message.id = %o.envelope.event_id,
                );
                let r = envelope_record(topic, o.key.clone(), &o.envelope, &span);
                spans.push(span);
                r
            })
            .collect();
        let results = self.producer.send_all(&records).await;
        drop(spans);
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
                crate::metrics::accepted(outgoing.len(), records.len());
                for (i, id, out) in outgoing {
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
                for (i, id, _) in outgoing {
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
}

fn rejected(event_id: &str, violations: Vec<FieldViolation>) -> EventAck {
    crate::metrics::rejected();
    EventAck {
        event_id: event_id.to_owned(),
        status: AckStatus::Rejected as i32,
        message: violations
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; "),
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
