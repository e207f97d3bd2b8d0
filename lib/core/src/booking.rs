//! The booking command engine: the one way the integrations layer changes a session
//! (DESIGN-NOTES 1.4). Each command is decided purely ([`decide`]: the next session, or
//! nothing when it would change nothing or its precondition no longer holds, which makes
//! every command idempotent and safe to re-decide on fresh state), written as a conditional
//! write with a history entry naming its origin, and its webhook event goes through the
//! session's outbox to the event bus. Side effects that would return to the calendar that
//! caused the change are filtered here ([`calendar_writes`]), in one place.
//!
//! The outbox is published right after the write ([`publish_outbox`], retried at once); what
//! a failed publish or a crash leaves behind is found through the store's outbox index and
//! published by the five-minute relay ([`relay_outboxes`]). Every event carries an
//! idempotency key, so the webhook dispatcher delivers a re-published event once.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};

use crate::deps::Deps;
use crate::exchange::outbound::push_history;
use crate::model::{OutboxEvent, PendingChange, PendingKind, Provider, Session, SessionStatus};
use crate::ports::BusEvent;
use crate::{Error, Result};

/// Changes made because of an Exchange (Outlook) change.
pub const ORIGIN_EXCHANGE_INBOUND: &str = "exchange-inbound";
/// Changes made because of a Google Calendar change.
pub const ORIGIN_GOOGLE_INBOUND: &str = "google-inbound";
/// Tries of one command against lost races ([`crate::retry::LOST_RACE_ATTEMPTS`]). Several
/// delta rounds of one connection may carry out the same command at once (a burst of
/// notifications): each lost race pauses ([`crate::retry::after_lost_race`]), re-reads and,
/// the command being idempotent, usually finds nothing left to do.
const ATTEMPTS: usize = crate::retry::LOST_RACE_ATTEMPTS;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    PendingCancellation {
        grace: Duration,
    },
    Restore,
    /// Commits a pending cancellation, only if it is still pending and due at `now` (a
    /// restore that won the race is never undone by a sweep that read the session before).
    CommitCancellation {
        now: DateTime<Utc>,
    },
    Reschedule {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    FlagDecline,
    /// A move refused for a conflict; the event was put back at the booked time.
    RejectReschedule {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        reason: String,
    },
    /// The event of a cancelled session came back (restored from Deleted Items) and was
    /// deleted again: a history entry only, no webhook (the booking did not change).
    DeleteRestoredEvent,
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::PendingCancellation { .. } => "pending_cancellation",
            Command::Restore => "restore",
            Command::CommitCancellation { .. } => "cancel",
            Command::Reschedule { .. } => "reschedule",
            Command::FlagDecline => "flag_decline",
            Command::RejectReschedule { .. } => "reject_reschedule",
            Command::DeleteRestoredEvent => "delete_restored_event",
        }
    }

    /// The webhook event the command emits, if any.
    fn event_type(&self) -> Option<&'static str> {
        Some(match self {
            Command::PendingCancellation { .. } => "session.cancellation_pending",
            Command::Restore => "session.restored",
            Command::CommitCancellation { .. } => "session.cancelled",
            Command::Reschedule { .. } => "session.rescheduled",
            Command::FlagDecline => "session.declined",
            Command::RejectReschedule { .. } => "session.reschedule_rejected",
            Command::DeleteRestoredEvent => return None,
        })
    }
}

/// The provider whose calendar an origin stands for.
pub fn origin_provider(origin: &str) -> Option<Provider> {
    match origin {
        ORIGIN_EXCHANGE_INBOUND => Some(Provider::Exchange),
        ORIGIN_GOOGLE_INBOUND => Some(Provider::Google),
        _ => None,
    }
}

/// The calendars a command's result must be written to: every calendar the platform writes
/// (Exchange and Google), except the one the change came from: it shows the change already,
/// and writing it back would loop.
pub fn calendar_writes(command: &Command, origin: &str) -> Vec<Provider> {
    // A restore too: while the cancellation was pending, no calendar was written, so a
    // platform change made meanwhile reaches the other calendars now.
    let changes_booking = matches!(
        command,
        Command::Reschedule { .. } | Command::CommitCancellation { .. } | Command::Restore
    );
    if !changes_booking {
        return Vec::new();
    }
    [Provider::Exchange, Provider::Google]
        .into_iter()
        .filter(|p| origin_provider(origin) != Some(*p))
        .collect()
}

fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The session after `command`, or `None` when the command would change nothing.
pub fn decide(
    session: &Session,
    command: &Command,
    origin: &str,
    now: DateTime<Utc>,
) -> Option<Session> {
    let mut next = session.clone();
    let mut extra = Map::new();
    let detail = match command {
        Command::PendingCancellation { grace } => {
            if session.status != SessionStatus::Confirmed {
                return None;
            }
            let due_at = now + *grace;
            next.status = SessionStatus::PendingCancellation;
            next.pending = Some(PendingChange {
                company_id: session.company_id.clone(),
                session_id: session.id.clone(),
                kind: PendingKind::Cancellation,
                due_at,
                origin: origin.to_string(),
                created_at: now,
            });
            extra.insert("cancels_at".into(), json!(instant(due_at)));
            Some(format!(
                "cancels at {} unless the event returns",
                instant(due_at)
            ))
        }
        Command::Restore => {
            if session.status != SessionStatus::PendingCancellation {
                return None;
            }
            next.status = SessionStatus::Confirmed;
            next.pending = None;
            None
        }
        Command::CommitCancellation { now } => {
            let due = session.status == SessionStatus::PendingCancellation
                && session.pending.as_ref().is_some_and(|p| p.due_at <= *now);
            if !due {
                return None;
            }
            next.status = SessionStatus::Cancelled;
            next.pending = None;
            // The platform's newest change is now answered by this cancellation: a retry of
            // it (a `created` whose answer was lost, say) is stale, not a re-booking.
            if let Some(v) = next.platform_version.max(next.calendar_version) {
                next.settle(v);
            }
            None
        }
        Command::Reschedule { start, end } => {
            if session.status == SessionStatus::Cancelled
                || (*start, *end) == (session.start, session.end)
            {
                return None;
            }
            extra.insert("previous_start".into(), json!(instant(session.start)));
            extra.insert("previous_end".into(), json!(instant(session.end)));
            next.start = *start;
            next.end = *end;
            Some(format!(
                "moved from {} to {}",
                instant(session.start),
                instant(*start)
            ))
        }
        Command::FlagDecline => {
            if session.declined {
                return None;
            }
            next.declined = true;
            None
        }
        Command::RejectReschedule { start, end, reason } => {
            // Re-decided after a lost race: a booking cancelled meanwhile has no move to refuse.
            if session.status == SessionStatus::Cancelled {
                return None;
            }
            extra.insert("attempted_start".into(), json!(instant(*start)));
            extra.insert("attempted_end".into(), json!(instant(*end)));
            extra.insert("reason".into(), json!(reason));
            Some(format!("move to {} rejected: {reason}", instant(*start)))
        }
        Command::DeleteRestoredEvent => {
            if session.status != SessionStatus::Cancelled {
                return None;
            }
            Some("the event came back after the cancellation and was deleted again".into())
        }
    };
    next.updated_at = now;
    push_history(&mut next, now, command.name(), origin, detail);
    let Some(event_type) = command.event_type() else {
        return Some(next);
    };
    let event = session_event(&next, event_type, command.name(), origin, extra);
    next.outbox.push(event);
    Some(next)
}

/// The webhook event `event_type` of `next`, the session as the write that is about to
/// replace the stored one (`next.version` still the stored version) leaves it: its state,
/// `origin` (and the calendar's provider when the change came from one), the `sequence` of
/// the version the write creates, and `extra`. Its idempotency key names that version and
/// `command`: the same write retried after a lost answer produces the same key, and the
/// webhook dispatcher delivers it once.
pub(crate) fn session_event(
    next: &Session,
    event_type: &str,
    command: &str,
    origin: &str,
    extra: Map<String, Value>,
) -> OutboxEvent {
    let created = next.version + 1;
    let mut payload = Map::new();
    payload.insert("session_id".into(), json!(next.id));
    payload.insert("staff_id".into(), json!(next.staff_id));
    payload.insert("status".into(), json!(next.status));
    payload.insert("start".into(), json!(instant(next.start)));
    payload.insert("end".into(), json!(instant(next.end)));
    payload.insert("declined".into(), json!(next.declined));
    payload.insert("origin".into(), json!(origin));
    // The calendar the change came from, when it came from one.
    if let Some(provider) = origin_provider(origin) {
        payload.insert("provider".into(), json!(provider.as_str()));
    }
    // The version this write creates orders the session's events (webhooks::sequence).
    payload.insert(
        "sequence".into(),
        json!(crate::webhooks::sequence::of_session_version(created)),
    );
    payload.extend(extra);
    OutboxEvent {
        event_type: event_type.into(),
        payload,
        idempotency_key: format!("{}:{created}:{command}", next.id),
    }
}

