use async_trait::async_trait;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use aws_sdk_eventbridge::Client;
use voyage_core::ports::bus::PUBLISH_BATCH;
use voyage_core::ports::{BusError, BusEvent, EventBus};

/// The [`EventBus`] port on an EventBridge bus, `PutEvents` ten entries at a time.
#[derive(Clone)]
pub struct EventBridgeBus {
    client: Client,
    bus: String,
}

impl EventBridgeBus {
    pub fn new(client: Client, bus: impl Into<String>) -> Self {
        EventBridgeBus {
            client,
            bus: bus.into(),
        }
    }
}

#[async_trait]
impl EventBus for EventBridgeBus {
    async fn publish(&self, events: &[BusEvent]) -> Result<(), BusError> {
        let mut failed = 0;
        let mut reason = String::new();
        for chunk in events.chunks(PUBLISH_BATCH) {
            let entries = chunk
                .iter()
                .map(|e| {
                    PutEventsRequestEntry::builder()
                        .event_bus_name(&self.bus)
                        .source(&e.source)
                        .detail_type(&e.detail_type)
                        .detail(e.detail.to_string())
                        .build()
                })
                .collect();
            let out = self
                .client
                .put_events()
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| {
                    BusError::Unavailable(format!(
                        "{}",
                        aws_sdk_eventbridge::error::DisplayErrorContext(&e)
                    ))
                })?;
            // PutEvents succeeds as a call even when entries fail; each entry says.
            for entry in out.entries() {
                if let Some(code) = entry.error_code() {
                    failed += 1;
                    if reason.is_empty() {
                        reason = format!("{code}: {}", entry.error_message().unwrap_or(""));
                    }
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
