//! Exchange inbound: one delta round for one connection, run from the inbound queue.
//!
//! A round follows `calendarView/delta` from the stored `deltaLink` (or starts a full sync
//! over [`WINDOW_PAST_DAYS`]..[`WINDOW_FUTURE_DAYS`] around now) through every `nextLink`,
//! making each page's effects durable before the next, and stores the new `deltaLink` only
//! at the end, with a versioned write (DESIGN-NOTES 1.2): a crash replays pages, never skips
//! them, and every effect is idempotent. A 410 (`syncStateNotFound`) clears the cursor and
//! runs a full sync, after which overrides whose events are gone are removed.
//!
//! Per page: one batch read of the mappings of its events, one batch read of the mapped
//! sessions, batched override writes; the platform's own events (mapped, or carrying our
//! `transactionId`) never become overrides. A mapped event whose change key is the one we
//! last wrote is our echo and is skipped; any other change is planned
//! ([`crate::reconcile::plan`]) against the session and carried out by the booking command
//! engine with origin `exchange-inbound`. A move onto another session or busy time is
//! rejected by writing the event back to the booked time (our write, recorded in the
//! mapping, so it does not echo).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::graph::{
    CalendarRef, DeltaRequest, EventBody, EventWrite, GraphDateTime, GraphError, GraphEvent,
};
use super::notifications::SyncRequest;
use super::outbound::TRANSACTION_PREFIX;
use super::subscriptions::{self, calendar_of};
use super::{credentials, GraphCredentials};
use crate::booking::{self, Command, ORIGIN_EXCHANGE_INBOUND};
use crate::deps::Deps;
use crate::model::availability::OverrideRef;
use crate::model::{
    AvailabilityOverride, Connection, ConnectionStatus, CursorToken, DeltaCursor, EventMapping,
    Provider, Session, SessionStatus,
};
use crate::reconcile::{self, EventSnapshot, PlanStep, SnapshotState};
use crate::{Error, Result};

/// The window a full sync reads: from a day back (sessions in progress) to half a year ahead.
pub const WINDOW_PAST_DAYS: i64 = 1;
pub const WINDOW_FUTURE_DAYS: i64 = 180;
/// Pages per round at most: a bound on one message's work (Graph pages hold up to 100).
pub const MAX_PAGES: usize = 500;

/// What a round did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoundReport {
    pub pages: usize,
    pub events: usize,
    /// Mapped events whose change key was our own write.
    pub echoes: usize,
    /// Booking commands applied.
    pub commands: usize,
    pub overrides_upserted: usize,
    pub overrides_removed: usize,
    /// The round started over after a 410.
    pub resynced: bool,
    /// Why nothing was done, when nothing was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

fn skipped(reason: impl Into<String>) -> RoundReport {
    RoundReport {
        skipped: Some(reason.into()),
        ..Default::default()
    }
}

/// Handles one queued sync request: lifecycle work first, then a delta round.
pub async fn handle(deps: &Deps, req: &SyncRequest) -> Result<RoundReport> {
    let mut conn = match deps
        .store
        .get_connection(&req.company_id, &req.connection_id)
        .await
    {
        Ok(c) => c,
        Err(Error::NotFound { .. }) => return Ok(skipped("the connection no longer exists")),
        Err(e) => return Err(e),
    };
    if conn.provider != Provider::Exchange || conn.status == ConnectionStatus::Disabled {
        return Ok(skipped(
            "the connection is not an enabled Exchange connection",
        ));
    }
    match req.reason.as_str() {
        "reauthorizationRequired" => {
            subscriptions::renew(deps, &mut conn).await?;
        }
        "subscriptionRemoved" => {
            // Graph dropped it: a new one first (changes from now on are notified), then
            // the delta round below catches up on what happened meanwhile.
            conn.channel = None;
            subscriptions::subscribe(deps, &mut conn).await?;
        }
        _ => {}
    }
    let Some(creds) = credentials::load(deps, &conn.company_id).await? else {
        deps.store
            .record_sync(&mut conn, Some(credentials::MISSING.to_string()))
            .await?;
        return Ok(skipped(credentials::MISSING));
    };
    match round(deps, &conn, &creds).await {
        Ok(report) => {
            deps.store.record_sync(&mut conn, None).await?;
            Ok(report)
        }
        Err(RoundError::Graph(e)) => {
            deps.store
                .record_sync(&mut conn, Some(format!("inbound sync: {e}")))
                .await?;
            match e {
                // Waiting helps: the queue offers the message again.
                GraphError::Throttled { .. } | GraphError::Unavailable(_) => {
                    Err(super::provider_error(&e))
                }
                // The tenant must act; retrying the message would not help.
                _ => Ok(skipped(e.to_string())),
            }
        }
        Err(RoundError::Store(e)) => Err(e),
    }
}

