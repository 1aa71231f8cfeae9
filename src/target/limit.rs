//! The **upload limit**: one token bucket per limit, shared by every upload it covers (all
//! jobs, targets and parts in flight for `daemon.upload_limit`; one target's uploads for
//! `[targets.X] upload_limit`). A part writer takes tokens for each chunk before buffering
//! it, so a limited upload waits — and the bounded channels behind it make the encoder and
//! the source wait too: memory stays bounded, nothing piles up.
//!
//! The limit holds on average over a part's worth of data: object_store sends a part at
//! the network's speed once it is full, so a link sees bursts of one part (8 MiB at first)
//! separated by pauses that keep the average at the limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::time::Instant;

/// Tokens that may accumulate while nothing uploads: one chunk, so an idle period never
/// turns into a burst above the limit.
const BURST_BYTES: f64 = (1 << 20) as f64;

#[derive(Debug)]
pub struct Limiter {
    bytes_per_sec: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Negative while uploads are in debt (they wait it off).
    tokens: f64,
    last: Instant,
}

impl Limiter {
    pub fn new(bytes_per_sec: u64) -> Self {
        Limiter {
            bytes_per_sec: bytes_per_sec.max(1) as f64,
            state: Mutex::new(State {
                tokens: BURST_BYTES,
                last: Instant::now(),
            }),
        }
    }

    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec as u64
    }

    /// Waits until `bytes` may be sent. Callers are served in the order they ask: each
    /// takes its tokens at once (going into debt) and sleeps the debt off.
    pub async fn acquire(&self, bytes: usize) {
        let wait = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let refill = now.duration_since(s.last).as_secs_f64() * self.bytes_per_sec;
            s.tokens = (s.tokens + refill).min(BURST_BYTES);
            s.last = now;
            s.tokens -= bytes as f64;
            if s.tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-s.tokens / self.bytes_per_sec)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The one limiter for `scope` (`""` for the daemon-wide limit, else a target's name) at
/// `bytes_per_sec`: every upload asking for the same scope and rate shares it, so one
/// process never exceeds a limit however many jobs and targets upload at once.
pub fn shared(scope: &str, bytes_per_sec: u64) -> Arc<Limiter> {
    type Registry = Mutex<HashMap<(String, u64), Weak<Limiter>>>;
    static ALL: OnceLock<Registry> = OnceLock::new();
    let mut all = ALL
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let key = (scope.to_string(), bytes_per_sec);
    if let Some(l) = all.get(&key).and_then(Weak::upgrade) {
        return l;
    }
    let l = Arc::new(Limiter::new(bytes_per_sec));
    all.retain(|_, w| w.strong_count() > 0);
    all.insert(key, Arc::downgrade(&l));
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    // Virtual time: tokio's clock only advances by the sleeps themselves, so these
    // assert the bucket's arithmetic, not the machine's speed.
    #[tokio::test(start_paused = true)]
    async fn ten_mib_at_one_mib_per_second_takes_nine_seconds_after_the_burst() {
        let l = Limiter::new(1 << 20);
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            l.acquire(1 << 20).await;
        }
        let took = start.elapsed().as_secs_f64();
        assert!((8.9..9.2).contains(&took), "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn uploads_sharing_a_limiter_share_the_rate() {
        let l = shared("t-share", 2 << 20);
        let same = shared("t-share", 2 << 20);
        assert!(Arc::ptr_eq(&l, &same), "one limiter per scope and rate");
        let start = tokio::time::Instant::now();
        let a = tokio::spawn({
            let l = l.clone();
            async move {
                for _ in 0..10 {
                    l.acquire(1 << 20).await;
                }
            }
        });
        let b = tokio::spawn({
            let l = same.clone();
            async move {
                for _ in 0..10 {
                    l.acquire(1 << 20).await;
                }
            }
        });
        a.await.unwrap();
        b.await.unwrap();
        // 20 MiB through one 2 MiB/s bucket: about 9.5 s, not the 4.5 s each alone takes.
        let took = start.elapsed().as_secs_f64();
        assert!(took > 9.0, "{took}");
    }
}
