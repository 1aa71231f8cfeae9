//! `backupd keygen --output FILE [--signing]`: a new age identity, or with `--signing` a new
//! manifest signing key, written 0600, never over an existing file; the public key is
//! printed on stdout.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the secret key (must not exist yet).
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,
    /// Make a manifest signing key (for `[signing] key_file`) instead of an age identity.
    #[arg(long)]
    pub signing: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.signing {
        let public = crate::snapshot::seal::generate_signing_key(&args.output)?;
        eprintln!(
            "wrote a new signing key to {} (mode 0600); it stays on the hosts that back up, never in the bucket",
            args.output.display()
        );
        eprintln!(
            "put this public key in signing.trusted_keys (restore needs it, not the secret):"
        );
        println!("{public}");
        return Ok(ExitCode::SUCCESS);
    }
    let recipient = crate::crypto::generate_identity(&args.output)?;
    eprintln!(
        "wrote a new identity to {} (mode 0600); keep a copy off this machine: without it no snapshot can be restored",
        args.output.display()
    );
    eprintln!("put this public key in encryption.recipients:");
    println!("{recipient}");
    Ok(ExitCode::SUCCESS)
}
