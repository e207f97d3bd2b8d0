//! Google inbound reconciliation: what a staff member did in Google Calendar to one of the
//! platform's events comes back to the booking, through the same plan and engine as
//! Exchange ([`crate::calendar::engine`]). Run by the sync ([`super::sync`]) on each page.
//!
//! - A mapped event `cancelled` (deleted; Google keeps it, so the removal is certain and
//!   needs no confirming read) -> pending cancellation; back to `confirmed` during the grace
//!   (restored from the bin) -> restore; moved -> reschedule, or rejected and written back
//!   on conflict; the staff member's own `responseStatus` `declined` -> decline flag.
//! - De-looping: the mapping holds the etag of our last write (or read); an event that still
//!   carries it and agrees with the session is an echo. The platform's tag recognises an
//!   event of ours whose mapping was never recorded (a create whose answer was lost): it is
//!   adopted only when it is beyond doubt the session's current placement in its owner's
//!   calendar (the id recorded with the intent), and deleted only when its booking is
//!   cancelled (see `adopt`).
//! - The platform's events never become availability overrides.

use async_trait::async_trait;

use super::api::{Attendee, GoogleApi, GoogleError, GoogleEvent, ServiceAccount};
use super::{credentials, outbound};
use crate::booking::ORIGIN_GOOGLE_INBOUND;
use crate::calendar::engine::{self, EventWriter, Failure, Reconciled};
use crate::deps::Deps;
use crate::model::{Connection, EventMapping, Provider, Session, SessionStatus};
use crate::reconcile::{EventSnapshot, SnapshotState};
use crate::{Error, Result};

/// A Google event reduced to what reconciliation reads (`zone`: the calendar's, for
/// all-day events). `None` when a live event's times cannot be read.
pub fn snapshot(e: &GoogleEvent, zone: Option<&str>) -> Option<EventSnapshot> {
    let state = if e.is_cancelled() {
        SnapshotState::Removed
    } else {
        SnapshotState::Live {
            start: e.start.as_ref()?.to_utc(zone)?,
            end: e.end.as_ref()?.to_utc(zone)?,
            cancelled: false,
            declined: e.self_response() == Some("declined"),
        }
    };
    Some(EventSnapshot {
        event_id: e.id.clone(),
        change_key: e.etag.clone(),
        state,
        modified: e.updated_at(),
    })
}

/// One staff member's calendar as the tenant's service account reaches it: Google's writes
/// to one of the platform's events, for the calendar seam's engine.
pub struct GoogleEventWriter<'a> {
    pub google: &'a dyn GoogleApi,
    pub account: &'a ServiceAccount,
    pub subject: &'a str,
    pub calendar_id: &'a str,
    /// The event's attendees as last read: a full update keeps them (the staff member's
    /// answer is among them).
    pub attendees: Option<Vec<Attendee>>,
}

