//! The HTTP side of a service: `/metrics` (Prometheus text format), `/healthz`, plus any
//! routes the service adds (the ingest webhook).

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;

/// The base router: `/metrics` and `/healthz`.
pub fn base_router() -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    spm_telemetry::metrics::render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
}

/// Binds `addr` and returns the bound address and the server future.
pub async fn bind(
    addr: SocketAddr,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let fut = axum::serve(listener, router).with_graceful_shutdown(shutdown);
    Ok((bound, async move { fut.await }))
}
