//! Carrying out a reconciliation plan, for any provider: a staff member's change to one of
//! the platform's events is planned ([`crate::reconcile::plan`]) against its session and
//! carried out step by step by the booking command engine ([`crate::booking`]), re-planning
//! from fresh state after each session command and after every lost compare-and-set (a step
//! is never carried out on a session other than the one it was planned from).
//!
//! A plan is carried out only while the event is still the session's event: the mapping is
//! read again after the session ([`still_mapped`]), so the removal of an event a re-booking
//! has retired never cancels the new booking.
//!
//! What differs per provider, writing the session's times back into the event and deleting
//! it, is behind [`EventWriter`]. A move onto another session or busy time is rejected by
//! writing the event back (our write, recorded in the mapping, so it does not echo); a
//! move that is accepted, and a restore, are written to the staff member's other calendars
//! ([`super::follow`]).
//!
//! Two guards keep a plan from acting on history: a read of the event older than the last
//! write or read the mapping records is planned as nothing
//! ([`crate::reconcile::is_stale_read`]), and a pending cancellation is ended only by the
//! calendar whose deletion started it (the other calendar's copy is still there).

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

use crate::booking::{self, Command};
use crate::deps::Deps;
use std::collections::HashMap;

use crate::model::{Connection, EventMapping, Provider, Session, SessionStatus};
use crate::reconcile::{self, EventSnapshot, PlanStep};
use crate::{Error, Result};

/// Re-plans of one event before giving up (each follows a session command or a lost race).
const MAX_REPLANS: usize = 8;

/// The longest a session may last (the platform's limit, held for moves too): a move past it
/// is refused, and the conflict check reads only that far back.
pub const MAX_SESSION_DAYS: i64 = 31;

/// What a write to an event left it as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The event's new change key (Graph) or etag (Google).
    pub change_key: Option<String>,
    /// When the provider says it changed (Google's `updated`), when it says.
    pub modified: Option<DateTime<Utc>>,
}

/// A provider's writes to one of the platform's events, on behalf of a sync round.
#[async_trait]
pub trait EventWriter: Send + Sync {
    /// The provider's error.
    type Error: Send;

    /// The origin of the booking commands this calendar causes (`exchange-inbound`,
    /// `google-inbound`).
    fn origin(&self) -> &'static str;

    /// Writes the session's times to the event, only if it is still as `snap` shows it (its
    /// change key or etag). `Ok(Some(written))`: written; `Ok(None)`: changed again
    /// meanwhile, or gone (its own notification follows).
    async fn write_session(
        &self,
        mapping: &EventMapping,
        snap: &EventSnapshot,
        session: &Session,
        note: &str,
    ) -> std::result::Result<Option<Written>, Self::Error>;

    /// Deletes the event; already gone (404, or Google's 410) counts as done and says so.
    async fn delete_event(
        &self,
        mapping: &EventMapping,
    ) -> std::result::Result<Deleted, Self::Error>;
}

/// What [`EventWriter::delete_event`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// The event was live and is deleted now.
    Now,
    /// The event was gone already (deleted since it was read).
    AlreadyGone,
}

/// Why carrying out a plan stopped.
#[derive(Debug)]
pub enum Failure<E> {
    Store(Error),
    Calendar(E),
}

impl<E> From<Error> for Failure<E> {
    fn from(e: Error) -> Self {
        Failure::Store(e)
    }
}

/// What reconciling one event did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Booking commands that changed the session.
    pub commands: usize,
    /// Writes to the calendar (a write-back, a rejected move, a deletion).
    pub calendar_writes: usize,
}

/// What carrying out one step did.
struct Carried {
    /// A booking command changed the session.
    changed: bool,
    /// The calendar was written: the snapshot no longer shows it, so planning stops.
    wrote_calendar: bool,
}

