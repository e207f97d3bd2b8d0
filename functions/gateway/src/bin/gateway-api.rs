//! The tenant admin API Lambda (`/v1/me`, `/v1/keys`, `/v1/connections`,
//! `/v1/credentials/*`), and the public `GET /health` and `GET /openapi.json`.

use std::sync::Arc;

use voyage_core::config::Config;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let config = Config::from_env()?;
    voyage_http::logging::init(config.log_format);
    let deps = voyage_providers::attach(voyage_aws::deps_from_config(config).await?)?;
    let deps = Arc::new(deps);
    let routes = voyage_fn_gateway::api::router(deps).merge(voyage_fn_gateway::public::router());
    voyage_http::serve_lambda(routes).await
}
