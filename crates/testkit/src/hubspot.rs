//! A stand-in for HubSpot (no SaaS is reachable here), following its documented contracts:
//! webhook requests as HubSpot sends them (a JSON array of events, signed with the v3
//! signature: base64 HMAC-SHA256 of method + URI + body + timestamp with the app secret, in
//! `X-HubSpot-Signature-v3`, the epoch-millisecond time in `X-HubSpot-Request-Timestamp`),
//! and the CRM objects API (`GET /crm/v3/objects/{type}/{id}?properties=...` with a private
//! app's bearer token, `&associations=line_items` answered under the association label
//! "line items"; `POST /crm/v3/objects/{type}/batch/read` with `{properties, inputs}`, 207
//! when some inputs are missing; 401, 404 and 429 + `Retry-After` answered as HubSpot does).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

pub const TOKEN: &str = "pat-na1-00000000-fake-private-app-token";
pub const APP_SECRET: &str = "hubspot-app-client-secret";

#[derive(Default)]
struct Inner {
    objects: Mutex<BTreeMap<(String, u64), BTreeMap<String, Value>>>,
    /// deal id -> its line items' ids.
    line_items: Mutex<BTreeMap<u64, Vec<u64>>>,
    batch_reads: AtomicU32,
    /// Each CRM API answer takes this long (ms).
    latency_ms: std::sync::atomic::AtomicU64,
    /// The next this-many reads are answered 429.
    rate_limit: AtomicU32,
    reads: AtomicU32,
    limited: AtomicU32,
}

#[derive(Clone)]
pub struct FakeHubSpot {
    pub base: String,
    inner: Arc<Inner>,
}

impl FakeHubSpot {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app = axum::Router::new()
            .route(
                "/crm/v3/objects/{object_type}/{id}",
                axum::routing::get(read),
            )
            .route(
                "/crm/v3/objects/{object_type}/batch/read",
                axum::routing::post(batch_read),
            )
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake hubspot");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("fake hubspot serves")
        });
        Self {
            base: format!("http://{addr}"),
            inner,
        }
    }

    /// Sets an object's properties (`deals`, `calls`, ... and its id).
    pub fn put(&self, object_type: &str, id: u64, props: &[(&str, &str)]) {
        self.inner.objects.lock().expect("lock").insert(
            (object_type.to_owned(), id),
            props
                .iter()
                .map(|(k, v)| ((*k).to_owned(), json!(v)))
                .collect(),
        );
    }

    /// Associates line items with a deal (the deal-to-line-item association).
    pub fn associate_line_items(&self, deal: u64, lines: &[u64]) {
        self.inner
            .line_items
            .lock()
            .expect("lock")
            .insert(deal, lines.to_vec());
    }

    /// Makes every CRM API answer take `ms` milliseconds.
    pub fn set_latency(&self, ms: u64) {
        self.inner.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// How many batch reads were answered.
    pub fn batch_reads(&self) -> u32 {
        self.inner.batch_reads.load(Ordering::SeqCst)
    }

    /// Answers the next `n` reads with 429 (Retry-After: 1).
    pub fn rate_limit_next(&self, n: u32) {
        self.inner.rate_limit.store(n, Ordering::SeqCst);
    }

    /// (reads answered, reads refused with 429).
    pub fn reads(&self) -> (u32, u32) {
        (
            self.inner.reads.load(Ordering::SeqCst),
            self.inner.limited.load(Ordering::SeqCst),
        )
    }
}

/// The bearer token and the rate limit, checked as HubSpot does for every call.
fn refusal(inner: &Inner, headers: &HeaderMap) -> Option<Response> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth != format!("Bearer {TOKEN}") {
        return Some((
            StatusCode::UNAUTHORIZED,
            Json(json!({"status": "error", "message": "Authentication credentials not found.", "category": "INVALID_AUTHENTICATION"})),
        )
            .into_response());
    }
    if inner
        .rate_limit
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        inner.limited.fetch_add(1, Ordering::SeqCst);
        return Some((
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            Json(json!({"status": "error", "message": "You have reached your secondly limit.", "errorType": "RATE_LIMIT", "policyName": "SECONDLY"})),
        )
            .into_response());
    }
    None
}

/// The requested properties, null when unset, plus the default `hs_object_id`.
fn properties<'a>(
    props: &BTreeMap<String, Value>,
    names: impl Iterator<Item = &'a str>,
    id: u64,
) -> Value {
    let mut out = serde_json::Map::new();
    for p in names.filter(|p| !p.is_empty()) {
        out.insert(p.to_owned(), props.get(p).cloned().unwrap_or(Value::Null));
    }
    out.insert("hs_object_id".into(), json!(id.to_string()));
    Value::Object(out)
}

