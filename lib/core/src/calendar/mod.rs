//! The calendar seam: what two-way booking sync does the same way for every provider, once.
//!
//! - [`changes`]: a platform change of a session, written to every calendar connection of
//!   its staff member (`POST /v1/sessions/changes`, the bus event `session.changed`), one
//!   outcome per connection.
//! - [`engine`]: a staff member's change to one of the platform's events, planned by
//!   [`crate::reconcile::plan`] and carried out by the booking command engine
//!   ([`crate::booking`]), with the provider's event writes behind [`engine::EventWriter`].
//! - [`follow`]: what a booking command changed, written to the *other* calendars (the one
//!   the change came from already shows it: [`crate::booking::calendar_writes`]).
//!
//! Each provider module mirrors the other with the same names for the same roles (the event
//! writer lives beside the reconciliation that uses it: Exchange's in its delta round,
//! Google's in `inbound`, which the sync calls per page):
//!
//! | role                       | Exchange (`crate::exchange`)  | Google (`crate::google`)       |
//! |----------------------------|-------------------------------|--------------------------------|
//! | API port                   | `api` (`GraphApi`)            | `api` (`GoogleApi`)            |
//! | push intake                | `push` (Graph notifications)  | `push` (channel pushes)        |
//! | sync round                 | `sync` (delta rounds)         | `sync` (`events.list`)         |
//! | channel renewal            | `channels` (subscriptions)    | `channels` (watch channels)    |
//! | outbound writer            | `outbound`                    | `outbound`                     |
//! | event writer (write-back)  | `sync::GraphEventWriter`      | `inbound::GoogleEventWriter`   |
//! | tenant credentials         | `credentials`                 | `credentials`                  |
//!
//! The mapping (session <-> event, per provider) is [`crate::model::EventMapping`], stored by
//! [`crate::store`]; a platform write records the change key (Graph) or etag (Google) it
//! produced, which is how a sync round tells our own writes from the staff member's.

pub mod changes;
pub mod engine;
pub mod placement;

/// The sync window of every provider's full listing: from a day back to 180 days ahead of
/// the listing's start (the window moves: see each provider's `sync`).
pub const WINDOW_PAST_DAYS: i64 = 1;
pub const WINDOW_FUTURE_DAYS: i64 = 180;

use serde::Serialize;

use crate::booking::{self, Command};
use crate::deps::Deps;
pub use crate::exchange::outbound::{Action, SessionChange, SessionChangeInput};
use crate::model::{Provider, Session};

/// What one change did in one calendar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CalendarOutcome {
    pub connection_id: String,
    pub provider: Provider,
    /// `created`, `updated`, `deleted`, `skipped`, `no_event`, `stale`, `superseded` or
    /// `failed` (the calendar could not be written: `reason` says why; the same change
    /// retried writes it).
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The change a booking command's result amounts to for a calendar that did not cause it:
/// the session as it now is (`cancelled` for a committed cancellation, `updated` otherwise),
/// marked [`SessionChange::as_stored`]: written only while the store still says the same.
pub fn change_of(session: &Session) -> SessionChange {
    SessionChange {
        action: match session.status {
            crate::model::SessionStatus::Cancelled => Action::Cancelled,
            _ => Action::Updated,
        },
        id: session.id.clone(),
        company_id: session.company_id.clone(),
        staff_id: session.staff_id.clone(),
        start: session.start,
        end: session.end,
        time_zone: session.time_zone.clone(),
        title: session.title.clone(),
        location: session.location.clone(),
        client: session.client.clone(),
        version: None,
        as_stored: true,
    }
}

/// The text of a session's event in every calendar (Outlook's body, Google's description):
/// the same for both, and for a write-back as for the write it puts back.
pub fn event_description(client: Option<&crate::model::SessionClient>) -> String {
    match client {
        Some(c) => format!("Voyage session with {}.", c.name),
        None => "Voyage session.".to_string(),
    }
}

/// How long a follow-up that could not be written waits on the outbound queue before its
/// first retry (none: a failed retry waits out the queue's visibility timeout, then the
/// dead-letter queue keeps it).
const FOLLOW_RETRY: std::time::Duration = std::time::Duration::ZERO;

/// Writes what `command` did to `session` into every calendar other than the one `origin`
/// stands for. A calendar that cannot be written now is not forgotten: a [`FollowUp`] naming
/// the session and the calendars still owed goes on the outbound queue, whose worker writes
/// the session as stored then to those calendars only, and is retried by the queue until it
/// succeeds.
pub async fn follow(deps: &Deps, session: &Session, command: &Command, origin: &str) {
    let mut owed = Vec::new();
    for provider in booking::calendar_writes(command, origin) {
        match write_to(deps, provider, &change_of(session)).await {
            Ok(("failed", reason)) => {
                owed.push(provider);
                tracing::warn!(session = %session.id, provider = provider.as_str(), reason = ?reason, "booking change not written to the calendar; queued")
            }
            Ok((outcome, _)) => {
                tracing::debug!(session = %session.id, provider = provider.as_str(), outcome, "booking change written to the calendar")
            }
            Err(e) => {
                owed.push(provider);
                tracing::warn!(session = %session.id, provider = provider.as_str(), error = %e, "booking change not written to the calendar; queued")
            }
        }
    }
    if !owed.is_empty() {
        queue_follow_up(deps, session, owed, FOLLOW_RETRY).await;
    }
}

