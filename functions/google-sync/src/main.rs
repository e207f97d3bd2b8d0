//! The google-sync Lambda: decode, call core, encode.

use std::sync::Arc;

use voyage_core::config::Config;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let config = Config::from_env()?;
    voyage_http::logging::init(config.log_format);
    let deps = Arc::new(voyage_providers::attach(
        voyage_aws::deps_from_config(config).await?,
    )?);
    voyage_http::serve_lambda(voyage_fn_google_sync::router(deps)).await
}
