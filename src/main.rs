//! The `backupd` binary: parse the command line, set up logging, run, map errors to exit
//! statuses (0 ok, 1 a job failed, 2 usage or policy error).

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // A file size limit (RLIMIT_FSIZE) must surface as a write error ("File too large")
    // that fails the run with a message, not as SIGXFSZ killing the process mid-upload.
    // SAFETY: called before any thread starts; SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let cli = backupd::cli::Cli::parse();
    let filter = cli
        .log_level
        .as_deref()
        .map(EnvFilter::try_new)
        .or_else(|| std::env::var("RUST_LOG").ok().map(EnvFilter::try_new))
        .or_else(|| std::env::var("BACKUPD_LOG").ok().map(EnvFilter::try_new));
    let filter = match filter {
        None => EnvFilter::new("info"),
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            eprintln!(
                "error: bad log filter (--log-level, RUST_LOG or BACKUPD_LOG): {e}; use e.g. `info`, `debug` or `backupd=debug`"
            );
            return ExitCode::from(backupd::cli::EXIT_USAGE);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| backupd::progress::LogWriter)
        .with_target(false);
    if cli.log_format == "json" {
        logs.json().flatten_event(true).init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(backupd::cli::EXIT_FAILED);
        }
    };
    let outcome = runtime.block_on(backupd::cli::run(cli));
    // A source thread still blocked in a read after a cancelled run must not keep the
    // process alive: blocking threads get a moment, then the process exits anyway.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(code) => code,
        Err(e) => {
            // Errors quote what a target or a policy held: never raw escape sequences.
            eprintln!("error: {}", backupd::cli::printable(&format!("{e:#}")));
            ExitCode::from(backupd::cli::exit_status(&e))
        }
    }
}
