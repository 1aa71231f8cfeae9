//! The loop under paused tokio time: a runner that only sleeps stands in for the work.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::TimeZone;
use figment::Figment;
use figment::providers::{Format, Toml};

use super::*;

fn policy(jobs: &[(&str, &str)], max_concurrent: usize) -> Policy {
    let mut text = format!(
        "[daemon]\nmax_concurrent_jobs = {max_concurrent}\n[encryption]\nmode = \"none\"\n[targets.t]\npath = \"t\"\n"
    );
    for (name, schedule) in jobs {
        text.push_str(&format!(
            "[jobs.{name}]\nschedule = \"{schedule}\"\ntargets = [\"t\"]\n[jobs.{name}.sources.d]\nkind = \"directory\"\npath = \"d\"\n"
        ));
    }
    crate::policy::from_figment(
        Figment::from(Toml::string(&text)),
        std::path::Path::new("/x"),
    )
    .unwrap()
}

/// Sleeps `secs` per run (or until cancelled), recording what ran when.
#[derive(Default)]
struct Sleeper {
    secs: u64,
    log: Mutex<Vec<(String, &'static str, tokio::time::Instant)>>,
    running: Mutex<BTreeMap<String, usize>>,
    max_total: Mutex<usize>,
    overlaps: Mutex<usize>,
    cancelled: Mutex<usize>,
}

impl Runner for Arc<Sleeper> {
    fn run(
        &self,
        _: Arc<Policy>,
        job: String,
        _: Task,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        let me = self.clone();
        Box::pin(async move {
            {
                let mut running = me.running.lock().unwrap();
                let n = running.entry(job.clone()).or_default();
                *n += 1;
                if *n > 1 {
                    *me.overlaps.lock().unwrap() += 1;
                }
                let total: usize = running.values().sum();
                let mut max = me.max_total.lock().unwrap();
                *max = (*max).max(total);
            }
            me.log
                .lock()
                .unwrap()
                .push((job.clone(), "start", tokio::time::Instant::now()));
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(me.secs)) => {}
                () = cancel.cancelled() => { *me.cancelled.lock().unwrap() += 1; }
            }
            *me.running.lock().unwrap().get_mut(&job).unwrap() -= 1;
            me.log
                .lock()
                .unwrap()
                .push((job, "end", tokio::time::Instant::now()));
        })
    }
}

fn clock() -> Clock {
    Clock::Tokio {
        wall: Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap(),
        at: tokio::time::Instant::now(),
    }
}

fn scheduler(policy: Policy, sleeper: &Arc<Sleeper>) -> Scheduler {
    let clock = clock();
    let shared = Arc::new(Shared::new("p", clock.now()));
    Scheduler::new(Arc::new(policy), shared, Arc::new(sleeper.clone()), clock)
}

/// Serves for `secs` of (virtual) time, then shuts down with `grace`.
async fn serve_for(s: &mut Scheduler, secs: u64, grace: u64) -> mpsc::Sender<Control> {
    let (tx, mut rx) = mpsc::channel(8);
    let stopper = tx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let _ = stopper.send(Control::Shutdown).await;
    });
    s.serve(&mut rx).await;
    s.shutdown(Duration::from_secs(grace)).await;
    tx
}

#[tokio::test(start_paused = true)]
async fn a_slow_job_every_second_never_overlaps_and_counts_skips() {
    let sleeper = Arc::new(Sleeper {
        secs: 3,
        ..Default::default()
    });
    let mut s = scheduler(policy(&[("slow", "* * * * * *")], 4), &sleeper);
    serve_for(&mut s, 10, 60).await;
    let starts = sleeper
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.1 == "start")
        .count();
    assert_eq!(*sleeper.overlaps.lock().unwrap(), 0);
    // 3 s runs back to back in 10 s: three or four starts, every other second skipped.
    assert!((3..=4).contains(&starts), "{starts} starts");
    let skipped = s.shared.snapshot().jobs["slow"].runs_skipped;
    assert!(skipped >= 5, "{skipped} skips");
    assert_eq!(s.shared.snapshot().jobs["slow"].running, None);
}

