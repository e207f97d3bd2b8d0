//! AWS adapters of the ports: DynamoDB [`Table`](voyage_core::ports::Table), SQS
//! [`Queue`](voyage_core::ports::Queue), EventBridge [`EventBus`](voyage_core::ports::EventBus);
//! and the settings a deployed function reads at start from SSM and Secrets Manager
//! ([`settings`]).
//!
//! Clients come from [`sdk_config`], which honours `AWS_ENDPOINT_URL` (and the per-service
//! `AWS_ENDPOINT_URL_DYNAMODB`, `_SQS`, `_EVENTBRIDGE`), so the same code talks to moto in
//! tests and to AWS in production. Build clients once per process and share them.

pub mod aws_json;
mod dynamodb;
mod eventbridge;
pub mod redrive;
pub mod settings;
mod sqs;

pub use dynamodb::{create_table, DynamoTable};
pub use eventbridge::EventBridgeBus;
pub use sqs::SqsQueue;

pub use aws_config::SdkConfig;

/// A DynamoDB client on `sdk`, for callers that do not depend on the SDK crate themselves.
pub fn dynamodb_client(sdk: &SdkConfig) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(sdk)
}

/// An SQS client on `sdk`, for callers that do not depend on the SDK crate themselves.
pub fn sqs_client(sdk: &SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(sdk)
}

/// The shared SDK configuration of a process.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// A short, log-safe description of an SDK error (no request ids or credentials).
pub(crate) fn describe<E, R>(err: &aws_sdk_dynamodb::error::SdkError<E, R>) -> String
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_dynamodb::error::DisplayErrorContext;
    format!("{}", DisplayErrorContext(err))
}

use std::sync::Arc;

use voyage_core::config::{Config, ConfigError};
use voyage_core::deps::{Deps, QueueName};
use voyage_core::ports::SystemClock;
use voyage_core::store::Store;

/// Builds a function's dependencies on AWS from its configuration: the DynamoDB table
/// (`VOYAGE_TABLE_NAME`, required), each queue whose URL is set, and the event bus when
/// `VOYAGE_EVENT_BUS_NAME` is set. One SDK configuration is shared by every client. Settings
/// the environment only names (`VOYAGE_PUBLIC_BASE_URL_PARAMETER`,
/// `VOYAGE_CREDENTIALS_KEY_SECRET_ARN`) are read first ([`settings::resolve`]).
pub async fn deps_from_config(config: Config) -> Result<Deps, ConfigError> {
    let table = Config::require(&config.table_name, "VOYAGE_TABLE_NAME")?.to_string();
    let sdk = sdk_config().await;
    let config = settings::resolve(&sdk, config).await?;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let store = Store::new(
        Arc::new(DynamoTable::new(dynamo, table)),
        Arc::new(SystemClock),
    );
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue_urls = [
        (
            QueueName::WebhookDeliveries,
            config.webhook_queue_url.clone(),
        ),
        (QueueName::ExchangeInbound, config.inbound_queue_url.clone()),
        (
            QueueName::ExchangeOutbound,
            config.outbound_queue_url.clone(),
        ),
        (QueueName::GoogleSync, config.google_sync_queue_url.clone()),
    ];
    let bus = config.event_bus_name.clone();
    let mut deps = Deps::new(store, config);
    for (name, url) in queue_urls {
        if let Some(url) = url {
            deps = deps.with_queue(name, Arc::new(SqsQueue::new(sqs.clone(), url)));
        }
    }
    if let Some(bus) = bus {
        let client = aws_sdk_eventbridge::Client::new(&sdk);
        deps = deps.with_bus(Arc::new(EventBridgeBus::new(client, bus)));
    }
    Ok(deps)
}