enum RoundError {
    Graph(GraphError),
    Store(Error),
}

impl From<Error> for RoundError {
    fn from(e: Error) -> Self {
        RoundError::Store(e)
    }
}

async fn round(
    deps: &Deps,
    conn: &Connection,
    creds: &GraphCredentials,
) -> std::result::Result<RoundReport, RoundError> {
    let graph = deps.graph()?;
    let mut report = RoundReport::default();
    let mut cursor = deps.store.get_cursor(&conn.company_id, &conn.id).await?;
    let calendar = calendar_of(conn);
    let mut request = start_request(deps, &calendar, cursor.as_ref());
    let mut full = !matches!(request, DeltaRequest::Link(_));
    let mut seen: HashSet<String> = HashSet::new();
    let mut started = deps.store.now();
    loop {
        if report.pages >= MAX_PAGES {
            // Resume from the last stored cursor next time; nothing is skipped.
            tracing::warn!(connection = %conn.id, "delta round stopped at the page limit");
            return Ok(report);
        }
        let page = match graph.delta_page(creds, &request).await {
            Ok(p) => p,
            Err(GraphError::SyncStateNotFound) if !report.resynced => {
                tracing::info!(connection = %conn.id, "delta token expired; full resync");
                deps.store.clear_cursor(&conn.company_id, &conn.id).await?;
                cursor = None;
                report.resynced = true;
                full = true;
                seen.clear();
                started = deps.store.now();
                request = start_request(deps, &calendar, None);
                continue;
            }
            Err(e) => return Err(RoundError::Graph(e)),
        };
        report.pages += 1;
        report.events += page.events.len();
        if full {
            seen.extend(
                page.events
                    .iter()
                    .filter(|e| e.removed.is_none())
                    .map(|e| e.id.clone()),
            );
        }
        apply_page(deps, conn, creds, &calendar, &page.events, &mut report).await?;
        match (page.next_link, page.delta_link) {
            (Some(next), _) => request = DeltaRequest::Link(next),
            (None, Some(delta)) => {
                if full {
                    remove_vanished(deps, conn, &seen, &mut report).await?;
                    reconcile_vanished(deps, conn, creds, &calendar, &seen, started, &mut report)
                        .await?;
                }
                let mut next = DeltaCursor {
                    company_id: conn.company_id.clone(),
                    connection_id: conn.id.clone(),
                    token: CursorToken::GraphDeltaLink(delta),
                    updated_at: deps.store.now(),
                    version: cursor.as_ref().map_or(0, |c| c.version),
                };
                match deps.store.save_cursor(&mut next).await {
                    Ok(()) => {}
                    // Another round of this connection got there first: its cursor is as
                    // good as ours (both rounds' effects are durable and idempotent).
                    Err(Error::Conflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                return Ok(report);
            }
            (None, None) => {
                return Err(RoundError::Graph(GraphError::Rejected {
                    status: 200,
                    code: "no_link".into(),
                    message: "a delta page with neither nextLink nor deltaLink".into(),
                }))
            }
        }
    }
}

fn start_request(
    deps: &Deps,
    calendar: &CalendarRef,
    cursor: Option<&DeltaCursor>,
) -> DeltaRequest {
    match cursor.map(|c| &c.token) {
        Some(CursorToken::GraphDeltaLink(link)) => DeltaRequest::Link(link.clone()),
        _ => {
            let now = deps.store.now();
            DeltaRequest::Start {
                calendar: calendar.clone(),
                from: now - Duration::days(WINDOW_PAST_DAYS),
                to: now + Duration::days(WINDOW_FUTURE_DAYS),
            }
        }
    }
}

/// The snapshot of a Graph event; `None` when its times cannot be read.
pub fn snapshot(e: &GraphEvent) -> Option<EventSnapshot> {
    let state = if e.removed.is_some() {
        SnapshotState::Removed
    } else {
        let start = e.start.as_ref()?.to_utc()?;
        let end = e.end.as_ref()?.to_utc()?;
        SnapshotState::Live {
            start,
            end,
            cancelled: e.is_cancelled.unwrap_or(false),
            declined: e
                .response_status
                .as_ref()
                .and_then(|r| r.response.as_deref())
                .is_some_and(|r| r.eq_ignore_ascii_case("declined")),
        }
    };
    Some(EventSnapshot {
        event_id: e.id.clone(),
        change_key: e.change_key.clone(),
        state,
    })
}

/// Busy for availability: `busy`, `oof`, `tentative`, `workingElsewhere` (any case), and
/// not cancelled. `free` and `unknown` are not.
pub fn blocks_time(e: &GraphEvent) -> bool {
    let busy = e.show_as.as_deref().is_some_and(|s| {
        ["busy", "oof", "tentative", "workingelsewhere"].contains(&s.to_ascii_lowercase().as_str())
    });
    busy && e.removed.is_none() && !e.is_cancelled.unwrap_or(false)
}

async fn apply_page(
    deps: &Deps,
    conn: &Connection,
    creds: &GraphCredentials,
    calendar: &CalendarRef,
    events: &[GraphEvent],
    report: &mut RoundReport,
) -> Result<()> {
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let mappings: HashMap<String, EventMapping> = deps
        .store
        .mappings_for_events(&conn.company_id, &conn.id, &ids)
        .await?
        .into_iter()
        .map(|m| (m.external_event_id.clone(), m))
        .collect();
    let session_ids: Vec<String> = mappings.values().map(|m| m.session_id.clone()).collect();
    let mut sessions: HashMap<String, Session> = if session_ids.is_empty() {
        HashMap::new()
    } else {
        deps.store
            .get_sessions(&conn.company_id, &session_ids)
            .await?
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect()
    };
    let mut upserts = Vec::new();
    let mut removals = Vec::new();
    let now = deps.store.now();
    for event in events {
        if let Some(mapping) = mappings.get(&event.id) {
            // The platform's own event: reconciled against its session, never an override.
            let Some(session) = sessions.get_mut(&mapping.session_id) else {
                continue;
            };
            let Some(snap) = snapshot(event) else {
                tracing::warn!(event = %event.id, "graph event with unreadable times skipped");
                continue;
            };
            if snap.change_key.is_some() && snap.change_key == mapping.change_key {
                report.echoes += 1;
                continue;
            }
            let steps = reconcile::plan(&snap, mapping, session);
            for step in steps {
                if carry_out(deps, creds, calendar, mapping, &snap, session, &step).await? {
                    report.commands += 1;
                }
            }
            continue;
        }
        let ours = event
            .transaction_id
            .as_deref()
            .is_some_and(|t| t.starts_with(TRANSACTION_PREFIX));
        if ours {
            continue;
        }
        let reference = OverrideRef {
            company_id: conn.company_id.clone(),
            staff_id: conn.staff_id.clone(),
            connection_id: conn.id.clone(),
            external_event_id: event.id.clone(),
        };
        match (blocks_time(event), snapshot(event).map(|s| s.state)) {
            (true, Some(SnapshotState::Live { start, end, .. })) => {
                upserts.push(AvailabilityOverride {
                    company_id: conn.company_id.clone(),
                    staff_id: conn.staff_id.clone(),
                    connection_id: conn.id.clone(),
                    source: Provider::Exchange,
                    external_event_id: event.id.clone(),
                    start,
                    end,
                    all_day: event.is_all_day.unwrap_or(false),
                    updated_at: now,
                })
            }
            _ => removals.push(reference),
        }
    }
    if !upserts.is_empty() || !removals.is_empty() {
        deps.store.apply_overrides(&upserts, &removals).await?;
        report.overrides_upserted += upserts.len();
        report.overrides_removed += removals.len();
    }
    Ok(())
}

/// Carries out one plan step; a move is checked for conflicts first and, on conflict,
/// rejected by putting the event back. Returns whether a command changed the session.
#[allow(clippy::too_many_arguments)]
async fn carry_out(
    deps: &Deps,
    creds: &GraphCredentials,
    calendar: &CalendarRef,
    mapping: &EventMapping,
    snap: &EventSnapshot,
    session: &mut Session,
    step: &PlanStep,
) -> Result<bool> {
    let grace = Duration::from_std(deps.config.pending_cancellation_grace)
        .unwrap_or_else(|_| Duration::minutes(10));
    if let PlanStep::Reschedule { start, end } = step {
        if let Some(reason) = conflict(deps, session, *start, *end).await? {
            return reject_move(
                deps, creds, calendar, mapping, snap, session, *start, *end, reason,
            )
            .await;
        }
        let changed =
            booking::execute(deps, session, &step.command(grace), ORIGIN_EXCHANGE_INBOUND).await?;
        // What the calendar shows now, so a replay of this change is known as seen.
        let mut m = mapping.clone();
        m.change_key = snap.change_key.clone();
        m.last_start = *start;
        m.last_end = *end;
        m.updated_at = deps.store.now();
        save_mapping_quietly(deps, &mut m).await;
        return Ok(changed);
    }
    booking::execute(deps, session, &step.command(grace), ORIGIN_EXCHANGE_INBOUND).await
}

/// Another live session of the staff member, or busy time from any connected calendar,
/// overlapping `[start, end)`: the reason the move is refused.
async fn conflict(
    deps: &Deps,
    session: &Session,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Option<String>> {
    // Sessions last at most 31 days, so one starting earlier cannot overlap.
    let sessions = deps
        .store
        .sessions_for_staff(
            &session.company_id,
            &session.staff_id,
            start - Duration::days(31),
            end,
        )
        .await?;
    if let Some(other) = sessions.iter().find(|s| {
        s.id != session.id && s.status != SessionStatus::Cancelled && s.start < end && s.end > start
    }) {
        return Ok(Some(format!("overlaps session {}", other.id)));
    }
    let busy = deps
        .store
        .overrides_for_staff(&session.company_id, &session.staff_id, start, end)
        .await?;
    Ok(busy.first().map(|o| {
        format!(
            "overlaps busy time from {} ({})",
            o.source.as_str(),
            o.external_event_id
        )
    }))
}

#[allow(clippy::too_many_arguments)]
async fn reject_move(
    deps: &Deps,
    creds: &GraphCredentials,
    calendar: &CalendarRef,
    mapping: &EventMapping,
    snap: &EventSnapshot,
    session: &mut Session,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    reason: String,
) -> Result<bool> {
    let back = EventWrite {
        subject: session.title.clone(),
        body: EventBody {
            content_type: "text".into(),
            content: "Voyage session (moved back: the new time conflicts).".into(),
        },
        start: GraphDateTime::utc(session.start),
        end: GraphDateTime::utc(session.end),
        location: None,
        show_as: "busy".into(),
        transaction_id: None,
        extended: Vec::new(),
    };
    let etag = snap.change_key.as_ref().map(|k| format!("W/\"{k}\""));
    match deps
        .graph()?
        .update_event(
            creds,
            calendar,
            &mapping.external_event_id,
            etag.as_deref(),
            &back,
        )
        .await
    {
        Ok(written) => {
            // Our write: its change key goes into the mapping so its echo is skipped.
            let mut m = mapping.clone();
            m.change_key = written.change_key.clone();
            m.last_start = session.start;
            m.last_end = session.end;
            m.updated_at = deps.store.now();
            save_mapping_quietly(deps, &mut m).await;
        }
        // Changed again meanwhile: that newer change has its own notification.
        Err(GraphError::PreconditionFailed) | Err(GraphError::NotFound) => return Ok(false),
        Err(e) => return Err(super::provider_error(&e)),
    }
    let command = Command::RejectReschedule { start, end, reason };
    booking::execute(deps, session, &command, ORIGIN_EXCHANGE_INBOUND).await
}

/// A mapping update that may lose a race to another round: the loser's view is no newer,
/// and a stale change key only costs a harmless replan.
async fn save_mapping_quietly(deps: &Deps, m: &mut EventMapping) {
    if let Err(e) = deps.store.save_mapping(m).await {
        tracing::debug!(session = %m.session_id, error = %e, "mapping not updated");
    }
}

/// After a full sync: overrides of this connection whose events were not listed are gone.
async fn remove_vanished(
    deps: &Deps,
    conn: &Connection,
    seen: &HashSet<String>,
    report: &mut RoundReport,
) -> Result<()> {
    let gone: Vec<OverrideRef> = deps
        .store
        .overrides_for_connection(&conn.company_id, &conn.staff_id, &conn.id)
        .await?
        .into_iter()
        .filter(|o| !seen.contains(&o.external_event_id))
        .map(|o| o.reference())
        .collect();
    if !gone.is_empty() {
        deps.store.apply_overrides(&[], &gone).await?;
        report.overrides_removed += gone.len();
    }
    Ok(())
}

/// After a full sync: a mapped event that was not listed was deleted while we held no
/// cursor (a full listing reports no removals), so it is reconciled as removed. Only
/// mappings written before the round started count, and only sessions inside the window:
/// an event created during the round, or outside it, was simply not in the listing.
async fn reconcile_vanished(
    deps: &Deps,
    conn: &Connection,
    creds: &GraphCredentials,
    calendar: &CalendarRef,
    seen: &HashSet<String>,
    started: DateTime<Utc>,
    report: &mut RoundReport,
) -> Result<()> {
    let vanished: Vec<EventMapping> = deps
        .store
        .mappings_for_connection(&conn.company_id, &conn.id)
        .await?
        .into_iter()
        .filter(|m| m.updated_at < started && !seen.contains(&m.external_event_id))
        .collect();
    if vanished.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = vanished.iter().map(|m| m.session_id.clone()).collect();
    let window_start = started - Duration::days(WINDOW_PAST_DAYS);
    let window_end = started + Duration::days(WINDOW_FUTURE_DAYS);
    let mut sessions: HashMap<String, Session> = deps
        .store
        .get_sessions(&conn.company_id, &ids)
        .await?
        .into_iter()
        .filter(|s| s.end > window_start && s.start < window_end)
        .map(|s| (s.id.clone(), s))
        .collect();
    for m in &vanished {
        let Some(session) = sessions.get_mut(&m.session_id) else {
            continue;
        };
        let snap = EventSnapshot {
            event_id: m.external_event_id.clone(),
            change_key: None,
            state: SnapshotState::Removed,
        };
        for step in reconcile::plan(&snap, m, session) {
            if carry_out(deps, creds, calendar, m, &snap, session, &step).await? {
                report.commands += 1;
            }
        }
    }
    Ok(())
}

/// The scheduled sweep: commits every pending cancellation whose grace has passed.
pub async fn commit_pending_cancellations(deps: &Deps) -> Result<crate::jobs::JobReport> {
    let mut report = crate::jobs::JobReport {
        job: "commit-pending-cancellations".into(),
        ..Default::default()
    };
    loop {
        let due = deps
            .store
            .due_pending_cancellations(deps.store.now(), 100)
            .await?;
        if due.is_empty() {
            break;
        }
        let batch = due.len();
        for mut session in due {
            // The cancellation's cause is its origin: a write back there is filtered.
            let origin = session
                .pending
                .as_ref()
                .map(|p| p.origin.clone())
                .unwrap_or_else(|| ORIGIN_EXCHANGE_INBOUND.to_string());
            match booking::execute(deps, &mut session, &Command::Cancel, &origin).await {
                Ok(_) => {
                    report.processed += 1;
                    for provider in booking::calendar_writes(&Command::Cancel, &origin) {
                        if provider == Provider::Exchange {
                            cancel_in_exchange(deps, &session).await;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(session = %session.id, error = %e, "pending cancellation not committed");
                    report.failed += 1;
                }
            }
        }
        if batch < 100 || report.failed > 0 {
            break;
        }
    }
    Ok(report)
}

/// Removes a cancelled session's event from Exchange (only for origins other than Exchange).
async fn cancel_in_exchange(deps: &Deps, session: &Session) {
    let change = super::outbound::SessionChange {
        action: super::outbound::Action::Cancelled,
        id: session.id.clone(),
        company_id: session.company_id.clone(),
        staff_id: session.staff_id.clone(),
        start: session.start,
        end: session.end,
        time_zone: session.time_zone.clone(),
        title: session.title.clone(),
        location: session.location.clone(),
        client: session.client.clone(),
    };
    if let Err(e) = super::outbound::apply(deps, &change).await {
        tracing::warn!(session = %session.id, error = %e, "cancelled session not removed from exchange");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::graph::{Removed, ResponseStatus};

    fn event(show_as: &str) -> GraphEvent {
        GraphEvent {
            id: "e1".into(),
            show_as: Some(show_as.into()),
            start: Some(GraphDateTime {
                date_time: "2026-12-01T09:00:00.0000000".into(),
                time_zone: Some("UTC".into()),
            }),
            end: Some(GraphDateTime {
                date_time: "2026-12-01T10:00:00.0000000".into(),
                time_zone: Some("UTC".into()),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn busy_means_busy_oof_tentative_or_working_elsewhere_and_not_cancelled() {
        for s in ["busy", "OOF", "tentative", "workingElsewhere"] {
            assert!(blocks_time(&event(s)), "{s}");
        }
        for s in ["free", "unknown"] {
            assert!(!blocks_time(&event(s)), "{s}");
        }
        let mut cancelled = event("busy");
        cancelled.is_cancelled = Some(true);
        assert!(!blocks_time(&cancelled));
        let mut removed = event("busy");
        removed.removed = Some(Removed {
            reason: Some("deleted".into()),
        });
        assert!(!blocks_time(&removed));
    }

    #[test]
    fn snapshots_read_removal_cancellation_and_decline() {
        let mut e = event("busy");
        e.response_status = Some(ResponseStatus {
            response: Some("Declined".into()),
        });
        match snapshot(&e).unwrap().state {
            SnapshotState::Live {
                declined,
                cancelled,
                ..
            } => assert!(declined && !cancelled),
            other => panic!("{other:?}"),
        }
        let removed = GraphEvent {
            id: "e2".into(),
            removed: Some(Removed { reason: None }),
            ..Default::default()
        };
        assert_eq!(snapshot(&removed).unwrap().state, SnapshotState::Removed);
        let unreadable = GraphEvent {
            id: "e3".into(),
            ..Default::default()
        };
        assert!(snapshot(&unreadable).is_none());
    }
}