/// Plans `snap` against the session and carries the plan out (see the module docs). Finally
/// the mapping remembers what the calendar showed, so a duplicate notification plans nothing.
///
/// `owner`: the staff member whose calendar the event is in. A session given to another
/// staff member is no longer this calendar's booking: its event here plans nothing (its
/// removal is the outbound writer's; a live one left behind is deleted here).
pub async fn reconcile_event<W: EventWriter>(
    deps: &Deps,
    writer: &W,
    owner: &str,
    mapping: &EventMapping,
    snap: &EventSnapshot,
    session: &mut Session,
) -> std::result::Result<Reconciled, Failure<W::Error>> {
    let mut done = Reconciled::default();
    if session.staff_id != owner {
        if matches!(
            snap.state,
            crate::reconcile::SnapshotState::Live {
                cancelled: false,
                ..
            }
        ) && still_mapped(deps, mapping).await?.is_some()
        {
            writer
                .delete_event(mapping)
                .await
                .map_err(Failure::Calendar)?;
            done.calendar_writes += 1;
            tracing::info!(session = %session.id, event = %snap.event_id, "event of a session given to another staff member deleted");
        }
        return Ok(done);
    }
    let mut mapping = mapping.clone();
    // Whether the mapping was read after the session the plan is made from.
    let mut verified = false;
    for _ in 0..MAX_REPLANS {
        let Some(mut step) = reconcile::plan(snap, &mapping, session).into_iter().next() else {
            remember(deps, &mut mapping, snap).await;
            return Ok(done);
        };
        if !verified {
            let Some(current) = still_mapped(deps, &mapping).await? else {
                tracing::debug!(session = %session.id, event = %snap.event_id, "the event is no longer the session's; nothing to reconcile");
                return Ok(done);
            };
            mapping = current;
            verified = true;
            match reconcile::plan(snap, &mapping, session).into_iter().next() {
                Some(fresh) => step = fresh,
                None => {
                    remember(deps, &mut mapping, snap).await;
                    return Ok(done);
                }
            }
        }
        match carry_out(deps, writer, &mut mapping, snap, session, &step).await {
            Ok(carried) => {
                if carried.changed {
                    done.commands += 1;
                }
                if carried.wrote_calendar {
                    done.calendar_writes += 1;
                    return Ok(done);
                }
            }
            Err(Failure::Store(Error::Conflict { .. })) => {
                *session = deps
                    .store
                    .get_session(&session.company_id, &session.id)
                    .await?;
                if session.staff_id != owner {
                    // Given to another staff member meanwhile: this calendar's event plans
                    // nothing for it any more (its removal is the outbound writer's).
                    tracing::debug!(session = %session.id, event = %snap.event_id, "given to another staff member meanwhile; nothing to reconcile");
                    return Ok(done);
                }
                verified = false;
            }
            Err(e) => return Err(e),
        }
    }
    tracing::warn!(session = %session.id, "reconciliation did not settle within its re-plans");
    Ok(done)
}

/// The session's event in `provider`'s calendar: its mapping and the connection it is on,
/// or `None` when there is none (no mapping, or its connection was deleted).
pub async fn mapped_connection(
    deps: &Deps,
    session: &Session,
    provider: Provider,
) -> Result<Option<(EventMapping, Connection)>> {
    let Some(mapping) = deps
        .store
        .mapping_for_session(&session.company_id, provider, &session.id)
        .await?
    else {
        return Ok(None);
    };
    Ok(deps
        .store
        .find_connection(&session.company_id, &mapping.connection_id)
        .await?
        .map(|conn| (mapping, conn)))
}

/// What a page of a connection's events needs read before it is reconciled, in two batch
/// reads: the mappings of the page's events (by event id) and their sessions (by id).
pub async fn page_state(
    deps: &Deps,
    conn: &Connection,
    event_ids: &[String],
) -> Result<(HashMap<String, EventMapping>, HashMap<String, Session>)> {
    let mappings: HashMap<String, EventMapping> = deps
        .store
        .mappings_for_events(&conn.company_id, &conn.id, event_ids)
        .await?
        .into_iter()
        .map(|m| (m.external_event_id.clone(), m))
        .collect();
    let session_ids: Vec<String> = mappings.values().map(|m| m.session_id.clone()).collect();
    let sessions = deps
        .store
        .get_sessions(&conn.company_id, &session_ids)
        .await?;
    Ok((mappings, sessions))
}

/// The session's mapping as stored now, if it still links the session to the event of
/// `mapping` (read after the session, so a plan is only carried out while the event is the
/// session's event: a cancelled session booked again retires its old events' mappings in the
/// same commit that confirms it, and an old event's removal must not cancel the new booking).
pub async fn still_mapped(deps: &Deps, mapping: &EventMapping) -> Result<Option<EventMapping>> {
    Ok(deps
        .store
        .mapping_for_session(&mapping.company_id, mapping.provider, &mapping.session_id)
        .await?
        .filter(|current| {
            (&current.connection_id, &current.external_event_id)
                == (&mapping.connection_id, &mapping.external_event_id)
        }))
}

/// After reconciling: the mapping records the snapshot as seen (its change key and times),
/// unless it already does. A removal leaves it as it is (a restore is compared with the last
/// times the event had).
async fn remember(deps: &Deps, mapping: &mut EventMapping, snap: &EventSnapshot) {
    let Some((start, end)) = snap.times() else {
        return;
    };
    if crate::reconcile::is_stale_read(snap, mapping) {
        return;
    }
    let seen = (snap.change_key.clone(), start, end);
    if (
        mapping.change_key.clone(),
        mapping.last_start,
        mapping.last_end,
    ) == seen
    {
        return;
    }
    (mapping.change_key, mapping.last_start, mapping.last_end) = seen;
    mapping.modified = snap.modified.or(mapping.modified);
    mapping.updated_at = deps.store.now();
    save_mapping_quietly(deps, mapping).await;
}

/// A mapping update that may lose a race to another writer: the loser's view is no newer,
/// and a stale change key only costs a harmless replan.
pub async fn save_mapping_quietly(deps: &Deps, m: &mut EventMapping) {
    if let Err(e) = deps.store.save_mapping(m).await {
        tracing::debug!(session = %m.session_id, error = %e, "mapping not updated");
    }
}

