//! The daemon's HTTP listener (axum): `/metrics` (Prometheus text), `/healthz` (200 while
//! the scheduler loop turns, 503 when it is stuck) and `/status` (JSON). Read-only and
//! bound to loopback unless `daemon.listen` says otherwise.
//!
//! No client can starve the daemon of file descriptors: at most [`MAX_CONNECTIONS`] are
//! open at once (one more waits a second for a slot, then is closed), and a connection that
//! sends nothing for [`IDLE`] or lives longer than [`MAX_AGE`] is closed. Every answer is small,
//! so an honest scraper never comes near either limit.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::Utc;

use super::status::Shared;

/// The loop turns at least once a second; this much silence means it is stuck.
const STUCK_AFTER_MS: i64 = 30_000;

/// Connections served at once; file descriptors are what backups need.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection silent this long (mid-headers or idle keep-alive) is closed.
pub const IDLE: Duration = Duration::from_secs(5);
/// No connection lives longer than this, however it trickles.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// Binds `addr` and serves in the background; returns the bound address (port 0 picks one).
pub async fn serve(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let listener = Limited {
        inner: listener,
        permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
    };
    let app = Router::new()
        .route("/", get(page))
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

async fn page(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Nothing on the page runs or loads anything; say so to the browser too.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
            ),
        ],
        super::page::render(&shared.snapshot(), Utc::now()),
    )
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
    let now = Utc::now();
    let age = shared.heartbeat_age_ms(now);
    let stuck = shared.snapshot().stuck_jobs(now);
    if let Some((job, ran)) = stuck.first() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "job {job} has been running for {ran} s, far past its timeout_secs: it is stuck\n"
            ),
        )
    } else if age < STUCK_AFTER_MS {
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

/// The TCP listener with a connection limit: a permit is taken before each accept.
struct Limited {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

impl axum::serve::Listener for Limited {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        loop {
            let (io, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                // Out of descriptors or a connection reset before accept: wait, go on.
                Err(e) => {
                    tracing::debug!("accept on the metrics listener failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Full: give a slot a moment to free up (a connection just finishing), then
            // close the newcomer rather than queue it behind idle ones, so the backlog never
            // holds a flood and a scraper's retry soon finds a slot.
            let permit = match self.permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => match tokio::time::timeout(
                    Duration::from_secs(1),
                    self.permits.clone().acquire_owned(),
                )
                .await
                {
                    Ok(Ok(p)) => p,
                    _ => {
                        drop(io);
                        continue;
                    }
                },
            };
            let born = Instant::now();
            return (
                Guarded {
                    io,
                    _permit: permit,
                    born,
                    timer: Box::pin(tokio::time::sleep_until(born + IDLE)),
                },
                addr,
            );
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// One accepted connection: holds its permit, and fails reads once idle or too old.
struct Guarded {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
    born: Instant,
    timer: Pin<Box<Sleep>>,
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let next = (Instant::now() + IDLE).min(this.born + MAX_AGE);
                this.timer.as_mut().reset(next);
                Poll::Ready(r)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "metrics connection idle or too old",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
