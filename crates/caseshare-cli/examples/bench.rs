//! Runs `caseshare bench` before the CLI wires it in:
//! `cargo run --release -p caseshare-cli --example bench -- --embedded --target both`.

use clap::Parser;

/// Load generator for the Caseshare broker and NATS JetStream.
#[derive(Parser)]
#[command(name = "bench")]
struct Cli {
    #[command(flatten)]
    args: caseshare_cli::bench::BenchArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let mut stdout = std::io::stdout();
    match caseshare_cli::bench::run(cli.args, &mut stdout).await {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
