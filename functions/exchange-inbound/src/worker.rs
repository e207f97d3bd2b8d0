//! Inbound queue messages: "sync this connection now" (from a Graph notification or
//! lifecycle event), each handled by one delta round.

use std::time::{Duration, Instant};

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
    handle_batch_until(deps, messages, None).await
}

/// [`handle_batch`], over by `cut_at` when given
/// ([`voyage_core::ports::queue::handle_batch_until`]):
/// the rounds' paging stops at the budget or `cut_at`, whichever comes first, and a round
/// cut short is offered again.
pub async fn handle_batch_until(
    deps: &Deps,
    messages: Vec<(String, String)>,
    cut_at: Option<Instant>,
) -> Vec<String> {
    let deadline = paging_deadline(Instant::now(), deps.config.sync_budget, cut_at);
    voyage_core::ports::queue::handle_batch_until(
        messages,
        CONCURRENCY,
        cut_at,
        |body| async move { handle_until(deps, &body, deadline).await },
    )
    .await
}

/// How long before the batch's cut a round's paging stops: time for the page in flight (one
/// Graph call, `VOYAGE_GRAPH_TIMEOUT` 10 s by default, is the worst case) and the checkpoint,
/// which a round writes only once its paging deadline has passed. A round cut before its
/// checkpoint would start over at every receive and never finish.
pub const PAGE_MARGIN: Duration = Duration::from_secs(5);

/// The paging deadline of a batch started `now`: its budget, or [`PAGE_MARGIN`] before its
/// cut when that comes first (at least `now`: one page is always applied).
pub fn paging_deadline(now: Instant, budget: Duration, cut_at: Option<Instant>) -> Instant {
    let budgeted = now + budget;
    match cut_at {
        Some(cut) => budgeted.min(cut.checked_sub(PAGE_MARGIN).unwrap_or(now).max(now)),
        None => budgeted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_pages_until_its_budget_when_the_cut_is_far() {
        let now = Instant::now();
        let deadline = paging_deadline(
            now,
            Duration::from_secs(10),
            Some(now + Duration::from_secs(28)),
        );
        assert_eq!(deadline, now + Duration::from_secs(10));
    }

    /// Review 10, finding 4: with the cut before the budget, the deadline was the cut
    /// itself, so the checkpoint written after it was never reached.
    #[test]
    fn a_round_stops_paging_early_enough_to_checkpoint_before_the_cut() {
        let now = Instant::now();
        let cut = now + Duration::from_secs(12);
        let deadline = paging_deadline(now, Duration::from_secs(20), Some(cut));
        assert_eq!(deadline, cut - PAGE_MARGIN);
    }

    #[test]
    fn a_cut_closer_than_the_margin_still_lets_one_page_run() {
        let now = Instant::now();
        let deadline = paging_deadline(
            now,
            Duration::from_secs(20),
            Some(now + Duration::from_secs(2)),
        );
        assert_eq!(deadline, now);
    }
}
