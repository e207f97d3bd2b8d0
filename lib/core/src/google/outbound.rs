//! Google outbound: the outbound writer of Google calendars. The session, as the calendar
//! seam has already stored it ([`crate::calendar::changes`]), becomes one event in the staff
//! member's Google calendar.
//!
//! - **One event per placement, whatever is retried.** The event's id is chosen by us per
//!   placement of the session (its booking, a booking again after a cancellation, a change
//!   of staff member: [`super::api::event_id_for_placement`], base32hex) and recorded in the
//!   session with the intent, before the insert: a create retried after a lost answer is
//!   refused as a duplicate (409) and the event is read and written over; a new placement
//!   never collides with an old, deleted event.
//! - **The platform's tag** is in `extendedProperties.private` ([`ExtendedProperties::session`]).
//! - **Updates are conditional** (`If-Match` with the etag we last wrote or read): a 412
//!   means the staff member changed the event since; it is read again and overwritten with
//!   its new etag (the platform is the truth outbound), keeping the attendees it has (the
//!   staff member's own answer is among them; a decline seen there is flagged) - unless
//!   another change of the session was written meanwhile (superseded: that one stands).
//! - **An event the staff member deleted** (Google keeps it, `status: cancelled`) is not
//!   brought back by a platform edit: the booking's cancellation starts pending, as for
//!   Exchange; the same for a 409 on a deleted event of this placement (made by a create
//!   whose answer was lost, deleted before any mapping knew it).
//! - **A session given to another staff member**: the event in the old calendar is deleted.
//! - **No mail leaves** on the platform's behalf (every write goes with `sendUpdates=none`)
//!   and the client is never invited.
//!
//! Store round trips per session: one transaction (the mapping, and the connection's status
//! when it changes); the batch read of session, connection, credentials and mapping is the
//! one the seam made for every calendar ([`apply_in`]). A session given to another staff
//! member adds the old connection's read and the commit that drops its mapping. Google
//! calls: one write; a read and a second write only after a 409 or 412.

use chrono::{DateTime, Utc};

use super::api::{
    event_id_for, ExtendedProperties, GoogleApi, GoogleDateTime, GoogleError, GoogleEvent,
    GoogleEventWrite, ServiceAccount,
};
use super::credentials;
use crate::booking::{self, Command, ORIGIN_GOOGLE_INBOUND};
use crate::calendar::placement::Placement;
use crate::calendar::{CalendarOutcome, SessionChange};
use crate::deps::Deps;
use crate::model::{
    Connection, ConnectionStatus, EventMapping, Provider, RetiredEvent, Session, SessionStatus,
};
use crate::store::{OutboundContext, OutboundWrite};
use crate::{Error, Result};

/// Tries of the closing transaction's commit (the Google call is not repeated):
/// [`crate::retry::LOST_RACE_ATTEMPTS`].
const COMMIT_ATTEMPTS: usize = crate::retry::LOST_RACE_ATTEMPTS;

/// What writing one session to its staff member's Google calendar did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub calendar: CalendarOutcome,
    /// The session's status afterwards (a deleted event starts a pending cancellation).
    pub session_status: SessionStatus,
}

