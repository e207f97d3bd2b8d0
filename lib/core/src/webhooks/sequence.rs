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
//!   A `sequence` the platform sends is kept as sent.
//!
//! Values are not contiguous: compare them, never count them.

use serde_json::{json, Value};

use super::engine::Dispatch;
use crate::store::Store;
use crate::{validate, Error, Result};

/// The gap between the sequences of two successive session record versions: room for
/// this many platform-dispatched events between two booking-engine events.
pub const STRIDE: u64 = 1 << 20;

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
        Some(v) if v.as_u64().is_some() => Ok(()),
        Some(_) => Err(Error::validation(
            "payload.sequence",
            "must be a non-negative integer",
        )),
    }
}

/// Gives a dispatched `session.*` event its `sequence` (after [`check`]): kept when the
/// payload carries one (the booking engine's events relayed through the bus, or a value the
/// platform chose), else the session's next.
pub async fn stamp(store: &Store, dispatch: &mut Dispatch) -> Result<()> {
    check(&dispatch.event_type, &dispatch.payload)?;
    if !is_session_event(&dispatch.event_type) {
        return Ok(());
    }
    let Some(session) = dispatch
        .payload
        .get("session_id")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return Ok(());
    };
    if let Some(given) = dispatch.payload.get("sequence").and_then(Value::as_u64) {
        // Kept as given; the session's later events are numbered above it.
        return store
            .raise_session_sequence(&dispatch.company_id, &session, given)
            .await;
    }
    let next = store
        .next_session_sequence(&dispatch.company_id, &session)
        .await?;
    dispatch.payload.insert("sequence".into(), json!(next));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        ] {
            let err = check("session.updated", &map(payload.clone())).unwrap_err();
            assert_eq!(err.field(), Some(field), "{payload}");
        }
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
