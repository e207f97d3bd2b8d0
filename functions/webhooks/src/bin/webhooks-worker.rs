//! The webhooks worker Lambda: SQS batches from the deliveries and platform-events queues,
//! answered with partial batch failures so only failed messages are retried.

use std::sync::Arc;

use voyage_core::config::Config;
use voyage_core::webhooks::WebhookEngine;
use voyage_fn_webhooks::{worker, HttpTransport};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let config = Config::from_env()?;
    voyage_http::logging::init(config.log_format);
    let transport = HttpTransport::new(config.allow_private_webhook_targets)?;
    let deps = Arc::new(voyage_aws::deps_from_config(config).await?);
    let engine = WebhookEngine::new(deps, Arc::new(transport));
    let engine = &engine;
    voyage_http::serve_sqs(|messages, cut_at| {
        worker::handle_batch_until(engine, messages, Some(cut_at))
    })
    .await
}
