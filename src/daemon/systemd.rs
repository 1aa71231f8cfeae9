//! The systemd notify protocol (via sd-notify): READY, STATUS, WATCHDOG, RELOADING and
//! STOPPING. Every call is a no-op without `NOTIFY_SOCKET`, so the same binary runs under
//! systemd, in a container, or by hand.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

pub struct Systemd {
    enabled: bool,
    /// Half of `WATCHDOG_USEC`, when systemd asked for pings.
    watchdog_every: Option<Duration>,
    last_ping: Option<Instant>,
    last_status: String,
}

impl Systemd {
    pub fn from_env() -> Self {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        Systemd {
            enabled,
            watchdog_every: sd_notify::watchdog_enabled().map(|d| d / 2),
            last_ping: None,
            last_status: String::new(),
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if self.enabled
            && let Err(e) = sd_notify::notify(states)
        {
            tracing::warn!("cannot notify systemd: {e}");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn reloading(&self) {
        // Type=notify-reload wants the monotonic time beside RELOADING=1.
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// Sends `STATUS=` when it changed and `WATCHDOG=1` when due; called every loop turn.
    pub fn tick(&mut self, status: &str) {
        if status != self.last_status {
            self.send(&[NotifyState::Status(status)]);
            self.last_status = status.to_string();
        }
        if let Some(every) = self.watchdog_every
            && self.last_ping.is_none_or(|t| t.elapsed() >= every)
        {
            self.send(&[NotifyState::Watchdog]);
            self.last_ping = Some(Instant::now());
        }
    }
}
