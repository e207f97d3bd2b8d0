//! The reconciliation plan: what a change a staff member made to one of the platform's
//! calendar events means for the booking. A pure function of the provider's event (as a
//! snapshot), our mapping and the session as the platform holds it, so every case is a
//! table row and echoes of our own writes are harmless by construction (DESIGN-NOTES 1.3):
//! when the event agrees with the session, the plan is empty.

use chrono::{DateTime, Utc};

use crate::model::{EventMapping, Session, SessionStatus};

/// A provider event reduced to what reconciliation reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSnapshot {
    pub event_id: String,
    pub change_key: Option<String>,
    pub state: SnapshotState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotState {
    /// Deleted (or moved out of the synced window, which we treat alike).
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

/// One step of a plan; the booking command engine carries each out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanStep {
    /// The event is gone: the booking is cancelled after a grace period unless it returns.
    MarkPendingCancellation,
    /// The event came back while its cancellation was pending.
    Restore,
    /// The event moved: the booking follows (or the move is rejected on conflict).
    Reschedule {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    /// The staff member declined.
    FlagDecline,
}

impl PlanStep {
    /// The booking command that carries the step out (a move before any conflict check).
    pub fn command(&self, grace: chrono::Duration) -> crate::booking::Command {
        use crate::booking::Command;
        match self {
            PlanStep::MarkPendingCancellation => Command::PendingCancellation { grace },
            PlanStep::Restore => Command::Restore,
            PlanStep::Reschedule { start, end } => Command::Reschedule {
                start: *start,
                end: *end,
            },
            PlanStep::FlagDecline => Command::FlagDecline,
        }
    }
}

/// What to do about `snapshot`, the event `mapping` links to `session`.
///
/// - the event carries the change key of our last write: our own echo, nothing;
/// - deleted or cancelled: pending cancellation (unless already pending or cancelled);
/// - back while pending: restore, then any move or decline it also carries;
/// - start/end differ from the session's: reschedule;
/// - declined and not yet flagged: flag;
/// - a cancelled session is final: nothing.
pub fn plan(snapshot: &EventSnapshot, mapping: &EventMapping, session: &Session) -> Vec<PlanStep> {
    if snapshot.change_key.is_some() && snapshot.change_key == mapping.change_key {
        return Vec::new();
    }
    if session.status == SessionStatus::Cancelled {
        return Vec::new();
    }
    match &snapshot.state {
        SnapshotState::Removed
        | SnapshotState::Live {
            cancelled: true, ..
        } => match session.status {
            SessionStatus::Confirmed => vec![PlanStep::MarkPendingCancellation],
            _ => Vec::new(),
        },
        SnapshotState::Live {
            start,
            end,
            declined,
            ..
        } => {
            let mut steps = Vec::new();
            if session.status == SessionStatus::PendingCancellation {
                steps.push(PlanStep::Restore);
            }
            if (*start, *end) != (session.start, session.end) {
                steps.push(PlanStep::Reschedule {
                    start: *start,
                    end: *end,
                });
            }
            if *declined && !session.declined {
                steps.push(PlanStep::FlagDecline);
            }
            steps
        }
    }
}

#[cfg(test)]
mod tests {
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
            updated_at: t(0),
            version: 1,
        }
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
            ("our own echo of a move", snap("ours", live(11, 12, false, false)), session(Confirmed, false), vec![]),
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
            ("moved and declined", snap("k", live(11, 12, false, true)), session(Confirmed, false), vec![moved.clone(), FlagDecline]),
            ("unchanged (title edit)", snap("k", live(9, 10, false, false)), session(Confirmed, false), vec![]),
            ("a cancelled booking is final", snap("k", live(11, 12, false, true)), session(Cancelled, false), vec![]),
        ];
        for (name, snapshot, session, want) in cases {
            assert_eq!(plan(&snapshot, &mapping(), &session), want, "{name}");
        }
    }

    #[test]
    fn a_snapshot_without_a_change_key_is_never_taken_for_an_echo() {
        let mut m = mapping();
        m.change_key = None;
        let s = EventSnapshot {
            event_id: "e1".into(),
            change_key: None,
            state: SnapshotState::Removed,
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

        fn apply(session: &Session, steps: &[PlanStep]) -> Session {
            let mut s = session.clone();
            for step in steps {
                if let Some(next) =
                    crate::booking::decide(&s, &step.command(Duration::minutes(10)), "test", t(1))
                {
                    s = next;
                    s.version += 1;
                }
            }
            s
        }

        proptest! {
            #[test]
            fn applying_a_plan_twice_equals_once(status in any_status(), declined in any::<bool>(), state in any_state(), key in prop_oneof![Just("ours"), Just("theirs")]) {
                let snapshot = snap(key, state);
                let s0 = session(status, declined);
                let once = apply(&s0, &plan(&snapshot, &mapping(), &s0));
                // The same snapshot again (a replay, a duplicate notification): no steps...
                let again = plan(&snapshot, &mapping(), &once);
                prop_assert!(again.is_empty(), "replanned {:?} after {:?}", again, once.status);
                // ...and so applying it changes nothing.
                prop_assert_eq!(apply(&once, &again), once);
            }
        }
    }
}
