//! The reconciliation plan: what a change a staff member made to one of the platform's
//! calendar events means for the booking. A pure function of the provider's event (as a
//! snapshot), our mapping and the session as the platform holds it, so every case is a
//! table row and echoes of our own writes are harmless by construction (DESIGN-NOTES 1.3):
//! when the event agrees with the session, the plan is empty.
//!
//! The mapping remembers what the calendar showed when we last wrote or read the event
//! (`change_key`, `last_start`, `last_end`). That tells a staff member's move (the event is
//! somewhere neither we nor the platform put it) from a calendar that lags behind the
//! platform (the event is where we last saw it, but the platform has moved the session
//! since, for example while the event sat in Deleted Items): the first is a reschedule, the
//! second a write-back.
//!
//! Steps come in a fixed order: booking commands that only change the session first
//! (restore, decline), then at most one step that writes to the calendar (reschedule, which
//! may be rejected and written back; write-back; delete). The engine re-plans from fresh
//! state after each session command and after a lost compare-and-set, and stops after a
//! calendar write (the snapshot no longer shows the calendar then).

use chrono::{DateTime, Utc};

use crate::model::{EventMapping, Session, SessionStatus};

/// A provider event reduced to what reconciliation reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSnapshot {
    pub event_id: String,
    pub change_key: Option<String>,
    pub state: SnapshotState,
    /// When the provider says the event last changed (Google's `updated`), when known.
    pub modified: Option<DateTime<Utc>>,
}

