//! A webhook endpoint inside a test: verifies SPM signatures, can fail the first N
//! requests, and records what it accepted (with receipt times for latency figures).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};

/// One accepted delivery.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub body: serde_json::Value,
    pub delivery_id: String,
}

#[derive(Clone, Default)]
pub struct Receiver {
    pub addr: Option<SocketAddr>,
    pub secret: Arc<Mutex<String>>,
    /// Requests to answer 500 before accepting.
    pub fail_first: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    pub bad_signatures: Arc<AtomicUsize>,
    pub accepted: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Starts listening on a free loopback port.
    pub async fn start() -> Self {
        let mut r = Self::default();
        let me = r.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let me = me.clone();
                async move { me.handle(&headers, &body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        r.addr = Some(listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        r
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr.expect("started"))
    }

    pub fn set_secret(&self, s: &str) {
        *self.secret.lock().expect("secret") = s.to_owned();
    }

    pub fn accepted(&self) -> Vec<Received> {
        self.accepted.lock().expect("accepted").clone()
    }

    fn handle(&self, headers: &HeaderMap, body: &[u8]) -> StatusCode {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let h = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let secret = self.secret.lock().expect("secret").clone();
        if !spm_core::signature::verify(&secret, &h("x-spm-timestamp"), body, &h("x-spm-signature"))
        {
            self.bad_signatures.fetch_add(1, Ordering::SeqCst);
            return StatusCode::UNAUTHORIZED;
        }
        if self
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        self.accepted.lock().expect("accepted").push(Received {
            at: Instant::now(),
            body: serde_json::from_slice(body).unwrap_or_default(),
            delivery_id: h("x-spm-delivery-id"),
        });
        StatusCode::OK
    }
}
