//! The `sequence` every `session.*` webhook payload carries: an integer that increases with
//! each event of one session, so a receiver can drop an event older than one it has already
//! applied (docs/WEBHOOKS.md, "Ordering").
//!
//! One space per session, from two sources:
//! - the events the booking engine emits (Outlook changes, committed cancellations) take
//!   theirs from the session record's version, which the command's compare-and-set write
//!   creates: `version * STRIDE`. A retry of the same command re-creates the same value.
//! - the `session.*` events the platform dispatches itself take the next value of a
//!   per-session counter in the store when the payload has none, never below
//!   `mirror version * STRIDE + 1`: above every event the mirror has emitted, below its next.
//!   A `sequence` the platform sends is kept as sent, and raises the counter to it (so the
//!   platform's later drawn values are above it; the booking engine's are not: they stay
//!   `version * STRIDE`, so a value sent at or above the next of those is ordered after
//!   them, which docs/WEBHOOKS.md tells the platform).
//!
//! A dispatch draws its value before it stores anything and commits the counter's
//! compare-and-set in the same transaction as the event's deliveries
//! ([`super::WebhookEngine::dispatch_stamped`]): one commit per event, and a value is taken
//! only by an event that is stored. A lost race writes nothing; the dispatch draws again.
//!
//! Values are not contiguous: compare them, never count them.
//!
//! The local system draws without a read when it can ([`Guesses`]): from what its own last
//! commit left of the session's counter and mirror, or, for a `session.created` event of a
//! session it has not seen, from "neither exists yet". The commit checks a guess (the
//! counter's version and the mirror's), so a wrong one only costs a commit that writes
//! nothing, then a read (it is not counted among the [`ATTEMPTS`]). A `session.created`
//! event whose session was already mirrored (the booking engine saw the session first) is
//! such a miss. Lambda functions always read: there a failed transaction is a round trip,
//! and another function's writes make remembered state stale.

use serde_json::Value;

use super::engine::Dispatch;
use crate::ports::TxWrite;
use crate::store::{SequenceState, Store};
use crate::{validate, Error, Result};

/// Lost races retried before giving up (each one means another dispatch took a value), with
/// a short random pause between them ([`crate::retry::after_lost_race`]) so a burst of dispatches for one
/// session spreads out.
pub const ATTEMPTS: usize = 40;

/// A session's sequence as drawn from its counter: the value, and the conditional writes
/// that take it (committed with whatever the value is used for; when a condition fails,
/// nothing was taken: draw again).
#[derive(Debug, Clone)]
pub struct SequenceDraw {
    /// The value to stamp on the event.
    pub value: u64,
    /// The counter's compare-and-set (and, for a guessed draw, the mirror's check); none
    /// when the counter is already at or above a value the platform sent (nothing to
    /// write).
    pub writes: Vec<TxWrite>,
    /// The counter and mirror once the writes committed (for [`Guesses`]); `None` for a
    /// value the platform sent.
    pub after: Option<SequenceState>,
}

/// Most sessions [`Guesses`] remembers; when full it starts again empty (a forgotten session
/// is read, as it would be without a memory).
pub const GUESSES_KEPT: usize = 10_000;

/// What this process's commits left of session counters and mirrors (the local system's;
/// see the module docs): a draw from it needs no read.
#[derive(Debug, Default)]
pub struct Guesses {
    known: std::sync::Mutex<std::collections::HashMap<(String, String), SequenceState>>,
}

impl Guesses {
    /// What to draw an event of `session` from without a read: the state this process's
    /// last commit for it left, else for a `session.created` event "no counter, no
    /// mirror"; `None`: read.
    pub fn guess(&self, company: &str, session: &str, event_type: &str) -> Option<SequenceState> {
        let known = self.known.lock().ok()?;
        known
            .get(&(company.to_string(), session.to_string()))
            .copied()
            .or_else(|| (event_type == "session.created").then(SequenceState::default))
    }

    /// Keeps the state a commit left (`None`: forgets it, as after a failed commit).
    pub fn remember(&self, company: &str, session: &str, state: Option<SequenceState>) {
        let Ok(mut known) = self.known.lock() else {
            return;
        };
        let key = (company.to_string(), session.to_string());
        match state {
            Some(state) => {
                if known.len() >= GUESSES_KEPT && !known.contains_key(&key) {
                    known.clear();
                }
                known.insert(key, state);
            }
            None => {
                known.remove(&key);
            }
        }
    }
}

