//! HubSpot: webhooks in (v3 signature, 5-minute timestamp window), stored before HubSpot
//! gets its 200; a worker per tenant then reads each object the webhook names from
//! HubSpot's CRM API (webhooks carry ids and the changed property, not the record), maps
//! it and submits it through ingest, and only then marks the webhook done. Rate limits
//! (429 + Retry-After) and failures postpone a webhook; nothing acknowledged is dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use spm_proto::ingest::v1::crm_event::Payload;
use sqlx::{PgPool, Row as _};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::hubspot::{WebhookEvent, verify_v3};
use crate::domain::mapping::{DealDecision, DealState, Fields, Problem, Reason};
use crate::settings::HubSpot;
use crate::store::{self, Origin};
use crate::submit::{Ingest, Outcome};

pub const SOURCE: &str = "hubspot";
pub const STREAM: &str = "webhooks";

pub struct Tenant {
    pub id: String,
    pub ingest_key: String,
    pub hs: HubSpot,
    pub wake: Notify,
}

#[derive(Clone)]
pub struct Receiver {
    pub pool: PgPool,
    pub tenants: Arc<HashMap<String, Arc<Tenant>>>,
    /// The connector's public base URL: HubSpot signs the full URL it called.
    pub public_url: String,
}

fn error(status: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    crate::metrics::webhook(reason);
    (
        status,
        Json(json!({"error": message.into(), "reason": reason})),
    )
        .into_response()
}

pub fn router(r: Receiver) -> axum::Router {
    axum::Router::new()
        .route("/hubspot/{tenant}/webhooks", axum::routing::post(webhook))
        .with_state(r)
}

async fn webhook(
    State(r): State<Receiver>,
    Path(tenant): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(t) = r.tenants.get(&tenant) else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_tenant",
            format!("no HubSpot connector for tenant {tenant:?}"),
        );
    };
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let full = format!("{}{}", r.public_url, path);
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if let Err(e) = verify_v3(
        &t.hs.app_secret,
        "POST",
        &full,
        &body,
        h("x-hubspot-request-timestamp"),
        h("x-hubspot-signature-v3"),
        Utc::now().timestamp_millis(),
    ) {
        tracing::warn!(tenant = %tenant, reason = e.code(), error = %e, "HubSpot webhook refused");
        return error(StatusCode::UNAUTHORIZED, e.code(), e.to_string());
    }
    let events: Vec<WebhookEvent> = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_payload",
                format!("the body is not an array of HubSpot webhook events: {e}"),
            );
        }
    };
    match store_events(&r.pool, &tenant, &events).await {
        Ok(new) => {
            crate::metrics::webhook("accepted");
            crate::metrics::events_in(SOURCE, events.len());
            t.wake.notify_one();
            (
                StatusCode::OK,
                Json(json!({"received": events.len(), "new": new})),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "storing HubSpot webhooks");
            // Not stored, so not acknowledged: HubSpot sends them again.
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "could not store the events; retry",
            )
        }
    }
}

