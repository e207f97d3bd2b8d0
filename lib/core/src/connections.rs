//! Calendar connections' life cycle beyond the record itself: deleting a connection deletes
//! everything it produced (DESIGN-NOTES 1.1: records are the truth, so no orphan may stay).

use crate::deps::Deps;
use crate::exchange::subscriptions;
use crate::google::channels;
use crate::model::Provider;
use crate::Result;

/// Deletes a connection and its state: the record, then the provider's subscription or
/// channel (best effort: a failure is logged and the provider lets it expire), then its
/// availability overrides, event mappings, delta cursor and lease. A re-created connection
/// for the same staff member therefore starts clean, and no override of the old one keeps
/// blocking moves. `NotFound` when there is no such connection.
pub async fn delete(deps: &Deps, company: &str, id: &str) -> Result<()> {
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
    deps.store.purge_connection_state(&removed).await
}
