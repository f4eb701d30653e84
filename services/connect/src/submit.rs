//! Submitting SPM events through ingest's gRPC API, with the tenant's key: ingest validates,
//! deduplicates, parks and fans out. An event ingest could not make durable (UNAVAILABLE,
//! or ingest unreachable) is sent again until it is; nothing is acknowledged upstream
//! before that.

use std::time::{Duration, Instant};

use spm_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use spm_proto::ingest::v1::{AckStatus, CrmEvent, EventAck, SubmitEventsRequest};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::domain::mapping::{Problem, Reason};

#[derive(Clone)]
pub struct Ingest {
    pub channel: Channel,
}

/// What ingest said about one event, once it was durable or refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// ACCEPTED, DUPLICATE or ACCEPTED_PENDING.
    Done(AckStatus),
    /// REJECTED or CONFLICT: reported with ingest's field.
    Refused(Problem),
}

#[derive(Debug)]
pub struct Cancelled;

impl Ingest {
    /// Submits `events` (in order) and returns one outcome each. Retries what ingest could
    /// not make durable, with backoff, until it can or `cancel` fires.
    pub async fn submit(
        &self,
        key: &str,
        source: &str,
        events: Vec<CrmEvent>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Outcome>, Cancelled> {
        let mut out: Vec<Option<Outcome>> = vec![None; events.len()];
        let mut delay = Duration::from_millis(100);
        let started = Instant::now();
        loop {
            let todo: Vec<usize> = (0..events.len()).filter(|i| out[*i].is_none()).collect();
            if todo.is_empty() {
                crate::metrics::ack_latency(source, started.elapsed());
                return Ok(out.into_iter().map(|o| o.expect("all answered")).collect());
            }
            let mut client = IngestServiceClient::new(self.channel.clone());
            let mut req = tonic::Request::new(SubmitEventsRequest {
                events: todo.iter().map(|i| events[*i].clone()).collect(),
            });
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {key}").parse().expect("key is ascii"),
            );
            req.set_timeout(Duration::from_secs(30));
            let mut retry = false;
            match client.submit_events(req).await {
                Ok(resp) => {
                    let acks = resp.into_inner().acks;
                    for ack in acks {
                        let Some(i) = todo.iter().find(|i| events[**i].event_id == ack.event_id)
                        else {
                            continue;
                        };
                        match outcome(&ack) {
                            Some(o) => {
                                crate::metrics::submitted(source, ack_name(&ack));
                                out[*i] = Some(o);
                            }
                            None => retry = true,
                        }
                    }
                    if acks_short(&out, &todo) {
                        retry = true;
                    }
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), error = %status.message(), "ingest did not take the events; retrying");
                    if matches!(
                        status.code(),
                        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                    ) {
                        // A revoked or wrong key: nothing will change by itself, but the
                        // events must not be dropped. Keep trying slowly.
                        delay = delay.max(Duration::from_secs(5));
                    }
                    retry = true;
                }
            }
            if retry {
                crate::metrics::ingest_retry(source);
                tokio::select! {
                    () = cancel.cancelled() => return Err(Cancelled),
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn acks_short(out: &[Option<Outcome>], todo: &[usize]) -> bool {
    todo.iter().any(|i| out[*i].is_none())
}

fn ack_name(a: &EventAck) -> &'static str {
    match a.status() {
        AckStatus::Accepted => "accepted",
        AckStatus::Duplicate => "duplicate",
        AckStatus::AcceptedPending => "accepted_pending",
        AckStatus::Rejected => "rejected",
        AckStatus::Conflict => "conflict",
        AckStatus::Unavailable => "unavailable",
        AckStatus::Unspecified => "unspecified",
    }
}

fn outcome(a: &EventAck) -> Option<Outcome> {
    match a.status() {
        s @ (AckStatus::Accepted | AckStatus::Duplicate | AckStatus::AcceptedPending) => {
            Some(Outcome::Done(s))
        }
        AckStatus::Rejected => {
            let field = a
                .violations
                .first()
                .map(|v| v.field.clone())
                .unwrap_or_default();
            let msg = a
                .violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect::<Vec<_>>()
                .join("; ");
            Some(Outcome::Refused(Problem::new(
                field,
                Reason::RejectedByIngest,
                if msg.is_empty() {
                    a.message.clone()
                } else {
                    msg
                },
            )))
        }
        AckStatus::Conflict => Some(Outcome::Refused(Problem::new(
            "event_id",
            Reason::Conflict,
            format!(
                "ingest already has event {} with other content: {}",
                a.event_id, a.message
            ),
        ))),
        AckStatus::Unavailable | AckStatus::Unspecified => None,
    }
}