/// Carries out `command` on the stored session: decide, conditional write (re-reading and
/// deciding again after a lost race: every command re-checks its precondition on the fresh
/// state), then publish the outbox. Returns whether the session changed; `session` is left
/// as stored. A race lost on every try is [`Error::Conflict`].
pub async fn execute(
    deps: &Deps,
    session: &mut Session,
    command: &Command,
    origin: &str,
) -> Result<bool> {
    execute_while(deps, session, command, origin, None).await
}

/// [`execute`] of a command a platform write's calendar call found (the event gone: the
/// staff member's deletion; the event declined), about `event` in `provider`'s calendar of
/// the staff member the write was for. After a lost race the command is decided again only
/// while the session is still that placement: the same staff member, `event` still its
/// mapped one. Given to another staff member or booked again meanwhile (its mapping
/// retired), the finding is about an event that is no longer the booking's, and nothing is
/// done (review 8, finding 2: a re-decided pending cancellation put the new staff member's
/// booking into cancellation). `Ok(false)`: nothing changed.
pub async fn execute_for_event(
    deps: &Deps,
    session: &mut Session,
    command: &Command,
    origin: &str,
    provider: Provider,
    event: &str,
) -> Result<bool> {
    execute_while(deps, session, command, origin, Some((provider, event))).await
}

/// The tries of [`execute`]; with `placement`, the re-read after a lost race also checks
/// the placement ([`execute_for_event`]).
async fn execute_while(
    deps: &Deps,
    session: &mut Session,
    command: &Command,
    origin: &str,
    placement: Option<(Provider, &str)>,
) -> Result<bool> {
    let staff = session.staff_id.clone();
    for attempt in 1..=ATTEMPTS {
        match try_execute(deps, session, command, origin).await {
            Err(Error::Conflict { .. }) if attempt < ATTEMPTS => {
                crate::retry::after_lost_race().await;
                *session = deps
                    .store
                    .get_session(&session.company_id, &session.id)
                    .await?;
                if let Some((provider, event)) = placement {
                    let mapped = deps
                        .store
                        .mapping_for_session(&session.company_id, provider, &session.id)
                        .await?;
                    let same = session.staff_id == staff
                        && mapped.is_some_and(|m| m.external_event_id == event);
                    if !same {
                        tracing::info!(session = %session.id, command = command.name(), "the event is no longer the booking's (given away or booked again meanwhile): not applied");
                        return Ok(false);
                    }
                }
            }
            Err(Error::Conflict { .. }) => break,
            other => return other,
        }
    }
    // Every try lost: a conflict still, so a round's re-plan loop sees it as one (a caller
    // answering the platform turns it into a 503: [`crate::retry::lost_every_race`]).
    Err(Error::Conflict {
        entity: "session",
        id: session.id.clone(),
    })
}

/// One attempt: decide from `session` as given and write with a compare-and-set on its
/// version. A lost race is [`Error::Conflict`] and leaves `session` as it was, for the caller
/// to re-read and re-plan (a plan made from a stale session is never carried out).
pub async fn try_execute(
    deps: &Deps,
    session: &mut Session,
    command: &Command,
    origin: &str,
) -> Result<bool> {
    let Some(mut next) = decide(session, command, origin, deps.store.now()) else {
        return Ok(false);
    };
    deps.store.update_session(&mut next).await?;
    *session = next;
    tracing::info!(session = %session.id, command = command.name(), origin, "booking command applied");
    crate::metrics::count(
        "sessions_changed",
        &[("origin", origin), ("command", command.name())],
        1,
    );
    if let Some(received_at) = crate::metrics::notification_time() {
        let waited = (deps.store.now() - received_at).num_milliseconds();
        crate::metrics::observe_ms(
            "notification_to_session_ms",
            &[("origin", origin)],
            waited as f64,
        );
    }
    publish_outbox(deps, session).await;
    Ok(true)
}

