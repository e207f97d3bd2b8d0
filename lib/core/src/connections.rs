//! Calendar connections' life cycle beyond the record itself: deleting a connection deletes
//! everything it produced (DESIGN-NOTES 1.1: records are the truth, so no orphan may stay).

use crate::deps::Deps;
use crate::exchange::subscriptions;
use crate::google::channels;
use crate::model::Provider;
use crate::Result;

/// Deletes a connection and its state: its availability overrides, event mappings, delta
/// cursor and lease, then the record, then the provider's subscription or channel (best
/// effort: a failure is logged and the provider lets it expire), then the state once more (a
/// round that was running may have written some). Overrides of a connection that no longer
/// exists are ignored when read, whatever is left. A re-created connection
/// for the same staff member therefore starts clean, and no override of the old one keeps
/// blocking moves. `NotFound` when there is no such connection.
pub async fn delete(deps: &Deps, company: &str, id: &str) -> Result<()> {
    // State first: if this fails part-way, the connection still exists and a retry finishes.
    let existing = deps.store.get_connection(company, id).await?;
    deps.store.purge_connection_state(&existing).await?;
    let removed = deps.store.delete_connection(company, id).await?;
    match (removed.provider, &removed.channel) {
        (Provider::Exchange, Some(channel)) => {
            subscriptions::remove_quietly(deps, company, &channel.id).await;
        }
        (Provider::Google, Some(channel)) => {
            channels::stop_quietly(deps, &removed, channel).await;
        }
        _ => {}
    }
    // A round that read the connection before it was deleted may have written since.
    deps.store.purge_connection_state(&removed).await
}