/// The error after [`ATTEMPTS`] lost races: a passing condition, worth a retry by the caller
/// (503), not a conflict the caller caused (409).
pub fn contended(session: &str) -> Error {
    Error::Unavailable(format!(
        "the sequence of session {session} is contended; retry"
    ))
}

/// What a dispatched event takes from its session's counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stamp {
    /// Not a session event: no `sequence`.
    Unsequenced,
    /// The session's next value, drawn from its counter.
    Next { session: String },
    /// The platform sent this value: kept as sent, and the counter raised to it.
    Given { session: String, value: u64 },
}

/// The gap between the sequences of two successive session record versions: room for
/// this many platform-dispatched events between two booking-engine events.
pub const STRIDE: u64 = 1 << 20;

/// The largest `sequence`: 2^53 - 1, the largest integer every JSON reader (JavaScript's
/// numbers among them) holds exactly. A platform value above it is refused (422); a session
/// whose counter reached it takes no further drawn value (422 too).
pub const MAX_SEQUENCE: u64 = (1 << 53) - 1;

/// The value after `last`, if there is one within [`MAX_SEQUENCE`].
pub fn after(last: u64) -> Result<u64> {
    last.checked_add(1)
        .filter(|v| *v <= MAX_SEQUENCE)
        .ok_or_else(|| {
            Error::validation(
                "payload.sequence",
                "this session's events have reached the largest sequence (2^53 - 1): no later value exists",
            )
        })
}

/// The sequence of the event emitted by the write that creates session `version`.
pub fn of_session_version(version: u64) -> u64 {
    version.saturating_mul(STRIDE)
}

/// The lowest sequence a dispatched event may take while the session's mirror is at
/// `mirror_version` (0: no mirror).
pub fn dispatch_floor(mirror_version: u64) -> u64 {
    of_session_version(mirror_version).saturating_add(1)
}

/// Whether an event type is a session event (and so carries `session_id` and `sequence`).
pub fn is_session_event(event_type: &str) -> bool {
    event_type.starts_with("session.")
}

/// Checks a dispatched `session.*` payload: `session_id` names the session, and a
/// `sequence` the platform sends is a non-negative integer.
pub fn check(event_type: &str, payload: &serde_json::Map<String, Value>) -> Result<()> {
    if !is_session_event(event_type) {
        return Ok(());
    }
    match payload.get("session_id") {
        Some(Value::String(id)) => validate::identifier("payload.session_id", id)?,
        Some(_) => return Err(Error::validation("payload.session_id", "must be a string")),
        None => {
            return Err(Error::validation(
                "payload.session_id",
                "is required for session.* events",
            ))
        }
    }
    match payload.get("sequence") {
        None => Ok(()),
        Some(v) if v.as_u64().is_some_and(|n| n <= MAX_SEQUENCE) => Ok(()),
        Some(_) => Err(Error::validation(
            "payload.sequence",
            "must be an integer from 0 to 2^53 - 1",
        )),
    }
}

/// Checks a dispatched event ([`check`]) and tells what it takes from its session's counter.
pub fn plan(dispatch: &Dispatch) -> Result<Stamp> {
    check(&dispatch.event_type, &dispatch.payload)?;
    if !is_session_event(&dispatch.event_type) {
        return Ok(Stamp::Unsequenced);
    }
    let Some(session) = dispatch.payload.get("session_id").and_then(Value::as_str) else {
        return Ok(Stamp::Unsequenced);
    };
    let session = session.to_string();
    Ok(
        match dispatch.payload.get("sequence").and_then(Value::as_u64) {
            Some(value) => Stamp::Given { session, value },
            None => Stamp::Next { session },
        },
    )
}

