use std::time::Duration;

use async_trait::async_trait;
use voyage_core::ports::{BusError, BusEvent, EventBus, Queue};

use crate::SqliteQueue;

/// The local event bus: each event is written, in EventBridge's envelope shape, to a durable
/// queue that the local system's dispatcher consumes, just as an EventBridge rule delivers to
/// an SQS target on AWS. Consumers therefore read one shape in both worlds.
#[derive(Clone)]
pub struct SqliteBus {
    target: SqliteQueue,
}

impl SqliteBus {
    pub fn new(target: SqliteQueue) -> Self {
        SqliteBus { target }
    }
}

#[async_trait]
impl EventBus for SqliteBus {
    async fn publish(&self, events: &[BusEvent]) -> Result<(), BusError> {
        let mut failed = 0;
        let mut reason = String::new();
        for e in events {
            let body = serde_json::to_string(e)
                .map_err(|err| BusError::Unavailable(format!("unserialisable event: {err}")))?;
            if let Err(err) = self.target.send(&body, Duration::ZERO).await {
                failed += 1;
                if reason.is_empty() {
                    reason = err.to_string();
                }
            }
        }
        if failed == 0 {
            Ok(())
        } else {
            Err(BusError::Partial {
                failed,
                total: events.len(),
                reason,
            })
        }
    }
}