async fn store_events(pool: &PgPool, tenant: &str, events: &[WebhookEvent]) -> sqlx::Result<u64> {
    let mut tx = pool.begin().await?;
    let mut new = 0;
    for e in events {
        let at = DateTime::from_timestamp_millis(e.occurred_at).unwrap_or_else(Utc::now);
        new += sqlx::query(
            "INSERT INTO hubspot_inbox (tenant_id, event_id, event, occurred_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(i64::try_from(e.event_id).unwrap_or(i64::MAX))
        .bind(sqlx::types::Json(e))
        .bind(at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    let n = i64::try_from(events.len()).unwrap_or(0);
    sqlx::query("UPDATE checkpoints SET events_in = events_in + $2 WHERE tenant_id = $1 AND source = 'hubspot' AND stream = 'webhooks'")
        .bind(tenant)
        .bind(n)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(new)
}

/// The per-tenant worker that turns stored webhooks into SPM events.
pub struct Worker {
    pub pool: PgPool,
    pub tenant: Arc<Tenant>,
    pub ingest: Ingest,
    pub http: reqwest::Client,
    pub cancel: CancellationToken,
}

enum Fetch {
    /// The object's properties, and (a deal) the ids of its line items.
    Found(Fields, Vec<String>),
    Gone,
    /// Try again after this long (rate limit, failure); the message says why.
    Later(Duration, String),
}

impl Worker {
    pub async fn run(self) {
        let t = self.tenant.id.clone();
        if let Err(e) = store::ensure_stream(&self.pool, &t, SOURCE, STREAM).await {
            tracing::error!(error = %e, "connect: cannot record the stream");
        }
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            let rows = sqlx::query(
                "SELECT event_id, event, attempts FROM hubspot_inbox
                  WHERE tenant_id = $1 AND done_at IS NULL AND next_at <= now()
                  ORDER BY occurred_at, event_id LIMIT 50",
            )
            .bind(&t)
            .fetch_all(&self.pool)
            .await;
            let rows = match rows {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the HubSpot inbox");
                    Vec::new()
                }
            };
            if rows.is_empty() {
                tokio::select! {
                    () = self.cancel.cancelled() => return,
                    () = self.tenant.wake.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
            for row in rows {
                let id: i64 = row.get(0);
                let ev: sqlx::types::Json<WebhookEvent> = row.get(1);
                let attempts: i32 = row.get(2);
                match self.process(id, &ev.0, attempts).await {
                    Ok(None) => {}
                    Ok(Some(pause)) => {
                        // A rate limit holds for the whole app: pause the tenant.
                        tokio::select! {
                            () = self.cancel.cancelled() => return,
                            () = tokio::time::sleep(pause) => {}
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "HubSpot webhook processing failed; retrying");
                        tokio::select! {
                            () = self.cancel.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Sends a CRM API request and reads its JSON answer; rate limits, failures and a
    /// missing object come back as what to do instead.
    async fn call(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Value, Fetch> {
        let resp = match req.bearer_auth(&self.tenant.hs.token).send().await {
            Ok(r) => r,
            Err(e) => {
                crate::metrics::crm_retry(SOURCE, "crm_api_error");
                return Err(Fetch::Later(Duration::from_secs(2), format!("{what}: {e}")));
            }
        };
        let status = resp.status();
        if status.as_u16() == 429 {
            crate::metrics::crm_retry(SOURCE, "rate_limited");
            let secs = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(10.0)
                .clamp(0.0, 3600.0);
            return Err(Fetch::Later(
                Duration::from_secs_f64(secs),
                format!("HubSpot rate limit: retry after {secs}s"),
            ));
        }
        if status.as_u16() == 404 {
            return Err(Fetch::Gone);
        }
        if !status.is_success() {
            crate::metrics::crm_retry(SOURCE, "crm_api_error");
            let wait = if status.is_server_error() { 2 } else { 30 };
            let text = resp.text().await.unwrap_or_default();
            return Err(Fetch::Later(
                Duration::from_secs(wait),
                format!(
                    "{what}: HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                ),
            ));
        }
        resp.json::<Value>()
            .await
            .map_err(|e| Fetch::Later(Duration::from_secs(30), format!("{what}: {e}")))
    }

    /// Reads one object with the properties the mapping reads (a deal also with the ids
    /// of its line items when the mapping takes products).
    async fn fetch(&self, object: &str, id: u64) -> Fetch {
        let mapping = &self.tenant.hs.mapping;
        let props = mapping.fields_of(object).join(",");
        let base = format!(
            "{}/crm/v3/objects/{}s/{}",
            self.tenant.hs.api_base, object, id
        );
        let mut params = vec![("properties", props.as_str()), ("archived", "false")];
        let lines = mapping.deal.object == object && mapping.products.is_some();
        if lines {
            params.push(("associations", "line_items"));
        }
        let url = match url::Url::parse_with_params(&base, params) {
            Ok(u) => u,
            Err(e) => {
                return Fetch::Later(Duration::from_secs(60), format!("api_base {base:?}: {e}"));
            }
        };
        let what = format!("GET {url}");
        let v = match self.call(self.http.get(url), &what).await {
            Ok(v) => v,
            Err(f) => return f,
        };
        let Some(p) = v.get("properties").and_then(Value::as_object) else {
            return Fetch::Later(
                Duration::from_secs(30),
                format!("{what}: no properties in the answer"),
            );
        };
        let fields = p.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        // HubSpot names the association by the object's label ("line items").
        let assoc = v.get("associations").and_then(|a| {
            a.get("line items")
                .or_else(|| a.get("line_items"))
                .and_then(|l| l.get("results"))
                .and_then(Value::as_array)
        });
        let mut ids: Vec<String> = assoc
            .into_iter()
            .flatten()
            .filter_map(|r| r.get("id").and_then(Value::as_str).map(str::to_owned))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Fetch::Found(fields, ids)
    }

    /// Reads line items by id (batch read, 100 per request), in id order.
    async fn line_items(&self, ids: &[String]) -> Result<Vec<Fields>, Fetch> {
        let Some(p) = &self.tenant.hs.mapping.products else {
            return Ok(Vec::new());
        };
        let props = self.tenant.hs.mapping.fields_of(&p.object);
        let url = format!(
            "{}/crm/v3/objects/{}s/batch/read",
            self.tenant.hs.api_base, p.object
        );
        let what = format!("POST {url}");
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(100) {
            let body = json!({
                "properties": props,
                "inputs": chunk.iter().map(|id| json!({"id": id})).collect::<Vec<_>>(),
            });
            let v = self.call(self.http.post(&url).json(&body), &what).await?;
            let results = v.get("results").and_then(Value::as_array);
            let mut got: Vec<(String, Fields)> = results
                .into_iter()
                .flatten()
                .filter_map(|r| {
                    let id = r.get("id").and_then(Value::as_str)?.to_owned();
                    let props = r.get("properties").and_then(Value::as_object)?;
                    Some((
                        id,
                        props.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    ))
                })
                .collect();
            if got.len() != chunk.len() {
                // A line item removed between the two reads: read the deal again later.
                return Err(Fetch::Later(
                    Duration::from_secs(2),
                    format!(
                        "{what}: {} of {} line items returned",
                        got.len(),
                        chunk.len()
                    ),
                ));
            }
            got.sort_by(|a, b| a.0.cmp(&b.0));
            out.extend(got.into_iter().map(|(_, f)| f));
        }
        Ok(out)
    }

    async fn postpone(
        &self,
        id: i64,
        attempts: i32,
        wait: Duration,
        why: &str,
    ) -> sqlx::Result<()> {
        let wait = wait.max(Duration::from_millis(200));
        let backoff = if why.starts_with("HubSpot rate limit") {
            wait
        } else {
            wait * 2u32.saturating_pow(u32::try_from(attempts.clamp(0, 8)).unwrap_or(0))
        }
        .min(Duration::from_secs(600));
        sqlx::query(
            "UPDATE hubspot_inbox SET attempts = attempts + 1, last_error = $3,
                    next_at = now() + make_interval(secs => $4)
              WHERE tenant_id = $1 AND event_id = $2",
        )
        .bind(&self.tenant.id)
        .bind(id)
        .bind(why)
        .bind(backoff.as_secs_f64())
        .execute(&self.pool)
        .await?;
        store::set_state(&self.pool, &self.tenant.id, SOURCE, STREAM, "retrying", why).await
    }

    /// Processes one stored webhook; `Some(pause)` asks the worker to wait (rate limit).
    async fn process(
        &self,
        id: i64,
        ev: &WebhookEvent,
        attempts: i32,
    ) -> anyhow::Result<Option<Duration>> {
        let t = self.tenant.id.as_str();
        let mapping = &self.tenant.hs.mapping;
        let (object, change) = ev.kind();
        let crm_id = ev.event_id.to_string();
        let rid = ev.object_id.to_string();
        let at = DateTime::from_timestamp_millis(ev.occurred_at).unwrap_or_else(Utc::now);
        let is_deal = mapping.deal.object == object;
        let is_activity =
            change == "creation" && mapping.activities.iter().any(|a| a.object == object);
        let mut problems = Vec::new();
        let mut out = Vec::new();
        let mut conn = self.pool.begin().await?;
        if is_deal {
            let (fields, deleted, line_ids) = if change == "deletion" {
                (Fields::new(), true, Vec::new())
            } else {
                match self.fetch(object, ev.object_id).await {
                    Fetch::Found(f, lines) => (f, false, lines),
                    Fetch::Gone => (Fields::new(), true, Vec::new()),
                    Fetch::Later(wait, why) => {
                        drop(conn);
                        self.postpone(id, attempts, wait, &why).await?;
                        return Ok(why.starts_with("HubSpot rate limit").then_some(wait));
                    }
                }
            };
            let before = store::deal(&mut conn, t, SOURCE, &rid).await?;
            if !deleted {
                store::put_record(
                    &mut conn, t, SOURCE, object, &rid, None, &fields, false, None,
                )
                .await?;
            }
            let mut decision = mapping.decide(&rid, &fields, deleted, &before, &[], &[]);
            if matches!(decision, Ok(DealDecision::Close(..))) && !line_ids.is_empty() {
                // Closing: the deal's line items are its product lines.
                match self.line_items(&line_ids).await {
                    Ok(lines) => {
                        decision = mapping.decide(&rid, &fields, deleted, &before, &[], &lines);
                    }
                    Err(Fetch::Later(wait, why)) => {
                        drop(conn);
                        self.postpone(id, attempts, wait, &why).await?;
                        return Ok(why.starts_with("HubSpot rate limit").then_some(wait));
                    }
                    Err(_) => {
                        drop(conn);
                        let why = "a line item of the deal is gone: reading the deal again";
                        self.postpone(id, attempts, Duration::from_secs(2), why)
                            .await?;
                        return Ok(None);
                    }
                }
            }
            match decision {
                Ok(DealDecision::Close(dc, close_at)) => {
                    let amount = dc.amount.clone().expect("set");
                    let after = DealState {
                        closed: Some((amount.amount.parse()?, amount.currency)),
                        reversed: false,
                    };
                    out.push((
                        crate::spm_event(
                            SOURCE,
                            t,
                            &crm_id,
                            &rid,
                            "closed",
                            close_at,
                            Payload::DealClosed(dc),
                        ),
                        Some((after, before)),
                    ));
                }
                Ok(DealDecision::Reverse(r)) => {
                    let after = DealState {
                        closed: before.closed.clone(),
                        reversed: true,
                    };
                    out.push((
                        crate::spm_event(
                            SOURCE,
                            t,
                            &crm_id,
                            &rid,
                            "reversed",
                            at,
                            Payload::DealReversed(r),
                        ),
                        Some((after, before)),
                    ));
                }
                Ok(DealDecision::Nothing) => {}
                Err(p) => problems.push(p),
            }
        } else if is_activity {
            match self.fetch(object, ev.object_id).await {
                Fetch::Found(f, _) => match mapping.activity(object, &rid, &f) {
                    Some(Ok(a)) => out.push((
                        crate::spm_event(
                            SOURCE,
                            t,
                            &crm_id,
                            &rid,
                            "activity",
                            at,
                            Payload::ActivityLogged(a),
                        ),
                        None,
                    )),
                    Some(Err(p)) => problems.push(p),
                    None => {}
                },
                Fetch::Gone => problems.push(Problem::new(
                    "objectId",
                    Reason::NotFound,
                    format!("{object} {rid} is not in HubSpot any more"),
                )),
                Fetch::Later(wait, why) => {
                    drop(conn);
                    self.postpone(id, attempts, wait, &why).await?;
                    return Ok(why.starts_with("HubSpot rate limit").then_some(wait));
                }
            }
        }
        let outcomes = self
            .ingest
            .submit(
                &self.tenant.ingest_key,
                SOURCE,
                out.iter().map(|(e, _)| e.clone()).collect(),
                &self.cancel,
            )
            .await
            .map_err(|_| anyhow::anyhow!("stopping"))?;
        let mut submitted = 0;
        for ((_, state), o) in out.iter().zip(outcomes) {
            match o {
                Outcome::Done(_) => {
                    submitted += 1;
                    if let Some((after, _)) = state {
                        store::put_deal(&mut conn, t, SOURCE, &rid, after).await?;
                    }
                }
                Outcome::Refused(p) => problems.push(p),
            }
        }
        let origin = Origin {
            tenant: t,
            source: SOURCE,
            stream: STREAM,
            crm_event_id: &crm_id,
            record_id: &rid,
        };
        for p in &problems {
            store::add_error(&mut conn, &origin, p).await?;
        }
        sqlx::query("UPDATE hubspot_inbox SET done_at = now(), last_error = '' WHERE tenant_id = $1 AND event_id = $2")
            .bind(t)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        store::advance(
            &mut conn,
            t,
            SOURCE,
            STREAM,
            None,
            0,
            submitted,
            problems.len() as i64,
        )
        .await?;
        conn.commit().await?;
        Ok(None)
    }
}
