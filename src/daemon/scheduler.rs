//! The scheduler loop: wakes at the next due time (at least once a second, so the wall
//! clock is re-read and the watchdog fed from here: a hung loop stops the pings), starts
//! due work under the `max_concurrent_jobs` bound, never starts a job that is still
//! running (counts a skip instead), applies reloads and catch-up requests, and on
//! shutdown waits for running work, then cancels it.
//!
//! The work itself is behind `Runner`, so the loop's logic is tested with paused tokio
//! time and a runner that only sleeps.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::plan::{Plan, Task};
use super::status::Shared;
use crate::policy::Policy;

/// Runs one piece of work to its end; it records its outcome itself.
pub trait Runner: Send + Sync + 'static {
    fn run(
        &self,
        policy: Arc<Policy>,
        job: String,
        task: Task,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, ()>;
}

/// Told to the loop from outside (signals, the startup inventory).
pub enum Control {
    Reload(Box<Policy>),
    /// Run this job's backup now: a scheduled time passed while the daemon was down.
    CatchUp(String),
    Shutdown,
}

/// Wall-clock time. The daemon reads the system clock; tests derive it from tokio's
/// (pausable) clock.
#[derive(Clone, Copy)]
pub enum Clock {
    System,
    #[cfg_attr(not(test), allow(dead_code))]
    Tokio {
        wall: DateTime<Utc>,
        at: tokio::time::Instant,
    },
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Tokio { wall, at } => {
                *wall + chrono::Duration::from_std(at.elapsed()).unwrap_or_default()
            }
        }
    }
}

/// Called on every turn of the loop with the loop's current time.
type TickFn = Box<dyn FnMut(&Scheduler, DateTime<Utc>) + Send>;

/// The longest the loop sleeps: how often it re-reads the clock and feeds the watchdog.
const TICK: Duration = Duration::from_secs(1);

pub struct Scheduler {
    pub policy: Arc<Policy>,
    pub plan: Plan,
    pub shared: Arc<Shared>,
    runner: Arc<dyn Runner>,
    clock: Clock,
    permits: Arc<Semaphore>,
    running: HashSet<(String, Task)>,
    tasks: JoinSet<(String, Task)>,
    cancel: CancellationToken,
    /// Called every turn (watchdog, freshness); gets the loop's current time.
    on_tick: TickFn,
}

impl Scheduler {
    pub fn new(
        policy: Arc<Policy>,
        shared: Arc<Shared>,
        runner: Arc<dyn Runner>,
        clock: Clock,
    ) -> Self {
        let now = clock.now();
        let plan = Plan::new(&policy, now);
        let permits = Arc::new(Semaphore::new(policy.daemon.max_concurrent_jobs));
        let s = Scheduler {
            policy,
            plan,
            shared,
            runner,
            clock,
            permits,
            running: HashSet::new(),
            tasks: JoinSet::new(),
            cancel: CancellationToken::new(),
            on_tick: Box::new(|_, _| {}),
        };
        s.publish_plan();
        s
    }

    pub fn on_tick(&mut self, f: impl FnMut(&Scheduler, DateTime<Utc>) + Send + 'static) {
        self.on_tick = Box::new(f);
    }