/// The queued follow-up (see [`follow`]): it names the session and the calendars that still
/// owe the change, and its handler writes the session as it is when the message is handled
/// ([`write_as_stored`]) to those calendars only: a follow-up that waited never carries old
/// times over a newer change, and never writes over the calendar the change came from (the
/// staff member may have changed it again meanwhile).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FollowUp {
    pub company_id: String,
    pub session_id: String,
    pub calendars: Vec<Provider>,
}

/// Before `command` is carried out on `session` (because of a staff member's change in the
/// calendar `origin` stands for): when the command will be [`follow`]ed by writes to other
/// calendars, a [`FollowUp`] naming them is queued first, delayed by
/// `VOYAGE_FOLLOW_UP_CHECK`. The booking's change and those writes are not one atomic step:
/// a process stopped between them (a Lambda's timeout, a crash) would leave the other
/// calendars as they were for good (a cancelled booking's event live there, a move not
/// made), since nothing else lists an event nobody touched. The follow-up writes the
/// session as stored then, so when the writes were made it changes nothing the calendars do
/// not already show (review 9); when the command turned out to change nothing, the same.
pub async fn insure(deps: &Deps, session: &Session, command: &Command, origin: &str) {
    let calendars = booking::calendar_writes(command, origin);
    if !calendars.is_empty() {
        queue_follow_up(deps, session, calendars, deps.config.follow_up_check).await;
    }
}

async fn queue_follow_up(
    deps: &Deps,
    session: &Session,
    calendars: Vec<Provider>,
    delay: std::time::Duration,
) {
    let body = serde_json::json!({
        "follow_up": FollowUp {
            company_id: session.company_id.clone(),
            session_id: session.id.clone(),
            calendars,
        }
    });
    let sent = match deps.queue(crate::deps::QueueName::ExchangeOutbound) {
        Ok(queue) => queue
            .send(&body.to_string(), delay)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = sent {
        tracing::warn!(session = %session.id, error = %e, "follow-up not queued: the other calendar catches up at the session's next change");
    }
}

/// Writes the session, as stored now, to the calendars a queued follow-up names. A session
/// that no longer exists needs nothing. `Ok(false)`: a calendar could not be written (the
/// queue offers the follow-up again).
pub async fn write_as_stored(deps: &Deps, follow_up: &FollowUp) -> crate::Result<bool> {
    let Some(session) = deps
        .store
        .find_session(&follow_up.company_id, &follow_up.session_id)
        .await?
    else {
        return Ok(true);
    };
    let change = change_of(&session);
    let mut written = true;
    for provider in &follow_up.calendars {
        if shows_already(deps, &session, *provider).await? {
            tracing::debug!(session = %session.id, provider = provider.as_str(), "follow-up: the calendar shows the booking as stored already");
            continue;
        }
        let (outcome, _) = write_to(deps, *provider, &change).await?;
        written &= outcome != "failed";
    }
    Ok(written)
}

/// Whether `provider`'s calendar already shows the confirmed `session` as stored, as the
/// record of it says: its mapping is in the staff member's connection of that provider, at
/// the session's times (written by us, or read there since), and no earlier placement's
/// event is left to delete there. A follow-up then writes
/// nothing: most follow-ups ([`insure`]) come after [`follow`] made the writes, and writing
/// again would overwrite what the staff member did in that calendar since, before its sync
/// read it (a second move put back to the first; review 9). That calendar's own sync
/// reconciles what the staff member did. A cancelled session is always written (deleting an
/// event that is gone changes nothing).
async fn shows_already(deps: &Deps, session: &Session, provider: Provider) -> crate::Result<bool> {
    if session.status != crate::model::SessionStatus::Confirmed {
        return Ok(false);
    }
    let store = &deps.store;
    let Some(mapping) = store
        .mapping_for_session(&session.company_id, provider, &session.id)
        .await?
    else {
        return Ok(false);
    };
    let Some(connection) = store
        .connection_for_staff(&session.company_id, &session.staff_id, provider)
        .await?
    else {
        return Ok(false);
    };
    // An earlier placement's event still to delete there (`retired`) is written for.
    let leftover = session.retired.iter().any(|r| r.provider == provider);
    Ok(!leftover
        && mapping.connection_id == connection.id
        && mapping.last_start == session.start
        && mapping.last_end == session.end)
}

/// Writes `change` (the session already stored) to the staff member's calendar of
/// `provider` alone: its outcome and reason (`no_connection` when there is none).
async fn write_to(
    deps: &Deps,
    provider: Provider,
    change: &SessionChange,
) -> crate::Result<(&'static str, Option<String>)> {
    Ok(match provider {
        Provider::Exchange => {
            let o = crate::exchange::outbound::apply_to_calendar(deps, change).await?;
            (o.outcome, o.reason)
        }
        Provider::Google => crate::google::outbound::apply(deps, change)
            .await?
            .map_or(("no_connection", None), |w| {
                (w.calendar.outcome, w.calendar.reason)
            }),
    })
}