impl EventSnapshot {
    /// The event `event_id` as a read found it: gone.
    pub fn removed(event_id: impl Into<String>) -> Self {
        EventSnapshot {
            event_id: event_id.into(),
            change_key: None,
            state: SnapshotState::Removed,
            modified: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotState {
    /// Deleted: a direct read of the event answered 404/410. A delta page's `@removed`, or
    /// an event missing from a full listing, is only a reason to read the event (Graph
    /// reports events moved out of the sync window as removed too); it never becomes this
    /// state unread.
    Removed,
    Live {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        /// `isCancelled`: cancelled by the organiser but still in the calendar.
        cancelled: bool,
        /// The staff member declined (`responseStatus.response == "declined"`).
        declined: bool,
    },
}

impl EventSnapshot {
    /// The event's times, when it is live.
    pub fn times(&self) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        match self.state {
            SnapshotState::Live { start, end, .. } => Some((start, end)),
            SnapshotState::Removed => None,
        }
    }
}

/// One step of a plan; the booking command engine carries each out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanStep {
    /// The event is gone: the booking is cancelled after a grace period unless it returns.
    MarkPendingCancellation,
    /// The event came back while its cancellation was pending.
    Restore,
    /// The staff member declined.
    FlagDecline,
    /// The event moved: the booking follows (or the move is rejected on conflict).
    Reschedule {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    /// The event is where the calendar last showed it, but the platform has moved the
    /// session since: put the event at the session's times (our write, not a move).
    WriteBack,
    /// The session is cancelled but its event is live (restored from Deleted Items, or a
    /// create whose answer was lost): delete it again.
    DeleteEvent,
}

impl PlanStep {
    /// The booking command that carries the step out (a move before any conflict check);
    /// `None` for steps that only write to the calendar.
    pub fn command(&self, grace: chrono::Duration) -> Option<crate::booking::Command> {
        use crate::booking::Command;
        match self {
            PlanStep::MarkPendingCancellation => Some(Command::PendingCancellation { grace }),
            PlanStep::Restore => Some(Command::Restore),
            PlanStep::Reschedule { start, end } => Some(Command::Reschedule {
                start: *start,
                end: *end,
            }),
            PlanStep::FlagDecline => Some(Command::FlagDecline),
            PlanStep::WriteBack => None,
            PlanStep::DeleteEvent => Some(Command::DeleteRestoredEvent),
        }
    }
}

/// What to do about `snapshot`, the event `mapping` links to `session`.
///
/// - a cancelled session is final: a live event of it is deleted again, nothing else;
/// - a live event ends a pending cancellation (restore), whatever its change key;
/// - otherwise, the event carries the change key of our last write or read and agrees with
///   the session's times: nothing (an echo, or a duplicate notification);
/// - deleted or cancelled in place: pending cancellation (unless already pending);
/// - back while pending: restore, then what it also carries;
/// - declined and not yet flagged: flag;
/// - times differ from the session's: a reschedule when the event moved since we last saw
///   it, a write-back when it is still where we last saw it (the platform moved the session).
pub fn plan(snapshot: &EventSnapshot, mapping: &EventMapping, session: &Session) -> Vec<PlanStep> {
    if is_stale_read(snapshot, mapping) {
        return Vec::new();
    }
    if session.status == SessionStatus::Cancelled {
        return match snapshot.state {
            SnapshotState::Live {
                cancelled: false, ..
            } => vec![PlanStep::DeleteEvent],
            _ => Vec::new(),
        };
    }
    // Our own write (or what we last read) - unless the event's times disagree with the
    // session: then a write of ours was overtaken by a newer platform change (two changes of
    // one session written at once), and the calendar must follow the session.
    let agrees = snapshot
        .times()
        .is_some_and(|times| times == (session.start, session.end));
    let echo = snapshot.change_key.is_some()
        && snapshot.change_key == mapping.change_key
        && (agrees || snapshot.state == SnapshotState::Removed);
    match &snapshot.state {
        SnapshotState::Removed
        | SnapshotState::Live {
            cancelled: true, ..
        } => match session.status {
            SessionStatus::Confirmed if !echo => vec![PlanStep::MarkPendingCancellation],
            _ => Vec::new(),
        },
        SnapshotState::Live {
            start,
            end,
            declined,
            ..
        } => {
            let mut steps = Vec::new();
            // The event is there: a pending cancellation ends, whoever wrote it last - if
            // this calendar is the one whose deletion started it. (With two calendars, the
            // other one's copy of the event is still there: that is no restore.)
            if session.status == SessionStatus::PendingCancellation
                && started_here(session, mapping)
            {
                steps.push(PlanStep::Restore);
            }
            if echo {
                return steps;
            }
            if *declined && !session.declined {
                steps.push(PlanStep::FlagDecline);
            }
            if (*start, *end) != (session.start, session.end) {
                // Where we last saw it, or where an unsettled platform change may have put
                // it (a write whose commit was lost, [`Session::unsettled_times`]): ours.
                let ours = (*start, *end) == (mapping.last_start, mapping.last_end)
                    || session.unsettled_times.contains(&(*start, *end));
                if ours || overtaken_by_platform(snapshot, mapping, session) {
                    steps.push(PlanStep::WriteBack);
                } else {
                    steps.push(PlanStep::Reschedule {
                        start: *start,
                        end: *end,
                    });
                }
            }
            steps
        }
    }
}

/// Whether the staff member's change `snapshot` shows was made before the platform's newest
/// change of the session, which has not reached this calendar yet (the mapping still
/// records other times than the session's: the platform's write is in flight, or failed
/// and will be sent again). The platform's newer change wins: its write overwrites the
/// event (a changed event is read again and written over), so the session keeps the
/// platform's times and the event is written back to them, instead of the older move
/// being taken for a request made since (review 10, a black-box run: the booking went
/// back to the staff member's time and the platform's write answered `superseded`).
/// Compares the provider's modification time with the time the platform's change was
/// recorded by this system's clock ([`Session::times_changed_at`]: only changes that moved
/// the session count): only when the provider gives one.
fn overtaken_by_platform(
    snapshot: &EventSnapshot,
    mapping: &EventMapping,
    session: &Session,
) -> bool {
    let unwritten = (mapping.last_start, mapping.last_end) != (session.start, session.end);
    unwritten
        && matches!((snapshot.modified, session.times_changed_at), (Some(seen), Some(changed)) if seen < changed)
}

/// A read of the event older than the last write or read of it the mapping records (the
/// provider's modification times, where it gives them): what it shows is history, and
/// planning from it would undo a newer change (a move of ours read back late, or our own
/// deletion read after the session was booked again under the same event id).
pub fn is_stale_read(snapshot: &EventSnapshot, mapping: &EventMapping) -> bool {
    matches!((snapshot.modified, mapping.modified), (Some(seen), Some(known)) if seen < known)
}

/// Whether the session's pending cancellation was started by a deletion in the calendar of
/// `mapping` (or by something that is no calendar's: then any calendar's event ends it).
fn started_here(session: &Session, mapping: &EventMapping) -> bool {
    session
        .pending
        .as_ref()
        .and_then(|p| crate::booking::origin_provider(&p.origin))
        .is_none_or(|provider| provider == mapping.provider)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::Provider;
    use chrono::{Duration, TimeZone};

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap() + Duration::hours(h)
    }

    pub(crate) fn session(status: SessionStatus, declined: bool) -> Session {
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
            declined,
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
            version: 1,
        }
    }

    /// A session the platform moved to 11:00-12:00 (the calendar last showed 9:00-10:00).
    fn moved_session(status: SessionStatus) -> Session {
        let mut s = session(status, false);
        s.start = t(11);
        s.end = t(12);
        s
    }

    fn mapping() -> EventMapping {
        EventMapping {
            company_id: "acme".into(),
            session_id: "s1".into(),
            connection_id: "c1".into(),
            provider: Provider::Exchange,
            external_event_id: "e1".into(),
            change_key: Some("ours".into()),
            last_start: t(9),
            last_end: t(10),
            updated_at: t(0),
            version: 1,
            modified: None,
        }
    }