/// Publish attempts made at once before the rest is left to the relay.
const PUBLISH_ATTEMPTS: usize = 3;

/// Publishes a session's outbox to the bus, then clears what was published. A publish that
/// fails is retried at once a few times; what is still unpublished then stays in the outbox
/// (indexed in the store) for [`relay_outboxes`]. An event published twice (a crash between
/// the two steps) carries the same idempotency key, so subscribers receive it once.
pub async fn publish_outbox(deps: &Deps, session: &mut Session) {
    if let Err(e) = try_publish_outbox(deps, session).await {
        tracing::warn!(session = %session.id, error = %e, "session events left in the outbox for the relay");
    }
}

/// Publishes the outbox of `written`, the session as the caller's own write just left it,
/// and clears what was published with one conditional write of that session. A lost race
/// leaves `written` as the caller wrote it, and the events in the stored outbox for the
/// relay (published again under the same keys: delivered once). Unlike [`publish_outbox`],
/// it never takes over the newer session that won: the caller's later writes are
/// conditioned on its own, and must lose their races against the newer one (review 10,
/// finding 1: a reassignment went on with the session of the change that overtook it).
pub async fn publish_own_outbox(deps: &Deps, written: &mut Session) {
    let published = match publish_events(deps, written).await {
        Ok(published) => published,
        Err(e) => {
            tracing::warn!(session = %written.id, error = %e, "session events left in the outbox for the relay");
            return;
        }
    };
    let mut next = written.clone();
    next.outbox
        .retain(|e| !published.contains(&e.idempotency_key));
    match deps.store.update_session(&mut next).await {
        Ok(()) => *written = next,
        Err(Error::Conflict { .. }) => {
            tracing::debug!(session = %written.id, "overtaken before its outbox was cleared; the relay clears it");
        }
        Err(e) => {
            tracing::warn!(session = %written.id, error = %e, "published session events left in the outbox; the relay clears it");
        }
    }
}

/// Publishes `session`'s outbox to the bus (retried at once a few times); returns the
/// idempotency keys published.
async fn publish_events(deps: &Deps, session: &Session) -> Result<Vec<String>> {
    let Some(bus) = &deps.bus else {
        return Err(Error::Unavailable("no event bus configured".into()));
    };
    let events: Vec<BusEvent> = session
        .outbox
        .iter()
        .map(|e| {
            BusEvent::new(
                e.event_type.clone(),
                json!({"company_id": session.company_id, "payload": Value::Object(e.payload.clone()), "idempotency_key": e.idempotency_key}),
            )
        })
        .collect();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match bus.publish(&events).await {
            Ok(()) => break,
            Err(e) if attempt >= PUBLISH_ATTEMPTS => return Err(Error::Unavailable(e.to_string())),
            Err(e) => {
                tracing::debug!(session = %session.id, error = %e, attempt, "publish failed; retrying");
                tokio::task::yield_now().await;
            }
        }
    }
    Ok(session
        .outbox
        .iter()
        .map(|e| e.idempotency_key.clone())
        .collect())
}

async fn try_publish_outbox(deps: &Deps, session: &mut Session) -> Result<()> {
    if session.outbox.is_empty() {
        return Ok(());
    }
    let published = publish_events(deps, session).await?;
    for _ in 0..ATTEMPTS {
        let mut next = session.clone();
        next.outbox
            .retain(|e| !published.contains(&e.idempotency_key));
        match deps.store.update_session(&mut next).await {
            Ok(()) => {
                *session = next;
                return Ok(());
            }
            Err(Error::Conflict { .. }) => {
                *session = deps
                    .store
                    .get_session(&session.company_id, &session.id)
                    .await?;
            }
            Err(e) => return Err(e),
        }
    }
    // Left in the outbox: published again by the relay, delivered once.
    Ok(())
}

