//! `spm.connect.v1.ConnectService`: where each stream stands, the records not submitted,
//! and the operator's choice for a checkpoint older than the CRM's retention. ADMIN keys
//! only, and only their own tenant's streams.

use chrono::{DateTime, Utc};
use spm_proto::connect::v1 as pb;
use spm_server::auth::caller;
use spm_server::error::ApiError;
use sqlx::{PgPool, Row as _};
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct Api {
    pub pool: PgPool,
}

fn ts(t: Option<DateTime<Utc>>) -> Option<prost_types::Timestamp> {
    t.map(spm_proto::ext::timestamp)
}

fn state_name(s: &str) -> String {
    match s {
        "stale_checkpoint" => "STALE_CHECKPOINT",
        "retrying" => "RETRYING",
        "resync" | "skip" => "STARTING",
        _ => "RUNNING",
    }
    .into()
}

pub async fn statuses(
    pool: &PgPool,
    tenant: &str,
    stream: Option<&str>,
) -> sqlx::Result<Vec<pb::SourceStatus>> {
    let rows = sqlx::query(
        "SELECT c.source, c.stream, c.state, c.replay_id, c.checkpointed_at, c.events_in, c.submitted,
                c.rejected, c.last_error,
                (SELECT count(*) FROM hubspot_inbox h WHERE c.source = 'hubspot' AND h.tenant_id = c.tenant_id AND h.done_at IS NULL)
           FROM checkpoints c WHERE c.tenant_id = $1 AND ($2::text IS NULL OR c.stream = $2)
          ORDER BY c.source, c.stream",
    )
    .bind(tenant)
    .bind(stream)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let replay: Option<Vec<u8>> = r.get(3);
            let n = |i: usize| u64::try_from(r.get::<i64, _>(i)).unwrap_or(0);
            pb::SourceStatus {
                source: r.get(0),
                stream: r.get(1),
                state: state_name(r.get::<&str, _>(2)),
                checkpoint: replay.map(hex::encode).unwrap_or_default(),
                checkpointed_at: ts(r.get(4)),
                events_in: n(5),
                submitted: n(6),
                rejected: n(7),
                pending: n(9),
                last_error: r.get(8),
            }
        })
        .collect())
}

#[tonic::async_trait]
impl pb::connect_service_server::ConnectService for Api {
    async fn get_status(
        &self,
        req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let c = caller(&req)?;
        c.require_admin()?;
        let sources = statuses(&self.pool, &c.tenant_id, None)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetStatusResponse {
            tenant_id: c.tenant_id,
            sources,
        }))
    }

    async fn list_record_errors(
        &self,
        req: Request<pb::ListRecordErrorsRequest>,
    ) -> Result<Response<pb::ListRecordErrorsResponse>, Status> {
        let c = caller(&req)?;
        c.require_admin()?;
        let limit = match req.get_ref().limit {
            0 => 100,
            n if n > 1000 => return Err(ApiError::invalid("limit", "must be at most 1000").into()),
            n => i64::from(n),
        };
        let rows = sqlx::query(
            "SELECT source, stream, crm_event_id, record_id, field, reason, message, at
               FROM record_errors WHERE tenant_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(&c.tenant_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListRecordErrorsResponse {
            errors: rows
                .into_iter()
                .map(|r| pb::RecordError {
                    source: r.get(0),
                    stream: r.get(1),
                    crm_event_id: r.get(2),
                    record_id: r.get(3),
                    field: r.get(4),
                    reason: r.get(5),
                    message: r.get(6),
                    at: ts(r.get(7)),
                })
                .collect(),
        }))
    }

    async fn resolve_checkpoint(
        &self,
        req: Request<pb::ResolveCheckpointRequest>,
    ) -> Result<Response<pb::ResolveCheckpointResponse>, Status> {
        let c = caller(&req)?;
        c.require_admin()?;
        let r = req.get_ref();
        let state = match r.action() {
            pb::CheckpointAction::Resync => "resync",
            pb::CheckpointAction::Skip => "skip",
            pb::CheckpointAction::Unspecified => {
                return Err(ApiError::invalid(
                    "action",
                    "must be CHECKPOINT_ACTION_RESYNC or CHECKPOINT_ACTION_SKIP",
                )
                .into());
            }
        };
        if r.stream.is_empty() {
            return Err(ApiError::invalid(
                "stream",
                "is required (the Pub/Sub topic, e.g. /data/OpportunityChangeEvent)",
            )
            .into());
        }
        let done = sqlx::query(
            "UPDATE checkpoints SET state = $3, last_error = '', replay_id = NULL
              WHERE tenant_id = $1 AND source = 'salesforce' AND stream = $2 AND state = 'stale_checkpoint'",
        )
        .bind(&c.tenant_id)
        .bind(&r.stream)
        .bind(state)
        .execute(&self.pool)
        .await
        .map_err(ApiError::from)?
        .rows_affected();
        let status = statuses(&self.pool, &c.tenant_id, Some(&r.stream))
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .find(|s| s.source == "salesforce");
        let Some(status) = status else {
            return Err(ApiError::NotFound(format!(
                "no Salesforce stream {:?} for this tenant",
                r.stream
            ))
            .into());
        };
        if done == 0 {
            return Err(ApiError::FailedPrecondition(format!(
                "stream {:?} is {}, not STALE_CHECKPOINT: there is nothing to resolve",
                r.stream, status.state
            ))
            .into());
        }
        tracing::info!(tenant = %c.tenant_id, stream = %r.stream, action = state, "stale checkpoint resolved by the operator");
        Ok(Response::new(pb::ResolveCheckpointResponse {
            status: Some(status),
        }))
    }
}