    fn live(start: i64, end: i64, cancelled: bool, declined: bool) -> SnapshotState {
        SnapshotState::Live {
            start: t(start),
            end: t(end),
            cancelled,
            declined,
        }
    }

    fn snap(key: &str, state: SnapshotState) -> EventSnapshot {
        EventSnapshot {
            event_id: "e1".into(),
            change_key: Some(key.into()),
            state,
            modified: None,
        }
    }

    use PlanStep::*;
    use SessionStatus::*;

    #[test]
    fn every_case_of_the_plan() {
        let moved = Reschedule {
            start: t(11),
            end: t(12),
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, EventSnapshot, Session, Vec<PlanStep>)> = vec![
            ("our own echo, even deleted", snap("ours", SnapshotState::Removed), session(Confirmed, false), vec![]),
            ("our own write, agreeing with the session", snap("ours", live(9, 10, false, false)), session(Confirmed, false), vec![]),
            ("deleted", snap("k", SnapshotState::Removed), session(Confirmed, false), vec![MarkPendingCancellation]),
            ("cancelled in place", snap("k", live(9, 10, true, false)), session(Confirmed, false), vec![MarkPendingCancellation]),
            ("deleted again while pending", snap("k", SnapshotState::Removed), session(PendingCancellation, false), vec![]),
            ("deleted after cancellation", snap("k", SnapshotState::Removed), session(Cancelled, false), vec![]),
            ("back after a delete", snap("k", live(9, 10, false, false)), session(PendingCancellation, false), vec![Restore]),
            ("back and moved", snap("k", live(11, 12, false, false)), session(PendingCancellation, false), vec![Restore, moved.clone()]),
            ("moved", snap("k", live(11, 12, false, false)), session(Confirmed, false), vec![moved.clone()]),
            ("only the end moved", snap("k", live(9, 11, false, false)), session(Confirmed, false), vec![Reschedule { start: t(9), end: t(11) }]),
            ("declined", snap("k", live(9, 10, false, true)), session(Confirmed, false), vec![FlagDecline]),
            ("declined, already flagged", snap("k", live(9, 10, false, true)), session(Confirmed, true), vec![]),
            ("moved and declined", snap("k", live(11, 12, false, true)), session(Confirmed, false), vec![FlagDecline, moved.clone()]),
            ("unchanged (title edit)", snap("k", live(9, 10, false, false)), session(Confirmed, false), vec![]),
            ("a cancelled booking is final: its live event is deleted again", snap("k", live(11, 12, false, true)), session(Cancelled, false), vec![DeleteEvent]),
            ("a cancelled booking's event restored with our last key", snap("ours", live(9, 10, false, false)), session(Cancelled, false), vec![DeleteEvent]),
            ("a cancelled booking's event cancelled in place", snap("k", live(9, 10, true, false)), session(Cancelled, false), vec![]),
            ("where we last saw it, but the platform moved the session", snap("k", live(9, 10, false, false)), moved_session(Confirmed), vec![WriteBack]),
            ("restored where it was, the platform moved the session meanwhile", snap("k", live(9, 10, false, false)), moved_session(PendingCancellation), vec![Restore, WriteBack]),
            ("moved by the staff member while the platform moved the session", snap("k", live(13, 14, false, false)), moved_session(Confirmed), vec![Reschedule { start: t(13), end: t(14) }]),
        ];
        for (name, snapshot, session, want) in cases {
            assert_eq!(plan(&snapshot, &mapping(), &session), want, "{name}");
        }
    }

    #[test]
    fn our_own_write_overtaken_by_a_newer_platform_change_is_written_back() {
        // We wrote 11:00 (an older platform change, finishing last); the session says 9:00.
        let mut m = mapping();
        (m.last_start, m.last_end) = (t(11), t(12));
        let s = snap("ours", live(11, 12, false, false));
        assert_eq!(
            plan(&s, &m, &session(Confirmed, false)),
            vec![PlanStep::WriteBack]
        );
    }

    #[test]
    fn an_event_at_the_times_of_an_unsettled_platform_change_is_written_back_not_read_as_a_move() {
        // The platform moved the session to 11:00 (its write's commit lost) and then to
        // 13:00; the event shows 11:00 under a change key we never recorded.
        let mut s = session(Confirmed, false);
        (s.start, s.end) = (t(13), t(14));
        s.unsettled_times = vec![(t(11), t(12))];
        let snapshot = snap("k", live(11, 12, false, false));
        assert_eq!(plan(&snapshot, &mapping(), &s), vec![PlanStep::WriteBack]);
    }

