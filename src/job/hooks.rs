//! Per-job hook commands (`before`, `after`, `on_failure`): run without a shell (argv as
//! written; ask for one with `["sh", "-c", "…"]`), with a timeout and the tail of their
//! output in the error when they fail.
//!
//! A hook's environment is minimal: PATH, HOME, locale, time zone and user, then
//! `BACKUPD_JOB`, `BACKUPD_SNAPSHOT`, `BACKUPD_STATUS`, and only the variables the policy
//! names in `pass_env`: never the target credentials or database passwords backupd holds.
//! Logs name the program, not its arguments, which may hold tokens.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

pub use crate::policy::HooksPolicy;

/// What a hook is told about the run.
pub struct HookEnv<'a> {
    pub job: &'a str,
    pub snapshot: &'a str,
    /// `running` (before), `success`, or `failure`.
    pub status: &'a str,
    /// `pass_env`: names of variables handed through.
    pub pass_env: &'a [String],
}

/// A hook that did not succeed. `hook` reads like "before hook `pg_isready`".
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{hook} could not start: {source} (is {program:?} installed and on PATH?)")]
    Start {
        hook: String,
        program: String,
        source: std::io::Error,
    },
    #[error(
        "{hook} timed out after {} s and was killed (raise hooks.timeout_secs if it needs longer)",
        timeout.as_secs()
    )]
    TimedOut { hook: String, timeout: Duration },
    #[error("{hook}: {source}")]
    Wait {
        hook: String,
        source: std::io::Error,
    },
    #[error("{hook} failed ({status}){}", if output_tail.is_empty() { String::new() } else { format!(": {output_tail}") })]
    Failed {
        hook: String,
        status: std::process::ExitStatus,
        output_tail: String,
    },
}

/// How much of a hook's output is kept for its error message.
const OUTPUT_TAIL_BYTES: usize = 4 << 10;

/// Runs one hook; `Ok` when it is not configured or exited 0.
pub async fn run(
    which: &str,
    argv: &[String],
    timeout: Duration,
    env: &HookEnv<'_>,
) -> Result<(), HookError> {
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let shown = format!("{which} hook `{program}`");
    tracing::info!(job = env.job, args = args.len(), "running {shown}");
    let mut cmd = tokio::process::Command::new(program);
    cmd.env_clear()
        .envs(crate::source::child::minimal_env(&[]))
        .envs(
            env.pass_env
                .iter()
                .filter_map(|k| std::env::var_os(k).map(|v| (k.clone(), v))),
        );
    let mut child = cmd
        .args(args)
        .env("BACKUPD_JOB", env.job)
        .env("BACKUPD_SNAPSHOT", env.snapshot)
        .env("BACKUPD_STATUS", env.status)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HookError::Start {
            hook: shown.clone(),
            program: program.clone(),
            source,
        })?;
    // Both pipes are drained while waiting so a chatty hook cannot block on a full pipe.
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let collect = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        out.extend_from_slice(&err);
        out
    };
    let waited = tokio::time::timeout(timeout, async {
        let (output, status) = tokio::join!(collect, child.wait());
        (output, status)
    })
    .await;
    let (output, status) = match waited {
        Ok(v) => v,
        Err(_) => {
            let _ = child.kill().await;
            return Err(HookError::TimedOut {
                hook: shown,
                timeout,
            });
        }
    };
    let status = status.map_err(|source| HookError::Wait {
        hook: shown.clone(),
        source,
    })?;
    let text = String::from_utf8_lossy(&output);
    let tail = tail(text.trim(), OUTPUT_TAIL_BYTES);
    if status.success() {
        if !tail.is_empty() {
            tracing::info!(job = env.job, "{shown} said: {tail}");
        }
        Ok(())
    } else {
        Err(HookError::Failed {
            hook: shown,
            status,
            output_tail: tail.to_owned(),
        })
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}
