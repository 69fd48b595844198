//! `caseshare keygen --out DIR`: a new broker's two keys, made before its
//! first start (for a Secret, or a compose `secrets/` folder) instead of by
//! the broker itself — the audit log's signing key `checkpoint.skey` and
//! `pseudonym.key`, mode 0600, with the contents a first start would make
//! (`caseshare_server::write_new_keys`). Never overwrites a key.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

/// `caseshare keygen`'s arguments.
#[derive(Args)]
pub struct KeygenArgs {
    /// Directory to write `checkpoint.skey` and `pseudonym.key` into
    /// (made, mode 0700, if missing); refused if either file exists.
    #[arg(long)]
    out: PathBuf,
    /// The audit log's origin: the checkpoint origin line and the signing
    /// key's name [default: the broker's, caseshare.local/audit].
    #[arg(long, env = "CASESHARE_AUDIT_ORIGIN")]
    origin: Option<String>,
}

/// Writes the keys and says where, with the verifier key auditors need.
pub fn run(args: KeygenArgs) -> Result<()> {
    let origin = args
        .origin
        .unwrap_or_else(|| caseshare_server::config::Config::default().audit.origin);
    let keys = caseshare_server::write_new_keys(&args.out, &origin)?;
    println!("Wrote {}", keys.signing_key.display());
    println!("Wrote {}", keys.pseudonym_key.display());
    println!(
        "Every broker of one log needs these two files; back them up: a lost key cannot be \
         made again."
    );
    println!("vkey: {}", keys.vkey);
    Ok(())
}