#[tokio::test(start_paused = true)]
async fn max_concurrent_jobs_bounds_parallel_work_and_everyone_gets_a_turn() {
    let sleeper = Arc::new(Sleeper {
        secs: 5,
        ..Default::default()
    });
    let jobs: Vec<(String, &str)> = (0..5).map(|i| (format!("j{i}"), "0 * * * * *")).collect();
    let jobs: Vec<(&str, &str)> = jobs.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    let mut s = scheduler(policy(&jobs, 2), &sleeper);
    // All five are due at 00:01:00; at two at a time they take 15 s.
    serve_for(&mut s, 80, 60).await;
    assert_eq!(*sleeper.max_total.lock().unwrap(), 2);
    let log = sleeper.log.lock().unwrap();
    for (name, _) in &jobs {
        let starts = log
            .iter()
            .filter(|e| e.0 == *name && e.1 == "start")
            .count();
        assert_eq!(starts, 1, "{name}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_removed_job_stops_being_scheduled_after_reload() {
    let sleeper = Arc::new(Sleeper {
        secs: 0,
        ..Default::default()
    });
    let mut s = scheduler(
        policy(&[("a", "* * * * * *"), ("b", "* * * * * *")], 2),
        &sleeper,
    );
    let (tx, mut rx) = mpsc::channel(8);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let _ = tx
            .send(Control::Reload(Box::new(policy(
                &[("a", "* * * * * *")],
                2,
            ))))
            .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let _ = tx.send(Control::Shutdown).await;
    });
    let t0 = tokio::time::Instant::now();
    s.serve(&mut rx).await;
    s.shutdown(Duration::from_secs(5)).await;
    let log = sleeper.log.lock().unwrap();
    let late_b = log
        .iter()
        .filter(|e| e.0 == "b" && e.2 > t0 + Duration::from_secs(6))
        .count();
    let late_a = log
        .iter()
        .filter(|e| e.0 == "a" && e.2 > t0 + Duration::from_secs(6))
        .count();
    assert_eq!(late_b, 0, "b ran after it was removed");
    assert!(late_a >= 3, "a kept running: {late_a}");
    assert!(!s.shared.snapshot().jobs.contains_key("b"));
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_the_grace_period_then_cancels() {
    let sleeper = Arc::new(Sleeper {
        secs: 1000,
        ..Default::default()
    });
    let mut s = scheduler(policy(&[("long", "* * * * * *")], 1), &sleeper);
    let t0 = tokio::time::Instant::now();
    serve_for(&mut s, 3, 20).await;
    let took = t0.elapsed();
    assert_eq!(*sleeper.cancelled.lock().unwrap(), 1);
    assert!(
        took >= Duration::from_secs(23) && took < Duration::from_secs(30),
        "stopped after {took:?}"
    );
    assert_eq!(s.running_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn catch_up_runs_the_job_once_even_when_asked_twice() {
    let sleeper = Arc::new(Sleeper {
        secs: 10,
        ..Default::default()
    });
    // Yearly: it would not run on its own within the test.
    let mut s = scheduler(policy(&[("daily", "0 3 1 1 *")], 2), &sleeper);
    let (tx, mut rx) = mpsc::channel(8);
    tx.send(Control::CatchUp("daily".into())).await.unwrap();
    tx.send(Control::CatchUp("daily".into())).await.unwrap();
    tx.send(Control::CatchUp("unknown".into())).await.unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = tx.send(Control::Shutdown).await;
    });
    s.serve(&mut rx).await;
    s.shutdown(Duration::from_secs(60)).await;
    let starts = sleeper
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.1 == "start")
        .count();
    assert_eq!(starts, 1);
    assert_eq!(s.shared.snapshot().jobs["daily"].runs_skipped, 1);
}
