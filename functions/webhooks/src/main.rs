//! The webhooks API Lambda: decode, call core, encode.

use std::sync::Arc;

use voyage_core::config::Config;
use voyage_core::webhooks::WebhookEngine;
use voyage_fn_webhooks::HttpTransport;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let config = Config::from_env()?;
    voyage_http::logging::init(config.log_format);
    let transport = HttpTransport::new(config.allow_private_webhook_targets)?;
    let deps = Arc::new(voyage_aws::deps_from_config(config).await?);
    let engine = WebhookEngine::new(deps, Arc::new(transport));
    voyage_http::serve_lambda(voyage_fn_webhooks::router(engine)).await
}
