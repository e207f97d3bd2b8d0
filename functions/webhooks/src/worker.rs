//! The webhook worker: what one queue message means, and a batch of them handled
//! concurrently (SQS on Lambda with partial batch failures, the in-process queue locally).
//!
//! Two kinds of message arrive: wake-ups for delivery attempts (from the deliveries queue)
//! and platform events in EventBridge's envelope (from the platform-events queue), whose
//! `detail-type` is the event type and whose `detail` is
//! `{"company_id", "payload": {...}, "idempotency_key"?}`.

use serde::Deserialize;
use voyage_core::webhooks::WebhookEngine;
use voyage_core::Error;

use crate::api::DispatchBody;

/// Messages of one batch handled at once: one slow endpoint never holds back the others.
pub const CONCURRENCY: usize = 64;

#[derive(Debug, Deserialize)]
struct PlatformEvent {
    #[serde(rename = "detail-type")]
    detail_type: String,
    detail: PlatformDetail,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlatformDetail {
    company_id: String,
    payload: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// Handles one message body. An error means "not done": the queue offers it again, and
/// after its maximum receives it goes to the dead-letter queue.
pub async fn handle(engine: &WebhookEngine, body: &str) -> Result<(), Error> {
    let looks_like_event = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .is_some_and(|v| v.get("detail-type").is_some());
    if looks_like_event {
        let event: PlatformEvent = serde_json::from_str(body)
            .map_err(|e| Error::validation("message", format!("platform event: {e}")))?;
        let dispatch = DispatchBody {
            company_id: event.detail.company_id,
            event: event.detail_type,
            payload: event.detail.payload,
            idempotency_key: event.detail.idempotency_key,
        }
        .into_dispatch()?;
        engine.dispatch_stamped(dispatch, false).await?;
        return Ok(());
    }
    engine.handle_message(body).await.map(|_| ())
}

/// Handles `(message id, body)` pairs concurrently; returns the ids that failed.
pub async fn handle_batch(engine: &WebhookEngine, messages: Vec<(String, String)>) -> Vec<String> {
    handle_batch_until(engine, messages, None).await
}

/// [`handle_batch`], over by `cut_at` when given
/// ([`voyage_core::ports::queue::handle_batch_until`]):
/// an attempt cut short keeps its claim until the lease ends, and the message offered
/// again sends it then (the receiver may get it twice: deliveries are at least once).
pub async fn handle_batch_until(
    engine: &WebhookEngine,
    messages: Vec<(String, String)>,
    cut_at: Option<std::time::Instant>,
) -> Vec<String> {
    voyage_core::ports::queue::handle_batch_until(
        messages,
        CONCURRENCY,
        cut_at,
        |body| async move { handle(engine, &body).await },
    )
    .await
}
