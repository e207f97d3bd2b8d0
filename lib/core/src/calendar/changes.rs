//! One platform change of a session, written to every calendar connection of its staff
//! member: `POST /v1/sessions/changes` and the bus event `session.changed` (the outbound
//! queue) both come here.
//!
//! The session is stored once, before any calendar is written (the intent, with the same
//! version and staleness rules as `POST /v1/exchange/outbound`, which keeps working and is
//! this path restricted to Exchange). Then each provider's outbound writer writes its
//! calendar: Exchange ([`crate::exchange::outbound`]), then Google
//! ([`crate::google::outbound`]). The answer has one outcome per connection; a calendar that
//! could not be written is `failed` with its reason, and the same change sent again (it is
//! idempotent) writes it.

use serde::Serialize;

use super::{CalendarOutcome, SessionChange};
use crate::deps::Deps;
use crate::model::{Provider, SessionStatus};
use crate::Result;

/// The answer of `POST /v1/sessions/changes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangesOutcome {
    pub session_id: String,
    pub session_status: SessionStatus,
    /// One entry per calendar connection of the staff member (none: the staff member has no
    /// calendar connected; the session is stored all the same).
    pub calendars: Vec<CalendarOutcome>,
}

impl ChangesOutcome {
    /// Whether some calendar could not be written (the change should be sent again).
    pub fn any_failed(&self) -> bool {
        self.calendars.iter().any(|c| c.outcome == "failed")
    }
}

/// Stores the change and writes it to each of the staff member's calendars.
pub async fn apply(deps: &Deps, change: &SessionChange) -> Result<ChangesOutcome> {
    // Exchange's writer also records the intent (once, for every calendar), from one batch
    // read of every provider's connection, credentials and mapping.
    let (exchange, mut ctx, instead) =
        crate::exchange::outbound::apply_to_calendars(deps, change).await?;
    // A retry that only clears leftovers writes the session as stored, in every calendar.
    let written = instead.as_ref().unwrap_or(change);
    let mut out = ChangesOutcome {
        session_id: change.id.clone(),
        session_status: exchange.session_status,
        calendars: Vec::new(),
    };
    // One entry per connection: `connection_id` is there only when the staff member has an
    // Exchange connection (`no_connection` has none; a stale change reads it all the same).
    if let Some(connection_id) = exchange.connection_id.clone() {
        out.calendars.push(CalendarOutcome {
            connection_id,
            provider: Provider::Exchange,
            outcome: exchange.outcome,
            event_id: exchange.event_id.clone(),
            reason: exchange.reason.clone(),
        });
    }
    if exchange.outcome == "stale" {
        // Older than what the session reflects: no calendar is written, each says so.
        if let Some(conn) = ctx.take_other(Provider::Google).and_then(|g| g.connection) {
            out.calendars.push(CalendarOutcome {
                connection_id: conn.id,
                provider: Provider::Google,
                outcome: "stale",
                event_id: None,
                reason: exchange.reason.clone(),
            });
        }
        return Ok(out);
    }
    // (The batch read always holds every provider's context.)
    let google = match ctx.take_other(Provider::Google) {
        Some(google_ctx) => {
            crate::google::outbound::apply_in(deps, written, google_ctx, exchange.settled).await?
        }
        None => None,
    };
    if let Some(google) = google {
        out.session_status = google.session_status;
        out.calendars.push(google.calendar);
    }
    Ok(out)
}
