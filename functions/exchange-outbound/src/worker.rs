//! Outbound queue messages: a session change, bare or in EventBridge's envelope, written to
//! every calendar of the staff member ([`voyage_core::calendar::changes`]).

use std::time::Instant;

use serde_json::Value;
use voyage_core::calendar::{self, changes};
use voyage_core::deps::Deps;
use voyage_core::exchange::outbound::SessionChangeInput;
use voyage_core::Error;

/// Changes of one batch written at once (Graph allows 4 concurrent requests per mailbox;
/// a batch rarely holds many changes of one staff member).
pub const CONCURRENCY: usize = 8;

/// Handles one message. An error means "not done": the queue offers it again, and after its
/// maximum receives it goes to the dead-letter queue, where a malformed message is kept.
pub async fn handle(deps: &Deps, body: &str) -> Result<(), Error> {
    let value: Value = serde_json::from_str(body)
        .map_err(|e| Error::validation("message", format!("not JSON: {e}")))?;
    // A follow-up the booking engine queued: the session as stored now, to the calendars
    // that still owe it.
    if let Some(follow_up) = value.get("follow_up") {
        let follow_up: calendar::FollowUp = serde_json::from_value(follow_up.clone())
            .map_err(|e| Error::validation("follow_up", format!("not a follow-up: {e}")))?;
        return match calendar::write_as_stored(deps, &follow_up).await? {
            true => Ok(()),
            false => Err(Error::Unavailable(format!(
                "session {}: a calendar could not be written",
                follow_up.session_id
            ))),
        };
    }
    let change = match value.get("detail") {
        Some(detail) if value.get("detail-type").is_some() => detail.clone(),
        _ => value,
    };
    let input: SessionChangeInput = serde_json::from_value(change)
        .map_err(|e| Error::validation("message", format!("not a session change: {e}")))?;
    let change = input.validate()?;
    let out = changes::apply(deps, &change).await?;
    for c in &out.calendars {
        tracing::info!(session = %out.session_id, provider = c.provider.as_str(), outcome = c.outcome, "session written to the calendar");
    }
    if out.any_failed() {
        // Offered again by the queue (the change is idempotent); the dead-letter queue keeps
        // it after the maximum receives.
        return Err(Error::Unavailable(format!(
            "session {}: a calendar could not be written",
            out.session_id
        )));
    }
    Ok(())
}

/// Handles `(message id, body)` pairs concurrently; returns the ids that failed.
pub async fn handle_batch(deps: &Deps, messages: Vec<(String, String)>) -> Vec<String> {
    handle_batch_until(deps, messages, None).await
}

/// [`handle_batch`], over by `cut_at` when given
/// ([`voyage_core::ports::queue::handle_batch_until`]):
/// a message cut short is offered again, its writes resuming from their intents.
pub async fn handle_batch_until(
    deps: &Deps,
    messages: Vec<(String, String)>,
    cut_at: Option<Instant>,
) -> Vec<String> {
    voyage_core::ports::queue::handle_batch_until(
        messages,
        CONCURRENCY,
        cut_at,
        |body| async move { handle(deps, &body).await },
    )
    .await
}
