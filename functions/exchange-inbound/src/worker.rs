//! Inbound queue messages: "sync this connection now" (from a Graph notification or
//! lifecycle event), each handled by one delta round.

use std::time::Instant;

use voyage_core::deps::Deps;
use voyage_core::exchange::push::{received_at, SyncRequest, SYNC_KIND};
use voyage_core::exchange::sync;
use voyage_core::metrics;
use voyage_core::ports::queue::Envelope;
use voyage_core::Error;

/// Rounds of one batch run at once (different connections; one connection's rounds are
/// safe together, see `exchange::sync`).
pub const CONCURRENCY: usize = 8;

/// Handles one message. An error means "not done": the queue offers it again, and after its
/// maximum receives it goes to the dead-letter queue.
pub async fn handle(deps: &Deps, body: &str) -> Result<(), Error> {
    handle_until(deps, body, Instant::now() + deps.config.sync_budget).await
}

/// [`handle`], paging until `deadline` (the batch's: rounds of one invocation share it, so
/// the invocation ends inside the function's timeout however many messages it carries).
async fn handle_until(deps: &Deps, body: &str, deadline: Instant) -> Result<(), Error> {
    let envelope: Envelope = serde_json::from_str(body)
        .map_err(|e| Error::validation("message", format!("not an envelope: {e}")))?;
    if envelope.kind != SYNC_KIND {
        return Err(Error::validation(
            "kind",
            format!("`{}` is not {SYNC_KIND}", envelope.kind),
        ));
    }
    let received_at = received_at(&envelope.payload);
    let request: SyncRequest = serde_json::from_value(envelope.payload)
        .map_err(|e| Error::validation("payload", format!("not a sync request: {e}")))?;
    let round = sync::handle_until(deps, &request, deadline);
    let result = match received_at {
        Some(at) => metrics::with_notification_time(at, round).await,
        None => round.await,
    };
    let outcome = match &result {
        Ok(r) if r.skipped.is_some() => "skipped",
        Ok(r) if r.coalesced => "coalesced",
        Ok(r) if r.resynced => "resynced",
        Ok(_) => "ok",
        Err(_) => "error",
    };
    metrics::count("exchange_delta_rounds", &[("outcome", outcome)], 1);
    let report = result?;
    tracing::info!(
        connection = %request.connection_id,
        reason = %request.reason,
        pages = report.pages,
        events = report.events,
        commands = report.commands,
        echoes = report.echoes,
        resynced = report.resynced,
        skipped = report.skipped.as_deref().unwrap_or(""),
        "exchange delta round done"
    );
    Ok(())
}

/// Handles `(message id, body)` pairs concurrently; returns the ids that failed.
pub async fn handle_batch(deps: &Deps, messages: Vec<(String, String)>) -> Vec<String> {
    let deadline = Instant::now() + deps.config.sync_budget;
    voyage_core::ports::queue::handle_batch(messages, CONCURRENCY, |body| async move {
        handle_until(deps, &body, deadline).await
    })
    .await
}