#[async_trait]
impl EventWriter for GoogleEventWriter<'_> {
    type Error = GoogleError;

    fn origin(&self) -> &'static str {
        ORIGIN_GOOGLE_INBOUND
    }

    async fn write_session(
        &self,
        mapping: &EventMapping,
        snap: &EventSnapshot,
        session: &Session,
        _note: &str,
    ) -> std::result::Result<Option<engine::Written>, GoogleError> {
        let body =
            outbound::event_body(session, &mapping.external_event_id, self.attendees.clone());
        match self
            .google
            .update_event(
                self.account,
                self.subject,
                self.calendar_id,
                &mapping.external_event_id,
                snap.change_key.as_deref(),
                &body,
            )
            .await
        {
            Ok(written) => Ok(Some(engine::Written {
                change_key: written.etag.clone(),
                modified: written.updated_at(),
            })),
            Err(GoogleError::PreconditionFailed) | Err(GoogleError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete_event(
        &self,
        mapping: &EventMapping,
    ) -> std::result::Result<crate::calendar::engine::Deleted, GoogleError> {
        match self
            .google
            .delete_event(
                self.account,
                self.subject,
                self.calendar_id,
                &mapping.external_event_id,
                None,
            )
            .await
        {
            Ok(()) => Ok(crate::calendar::engine::Deleted::Now),
            Err(GoogleError::NotFound) => Ok(crate::calendar::engine::Deleted::AlreadyGone),
            Err(e) => Err(e),
        }
    }
}

/// Reconciles the platform's events on one page of a sync (mapped, or tagged and adopted).
/// Returns the ids of the page's events that are the platform's (never overrides).
pub async fn reconcile_page(
    deps: &Deps,
    conn: &Connection,
    account: &ServiceAccount,
    items: &[GoogleEvent],
    zone: Option<&str>,
) -> std::result::Result<(Reconciled, Vec<String>), Failure<GoogleError>> {
    let mut done = Reconciled::default();
    let mut ours = Vec::new();
    // The platform's events carry its tag; a deleted one may come back from an incremental
    // sync as its id and status only. A page with neither costs no read.
    if !items
        .iter()
        .any(|e| e.is_platform_event() || e.is_cancelled())
    {
        return Ok((done, ours));
    }
    let ids: Vec<String> = items.iter().map(|e| e.id.clone()).collect();
    let (mappings, mut sessions) = engine::page_state(deps, conn, &ids).await?;
    if mappings.is_empty() && !items.iter().any(GoogleEvent::is_platform_event) {
        return Ok((done, ours));
    }
    let google = deps.google()?;
    let calendar_id = conn.calendar_id.clone().unwrap_or_default();
    for event in items {
        let mapping = match mappings.get(&event.id) {
            Some(m) => m.clone(),
            None if event.is_platform_event() => {
                // Ours whether adopted or not: never an availability override.
                ours.push(event.id.clone());
                match adopt(deps, conn, account, event, zone).await? {
                    Some((m, s)) => {
                        sessions.insert(s.id.clone(), s);
                        m
                    }
                    None => continue,
                }
            }
            None => continue,
        };
        if mappings.contains_key(&event.id) {
            ours.push(event.id.clone());
        }
        let Some(session) = sessions.get_mut(&mapping.session_id) else {
            continue;
        };
        let Some(snap) = snapshot(event, zone) else {
            tracing::warn!(event = %event.id, "google event with unreadable times skipped");
            continue;
        };
        let writer = GoogleEventWriter {
            google,
            account,
            subject: &conn.staff_email,
            calendar_id: &calendar_id,
            attendees: event.attendees.clone(),
        };
        let r = engine::reconcile_event(deps, &writer, &conn.staff_id, &mapping, &snap, session)
            .await?;
        done.commands += r.commands;
        done.calendar_writes += r.calendar_writes;
    }
    Ok((done, ours))
}

/// After a full listing: the connection's mapped events that `listed` does not hold (all of
/// them when `None`) are read one by one and reconciled, for sessions not over a day ago
/// (cancelled ones included: a restore of their event is deleted again). A deleted event
/// (404/410, or `cancelled`) plans a pending cancellation for a confirmed session. All-day
/// events are read in `calendar_zone`, as the listing's pages read them (a single event's
/// read does not name the calendar's zone).
///
/// **Bounded.** The events are read in id order from after `position` (the last one done,
/// kept in the sync's checkpoint between invocations), and `position` moves past each one
/// reconciled, so a caller that stops (an error, its time) resumes there. Before each read
/// after the first, `out_of_time` is asked: when it says so, the reading stops and
/// `Ok(false)` says more remain. At least one event is read per call, so every invocation
/// makes progress. `Ok(true)`: all were read. An event Google refuses for good is passed
/// over (logged), so one such event cannot stop the sync at itself on every try.
pub async fn reconcile_unlisted(
    deps: &Deps,
    conn: &Connection,
    account: &ServiceAccount,
    unlisted: UnlistedScope<'_>,
    position: &mut Option<String>,
    out_of_time: &(dyn Fn() -> bool + Sync),
    done: &mut Reconciled,
) -> std::result::Result<bool, Failure<GoogleError>> {
    let UnlistedScope {
        listed,
        calendar_zone,
    } = unlisted;
    let history = deps.store.now() - chrono::Duration::days(1);
    let mut unlisted: Vec<EventMapping> = deps
        .store
        .mappings_for_connection(&conn.company_id, &conn.id)
        .await?
        .into_iter()
        // History is not read (as in Exchange's `reconcile_vanished`): a mapping whose event
        // last ended over a day ago belongs to a session that is over.
        .filter(|m| m.last_end >= history)
        .filter(|m| listed.is_none_or(|l| !l.contains(&m.external_event_id)))
        .filter(|m| {
            position
                .as_deref()
                .is_none_or(|after| m.external_event_id.as_str() > after)
        })
        .collect();
    unlisted.sort_by(|a, b| a.external_event_id.cmp(&b.external_event_id));
    if unlisted.is_empty() {
        return Ok(true);
    }
    let ids: Vec<String> = unlisted.iter().map(|m| m.session_id.clone()).collect();
    let mut sessions = deps.store.get_sessions(&conn.company_id, &ids).await?;
    let google = deps.google()?;
    let calendar_id = conn.calendar_id.clone().unwrap_or_default();
    for (read, mapping) in unlisted.into_iter().enumerate() {
        if read > 0 && out_of_time() {
            return Ok(false);
        }
        let event_id = mapping.external_event_id.clone();
        let Some(session) = sessions.get_mut(&mapping.session_id) else {
            *position = Some(event_id);
            continue;
        };
        if session.end < history {
            *position = Some(event_id);
            continue;
        }
        let (snap, attendees) = match google
            .get_event(
                account,
                &conn.staff_email,
                &calendar_id,
                &mapping.external_event_id,
            )
            .await
        {
            Ok(e) => match snapshot(&e, calendar_zone) {
                Some(snap) => (snap, e.attendees.clone()),
                None => {
                    *position = Some(event_id);
                    continue;
                }
            },
            Err(GoogleError::NotFound) => (
                EventSnapshot::removed(mapping.external_event_id.clone()),
                None,
            ),
            Err(e) if refused_for_this_event(&e) => {
                skip_refused(&event_id, &e);
                *position = Some(event_id);
                continue;
            }
            Err(e) => return Err(Failure::Calendar(e)),
        };
        let writer = GoogleEventWriter {
            google,
            account,
            subject: &conn.staff_email,
            calendar_id: &calendar_id,
            attendees,
        };
        match engine::reconcile_event(deps, &writer, &conn.staff_id, &mapping, &snap, session).await
        {
            Ok(r) => {
                done.commands += r.commands;
                done.calendar_writes += r.calendar_writes;
            }
            Err(Failure::Calendar(e)) if refused_for_this_event(&e) => skip_refused(&event_id, &e),
            Err(e) => return Err(e),
        }
        *position = Some(event_id);
    }
    Ok(true)
}

/// Google refused something about this one event for good (a 4xx other than a timeout, a
/// conflict, a stale etag or rate limiting): retrying will not change it, and the events
/// after it must not wait on it (the sync would stop there on every try). Not the account's
/// refusal, which is every event's and the connection's error.
fn refused_for_this_event(e: &GoogleError) -> bool {
    e.refused_for_good() && !matches!(e, GoogleError::Auth(_))
}

fn skip_refused(event: &str, e: &GoogleError) {
    tracing::warn!(event, error = %e, "google refused a mapped event's read or write for good; left to its next change");
}

/// Which mapped events [`reconcile_unlisted`] reads, and how.
#[derive(Debug, Clone, Copy)]
pub struct UnlistedScope<'a> {
    /// The platform's events the listing showed (`None`: not known, every one is read).
    pub listed: Option<&'a std::collections::HashSet<String>>,
    /// The calendar's zone, for all-day events.
    pub calendar_zone: Option<&'a str>,
}

/// One of our events without a mapping in this connection (tagged with a session of this
/// company): a create whose closing commit was lost, one made while this page was read, or
/// the events of a connection deleted and connected again (its mappings went with it).
///
/// It is mapped (as not yet seen, so it is reconciled) only when it is the session's event
/// here beyond doubt: the session is this calendar owner's and not cancelled, has no Google
/// event mapped anywhere, and no create of another placement is owed (`google_event` names
/// this event or nothing). A live one of a cancelled session in its owner's calendar is
/// deleted. So is one that is neither the session's mapped event (which another connection
/// to the same calendar, a shared one, sees unmapped: it is left alone) nor the placement a
/// create is about to map (`google_event`): what an earlier placement left behind (the
/// session given to another staff member or booked again; an old event restored).
/// Deletes an unmapped event of ours from `conn`'s calendar (done if it is gone already).
async fn delete_unmapped(
    deps: &Deps,
    conn: &Connection,
    account: &ServiceAccount,
    event: &GoogleEvent,
) -> std::result::Result<(), Failure<GoogleError>> {
    let google = deps.google()?;
    let calendar_id = conn.calendar_id.clone().unwrap_or_default();
    match google
        .delete_event(account, &conn.staff_email, &calendar_id, &event.id, None)
        .await
    {
        Ok(()) | Err(GoogleError::NotFound) => Ok(()),
        Err(e) => Err(Failure::Calendar(e)),
    }
}

async fn adopt(
    deps: &Deps,
    conn: &Connection,
    account: &ServiceAccount,
    event: &GoogleEvent,
    zone: Option<&str>,
) -> std::result::Result<Option<(EventMapping, Session)>, Failure<GoogleError>> {
    let Some((company, session_id)) = event.session_tag().and_then(|t| t.split_once('/')) else {
        return Ok(None);
    };
    if company != conn.company_id {
        return Ok(None);
    }
    let Some((start, end)) = snapshot(event, zone).and_then(|s| s.times()) else {
        return Ok(None);
    };
    let Some(session) = deps.store.find_session(company, session_id).await? else {
        return Ok(None);
    };
    if session.status == SessionStatus::Cancelled && session.staff_id == conn.staff_id {
        // A live event of a cancelled booking in its owner's calendar (a create whose answer
        // was lost, deleted by the staff member and restored after the cancellation): it
        // goes, as a mapped one would.
        delete_unmapped(deps, conn, account, event).await?;
        tracing::info!(session = %session_id, event = %event.id, "unmapped event of a cancelled booking deleted");
        return Ok(None);
    }
    let ours_here = session.staff_id == conn.staff_id
        && session
            .google_event
            .as_deref()
            .is_none_or(|id| id == event.id);
    let mapped = deps
        .store
        .mapping_for_session(company, Provider::Google, session_id)
        .await?;
    let retired = session
        .retired
        .iter()
        .any(|r| r.provider == Provider::Google && r.event_id == event.id);
    if let Some(mut m) = mapped
        .clone()
        .filter(|m| !retired && restores_pending(&session, conn, m, event))
    {
        // The staff member restored a copy of the booking from the bin while its
        // cancellation (the deletion of its mapped event here) is pending: the bin shows the
        // booking's events alike (an earlier placement's, the one just deleted), and either
        // one restored brings the booking back. It becomes the session's event in place of
        // the deleted one; its times as found are taken as where the calendar last showed
        // it, so the plan restores the booking and puts the event at the booked times (a
        // copy's old times are no move).
        m.external_event_id = event.id.clone();
        m.change_key = None;
        m.last_start = start;
        m.last_end = end;
        m.modified = None;
        m.updated_at = deps.store.now();
        return match deps.store.save_mapping(&mut m).await {
            Ok(()) => {
                tracing::info!(session = %session_id, event = %event.id, "a restored copy of a booking whose cancellation is pending: now its event");
                Ok(Some((m, session)))
            }
            // Another sync changed the mapping meanwhile: the round fails and is tried again
            // from the same sync token, so the event is listed (and judged) again.
            Err(e) => Err(e.into()),
        };
    }
    if retired || !ours_here || mapped.is_some() {
        // Not to be adopted. It goes when it is known to be what an earlier placement left
        // (the session given to another staff member, booked again, or given back; an old
        // event restored from the bin, or inserted by a write that was overtaken): the
        // session retired it, maps another event or is about to create another, or it was
        // written for this calendar's owner and the session is someone else's now. Else it
        // stays: in a calendar two staff members share, the other one's connection sees the
        // session's own event unmapped (even with the session's mapping gone with its
        // connection).
        let pending = session.google_event.as_deref() == Some(event.id.as_str());
        let the_mapped =
            mapped.as_ref().map(|m| m.external_event_id.as_str()) == Some(event.id.as_str());
        let replaced = mapped.is_some() || session.google_event.is_some();
        let left_here =
            event.staff_tag() == Some(conn.staff_id.as_str()) && session.staff_id != conn.staff_id;
        if !pending && !the_mapped && !event.is_cancelled() && (retired || replaced || left_here) {
            delete_unmapped(deps, conn, account, event).await?;
            tracing::info!(session = %session_id, event = %event.id, "event of an earlier placement deleted");
        }
        return Ok(None);
    }
    let mut mapping = EventMapping {
        company_id: company.to_string(),
        session_id: session_id.to_string(),
        connection_id: conn.id.clone(),
        provider: Provider::Google,
        external_event_id: event.id.clone(),
        change_key: None,
        last_start: start,
        last_end: end,
        updated_at: deps.store.now(),
        version: 0,
        modified: None,
    };
    match deps.store.save_mapping(&mut mapping).await {
        Ok(()) => {}
        // The create (or another sync) mapped it meanwhile.
        Err(Error::Duplicate { .. }) | Err(Error::Conflict { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    tracing::info!(session = %session_id, event = %event.id, "unmapped platform event adopted");
    Ok(Some((mapping, session)))
}

/// Whether the live unmapped `event` of `session`, in `conn`'s calendar, is a copy of the
/// booking restored while its cancellation is pending: the session is its staff member's
/// (`conn`'s), its cancellation was started by a Google deletion, and `mapped`, the deleted
/// event, is in this calendar too. (The caller also rules out a retired event: one whose
/// deletion failed never left the calendar, so seeing it live is no restore; it goes.)
fn restores_pending(
    session: &Session,
    conn: &Connection,
    mapped: &EventMapping,
    event: &GoogleEvent,
) -> bool {
    session.status == SessionStatus::PendingCancellation
        && session.staff_id == conn.staff_id
        && session
            .pending
            .as_ref()
            .and_then(|p| crate::booking::origin_provider(&p.origin))
            == Some(Provider::Google)
        && mapped.connection_id == conn.id
        && mapped.external_event_id != event.id
        && !event.is_cancelled()
}

/// Whether `event`, found deleted by the commit of `session`'s pending cancellation, was
/// deleted after that cancellation began and less than a grace ago: restored meanwhile (no
/// sync saw it) and deleted again. That deletion gets its grace too, so the commit waits
/// (the pending cancellation stays due; the next sweep reads the event again). Google stamps
/// a deletion in the event's `updated` (simulation seed 790533: the old cancellation was
/// committed nine minutes after the second deletion, which the staff member then undid).
fn deleted_again_within_grace(deps: &Deps, session: &Session, event: &GoogleEvent) -> bool {
    let (Some(pending), Some(deleted)) = (session.pending.as_ref(), event.updated_at()) else {
        return false;
    };
    let grace = deps.config.pending_grace();
    let waits = deleted > pending.created_at && deps.store.now() < deleted + grace;
    if waits {
        tracing::info!(session = %session.id, event = %event.id, "the event was restored and deleted again; the cancellation waits for that deletion's grace");
    }
    waits
}

/// Before a cancellation caused by a Google deletion is committed: reads the event, and if it
/// is back (restored, its push lost or still queued), reconciles the session with it and
/// says so (an all-day event read in the calendar's zone that the last sync stored with its
/// cursor). A missing mapping, connection or event means it is gone; Google being
/// unreachable, or a live event whose times cannot be read, is an error (the commit waits
/// for the next sweep).
pub async fn event_is_back(deps: &Deps, session: &mut Session) -> Result<bool> {
    let Some((mapping, conn)) = engine::mapped_connection(deps, session, Provider::Google).await?
    else {
        return Ok(false);
    };
    let Some(account) = credentials::load(deps, &session.company_id).await? else {
        return Ok(false);
    };
    let google = deps.google()?;
    let calendar_id = conn.calendar_id.clone().unwrap_or_default();
    let event = match google
        .get_event(
            &account,
            &conn.staff_email,
            &calendar_id,
            &mapping.external_event_id,
        )
        .await
    {
        Ok(e) => e,
        Err(GoogleError::NotFound) => return Ok(false),
        Err(e) => return Err(Error::Unavailable(e.to_string())),
    };
    if event.is_cancelled() {
        return Ok(deleted_again_within_grace(deps, session, &event));
    }
    let zone = deps
        .store
        .get_cursor(&conn.company_id, &conn.id)
        .await?
        .and_then(|c| c.calendar_time_zone);
    // A live event is never taken for gone: when its times cannot be read (an all-day event
    // before any sync stored the calendar's zone, a zone or date this build cannot read),
    // the commit waits for the next sweep.
    let unreadable = || {
        Error::Unavailable(format!(
            "the times of google event {} cannot be read yet",
            event.id
        ))
    };
    if event.is_all_day() && zone.is_none() {
        return Err(unreadable());
    }
    let Some(snap) = snapshot(&event, zone.as_deref()) else {
        return Err(unreadable());
    };
    let writer = GoogleEventWriter {
        google,
        account: &account,
        subject: &conn.staff_email,
        calendar_id: &calendar_id,
        attendees: event.attendees.clone(),
    };
    match engine::reconcile_event(deps, &writer, &conn.staff_id, &mapping, &snap, session).await {
        Ok(_) => Ok(session.status != SessionStatus::PendingCancellation),
        Err(Failure::Store(e)) => Err(e),
        Err(Failure::Calendar(e)) => Err(Error::Unavailable(e.to_string())),
    }
}