async fn batch_read(
    State(inner): State<Arc<Inner>>,
    Path(object_type): Path<String>,
    headers: HeaderMap,
    Json(req): Json<Value>,
) -> Response {
    let ms = inner.latency_ms.load(Ordering::SeqCst);
    if ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    if let Some(r) = refusal(&inner, &headers) {
        return r;
    }
    let names: Vec<&str> = req["properties"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let Some(inputs) = req["inputs"].as_array().map(|i| {
        i.iter()
            .map(|i| i["id"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    }) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"status": "error", "message": "Invalid input JSON: inputs is required", "category": "VALIDATION_ERROR"})),
        )
            .into_response();
    };
    if inputs.len() > 100 {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"status": "error", "message": "Batch input limit is 100", "category": "VALIDATION_ERROR"})),
        )
            .into_response();
    }
    inner.batch_reads.fetch_add(1, Ordering::SeqCst);
    let objects = inner.objects.lock().expect("lock");
    let (mut results, mut missing) = (Vec::new(), Vec::new());
    for input in &inputs {
        let found = input
            .parse::<u64>()
            .ok()
            .and_then(|id| Some((id, objects.get(&(object_type.clone(), id))?)));
        match found {
            Some((id, props)) => results.push(json!({
                "id": input,
                "properties": properties(props, names.iter().copied(), id),
                "createdAt": "2026-11-01T09:00:00.000Z",
                "updatedAt": "2026-12-01T09:00:00.000Z",
                "archived": false
            })),
            None => missing.push(input.clone()),
        }
    }
    let mut body = json!({
        "status": "COMPLETE",
        "results": results,
        "startedAt": "2026-12-01T09:00:00.000Z",
        "completedAt": "2026-12-01T09:00:00.100Z"
    });
    if missing.is_empty() {
        return Json(body).into_response();
    }
    body["numErrors"] = json!(1);
    body["errors"] = json!([{
        "status": "error", "category": "OBJECT_NOT_FOUND",
        "message": "Could not get some objects, they may be deleted or not exist.",
        "context": {"ids": missing}
    }]);
    (StatusCode::MULTI_STATUS, Json(body)).into_response()
}

async fn read(
    State(inner): State<Arc<Inner>>,
    Path((object_type, id)): Path<(String, u64)>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let ms = inner.latency_ms.load(Ordering::SeqCst);
    if ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    if let Some(r) = refusal(&inner, &headers) {
        return r;
    }
    inner.reads.fetch_add(1, Ordering::SeqCst);
    let objects = inner.objects.lock().expect("lock");
    let Some(props) = objects.get(&(object_type.clone(), id)) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"status": "error", "message": "Object not found.  objectId are usually numeric.", "category": "OBJECT_NOT_FOUND"})),
        )
            .into_response();
    };
    let mut body = json!({
        "id": id.to_string(),
        "properties": properties(
            props,
            q.get("properties").map(String::as_str).unwrap_or_default().split(','),
            id
        ),
        "createdAt": "2026-11-01T09:00:00.000Z",
        "updatedAt": "2026-12-01T09:00:00.000Z",
        "archived": false
    });
    let wants_lines = q
        .get("associations")
        .is_some_and(|a| a.split(',').any(|a| a == "line_items"));
    if object_type == "deals" && wants_lines {
        let lines = inner.line_items.lock().expect("lock");
        // HubSpot leaves the key out when there are none.
        if let Some(ids) = lines.get(&id).filter(|l| !l.is_empty()) {
            body["associations"] = json!({"line items": {"results": ids.iter().map(|l| json!({
                "id": l.to_string(), "type": "deal_to_line_item"
            })).collect::<Vec<_>>()}});
        }
    }
    Json(body).into_response()
}

/// The v3 signature of a request.
pub fn sign_v3(secret: &str, method: &str, uri: &str, body: &[u8], timestamp: &str) -> String {
    use ring::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut msg = Vec::new();
    msg.extend_from_slice(method.as_bytes());
    msg.extend_from_slice(uri.as_bytes());
    msg.extend_from_slice(body);
    msg.extend_from_slice(timestamp.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(hmac::sign(&key, &msg).as_ref())
}

/// A webhook event as HubSpot sends it.
pub fn event(
    event_id: u64,
    subscription_type: &str,
    object_id: u64,
    property: Option<(&str, &str)>,
) -> Value {
    let mut e = json!({
        "eventId": event_id,
        "subscriptionId": 4242,
        "portalId": 62515,
        "appId": 1160452,
        "occurredAt": chrono::Utc::now().timestamp_millis(),
        "subscriptionType": subscription_type,
        "attemptNumber": 0,
        "objectId": object_id,
        "changeSource": "CRM_UI"
    });
    if let Some((k, v)) = property {
        e["propertyName"] = json!(k);
        e["propertyValue"] = json!(v);
    }
    e
}

/// How to send a webhook (to test refusals).
#[derive(Debug, Clone, Copy, Default)]
pub struct Send {
    /// Sign with the wrong secret.
    pub bad_signature: bool,
    /// A timestamp this many ms in the past.
    pub age_ms: i64,
}

/// POSTs `events` to `url` as HubSpot would; returns the status and the JSON answer.
pub async fn send(url: &str, secret: &str, events: &Value, how: Send) -> (u16, Value) {
    let body = serde_json::to_vec(events).expect("json");
    let ts = (chrono::Utc::now().timestamp_millis() - how.age_ms).to_string();
    let secret = if how.bad_signature {
        "not-the-secret"
    } else {
        secret
    };
    let sig = sign_v3(secret, "POST", url, &body, &ts);
    let resp = crate::http()
        .post(url)
        .header("content-type", "application/json")
        .header("x-hubspot-request-timestamp", &ts)
        .header("x-hubspot-signature-v3", sig)
        .body(body)
        .send()
        .await
        .expect("webhook request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}