/// Draws what `stamp` takes from the counter of a session of `company` (one read, no
/// write); `None` for an unsequenced event.
pub async fn draw(store: &Store, company: &str, stamp: &Stamp) -> Result<Option<SequenceDraw>> {
    match stamp {
        Stamp::Unsequenced => Ok(None),
        Stamp::Next { session } => store
            .draw_session_sequence(company, session)
            .await
            .map(Some),
        Stamp::Given { session, value } => store
            .draw_raised_sequence(company, session, *value)
            .await
            .map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dispatched_events_fall_between_the_mirrors_events() {
        let emitted = of_session_version(4);
        let floor = dispatch_floor(4);
        assert!(floor > emitted);
        assert!(floor + STRIDE - 2 < of_session_version(5));
        assert_eq!(dispatch_floor(0), 1);
    }

    #[test]
    fn session_payloads_name_their_session() {
        let map = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert!(check("webhook.test", &map(json!({}))).is_ok());
        assert!(check("session.created", &map(json!({"session_id": "s1"}))).is_ok());
        assert!(check(
            "session.created",
            &map(json!({"session_id": "s1", "sequence": 7}))
        )
        .is_ok());
        for (payload, field) in [
            (json!({}), "payload.session_id"),
            (json!({"session_id": 3}), "payload.session_id"),
            (json!({"session_id": "a#b"}), "payload.session_id"),
            (
                json!({"session_id": "s1", "sequence": -1}),
                "payload.sequence",
            ),
            (
                json!({"session_id": "s1", "sequence": "7"}),
                "payload.sequence",
            ),
            (
                json!({"session_id": "s1", "sequence": MAX_SEQUENCE + 1}),
                "payload.sequence",
            ),
            (
                json!({"session_id": "s1", "sequence": u64::MAX}),
                "payload.sequence",
            ),
        ] {
            let err = check("session.updated", &map(payload.clone())).unwrap_err();
            assert_eq!(err.field(), Some(field), "{payload}");
        }
    }

    #[tokio::test]
    async fn a_drawn_value_is_taken_only_by_the_commit_that_carries_it() {
        use std::sync::Arc;
        let clock = Arc::new(crate::ports::clock::ManualClock::new(chrono::Utc::now()));
        let store = Store::new(Arc::new(crate::ports::memory::MemoryTable::new()), clock);
        let next = Stamp::Next {
            session: "s1".into(),
        };
        // Two dispatches draw the same value; nothing is taken until a commit carries it.
        let first = draw(&store, "acme", &next).await.unwrap().unwrap();
        let second = draw(&store, "acme", &next).await.unwrap().unwrap();
        assert_eq!((first.value, second.value), (1, 1));
        let writes = |d: SequenceDraw| d.writes;
        assert!(store
            .create_deliveries_with(&[], writes(first))
            .await
            .unwrap());
        // The loser writes nothing and draws again.
        assert!(!store
            .create_deliveries_with(&[], writes(second))
            .await
            .unwrap());
        assert_eq!(draw(&store, "acme", &next).await.unwrap().unwrap().value, 2);
        // A value the platform sent raises the counter once; at or below it, nothing to write.
        let given = |value| Stamp::Given {
            session: "s1".into(),
            value,
        };
        let raised = draw(&store, "acme", &given(50)).await.unwrap().unwrap();
        assert_eq!(raised.value, 50);
        assert!(store
            .create_deliveries_with(&[], writes(raised))
            .await
            .unwrap());
        let lower = draw(&store, "acme", &given(10)).await.unwrap().unwrap();
        assert_eq!(lower.value, 10);
        assert!(lower.writes.is_empty());
        assert_eq!(
            draw(&store, "acme", &next).await.unwrap().unwrap().value,
            51
        );
        assert!(draw(&store, "acme", &Stamp::Unsequenced)
            .await
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_plan_keeps_a_sent_value_and_draws_otherwise() {
        let dispatch = |event: &str, payload: Value| Dispatch {
            company_id: "acme".into(),
            event_type: event.into(),
            payload: payload.as_object().cloned().unwrap_or_default(),
            idempotency_key: None,
            only_endpoint: None,
        };
        assert_eq!(
            plan(&dispatch(
                "connection.active",
                json!({"connection_id": "c1"})
            ))
            .unwrap(),
            Stamp::Unsequenced
        );
        assert_eq!(
            plan(&dispatch("session.created", json!({"session_id": "s1"}))).unwrap(),
            Stamp::Next {
                session: "s1".into()
            }
        );
        assert_eq!(
            plan(&dispatch(
                "session.created",
                json!({"session_id": "s1", "sequence": 9})
            ))
            .unwrap(),
            Stamp::Given {
                session: "s1".into(),
                value: 9
            }
        );
        assert!(plan(&dispatch("session.created", json!({}))).is_err());
    }

    #[tokio::test]
    async fn the_counter_increases_and_respects_the_mirror() {
        use std::sync::Arc;
        let clock = Arc::new(crate::ports::clock::ManualClock::new(chrono::Utc::now()));
        let store = Store::new(Arc::new(crate::ports::memory::MemoryTable::new()), clock);
        let first = store.next_session_sequence("acme", "s9").await.unwrap();
        let second = store.next_session_sequence("acme", "s9").await.unwrap();
        assert_eq!((first, second), (1, 2));
        assert_eq!(
            store.next_session_sequence("acme", "other").await.unwrap(),
            1
        );
    }
}