    /// Serves until `Control::Shutdown` (or the sender is gone).
    pub async fn serve(&mut self, control: &mut mpsc::Receiver<Control>) {
        loop {
            let now = self.clock.now();
            self.shared.beat(now);
            for (job, task) in self.plan.take_due(now) {
                self.start(job, task);
            }
            self.publish_plan();
            self.tick(now);

            let wait = self
                .plan
                .next_wake()
                .map(|t| (t - now).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(TICK)
                .min(TICK);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    self.finished(done);
                }
                msg = control.recv() => match msg {
                    Some(Control::Reload(policy)) => self.reload(*policy),
                    Some(Control::CatchUp(job)) => {
                        if self.policy.jobs.contains_key(&job) {
                            tracing::info!(job, "catching up: a scheduled backup was missed while the daemon was down");
                            self.start(job, Task::Backup);
                        }
                    }
                    Some(Control::Shutdown) | None => return,
                },
            }
        }
    }

    fn tick(&mut self, now: DateTime<Utc>) {
        let mut f: TickFn = std::mem::replace(&mut self.on_tick, Box::new(|_, _| {}));
        f(self, now);
        self.on_tick = f;
    }

    /// Starts `task` of `job` unless it is already running or waiting.
    pub fn start(&mut self, job: String, task: Task) {
        let key = (job.clone(), task);
        if self.running.contains(&key) {
            tracing::warn!(
                job,
                "scheduled {task} skipped: the previous one is still running"
            );
            self.shared.job(&job, |j| j.runs_skipped += 1);
            return;
        }
        self.running.insert(key.clone());
        self.shared.set_running(&job, Some(task), self.clock.now());
        let permits = self.permits.clone();
        let runner = self.runner.clone();
        let policy = self.policy.clone();
        let cancel = self.cancel.child_token();
        self.tasks.spawn(async move {
            // Waiting for a turn counts as running: the same job is not queued twice.
            let _permit = permits.acquire_owned().await;
            let work = std::panic::AssertUnwindSafe(runner.run(policy, job.clone(), task, cancel));
            if futures::FutureExt::catch_unwind(work).await.is_err() {
                tracing::error!(job, "the {task} panicked; the daemon goes on");
            }
            key
        });
    }

    fn finished(&mut self, done: Result<(String, Task), tokio::task::JoinError>) {
        match done {
            Ok(key) => {
                self.running.remove(&key);
                let job = key.0;
                if !self.policy.jobs.contains_key(&job) {
                    // Removed by a reload while it ran: now it is gone from the status too.
                    if !self.running.iter().any(|(j, _)| *j == job) {
                        self.shared.update(|s| s.jobs.remove(&job));
                    }
                } else {
                    self.shared.set_running(&job, None, self.clock.now());
                }
            }
            // Panics are caught inside the task; this is a task aborted from outside.
            Err(e) => tracing::error!("a job task ended abnormally: {e}"),
        }
    }

    fn reload(&mut self, policy: Policy) {
        let now = self.clock.now();
        self.plan.reload(&policy, now);
        if policy.daemon.max_concurrent_jobs != self.policy.daemon.max_concurrent_jobs {
            // Running work keeps its permits of the old bound; new work uses the new one.
            self.permits = Arc::new(Semaphore::new(policy.daemon.max_concurrent_jobs));
        }
        let removed: Vec<String> = self
            .shared
            .snapshot()
            .jobs
            .keys()
            .filter(|j| !policy.jobs.contains_key(*j))
            .cloned()
            .collect();
        self.shared.update(|s| {
            s.policy = policy.path.display().to_string();
            for j in &removed {
                // A removed job still running shows until it ends.
                if s.jobs.get(j).is_some_and(|js| js.running.is_none()) {
                    s.jobs.remove(j);
                }
            }
        });
        self.policy = Arc::new(policy);
        self.publish_plan();
        tracing::info!(
            jobs = self.policy.jobs.len(),
            "policy reloaded; removed jobs: {}",
            if removed.is_empty() {
                "none".into()
            } else {
                removed.join(", ")
            }
        );
    }

    fn publish_plan(&self) {
        for (name, job) in &self.policy.jobs {
            let next_run = self.plan.next(name, Task::Backup);
            let next_verify = self.plan.next(name, Task::Verify);
            self.shared.job(name, |j| {
                j.schedule = job.schedule.clone();
                j.timezone = job.tz().to_string();
                j.next_run = next_run;
                j.verify_schedule = job.verify.schedule.clone();
                j.next_verify = next_verify;
                j.alert_if_older_than_seconds = job.alert_if_older_than.map(|d| d.as_secs());
                j.timeout_seconds = job.timeout_secs;
            });
        }
    }

    /// Cancels every running job (a second stop signal).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    #[cfg(test)]
    pub fn running_count(&self) -> usize {
        self.tasks.len()
    }

    /// Waits up to `grace` for running work, then cancels what is left (a cancelled backup
    /// commits nothing and aborts its uploads) and waits for it to clean up. `tick` keeps
    /// being called (the watchdog must not fire during a long stop).
    pub async fn shutdown(&mut self, grace: Duration) {
        if !self.tasks.is_empty() {
            tracing::info!(
                running = self.tasks.len(),
                "waiting up to {} s for running jobs to finish",
                grace.as_secs()
            );
        }
        let deadline = tokio::time::Instant::now() + grace;
        let mut cancelled = false;
        while !self.tasks.is_empty() {
            let now = self.clock.now();
            self.shared.beat(now);
            self.tick(now);
            if !cancelled && tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    running = self.tasks.len(),
                    "shutdown_timeout_secs reached: cancelling running jobs; nothing of their snapshots will be committed"
                );
                self.cancel.cancel();
                cancelled = true;
            }
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                Some(done) = self.tasks.join_next() => self.finished(done),
            }
        }
    }
}

#[cfg(test)]
mod tests;