    #[test]
    fn a_snapshot_without_a_change_key_is_never_taken_for_an_echo() {
        let mut m = mapping();
        m.change_key = None;
        let s = EventSnapshot {
            event_id: "e1".into(),
            change_key: None,
            state: SnapshotState::Removed,
            modified: None,
        };
        assert_eq!(
            plan(&s, &m, &session(Confirmed, false)),
            vec![MarkPendingCancellation]
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn any_status() -> impl Strategy<Value = SessionStatus> {
            prop_oneof![Just(Confirmed), Just(PendingCancellation), Just(Cancelled)]
        }

        fn any_state() -> impl Strategy<Value = SnapshotState> {
            prop_oneof![
                Just(SnapshotState::Removed),
                (7i64..13, 1i64..3, any::<bool>(), any::<bool>()).prop_map(|(s, len, c, d)| live(
                    s,
                    s + len,
                    c,
                    d
                )),
            ]
        }

        /// Carries out `steps` as the engine does, on a model of the calendar: returns the
        /// session, the mapping and the calendar's event afterwards.
        fn apply(
            session: &Session,
            mapping: &EventMapping,
            snapshot: &EventSnapshot,
            steps: &[PlanStep],
        ) -> (Session, EventMapping, EventSnapshot) {
            let mut s = session.clone();
            let mut m = mapping.clone();
            let mut calendar = snapshot.clone();
            for step in steps {
                if let Some(command) = step.command(Duration::minutes(10)) {
                    if let Some(next) = crate::booking::decide(&s, &command, "test", t(1)) {
                        s = next;
                        s.version += 1;
                    }
                }
                match step {
                    PlanStep::Reschedule { .. } => {}
                    PlanStep::WriteBack => {
                        calendar.change_key = Some("written".into());
                        calendar.state = live(0, 0, false, false);
                        if let SnapshotState::Live { start, end, .. } = &mut calendar.state {
                            (*start, *end) = (s.start, s.end);
                        }
                    }
                    PlanStep::DeleteEvent => {
                        calendar.change_key = Some("written".into());
                        calendar.state = SnapshotState::Removed;
                    }
                    _ => {}
                }
            }
            // What the calendar shows now is what the mapping remembers.
            m.change_key = calendar.change_key.clone();
            if let Some((start, end)) = calendar.times() {
                (m.last_start, m.last_end) = (start, end);
            }
            (s, m, calendar)
        }

        proptest! {
            #[test]
            fn applying_a_plan_twice_equals_once(status in any_status(), declined in any::<bool>(), state in any_state(), key in prop_oneof![Just("ours"), Just("theirs")]) {
                let snapshot = snap(key, state);
                let s0 = session(status, declined);
                let m0 = mapping();
                let (s1, m1, calendar) = apply(&s0, &m0, &snapshot, &plan(&snapshot, &m0, &s0));
                // What the calendar shows afterwards (a replay, a duplicate notification, the
                // echo of our own write): no steps...
                let again = plan(&calendar, &m1, &s1);
                prop_assert!(again.is_empty(), "replanned {:?} after {:?}", again, s1.status);
                // ...and so applying it changes nothing.
                prop_assert_eq!(apply(&s1, &m1, &calendar, &again).0, s1);
            }

            #[test]
            fn a_confirmed_booking_ends_with_its_event_at_its_time_or_cancelled_without_one(status in any_status(), declined in any::<bool>(), state in any_state(), key in prop_oneof![Just("ours"), Just("theirs")]) {
                let snapshot = snap(key, state);
                let s0 = session(status, declined);
                let m0 = mapping();
                let (s1, _, calendar) = apply(&s0, &m0, &snapshot, &plan(&snapshot, &m0, &s0));
                match (s1.status, calendar.state) {
                    (Cancelled, SnapshotState::Live { cancelled: false, .. }) => prop_assert!(false, "a cancelled booking kept a live event"),
                    (Confirmed, SnapshotState::Live { start, end, cancelled: false, .. }) if key != "ours" => {
                        prop_assert_eq!((start, end), (s1.start, s1.end));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Review 10: the staff member's move, made before the platform's newer change that
    /// has not reached the calendar yet, is written back, not taken for a request.
    #[test]
    fn a_move_older_than_the_platforms_unwritten_change_is_written_back() {
        let mut s = moved_session(SessionStatus::Confirmed);
        s.times_changed_at = Some(t(5));
        let mut moved = snap("k2", live(13, 14, false, false));
        moved.modified = Some(t(4));

        assert_eq!(plan(&moved, &mapping(), &s), vec![PlanStep::WriteBack]);

        // The same move made after the platform's change is the staff member's request.
        moved.modified = Some(t(6));
        assert_eq!(
            plan(&moved, &mapping(), &s),
            vec![PlanStep::Reschedule {
                start: t(13),
                end: t(14)
            }]
        );
    }
}
