//! Calendar connections' life cycle beyond the record itself: creating one subscribes to its
//! calendar (a Graph subscription, a Google push channel); deleting one deletes everything it
//! produced (DESIGN-NOTES 1.1: records are the truth, so no orphan may stay). The routes
//! (`POST|DELETE /v1/connections`) only decode, call these and encode.

use crate::deps::Deps;
use crate::exchange::channels as exchange_channels;
use crate::google::channels as google_channels;
use crate::model::{Connection, ConnectionStatus, Provider};
use crate::{ids, validate, Error, Result};

/// A connection as a tenant asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConnection {
    pub provider: Provider,
    pub staff_id: String,
    pub staff_email: String,
    /// Required for Google (the calendar to read and write); Exchange uses the mailbox's
    /// default calendar when it is missing.
    pub calendar_id: Option<String>,
}

/// Validates the request (a 422 names the field), creates the connection in `pending`, then
/// subscribes to the calendar at once: the connection comes back `active`, or `error` with
/// the reason (the renewal job retries).
pub async fn create(deps: &Deps, company: &str, request: NewConnection) -> Result<Connection> {
    validate::identifier("staff_id", &request.staff_id)?;
    validate::email("staff_email", &request.staff_email)?;
    match (&request.calendar_id, request.provider) {
        (Some(c), _) if c.is_empty() => {
            return Err(Error::validation("calendar_id", "must not be empty"))
        }
        (Some(c), _) => validate::text("calendar_id", c, 512)?,
        (None, Provider::Google) => {
            return Err(Error::validation("calendar_id", "is required for Google"))
        }
        (None, Provider::Exchange) => {}
    }
    let now = deps.store.now();
    let connection = Connection {
        id: ids::new_id("conn"),
        company_id: company.to_string(),
        provider: request.provider,
        staff_id: request.staff_id,
        staff_email: request.staff_email,
        calendar_id: request.calendar_id,
        status: ConnectionStatus::Pending,
        last_sync_at: None,
        last_error: None,
        channel: None,
        created_at: now,
        updated_at: now,
        version: 0,
    };
    let mut created = deps.store.create_connection(&connection).await?;
    match created.provider {
        Provider::Exchange => {
            exchange_channels::subscribe(deps, &mut created).await?;
        }
        Provider::Google => {
            google_channels::watch(deps, &mut created).await?;
        }
    }
    queue_first_sync(deps, &created).await;
    Ok(created)
}

/// Queues a new connection's first sync, so what the calendar already holds is availability
/// (and its platform events reconciled) at once, not at the next timer: Google's five-minute
/// sync job, Exchange's hourly window rebase (a subscription notifies only changes made after
/// it). A failure to queue is logged, not raised: the connection exists, and those timers
/// still catch up.
async fn queue_first_sync(deps: &Deps, c: &Connection) {
    let queued = match c.provider {
        Provider::Exchange => {
            let request = crate::exchange::push::SyncRequest::for_connection(c, "connected");
            crate::exchange::push::enqueue(deps, &request).await
        }
        Provider::Google => {
            crate::google::push::queue_sync(deps, &c.company_id, &c.id, std::time::Duration::ZERO)
                .await
        }
    };
    if let Err(e) = queued {
        tracing::warn!(connection = %c.id, error = %e, "first sync not queued; the next timer syncs the calendar");
    }
}

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
            exchange_channels::remove_quietly(deps, company, &channel.id).await;
        }
        (Provider::Google, Some(channel)) => {
            google_channels::stop_quietly(deps, &removed, channel).await;
        }
        _ => {}
    }
    // A round that read the connection before it was deleted may have written since.
    deps.store.purge_connection_state(&removed).await
}
