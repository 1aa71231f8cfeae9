//! The daemon's HTTP listener (axum): `/metrics` (Prometheus text), `/healthz` (200 while
//! the scheduler loop turns, 503 when it is stuck) and `/status` (JSON). Read-only and
//! bound to loopback unless `daemon.listen` says otherwise.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::Utc;

use super::status::Shared;

/// The loop turns at least once a second; this much silence means it is stuck.
const STUCK_AFTER_MS: i64 = 30_000;

/// Binds `addr` and serves in the background; returns the bound address (port 0 picks one).
pub async fn serve(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .with_state(shared);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the metrics listener stopped: {e}");
        }
    });
    Ok(bound)
}

async fn metrics(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        super::metrics::render(&shared.snapshot(), Utc::now()),
    )
}

async fn healthz(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
) -> impl IntoResponse {
    let age = shared.heartbeat_age_ms(Utc::now());
    if age < STUCK_AFTER_MS {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("scheduler loop silent for {} s\n", age / 1000),
        )
    }
}

async fn status(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
) -> impl IntoResponse {
    axum::Json(shared.snapshot())
}