/// What the Google step decided or did.
#[derive(Debug)]
enum Step {
    Skipped(String),
    /// The session's cancellation is pending: nothing is written.
    Pending,
    /// The staff member deleted the event: the booking's cancellation starts pending. With
    /// the event when no mapping knew it yet (a create whose answer was lost): it is mapped
    /// now, so the commit of the cancellation reads it and a restore is seen (simulation
    /// seed 740307: unmapped, restored beyond the window, the booking was cancelled).
    EventGone(Option<Box<GoogleEvent>>),
    /// Written; `declined`: the event read before the write shows the staff member's own
    /// answer `declined` (the write keeps it, and its etag becomes ours: the decline is
    /// flagged here, or no sync would see it).
    Wrote(Box<GoogleEvent>, &'static str, bool),
    Deleted,
    NothingToDelete,
    /// Another change of the session was written meanwhile: nothing is overwritten.
    Superseded,
    Failed(String),
}

/// Writes the stored session `change` names to the staff member's Google calendar.
/// `Ok(None)`: the staff member has no Google connection.
pub async fn apply(deps: &Deps, change: &SessionChange) -> Result<Option<Written>> {
    let ctx = read(deps, change).await?;
    apply_in(deps, change, ctx, true).await
}

async fn read(deps: &Deps, change: &SessionChange) -> Result<OutboundContext> {
    deps.store
        .outbound_context(
            &change.company_id,
            &change.staff_id,
            &change.id,
            Provider::Google,
        )
        .await
}

/// [`apply`] from a context read already (with the session as stored by the intent): the
/// calendar seam reads every provider's context in one batch. `others_settled`: every other
/// calendar of the staff member shows the change; then, once this one does too, the
/// change's `version` is recorded as done (in this write's commit), and a retry of it is
/// stale. Until then a retry writes again.
pub async fn apply_in(
    deps: &Deps,
    change: &SessionChange,
    mut ctx: OutboundContext,
    others_settled: bool,
) -> Result<Option<Written>> {
    // Given to another staff member since this change's intent (a newer change, recorded
    // while this one's first calendar write was in flight, and written to this calendar by
    // that change): nothing of this change is written, nor removed as "elsewhere" (the
    // mapping read is the newer placement's).
    if let Some(session) = ctx
        .session
        .as_ref()
        .filter(|s| s.staff_id != change.staff_id)
    {
        tracing::info!(session = %change.id, "given to another staff member meanwhile: superseded");
        return Ok(ctx.connection.as_ref().map(|c| Written {
            calendar: outcome_of(c, &Step::Superseded),
            session_status: session.status,
        }));
    }
    // An event written through another connection (the session was given to another staff
    // member, or the connection was replaced): it goes from that calendar.
    if let Some(old) = ctx.mapping.clone().filter(|m| {
        ctx.connection
            .as_ref()
            .is_none_or(|c| c.id != m.connection_id)
    }) {
        match remove_elsewhere(deps, &ctx, &old).await {
            Ok(()) => {
                // Gone from there: the session has no Google event until this write makes
                // one (a write that fails leaves no mapping to a deleted event behind).
                let mut writes = [OutboundWrite::DeleteMapping(old)];
                match deps.store.commit_outbound(&mut writes).await {
                    Ok(()) => ctx.mapping = None,
                    Err(e) => {
                        tracing::debug!(session = %change.id, error = %e, "moved session's google mapping not removed yet")
                    }
                }
            }
            Err(reason) => {
                // The old calendar still shows the booking: nothing is written in the new
                // one until it is gone (the same change sent again removes it first), so the
                // booking never shows twice.
                tracing::warn!(session = %change.id, reason = %reason, "event not removed from the previous staff member's google calendar");
                let status = ctx
                    .session
                    .as_ref()
                    .map_or(SessionStatus::Confirmed, |s| s.status);
                // A failure even when the staff member has no Google calendar now (it names
                // the calendar that still shows the booking then): the change is retried.
                return Ok(Some(Written {
                    calendar: CalendarOutcome {
                        connection_id: ctx
                            .connection
                            .as_ref()
                            .map_or_else(|| old.connection_id.clone(), |c| c.id.clone()),
                        provider: Provider::Google,
                        outcome: "failed",
                        event_id: None,
                        reason: Some(format!(
                            "the event in the previous staff member's calendar could not be removed: {reason}"
                        )),
                    },
                    session_status: status,
                }));
            }
        }
    }
    let Some(conn) = ctx.connection.clone() else {
        // No Google calendar for the staff member: events a retired placement left in
        // another one's still go; one that could not be deleted is reported (naming the
        // calendar that still shows it), so the change is retried.
        let settle = others_settled.then_some(change.version).flatten();
        let Some(u) = forget_retired(deps, &ctx, settle).await else {
            return Ok(None);
        };
        let status = ctx
            .session
            .as_ref()
            .map_or(SessionStatus::Confirmed, |s| s.status);
        let calendar = CalendarOutcome {
            connection_id: u.connection_id.clone(),
            provider: Provider::Google,
            outcome: "no_connection",
            event_id: None,
            reason: None,
        };
        return Ok(Some(Written {
            calendar: u.fail(calendar),
            session_status: status,
        }));
    };
    let Some(session) = ctx.session.clone() else {
        // The session is gone (read with the context, or never recorded): nothing to write.
        return Ok(None);
    };
    let mut step = google_step(deps, &ctx, &conn, &session, change).await?;
    let (cleared, undeleted) = delete_retired(deps, &ctx, &step).await;
    let placed = placement_of(&ctx);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let settle = (others_settled && undeleted.is_none())
            .then_some(change.version)
            .flatten();
        let mut writes = closing_writes(&ctx, change, &step, &cleared, settle, deps.store.now());
        if writes.is_empty() {
            break;
        }
        match deps.store.commit_outbound(&mut writes).await {
            Ok(()) => {
                for w in writes {
                    if let OutboundWrite::Session(s) = w {
                        ctx.session = Some(s);
                    }
                }
                break;
            }
            Err(Error::Conflict { .. }) if attempt < COMMIT_ATTEMPTS => {
                crate::retry::after_lost_race().await;
                ctx = read(deps, change).await?;
                step = still_ours(deps, &ctx, &conn, &placed, step).await;
            }
            Err(Error::Conflict { .. }) => {
                return Err(crate::retry::contended("session", &change.id))
            }
            Err(e) => return Err(e),
        }
    }
    let mut session = ctx.session.clone().unwrap_or(session);
    if let Step::Wrote(event, _, true) = &step {
        booking::execute_for_event(
            deps,
            &mut session,
            &Command::FlagDecline,
            ORIGIN_GOOGLE_INBOUND,
            Provider::Google,
            &event.id,
        )
        .await
        .map_err(crate::retry::lost_every_race)?;
    }
    let gone = match &step {
        Step::EventGone(Some(e)) => Some(e.id.clone()),
        Step::EventGone(None) => ctx.mapping.as_ref().map(|m| m.external_event_id.clone()),
        _ => None,
    };
    if let Some(gone) = gone {
        let grace = deps.config.pending_grace();
        booking::execute_for_event(
            deps,
            &mut session,
            &Command::PendingCancellation { grace },
            ORIGIN_GOOGLE_INBOUND,
            Provider::Google,
            &gone,
        )
        .await
        .map_err(crate::retry::lost_every_race)?;
    }
    // The deletion found was not applied (the booking given away or booked again
    // meanwhile, still confirmed): this write was overtaken, and says so.
    if matches!(step, Step::EventGone(_)) && session.status == SessionStatus::Confirmed {
        step = Step::Superseded;
    }
    let calendar = outcome_of(&conn, &step);
    Ok(Some(Written {
        calendar: match undeleted {
            Some(u) => u.fail(calendar),
            None => calendar,
        },
        session_status: session.status,
    }))
}

