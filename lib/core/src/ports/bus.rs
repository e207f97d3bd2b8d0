//! The event bus port: how platform events (session changes, webhook dispatch requests)
//! enter the integrations layer asynchronously. EventBridge on AWS, a durable in-process
//! queue locally.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// The `source` of every event this system publishes.
pub const SOURCE: &str = "voyage.integrations";

/// Events per `PutEvents` call; adapters chunk larger publishes.
pub const PUBLISH_BATCH: usize = 10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BusEvent {
    pub source: String,
    #[serde(rename = "detail-type")]
    pub detail_type: String,
    pub detail: serde_json::Value,
}

impl BusEvent {
    pub fn new(detail_type: impl Into<String>, detail: serde_json::Value) -> Self {
        BusEvent {
            source: SOURCE.into(),
            detail_type: detail_type.into(),
            detail,
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BusError {
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
    /// Some entries were refused; the count and first reason are given.
    #[error("{failed} of {total} events were not published: {reason}")]
    Partial {
        failed: usize,
        total: usize,
        reason: String,
    },
}

#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes every event or reports which could not be published.
    async fn publish(&self, events: &[BusEvent]) -> Result<(), BusError>;
}
