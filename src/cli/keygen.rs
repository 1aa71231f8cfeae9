//! `backupd keygen --output FILE`: a new age identity, written 0600, never over an existing file.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the secret key (must not exist yet).
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let recipient = crate::crypto::generate_identity(&args.output)?;
    eprintln!(
        "wrote a new identity to {} (mode 0600); keep a copy off this machine: without it no snapshot can be restored",
        args.output.display()
    );
    eprintln!("put this public key in encryption.recipients:");
    println!("{recipient}");
    Ok(ExitCode::SUCCESS)
}