/// The placement (mapped event, the id of a placement still to be inserted) a step was
/// decided on.
fn placement_of(ctx: &OutboundContext) -> Placement {
    Placement::of(
        ctx.mapping.as_ref(),
        ctx.session.as_ref().and_then(|s| s.google_event.as_deref()),
        ctx.connection.as_ref().map(|c| c.id.as_str()),
        ctx.session.as_ref().map(|s| s.staff_id.as_str()),
    )
}

/// After a lost race and a re-read: `step` as it was, or [`Step::Superseded`] when another
/// write moved the session to another placement meanwhile ([`Placement::moved_on`]): then
/// nothing of this step is recorded (no mapping back to a replaced event, the newer
/// placement's event id kept, no pending cancellation for an event that is no longer the
/// session's). An event this step inserted for a placement that is neither mapped nor
/// pending now is deleted: its id is that placement's own, so no newer write can be about to
/// map it (a Google sync leaves a tagged event of a confirmed session alone, so it would stay).
async fn still_ours(
    deps: &Deps,
    ctx: &OutboundContext,
    conn: &Connection,
    placed: &Placement,
    step: Step,
) -> Step {
    let event = match &step {
        Step::Wrote(e, ..) | Step::EventGone(Some(e)) => Some(e.id.clone()),
        Step::EventGone(None) | Step::Deleted => placed.mapped.clone(),
        _ => return step,
    };
    let fresh = placement_of(ctx);
    if !placed.moved_on(&fresh, event.as_deref()) {
        return step;
    }
    tracing::info!(session = ?ctx.session.as_ref().map(|s| &s.id), "a newer placement was recorded while this write was in flight: superseded");
    if let Step::Wrote(e, ..) = &step {
        let current = [
            &fresh.mapped,
            &fresh.pending,
            &placed.mapped,
            &placed.elsewhere,
        ];
        if current
            .iter()
            .all(|id| id.as_deref() != Some(e.id.as_str()))
        {
            delete_overtaken(deps, ctx, conn, &e.id).await;
        }
    }
    Step::Superseded
}

