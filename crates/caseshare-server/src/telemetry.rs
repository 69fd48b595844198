//! Logging: `tracing` with an `EnvFilter` (`CASESHARE_LOG`, default `info`)
//! and text or JSON output. Nothing logged carries an NHS number or payload.

/// Installs the global subscriber; a second call is a no-op.
pub fn init(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CASESHARE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
