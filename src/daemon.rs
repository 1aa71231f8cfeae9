//! `backupd run`: the long-running daemon. Loads the policy, checks the state directory,
//! starts the listener, tells systemd it is ready, takes inventory of every job's targets
//! (catching up missed runs), then serves the schedule until SIGTERM/SIGINT; SIGHUP
//! reloads the policy (an invalid one is refused and the old one kept).
//!
//! Layout: `plan` (next times), `scheduler` (the loop), `work` (what a run does),
//! `status` (the shared view), `metrics` and `http` (the listener), `systemd` (notify),
//! `wal_watch` (each base backup source's WAL archiving, from its server).

mod http;
mod metrics;
mod page;
mod plan;
mod scheduler;
mod status;
mod systemd;
mod wal_watch;
mod work;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

pub use status::{JobStatus, Status};

use self::scheduler::{Clock, Control, Scheduler};
use self::status::Shared;
use self::systemd::Systemd;
use self::work::Work;
use crate::notify::Notifier;
use crate::policy::{self, Policy};
use crate::state;

pub async fn run(config: &Path) -> anyhow::Result<ExitCode> {
    let policy = policy::load(config)?;
    let state_dir = policy.daemon.state_dir.clone();
    check_state_dir(&state_dir)?;
    if let Some(spool) = &policy.daemon.spool_dir {
        state::check_private_dir(spool, "daemon.spool_dir")?;
    }
    // Coordination is only as good as the store's create-if-absent: prove it now.
    for (name, job) in &policy.jobs {
        if job.coordination != crate::policy::Coordination::Lease {
            continue;
        }
        let first = job.targets.first().map(|t| policy.open_target(t));
        match first {
            Some(Ok(target)) => {
                let supports = crate::claim::probe(&target).await.map_err(|e| {
                    anyhow::Error::from(crate::error::UsageError(format!(
                        "jobs.{name}.coordination = \"lease\" refused: {e}"
                    )))
                })?;
                tracing::info!(
                    job = name,
                    "coordination: target {} {supports}",
                    target.name
                );
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    // Fail at start, not at 03:00: the keys must be usable.
    crate::crypto::backup_recipients(&policy.encryption)?;

    let shared = Arc::new(Shared::new(&config.display().to_string(), Utc::now()));
    shared.update(|s| s.upload_limit_bytes_per_sec = policy.daemon.upload_limit);
    for name in policy.jobs.keys() {
        let record = state::read_job(&state_dir, name);
        shared.job(name, |j| {
            j.last_run = record.last_run.clone();
            j.last_success_at = record.last_success_at;
            j.last_failure_at = record.last_failure_at;
        });
    }
    let listen = match policy.daemon.listen.as_str() {
        "off" => None,
        addr => {
            let addr: std::net::SocketAddr = addr.parse().context("daemon.listen")?;
            let bound = http::serve(addr, shared.clone()).await.with_context(|| {
                format!("cannot listen on {addr} (daemon.listen): is another backupd running? Pick another port or set listen = \"off\"")
            })?;
            tracing::info!("serving /metrics, /healthz and /status on http://{bound}");
            Some(bound.to_string())
        }
    };
    state::write_daemon_info(
        &state_dir,
        &state::DaemonInfo {
            pid: std::process::id(),
            listen,
            started_at: Utc::now(),
        },
    )
    .with_context(|| {
        format!(
            "cannot write {}",
            state::daemon_info_path(&state_dir).display()
        )
    })?;

    let work = Arc::new(Work {
        shared: shared.clone(),
        notifier: {
            let counted = shared.clone();
            Notifier::new(policy.notify.clone())
                .for_instance(policy.daemon.instance())
                .counting_failures(move |label| {
                    counted
                        .update(|s| *s.notify_failures.entry(label.to_string()).or_default() += 1)
                })
        },
    });
    let grace = Duration::from_secs(policy.daemon.shutdown_timeout_secs);
    let policy = Arc::new(policy);
    let mut scheduler = Scheduler::new(
        policy.clone(),
        shared.clone(),
        Arc::new(work.clone()),
        Clock::System,
    );
    let mut ticker = Systemd::from_env();
    let freshness = work.clone();
    scheduler.on_tick(move |s, now| {
        ticker.tick(&status::summary(&s.shared.snapshot()));
        freshness.refresh_from_state(&s.policy);
        freshness.check_freshness(&s.policy, now);
    });

    for said in
        crate::target::journal::abort_orphans(&policy.daemon.state_dir, &policy.targets).await
    {
        tracing::warn!("{said}");
    }
    let (policy_tx, policy_rx) = tokio::sync::watch::channel(policy.clone());
    tokio::spawn(wal_watch::run(policy_rx.clone(), shared.clone()));
    if policy.daemon.spool_dir.is_some() {
        let shared = shared.clone();
        tokio::spawn(crate::spool::delivery_loop(policy_rx, move |pending| {
            shared.update(|s| s.spool = pending);
        }));
    }
    let (tx, mut rx) = mpsc::channel(16);
    spawn_signals(
        config.to_path_buf(),
        tx.clone(),
        policy_tx,
        work.clone(),
        scheduler.cancel_token(),
    )?;
    spawn_inventory(policy.clone(), work.clone(), tx);

    let sd = Systemd::from_env();
    sd.ready(&status::summary(&shared.snapshot()));
    tracing::info!(
        jobs = policy.jobs.len(),
        policy = %config.display(),
        "backupd daemon started"
    );
    scheduler.serve(&mut rx).await;

    shared.update(|s| s.state = "stopping".into());
    sd.stopping();
    tracing::info!("stopping: no new jobs will start");
    scheduler.shutdown(grace).await;
    work.notifier.flush(Duration::from_secs(10)).await;
    let _ = std::fs::remove_file(state::daemon_info_path(&state_dir));
    tracing::info!("backupd daemon stopped");
    Ok(ExitCode::SUCCESS)
}

fn check_state_dir(dir: &Path) -> anyhow::Result<()> {
    state::check_private_dir(dir, "daemon.state_dir")?;
    tempfile::tempfile_in(dir).with_context(|| {
        format!(
            "daemon.state_dir {} is not writable by this user",
            dir.display()
        )
    })?;
    Ok(())
}

/// SIGHUP reloads, SIGTERM/SIGINT stop (a second one cancels running jobs at once).
fn spawn_signals(
    config: std::path::PathBuf,
    tx: mpsc::Sender<Control>,
    policy_tx: tokio::sync::watch::Sender<Arc<Policy>>,
    work: Arc<Work>,
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        let sd = Systemd::from_env();
        let mut stopping = false;
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    sd.reloading();
                    match policy::load(&config) {
                        Ok(p) => {
                            work.notifier.set_hooks(p.notify.clone());
                            work.shared.update(|s| {
                                s.upload_limit_bytes_per_sec = p.daemon.upload_limit
                            });
                            let _ = policy_tx.send(Arc::new(p.clone()));
                            let _ = tx.send(Control::Reload(Box::new(p))).await;
                        }
                        Err(e) => tracing::error!("reload refused, the running policy stays in force: {e}"),
                    }
                    sd.ready("reloaded");
                }
                _ = term.recv() => stop(&tx, &cancel, &mut stopping).await,
                _ = int.recv() => stop(&tx, &cancel, &mut stopping).await,
            }
        }
    });
    Ok(())
}

async fn stop(
    tx: &mpsc::Sender<Control>,
    cancel: &tokio_util::sync::CancellationToken,
    stopping: &mut bool,
) {
    if *stopping {
        tracing::warn!("second stop signal: cancelling running jobs now");
        cancel.cancel();
    } else {
        *stopping = true;
        let _ = tx.send(Control::Shutdown).await;
    }
}

/// Lists every job's snapshots once at start (metrics need the counts) and asks for a
/// catch-up run where a scheduled time passed since the newest snapshot.
fn spawn_inventory(policy: Arc<Policy>, work: Arc<Work>, tx: mpsc::Sender<Control>) {
    tokio::spawn(async move {
        for (name, job) in &policy.jobs {
            let newest = work.inventory(&policy, name).await;
            let Some(schedule) = job.backup_schedule() else {
                continue;
            };
            if !job.catch_up {
                continue;
            }
            let missed = schedule.prev_at_or_before(Utc::now());
            let behind = match (newest, missed) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(n), Some(m)) => n < m,
            };
            if behind {
                let _ = tx.send(Control::CatchUp(name.clone())).await;
            }
        }
    });
}
