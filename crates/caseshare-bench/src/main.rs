//! `caseshare-bench`: the load generator as its own binary, so that the
//! shipped `caseshare` binary links no benchmark code, NATS client or
//! histogram crate. The flags and the `--json-out` keys are those of
//! [`caseshare_bench::BenchArgs`] and [`caseshare_bench::Summary`].

use clap::Parser;

/// The same allocator as the `caseshare` binary (see its `main.rs`), so that
/// an `--embedded` broker measured here behaves as the shipped one does.
#[global_allocator]
static ALLOCATOR: caseshare_alloc::MiMalloc = caseshare_alloc::MiMalloc;

/// Load generator: caseshare (embedded or remote) or NATS JetStream.
#[derive(Parser)]
#[command(name = "caseshare-bench", version)]
struct Cli {
    #[command(flatten)]
    args: caseshare_bench::BenchArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match caseshare_bench::run(cli.args, &mut std::io::stdout()).await {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
