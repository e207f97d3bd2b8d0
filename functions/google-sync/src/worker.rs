//! Queued Google syncs (from pushes, the five-minute job's fan-out, `POST /v1/google-sync`
//! `{}`, and the follow-ups of syncs that ran out of their time budget): one sync of the
//! named connection per message, each inside `VOYAGE_SYNC_BUDGET`.

use std::time::Instant;

use voyage_core::deps::Deps;
use voyage_core::google::push::{SyncRequest, SYNC_KIND};
use voyage_core::google::sync;
use voyage_core::ports::queue::Envelope;
use voyage_core::Error;

pub const CONCURRENCY: usize = 8;

pub async fn handle(deps: &Deps, body: &str) -> Result<(), Error> {
    let envelope: Envelope = serde_json::from_str(body)
        .map_err(|e| Error::validation("message", format!("not an envelope: {e}")))?;
    if envelope.kind != SYNC_KIND {
        return Err(Error::validation(
            "kind",
            format!("`{}` is not {SYNC_KIND}", envelope.kind),
        ));
    }
    let request: SyncRequest = serde_json::from_value(envelope.payload)
        .map_err(|e| Error::validation("payload", format!("not a sync request: {e}")))?;
    // The coalescing window ends as this sync starts: pushes from now on queue the next.
    let mut conn = match deps
        .store
        .get_connection(&request.company_id, &request.connection_id)
        .await
    {
        Ok(c) => c,
        Err(Error::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    let report = sync::sync_connection(deps, &mut conn).await?;
    tracing::info!(connection = %conn.id, pages = report.pages, events = report.events, full = report.full, continues = report.continues, "google sync done");
    Ok(())
}

pub async fn handle_batch(deps: &Deps, messages: Vec<(String, String)>) -> Vec<String> {
    handle_batch_until(deps, messages, None).await
}

/// [`handle_batch`], over by `cut_at` when given
/// ([`voyage_core::ports::queue::handle_batch_until`]):
/// a sync cut short is offered again and resumes from its last checkpoint.
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
