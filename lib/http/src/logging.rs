//! Structured logs through `tracing`: JSON on Lambda (CloudWatch parses it), text on a
//! terminal. `RUST_LOG` filters as usual (default `info`).

use tracing_subscriber::EnvFilter;
use voyage_core::config::LogFormat;

/// Whether this process runs inside AWS Lambda.
pub fn on_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some()
}

/// Installs the global subscriber once; later calls do nothing.
pub fn init(format: Option<LogFormat>) {
    let format = format.unwrap_or(if on_lambda() {
        LogFormat::Json
    } else {
        LogFormat::Text
    });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .without_time() // Lambda stamps every line itself
            .try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}
