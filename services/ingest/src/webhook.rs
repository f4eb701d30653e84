//! `POST /v1/events`: the HTTP JSON webhook, with the same semantics as `SubmitEvents`.
//!
//! Headers: `X-SPM-Tenant: <tenant id>`, `X-SPM-Timestamp: <unix seconds>`,
//! `X-SPM-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>" with the tenant's webhook
//! secret>`. The timestamp must be within the replay window of the server clock. Body: the
//! proto3 JSON mapping of `SubmitEventsRequest` (`{"events": [...]}`).
//!
//! Answers: 200 when every event was accepted or is a duplicate; 422 with a JSON list of
//! field violations (paths `events[i]....`) when any was rejected; 409 when an event id was
//! reused with different content; 503 when the broker or database is unavailable (nothing
//! was recorded for those events; retry). The body always carries one ack per event.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use spm_core::validation::FieldViolation;
use spm_proto::ingest::v1::{AckStatus, SubmitEventsRequest, SubmitEventsResponse};
use spm_server::ApiError;

use crate::api::BatchLimit;
use crate::pipeline::Pipeline;

#[derive(Clone)]
pub struct Webhook {
    pub pipeline: Pipeline,
    pub max_batch: BatchLimit,
    pub max_body: usize,
    pub window: Duration,
}

pub fn router(w: Webhook) -> Router {
    let limit = w.max_body;
    Router::new()
        .route("/v1/events", post(handle))
        // Let the handler see oversized bodies so it can answer with a JSON 413.
        .layer(DefaultBodyLimit::max(limit.saturating_add(1)))
        .with_state(w)
}

async fn handle(
    State(w): State<Webhook>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let started = std::time::Instant::now();
    let res = match body {
        Ok(body) => accept(&w, &headers, &body).await,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::PayloadTooLarge(
            format!("the body exceeds {} bytes", w.max_body),
        )),
        Err(e) => Err(ApiError::BadRequest(e.body_text())),
    };
    let resp = match res {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    let m = spm_telemetry::metrics::global();
    m.http_requests
        .get_or_create(&spm_telemetry::metrics::labels([
            ("route", "/v1/events"),
            ("status", resp.status().as_str()),
        ]))
        .inc();
    tracing::debug!(status = %resp.status(), elapsed = ?started.elapsed(), "webhook");
    resp
}

async fn accept(w: &Webhook, headers: &HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
    if body.len() > w.max_body {
        return Err(ApiError::PayloadTooLarge(format!(
            "the body exceeds {} bytes",
            w.max_body
        )));
    }
    let header = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let tenant_id = header("x-spm-tenant").ok_or(ApiError::Unauthenticated(
        "X-SPM-Tenant header is required".into(),
    ))?;
    let ts = header("x-spm-timestamp").ok_or(ApiError::Unauthenticated(
        "X-SPM-Timestamp header is required".into(),
    ))?;
    let sig = header("x-spm-signature").ok_or(ApiError::Unauthenticated(
        "X-SPM-Signature header is required".into(),
    ))?;
    let ts_secs: i64 = ts
        .parse()
        .map_err(|_| ApiError::Unauthenticated("X-SPM-Timestamp must be unix seconds".into()))?;
    let now = chrono::Utc::now().timestamp();
    let window = i64::try_from(w.window.as_secs()).unwrap_or(i64::MAX);
    if (now - ts_secs).abs() > window {
        return Err(ApiError::Unauthenticated(
            "X-SPM-Timestamp is outside the replay window".into(),
        ));
    }
    if !sig.starts_with("v1=") {
        return Err(ApiError::Unauthenticated(
            "X-SPM-Signature must be 'v1=<hex hmac-sha256>'".into(),
        ));
    }

    // Unknown tenants and bad signatures get the same answer.
    let secrets = crate::store::webhook_secrets(&w.pipeline.pool, tenant_id).await?;
    let Some((current, previous)) = secrets else {
        return Err(ApiError::Unauthenticated("invalid signature".into()));
    };
    let ok = std::iter::once(Some(current))
        .chain(std::iter::once(previous))
        .flatten()
        .any(|secret| spm_core::signature::verify(&secret, ts, body, sig));
    if !ok {
        return Err(ApiError::Unauthenticated("invalid signature".into()));
    }

    let req: SubmitEventsRequest = spm_proto::json::from_json(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "body is not a SubmitEventsRequest in proto3 JSON: {e}"
        ))
    })?;
    if req.events.is_empty() {
        return Err(ApiError::invalid(
            "events",
            "at least one event is required",
        ));
    }
    if req.events.len() > w.max_batch.0 {
        return Err(ApiError::invalid(
            "events",
            format!(
                "at most {} events per request, got {}",
                w.max_batch.0,
                req.events.len()
            ),
        ));
    }
    let tenant = w.pipeline.tenant(tenant_id).await?;
    let acks = w.pipeline.submit(&tenant, req.events).await?;

    let mut violations: Vec<FieldViolation> = Vec::new();
    let (mut conflict, mut unavailable) = (false, false);
    for (i, a) in acks.iter().enumerate() {
        match AckStatus::try_from(a.status) {
            Ok(AckStatus::Rejected) => violations.extend(a.violations.iter().map(|v| {
                FieldViolation::new(v.field.clone(), v.description.clone())
                    .under(&format!("events[{i}]"))
            })),
            Ok(AckStatus::Conflict) => conflict = true,
            Ok(AckStatus::Unavailable) => unavailable = true,
            _ => {}
        }
    }
    let mut body = spm_proto::json::to_json(&SubmitEventsResponse { acks });
    let status = if !violations.is_empty() {
        body["error"] = "invalid_argument".into();
        body["field_violations"] = serde_json::to_value(&violations).expect("violations serialize");
        StatusCode::UNPROCESSABLE_ENTITY
    } else if unavailable {
        body["error"] = "unavailable".into();
        body["retry_after_ms"] = 1000.into();
        StatusCode::SERVICE_UNAVAILABLE
    } else if conflict {
        body["error"] = "already_exists".into();
        StatusCode::CONFLICT
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(body)).into_response())
}

/// The signature header value for `body` (senders and tests).
pub fn sign(secret: &str, ts: i64, body: &[u8]) -> String {
    spm_core::signature::sign(secret, ts, body)
}
