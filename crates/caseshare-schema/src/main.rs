//! `caseshare-schema`: the schema guard as its own binary (`check`,
//! `baseline`, `docs`), kept out of the shipped `caseshare` binary. Run it
//! from the repository root: the defaults are paths relative to it.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

/// The schema guard: breaking-change check, baseline, generated docs.
#[derive(Parser)]
#[command(name = "caseshare-schema", version)]
struct Cli {
    #[command(subcommand)]
    command: SchemaCommand,
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// Fail on breaking changes against the committed baseline, and on lint problems.
    Check {
        /// The proto root.
        #[arg(long, default_value = caseshare_schema::PROTO_DIR)]
        proto: PathBuf,
        /// The baseline descriptor set.
        #[arg(long, default_value = caseshare_schema::BASELINE_PATH)]
        baseline: PathBuf,
    },
    /// Rewrite the baseline deliberately (refuses breaking changes and lint problems).
    Baseline {
        /// The proto root.
        #[arg(long, default_value = caseshare_schema::PROTO_DIR)]
        proto: PathBuf,
        /// The baseline descriptor set.
        #[arg(long, default_value = caseshare_schema::BASELINE_PATH)]
        baseline: PathBuf,
    },
    /// Print docs/SCHEMA.md generated from the proto comments and the examples.
    Docs {
        /// The proto root.
        #[arg(long, default_value = caseshare_schema::PROTO_DIR)]
        proto: PathBuf,
        /// The event examples.
        #[arg(long, default_value = caseshare_schema::EXAMPLES_DIR)]
        examples: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: SchemaCommand) -> Result<()> {
    match command {
        SchemaCommand::Check { proto, baseline } => {
            let report = caseshare_schema::check_report(&proto, &baseline)?;
            for a in &report.additions {
                println!("compatible: {a}");
            }
            let problems = report.problems();
            for p in &problems {
                eprintln!("{p}");
            }
            if !problems.is_empty() {
                bail!("{} schema problem(s)", problems.len());
            }
            println!("schema check passed");
        }
        SchemaCommand::Baseline { proto, baseline } => {
            let r = caseshare_schema::baseline(&proto, &baseline)?;
            for a in &r.additions {
                println!("locked in: {a}");
            }
            println!("wrote {}", baseline.display());
        }
        SchemaCommand::Docs { proto, examples } => {
            print!("{}", caseshare_schema::docs(&proto, &examples)?);
        }
    }
    Ok(())
}