/// The five-minute relay: publishes every outbox a failed publish or a crash left behind.
pub async fn relay_outboxes(deps: &Deps) -> Result<crate::jobs::JobReport> {
    let mut report = crate::jobs::JobReport {
        job: "relay-outboxes".into(),
        ..Default::default()
    };
    const BATCH: usize = 100;
    loop {
        let waiting = deps.store.sessions_with_outbox(BATCH).await?;
        let batch = waiting.len();
        for mut session in waiting {
            match try_publish_outbox(deps, &mut session).await {
                Ok(()) => report.processed += 1,
                Err(e) => {
                    tracing::warn!(session = %session.id, error = %e, "outbox not relayed");
                    report.failed += 1;
                }
            }
        }
        if batch < BATCH || report.failed > 0 {
            return Ok(report);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap() + Duration::hours(h)
    }

    fn session(status: SessionStatus) -> Session {
        Session {
            id: "s1".into(),
            company_id: "acme".into(),
            staff_id: "ann".into(),
            start: t(9),
            end: t(10),
            time_zone: "UTC".into(),
            title: "x".into(),
            location: None,
            client: None,
            status,
            declined: false,
            history: vec![],
            pending: None,
            outbox: vec![],
            platform_version: None,
            calendar_version: None,
            event_txn: None,
            google_event: None,
            retired: vec![],
            unsettled_times: vec![],
            times_changed_at: None,
            updated_at: t(0),
            version: 3,
        }
    }

    #[tokio::test]
    async fn an_applied_command_counts_its_origin_and_the_latency_from_its_notification() {
        use std::sync::Arc;
        let clock = Arc::new(crate::ports::clock::ManualClock::new(t(1)));
        let store = crate::store::Store::new(
            Arc::new(crate::ports::memory::MemoryTable::new()),
            clock.clone(),
        );
        let config = crate::config::Config::from_lookup(|_| None).unwrap();
        let deps = Deps::new(store, config);
        let mut s = deps
            .store
            .create_session(&session(SessionStatus::Confirmed))
            .await
            .unwrap();
        let before = crate::metrics::recorded("sessions_changed");
        // GIVEN a notification that arrived 1.5 s before its round applies the command
        let received = t(1);
        clock.advance(Duration::milliseconds(1_500));
        let command = Command::PendingCancellation {
            grace: Duration::minutes(10),
        };
        let applied = crate::metrics::with_notification_time(
            received,
            try_execute(&deps, &mut s, &command, ORIGIN_EXCHANGE_INBOUND),
        )
        .await
        .unwrap();
        // THEN the change is counted with its origin, and the wait lands in the 2.5 s bucket
        assert!(applied);
        assert!(crate::metrics::recorded("sessions_changed") > before);
        let text = crate::metrics::prometheus_text();
        let line = |bound: &str| {
            format!("voyage_notification_to_session_ms_bucket{{origin=\"{ORIGIN_EXCHANGE_INBOUND}\",le=\"{bound}\"}} ")
        };
        assert!(text.contains(&format!("{}0", line("1000"))), "{text}");
        assert!(text.contains(&format!("{}1", line("2500"))), "{text}");
        assert!(text.contains("voyage_sessions_changed_total{command=\"pending_cancellation\",origin=\"exchange-inbound\"}"), "{text}");
    }

    #[test]
    fn commands_apply_once_and_say_where_they_came_from() {
        let grace = Duration::minutes(10);
        let pending = decide(
            &session(SessionStatus::Confirmed),
            &Command::PendingCancellation { grace },
            ORIGIN_EXCHANGE_INBOUND,
            t(1),
        )
        .unwrap();
        assert_eq!(pending.status, SessionStatus::PendingCancellation);
        assert_eq!(pending.pending.as_ref().unwrap().due_at, t(1) + grace);
        assert_eq!(pending.history[0].origin, ORIGIN_EXCHANGE_INBOUND);
        assert_eq!(pending.outbox[0].event_type, "session.cancellation_pending");
        assert_eq!(
            pending.outbox[0].idempotency_key,
            "s1:4:pending_cancellation"
        );
        // Twice is once.
        assert_eq!(
            decide(
                &pending,
                &Command::PendingCancellation { grace },
                ORIGIN_EXCHANGE_INBOUND,
                t(2)
            ),
            None
        );
        let restored = decide(&pending, &Command::Restore, ORIGIN_EXCHANGE_INBOUND, t(2)).unwrap();
        assert_eq!(
            (restored.status, restored.pending.clone()),
            (SessionStatus::Confirmed, None)
        );
        assert_eq!(
            decide(&restored, &Command::Restore, ORIGIN_EXCHANGE_INBOUND, t(3)),
            None
        );
        let cancelled = decide(
            &pending,
            &Command::CommitCancellation { now: t(3) },
            "scheduler",
            t(3),
        )
        .unwrap();
        assert_eq!(cancelled.status, SessionStatus::Cancelled);
        assert_eq!(
            decide(
                &cancelled,
                &Command::CommitCancellation { now: t(4) },
                "scheduler",
                t(4)
            ),
            None
        );
        assert_eq!(
            decide(
                &cancelled,
                &Command::Reschedule {
                    start: t(1),
                    end: t(2)
                },
                "x",
                t(4)
            ),
            None
        );
        let moved = decide(
            &restored,
            &Command::Reschedule {
                start: t(11),
                end: t(12),
            },
            ORIGIN_EXCHANGE_INBOUND,
            t(3),
        )
        .unwrap();
        assert_eq!((moved.start, moved.end), (t(11), t(12)));
        assert_eq!(
            moved.outbox.last().unwrap().payload["previous_start"],
            "2026-12-01T09:00:00Z"
        );
        assert_eq!(
            decide(
                &moved,
                &Command::Reschedule {
                    start: t(11),
                    end: t(12)
                },
                "x",
                t(4)
            ),
            None
        );
        let declined =
            decide(&moved, &Command::FlagDecline, ORIGIN_EXCHANGE_INBOUND, t(4)).unwrap();
        assert!(declined.declined);
        assert_eq!(decide(&declined, &Command::FlagDecline, "x", t(5)), None);
    }

    #[test]
    fn a_commit_acts_only_on_a_cancellation_still_pending_and_due() {
        let grace = Duration::minutes(10);
        let pending = decide(
            &session(SessionStatus::Confirmed),
            &Command::PendingCancellation { grace },
            ORIGIN_EXCHANGE_INBOUND,
            t(1),
        )
        .unwrap();
        let not_yet = Command::CommitCancellation {
            now: t(1) + Duration::minutes(5),
        };
        assert_eq!(decide(&pending, &not_yet, "scheduler", t(1)), None);
        // A restore won the race: the sweep's stale command finds nothing to commit.
        let restored = decide(&pending, &Command::Restore, ORIGIN_EXCHANGE_INBOUND, t(1)).unwrap();
        let due = Command::CommitCancellation { now: t(2) };
        assert_eq!(decide(&restored, &due, "scheduler", t(2)), None);
        assert_eq!(
            decide(&pending, &due, "scheduler", t(2)).map(|s| s.status),
            Some(SessionStatus::Cancelled)
        );
    }

    #[test]
    fn deleting_a_restored_event_is_history_without_a_webhook() {
        let cancelled = session(SessionStatus::Cancelled);
        let noted = decide(&cancelled, &Command::DeleteRestoredEvent, "platform", t(1)).unwrap();
        assert_eq!(
            noted.history.last().unwrap().command,
            "delete_restored_event"
        );
        assert!(noted.outbox.is_empty());
        assert_eq!(
            decide(
                &session(SessionStatus::Confirmed),
                &Command::DeleteRestoredEvent,
                "platform",
                t(1)
            ),
            None
        );
    }

    #[test]
    fn writes_back_to_the_calendar_that_caused_the_change_are_filtered() {
        let move_ = Command::Reschedule {
            start: t(1),
            end: t(2),
        };
        assert_eq!(
            calendar_writes(&move_, ORIGIN_EXCHANGE_INBOUND),
            vec![Provider::Google]
        );
        let cancel = Command::CommitCancellation { now: t(1) };
        assert_eq!(
            calendar_writes(&cancel, ORIGIN_EXCHANGE_INBOUND),
            vec![Provider::Google]
        );
        assert_eq!(
            calendar_writes(&move_, ORIGIN_GOOGLE_INBOUND),
            vec![Provider::Exchange]
        );
        assert_eq!(
            calendar_writes(&cancel, "platform"),
            vec![Provider::Exchange, Provider::Google]
        );
        assert!(calendar_writes(&Command::FlagDecline, "platform").is_empty());
    }
}