/// Carries out one plan step (one attempt: a lost compare-and-set is returned as
/// [`Error::Conflict`] for the caller to re-plan).
async fn carry_out<W: EventWriter>(
    deps: &Deps,
    writer: &W,
    mapping: &mut EventMapping,
    snap: &EventSnapshot,
    session: &mut Session,
    step: &PlanStep,
) -> std::result::Result<Carried, Failure<W::Error>> {
    let grace = deps.config.pending_grace();
    let origin = writer.origin();
    match step {
        PlanStep::Reschedule { start, end } => {
            if let Some(reason) = conflict(deps, session, *start, *end).await? {
                return reject_move(deps, writer, mapping, snap, session, *start, *end, reason)
                    .await;
            }
            let command = Command::Reschedule {
                start: *start,
                end: *end,
            };
            super::insure(deps, session, &command, origin).await;
            let changed = booking::try_execute(deps, session, &command, origin).await?;
            if changed {
                super::follow(deps, session, &command, origin).await;
            }
            Ok(Carried {
                changed,
                wrote_calendar: false,
            })
        }
        PlanStep::WriteBack => {
            let note = super::event_description(session.client.as_ref());
            write_session_to_event(deps, writer, mapping, snap, session, &note).await?;
            Ok(Carried {
                changed: false,
                wrote_calendar: true,
            })
        }
        PlanStep::DeleteEvent => delete_again(deps, writer, mapping, session).await,
        other => {
            let Some(command) = other.command(grace) else {
                return Ok(Carried {
                    changed: false,
                    wrote_calendar: false,
                });
            };
            super::insure(deps, session, &command, origin).await;
            let changed = booking::try_execute(deps, session, &command, origin).await?;
            if changed {
                super::follow(deps, session, &command, origin).await;
            }
            Ok(Carried {
                changed,
                wrote_calendar: false,
            })
        }
    }
}

/// Another live session of the staff member, or busy time from any connected calendar,
/// overlapping `[start, end)`: the reason the move is refused.
pub async fn conflict(
    deps: &Deps,
    session: &Session,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Option<String>> {
    // Sessions last at most 31 days (the platform's limit, held for moves too), so one
    // starting earlier cannot overlap: the read covers only that range.
    let longest = Duration::days(MAX_SESSION_DAYS);
    if end - start > longest {
        return Ok(Some(format!(
            "a session lasts at most {MAX_SESSION_DAYS} days"
        )));
    }
    let sessions = deps
        .store
        .sessions_for_staff(&session.company_id, &session.staff_id, start - longest, end)
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

/// Writes the session's times to the event, conditional on the snapshot's change key: an
/// event changed again meanwhile or gone is left to its own notification. The written
/// change key and times go into the mapping, so the write does not echo.
async fn write_session_to_event<W: EventWriter>(
    deps: &Deps,
    writer: &W,
    mapping: &mut EventMapping,
    snap: &EventSnapshot,
    session: &Session,
    note: &str,
) -> std::result::Result<bool, Failure<W::Error>> {
    match writer
        .write_session(mapping, snap, session, note)
        .await
        .map_err(Failure::Calendar)?
    {
        Some(written) => {
            mapping.change_key = written.change_key;
            mapping.modified = written.modified.or(mapping.modified);
            mapping.last_start = session.start;
            mapping.last_end = session.end;
            mapping.updated_at = deps.store.now();
            save_mapping_quietly(deps, mapping).await;
            Ok(true)
        }
        None => Ok(false),
    }
}

#[allow(clippy::too_many_arguments)]
async fn reject_move<W: EventWriter>(
    deps: &Deps,
    writer: &W,
    mapping: &mut EventMapping,
    snap: &EventSnapshot,
    session: &mut Session,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    reason: String,
) -> std::result::Result<Carried, Failure<W::Error>> {
    let note = "Voyage session (moved back: the new time conflicts).";
    if !write_session_to_event(deps, writer, mapping, snap, session, note).await? {
        // Changed again meanwhile: that newer change has its own notification.
        return Ok(Carried {
            changed: false,
            wrote_calendar: true,
        });
    }
    let command = Command::RejectReschedule { start, end, reason };
    let changed = booking::execute(deps, session, &command, writer.origin()).await?;
    Ok(Carried {
        changed,
        wrote_calendar: true,
    })
}

/// A cancelled session's event is live again: delete it and note it in the session's
/// history. The mapping stays, so the next restore is deleted again too.
async fn delete_again<W: EventWriter>(
    deps: &Deps,
    writer: &W,
    mapping: &EventMapping,
    session: &mut Session,
) -> std::result::Result<Carried, Failure<W::Error>> {
    let deleted = writer
        .delete_event(mapping)
        .await
        .map_err(Failure::Calendar)?;
    if deleted == Deleted::AlreadyGone {
        // Deleted again since it was read (the staff member, or another round): the calendar
        // is as the session wants it, and nothing came back that the history should note.
        // The snapshot is stale all the same, so planning stops.
        return Ok(Carried {
            changed: false,
            wrote_calendar: true,
        });
    }
    let changed = booking::execute(
        deps,
        session,
        &Command::DeleteRestoredEvent,
        writer.origin(),
    )
    .await?;
    Ok(Carried {
        changed,
        wrote_calendar: true,
    })
}
