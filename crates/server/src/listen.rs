//! Forwarding Postgres NOTIFY payloads of one channel to in-process subscribers: committed
//! changes of any instance reach the live gRPC streams of every instance.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Listens on `channel` until `cancel`, reconnecting after connection loss, and sends
/// every payload to `tx`. After every (re)connection it sends an empty payload: what was
/// notified while no listener was connected is lost, so caches must start over.
pub async fn forward(
    pool: PgPool,
    channel: &'static str,
    tx: broadcast::Sender<String>,
    cancel: CancellationToken,
) {
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(channel, error = %e, "listener: cannot connect; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if let Err(e) = listener.listen(channel).await {
            tracing::warn!(channel, error = %e, "listener: LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let _ = tx.send(String::new());
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                n = listener.recv() => match n {
                    Ok(n) => { let _ = tx.send(n.payload().to_owned()); }
                    Err(e) => {
                        tracing::warn!(channel, error = %e, "listener: connection lost");
                        break;
                    }
                }
            }
        }
    }
}