/// Deletes an event this write inserted for a placement that was replaced meanwhile (best
/// effort: one left behind is a tagged duplicate of the session).
async fn delete_overtaken(deps: &Deps, ctx: &OutboundContext, conn: &Connection, event_id: &str) {
    match delete_in(deps, ctx, conn, event_id).await {
        Ok(()) => tracing::info!(event = %event_id, "google event of a replaced placement deleted"),
        Err(e) => {
            tracing::warn!(event = %event_id, error = %e, "google event of a replaced placement not deleted")
        }
    }
}

/// Deletes the session's retired Google events ([`Session::retired`]) once this write has
/// put the calendar right (written, deleted, or nothing to delete): the ones gone now, or
/// whose connection is gone, which the closing commit clears. An event the session maps
/// again, or that this write wrote, is cleared without being deleted. One that could not be
/// deleted stays in the session, and the first failure is returned ([`Undeleted`]): the
/// write then answers `failed`, so the change is retried (a retired event nobody touches is
/// never listed by an incremental sync again, and no later write of the session may come).
async fn delete_retired(
    deps: &Deps,
    ctx: &OutboundContext,
    step: &Step,
) -> (Vec<RetiredEvent>, Option<Undeleted>) {
    let written = match step {
        Step::Wrote(e, ..) => Some(e.id.as_str()),
        Step::Deleted | Step::NothingToDelete => None,
        _ => return (Vec::new(), None),
    };
    let Some(session) = &ctx.session else {
        return (Vec::new(), None);
    };
    let mut undeleted = None;
    let mapped = ctx.mapping.as_ref().map(|m| m.external_event_id.as_str());
    let (mut cleared, to_delete) = session.retired_in(Provider::Google, [written, mapped]);
    for r in to_delete {
        match remove_from(
            deps,
            ctx,
            &session.company_id,
            &r.connection_id,
            &r.event_id,
        )
        .await
        {
            Ok(()) => {
                tracing::debug!(event = %r.event_id, "retired google event deleted");
                cleared.push(r);
            }
            // Refused for good (an account suspended, the credentials gone): kept for later
            // writes, but no retry of this change would fare better, so it is not reported
            // (every change of the booking would fail for it).
            Err(e) if e.refused_for_good() => {
                tracing::warn!(event = %r.event_id, error = %e, "retired google event refused its deletion")
            }
            Err(e) => {
                tracing::warn!(event = %r.event_id, error = %e, "retired google event not deleted yet");
                undeleted.get_or_insert(Undeleted {
                    connection_id: r.connection_id.clone(),
                    reason: e.to_string(),
                });
            }
        }
    }
    (cleared, undeleted)
}

/// A retired event [`delete_retired`] could not delete: the connection whose calendar
/// still shows it, and why.
struct Undeleted {
    connection_id: String,
    reason: String,
}

impl Undeleted {
    /// `calendar`, a write that did its own part, made `failed` for this event (the change
    /// is retried; its version is not marked done, so the retry is no stale one).
    fn fail(self, calendar: CalendarOutcome) -> CalendarOutcome {
        if matches!(calendar.outcome, "failed" | "superseded") {
            return calendar;
        }
        CalendarOutcome {
            outcome: "failed",
            reason: Some(format!(
                "an earlier placement's event could not be deleted from the calendar: {}",
                self.reason
            )),
            ..calendar
        }
    }
}

