//! The webhooks worker Lambda: SQS batches from the deliveries and platform-events queues,
//! answered with partial batch failures so only failed messages are retried.

use std::sync::Arc;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::{service_fn, LambdaEvent};
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
    lambda_runtime::run(service_fn(|event: LambdaEvent<SqsEvent>| async move {
        let messages = event
            .payload
            .records
            .into_iter()
            .filter_map(|r| Some((r.message_id?, r.body.unwrap_or_default())))
            .collect();
        let failed = worker::handle_batch(engine, messages).await;
        let mut response = SqsBatchResponse::default();
        response.batch_item_failures = failed
            .into_iter()
            .map(|id| {
                let mut f = BatchItemFailure::default();
                f.item_identifier = id;
                f
            })
            .collect();
        Ok::<_, lambda_runtime::Error>(response)
    }))
    .await
}