/// [`delete_retired`] for a staff member without a Google connection, and its own commit of
/// the session without them (best effort: a lost race leaves them for the next write), with
/// the change's version marked done (`settle`) once none is left. The first one that could
/// not be deleted is returned.
async fn forget_retired(
    deps: &Deps,
    ctx: &OutboundContext,
    settle: Option<u64>,
) -> Option<Undeleted> {
    let session = ctx.session.as_ref()?;
    let has_retired = session
        .retired
        .iter()
        .any(|r| r.provider == Provider::Google);
    if !has_retired {
        return None;
    }
    let (cleared, undeleted) = delete_retired(deps, ctx, &Step::NothingToDelete).await;
    let mut s = session.clone();
    s.retired.retain(|r| !cleared.contains(r));
    if let Some(v) = settle.filter(|_| undeleted.is_none()) {
        s.settle(v);
    }
    if s != *session {
        let mut writes = [OutboundWrite::Session(s)];
        if let Err(e) = deps.store.commit_outbound(&mut writes).await {
            tracing::debug!(session = %session.id, error = %e, "retired google events deleted, not yet cleared");
        }
    }
    undeleted
}

/// Why an event could not be deleted from a Google calendar.
#[derive(Debug, thiserror::Error)]
enum RemovalError {
    /// Google refused or failed the call.
    #[error(transparent)]
    Calendar(#[from] GoogleError),
    /// No call was made: credentials missing or unreadable, no client.
    #[error("{0}")]
    Setup(String),
    /// The connection could not be read.
    #[error("{0}")]
    Store(String),
}

impl RemovalError {
    /// Google refused for good ([`GoogleError::refused_for_good`]), or the credentials are
    /// missing or unreadable: no retry fares better until someone acts.
    fn refused_for_good(&self) -> bool {
        match self {
            RemovalError::Calendar(e) => e.refused_for_good(),
            RemovalError::Setup(_) => true,
            RemovalError::Store(_) => false,
        }
    }
}

/// Deletes `event_id` from `conn`'s calendar with the company's credentials; done when it
/// is deleted or already gone (or the connection names no calendar).
async fn delete_in(
    deps: &Deps,
    ctx: &OutboundContext,
    conn: &Connection,
    event_id: &str,
) -> std::result::Result<(), RemovalError> {
    let Some(calendar_id) = conn.calendar_id.as_deref() else {
        return Ok(());
    };
    let Some(record) = &ctx.credentials else {
        return Err(RemovalError::Setup(credentials::MISSING.into()));
    };
    let account =
        credentials::open(deps, record).map_err(|e| RemovalError::Setup(e.to_string()))?;
    let google = deps
        .google()
        .map_err(|e| RemovalError::Setup(e.to_string()))?;
    match google
        .delete_event(&account, &conn.staff_email, calendar_id, event_id, None)
        .await
    {
        Ok(()) | Err(GoogleError::NotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Deletes the event `old` maps, in the calendar of the connection it was written through.
/// Done when it is deleted or already gone, or when that connection no longer exists (its
/// deletion took its events' mappings with it).
async fn remove_elsewhere(
    deps: &Deps,
    ctx: &OutboundContext,
    old: &EventMapping,
) -> std::result::Result<(), RemovalError> {
    remove_from(
        deps,
        ctx,
        &old.company_id,
        &old.connection_id,
        &old.external_event_id,
    )
    .await?;
    tracing::info!(session = %old.session_id, "event removed from the previous staff member's google calendar");
    Ok(())
}

/// Deletes `event` from the calendar of `connection`. Done when it is deleted or already
/// gone, or when that connection no longer exists (its deletion took its events' mappings
/// with it).
async fn remove_from(
    deps: &Deps,
    ctx: &OutboundContext,
    company: &str,
    connection: &str,
    event: &str,
) -> std::result::Result<(), RemovalError> {
    let Some(conn) = deps
        .store
        .find_connection(company, connection)
        .await
        .map_err(|e| RemovalError::Store(e.to_string()))?
    else {
        return Ok(());
    };
    delete_in(deps, ctx, &conn, event).await
}

/// The Google calls for the session's state.
async fn google_step(
    deps: &Deps,
    ctx: &OutboundContext,
    conn: &Connection,
    session: &Session,
    change: &SessionChange,
) -> Result<Step> {
    match conn.status {
        ConnectionStatus::Pending => {
            return Ok(Step::Skipped(
                "the Google connection is still pending".into(),
            ))
        }
        ConnectionStatus::Disabled => {
            return Ok(Step::Skipped("the Google connection is disabled".into()))
        }
        ConnectionStatus::Active | ConnectionStatus::Error => {}
    }
    let Some(calendar_id) = conn.calendar_id.clone().filter(|c| !c.trim().is_empty()) else {
        return Ok(Step::Skipped(
            "the Google connection has no calendar id".into(),
        ));
    };
    if session.status == SessionStatus::PendingCancellation {
        return Ok(Step::Pending);
    }
    let Some(record) = &ctx.credentials else {
        return Ok(Step::Failed(credentials::MISSING.into()));
    };
    let account = credentials::open(deps, record)?;
    let google = deps.google()?;
    let target = Target {
        google,
        account: &account,
        subject: &conn.staff_email,
        calendar_id: &calendar_id,
    };
    // A mapping made through an older connection points into a calendar we may no longer
    // reach; only a mapping of this connection is written in place.
    let mapping = ctx.mapping.as_ref().filter(|m| m.connection_id == conn.id);
    // Unmapped: the id recorded with the intent for this placement (a session recorded
    // before ids per placement existed, or while the connection could not be written, falls
    // back to the id derived from the session alone).
    let event_id = mapping.map_or_else(
        || {
            session
                .google_event
                .clone()
                .unwrap_or_else(|| event_id_for(&session.company_id, &session.id))
        },
        |m| m.external_event_id.clone(),
    );
    Ok(match session.status {
        SessionStatus::Cancelled => target.delete(&event_id).await,
        _ => match mapping {
            None => target.create(deps, session, &event_id, change).await,
            Some(m) => target.update(deps, session, m, change).await,
        },
    })
}

/// One staff member's calendar, as the tenant's service account reaches it.
struct Target<'a> {
    google: &'a dyn GoogleApi,
    account: &'a ServiceAccount,
    subject: &'a str,
    calendar_id: &'a str,
}

impl Target<'_> {
    async fn delete(&self, event_id: &str) -> Step {
        match self
            .google
            .delete_event(self.account, self.subject, self.calendar_id, event_id, None)
            .await
        {
            Ok(()) => Step::Deleted,
            // Already deleted (410), or never made.
            Err(GoogleError::NotFound) => Step::NothingToDelete,
            Err(e) => Step::Failed(e.to_string()),
        }
    }

    /// Inserts the event with its own id; a taken id is ours (a retried create, or the event
    /// of a cancelled session booked again): it is read and written over, restored if it was
    /// deleted.
    async fn create(
        &self,
        deps: &Deps,
        session: &Session,
        event_id: &str,
        change: &SessionChange,
    ) -> Step {
        let body = event_body(session, event_id, None);
        match self
            .google
            .insert_event(self.account, self.subject, self.calendar_id, &body)
            .await
        {
            Ok(e) => Step::Wrote(Box::new(e), "created", false),
            Err(GoogleError::Duplicate) => self.overwrite(deps, session, event_id, change).await,
            Err(e) => Step::Failed(e.to_string()),
        }
    }

    /// Updates the mapped event if it is as we last wrote or read it (its etag); one the
    /// staff member changed since is read again and overwritten, unless they deleted it, or
    /// unless the stored session has moved past what this write carries (another change of
    /// it was written meanwhile: that one stands, [`Step::Superseded`]).
    async fn update(
        &self,
        deps: &Deps,
        session: &Session,
        m: &EventMapping,
        change: &SessionChange,
    ) -> Step {
        let event_id = &m.external_event_id;
        if let Some(etag) = m.change_key.as_deref() {
            let body = event_body(session, event_id, None);
            match self
                .google
                .update_event(
                    self.account,
                    self.subject,
                    self.calendar_id,
                    event_id,
                    Some(etag),
                    &body,
                )
                .await
            {
                Ok(e) => return Step::Wrote(Box::new(e), "updated", false),
                Err(GoogleError::PreconditionFailed) => {}
                Err(GoogleError::NotFound) => return Step::EventGone(None),
                Err(e) => return Step::Failed(e.to_string()),
            }
        }
        let current = match self.read(event_id).await {
            Ok(current) => current,
            Err(GoogleError::NotFound) => return Step::EventGone(None),
            Err(e) => return Step::Failed(e.to_string()),
        };
        if current.is_cancelled() {
            return Step::EventGone(None);
        }
        if crate::exchange::outbound::superseded(deps, change).await {
            return Step::Superseded;
        }
        let declined = current.self_response() == Some("declined");
        match self.write_over(session, event_id, &current).await {
            Ok(e) => Step::Wrote(Box::new(e), "updated", declined),
            Err(e) => Step::Failed(e.to_string()),
        }
    }

    /// The id is taken: it is this placement's own event (the id is chosen per placement and
    /// recorded before the insert), made by an earlier try whose answer was lost, or by a
    /// newer change of the session written meanwhile. Read, then written over - unless it is
    /// deleted: the staff member deleted it before any mapping knew it, and it is not
    /// brought back ([`Step::EventGone`]); or unless the stored session has moved past what
    /// this write carries: the newer change's event stands ([`Step::Superseded`]).
    async fn overwrite(
        &self,
        deps: &Deps,
        session: &Session,
        event_id: &str,
        change: &SessionChange,
    ) -> Step {
        let current = match self.read(event_id).await {
            Ok(current) => current,
            Err(e) => return Step::Failed(e.to_string()),
        };
        if current.is_cancelled() {
            return Step::EventGone(Some(Box::new(current)));
        }
        if crate::exchange::outbound::superseded(deps, change).await {
            return Step::Superseded;
        }
        let declined = current.self_response() == Some("declined");
        match self.write_over(session, event_id, &current).await {
            Ok(e) => Step::Wrote(Box::new(e), "created", declined),
            Err(e) => Step::Failed(e.to_string()),
        }
    }

    async fn read(&self, event_id: &str) -> std::result::Result<GoogleEvent, GoogleError> {
        self.google
            .get_event(self.account, self.subject, self.calendar_id, event_id)
            .await
    }

    /// A full update conditional on `current`'s etag, keeping its attendees.
    async fn write_over(
        &self,
        session: &Session,
        event_id: &str,
        current: &GoogleEvent,
    ) -> std::result::Result<GoogleEvent, GoogleError> {
        let body = event_body(session, event_id, current.attendees.clone());
        self.google
            .update_event(
                self.account,
                self.subject,
                self.calendar_id,
                event_id,
                current.etag.as_deref(),
                &body,
            )
            .await
    }
}

/// The event as the session says it should be.
pub fn event_body(
    session: &Session,
    event_id: &str,
    attendees: Option<Vec<super::api::Attendee>>,
) -> GoogleEventWrite {
    GoogleEventWrite {
        id: event_id.to_string(),
        summary: session.title.clone(),
        description: crate::calendar::event_description(session.client.as_ref()),
        location: session.location.clone(),
        start: GoogleDateTime::utc(session.start),
        end: GoogleDateTime::utc(session.end),
        transparency: "opaque".into(),
        status: Some("confirmed".into()),
        extended_properties: ExtendedProperties::session(
            &session.company_id,
            &session.id,
            &session.staff_id,
        ),
        attendees,
    }
}

/// The closing transaction for `step`, built from the freshest read; `settle`: the version
/// to record as done when the step leaves the calendar as the change asked.
fn closing_writes(
    ctx: &OutboundContext,
    change: &SessionChange,
    step: &Step,
    cleared: &[RetiredEvent],
    settle: Option<u64>,
    now: DateTime<Utc>,
) -> Vec<OutboundWrite> {
    let mut writes = Vec::new();
    let (Some(conn), Some(session)) = (&ctx.connection, &ctx.session) else {
        return writes;
    };
    // A gone event does not settle the version: its pending cancellation is started after
    // this commit, and if that fails, the change sent again must not be stale.
    let settles = !matches!(
        step,
        Step::Skipped(_) | Step::Failed(_) | Step::EventGone(_)
    );
    let mut s = session.clone();
    s.retired.retain(|r| !cleared.contains(r));
    if let Some(v) = settle.filter(|v| settles && session.calendar_version < Some(*v)) {
        s.settle(v);
    }
    if matches!(step, Step::Wrote(..) | Step::EventGone(Some(_))) {
        // The placement's event exists and is mapped now.
        s.google_event = None;
    }
    if matches!(step, Step::Wrote(..)) {
        s.forget_unsettled_after(change);
    }
    let rewrites_session = &s != session;
    if rewrites_session {
        writes.push(OutboundWrite::Session(s));
    }
    if let Step::Wrote(event, ..) | Step::EventGone(Some(event)) = step {
        // What the calendar shows now, as written (a write retried after a lost race is
        // recorded with the times it wrote, not the session's newer ones).
        let written = (
            event.start.as_ref().and_then(|t| t.to_utc(None)),
            event.end.as_ref().and_then(|t| t.to_utc(None)),
        );
        let (last_start, last_end) = match written {
            (Some(start), Some(end)) => (start, end),
            _ => (session.start, session.end),
        };
        writes.push(OutboundWrite::Mapping {
            next: EventMapping {
                company_id: session.company_id.clone(),
                session_id: session.id.clone(),
                connection_id: conn.id.clone(),
                provider: Provider::Google,
                external_event_id: event.id.clone(),
                // A deleted event found is mapped without its etag: its cancellation is the
                // staff member's, not ours, so a sync listing it is no echo, and the next
                // write reads it (and finds it gone) rather than writing over it with
                // `If-Match` (which Google accepts, restoring it: review 8, finding 3).
                change_key: match step {
                    Step::EventGone(_) => None,
                    _ => event.etag.clone(),
                },
                last_start,
                last_end,
                updated_at: now,
                version: ctx.mapping.as_ref().map_or(0, |m| m.version),
                modified: event.updated_at(),
            },
            previous: ctx.mapping.clone(),
        });
    }
    // The connection's status follows the last write (only written when it changes, so
    // writes do not contend with the sync for the connection record).
    let failed = match step {
        Step::Failed(reason) => Some(format!("outbound: {reason}")),
        _ => None,
    };
    let mut c = conn.clone();
    match (failed, c.status) {
        (Some(error), ConnectionStatus::Active | ConnectionStatus::Error)
            if c.last_error.as_ref() != Some(&error) =>
        {
            c.status = ConnectionStatus::Error;
            c.last_error = Some(error);
            writes.push(OutboundWrite::Connection(c));
        }
        (None, ConnectionStatus::Error) if matches!(step, Step::Wrote(..) | Step::Deleted) => {
            c.status = ConnectionStatus::Active;
            c.last_error = None;
            writes.push(OutboundWrite::Connection(c));
        }
        // A mapping is recorded only while its connection exists (a write that finishes
        // after its connection was deleted records none through it).
        _ if writes
            .iter()
            .any(|w| matches!(w, OutboundWrite::Mapping { .. })) =>
        {
            writes.push(OutboundWrite::ConnectionExists(c));
        }
        _ => {}
    }
    if !rewrites_session && (!writes.is_empty() || matches!(step, Step::EventGone(_))) {
        // Not rewritten: still conditioned on it, so a newer change's intent (or a sync's
        // command) since the read makes this commit lose, re-read and check its placement
        // ([`still_ours`]); a gone event's pending cancellation too.
        writes.insert(0, OutboundWrite::SessionUnchanged(session.clone()));
    }
    writes
}

fn outcome_of(conn: &Connection, step: &Step) -> CalendarOutcome {
    let (outcome, event_id, reason) = match step {
        Step::Skipped(r) => ("skipped", None, Some(r.clone())),
        Step::Pending => (
            "skipped",
            None,
            Some(
                "the staff member deleted the event; the booking's cancellation is pending".into(),
            ),
        ),
        Step::EventGone(_) => (
            "skipped",
            None,
            Some(
                "the event was deleted in Google Calendar; the booking's cancellation is pending"
                    .into(),
            ),
        ),
        Step::Wrote(e, what, _) => (*what, Some(e.id.clone()), None),
        Step::Deleted => ("deleted", None, None),
        Step::Superseded => (
            "superseded",
            None,
            Some("a newer change of the session was written to the calendar meanwhile".into()),
        ),
        Step::NothingToDelete => ("no_event", None, None),
        Step::Failed(r) => ("failed", None, Some(r.clone())),
    };
    CalendarOutcome {
        connection_id: conn.id.clone(),
        provider: Provider::Google,
        outcome,
        event_id,
        reason,
    }
}
