//! The platform's mirror of a session (booking): what the integrations layer believes the
//! booking is, changed only through the booking command engine.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{EventMapping, PendingChange, Provider};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Confirmed,
    PendingCancellation,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClient {
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
}

/// One change to a session, with where it came from (`platform`, `exchange-inbound`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    pub command: String,
    pub origin: String,
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub company_id: String,
    pub staff_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub time_zone: String,
    pub title: String,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub client: Option<SessionClient>,
    pub status: SessionStatus,
    /// The staff member declined the calendar invitation.
    #[serde(default)]
    pub declined: bool,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    /// The cancellation waiting for its grace period, while `status` is
    /// `pending_cancellation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingChange>,
    /// Webhook events a command produced that are not yet published: written in the same
    /// conditional write as the command, cleared once the bus has them (an outbox, so a
    /// crash between the two never loses an event).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<OutboxEvent>,
    /// The newest platform change applied (the `version` the platform sends with a change):
    /// a change carrying a version not newer than this is stale and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_version: Option<u64>,
    /// The newest platform version whose calendar write completed (or needed none): a
    /// change carrying `platform_version` again is a retry, and stale once this equals it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calendar_version: Option<u64>,
    /// The `transactionId` of a calendar create that may have happened without its result
    /// being recorded (set before the create, cleared when its event is mapped). A
    /// cancellation that finds no mapped event uses it to find the event Graph may have made
    /// (an idempotent create returns it) and delete it: no orphan event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_txn: Option<String>,
    /// The id chosen for the Google event a create is about to make for this placement of
    /// the session (recorded with the intent, before the call; cleared when the event is
    /// mapped): a retried insert finds its own event, and a new placement (booked again,
    /// given to another staff member) gets a new id, never an old deleted event's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub google_event: Option<String>,
    /// Events that are no longer the session's but may still be in a calendar: their
    /// mappings were retired by a platform write (a re-booking, or the session given back to
    /// a staff member whose event was still mapped, which the move away may have been
    /// deleting), or the session was given to another staff member while the previous
    /// placement's create was unrecorded (the write failed after the provider made the
    /// event, and its retry is stale now): never written over, deleted by the next write of
    /// their provider that puts the calendar right, and cleared in its commit. Recorded with
    /// the intent, so a write that fails or dies before the deletion leaves the duty to its
    /// retry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<RetiredEvent>,
    /// Times the session had before the platform's later changes, kept until a calendar
    /// write of the session's current times is recorded (at most [`UNSETTLED_TIMES`]): a
    /// write of an earlier change may have moved an event and lost its closing commit (a
    /// store error, a crash, an answer lost), so its mapping still records the times before
    /// it. An event read at one of these times is such a write's echo, not a staff member's
    /// move, and is written back to the session's times (review 8, finding 4; simulation
    /// seed 779: the lost write's version counted as settled once the booking's
    /// cancellation was pending, so settling cannot be what clears them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsettled_times: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// When a platform change last moved the session (its times or its staff member), by
    /// this system's clock: a staff member's move made before it, read while that change
    /// has not reached the calendar, is no request ([`crate::reconcile::plan`]). Title-only
    /// changes, redeliveries and failed writes leave it as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times_changed_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub version: u64,
}

/// An event of a retired mapping, or of a placement given up before its create was recorded
/// (see [`Session::retired`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredEvent {
    pub provider: Provider,
    pub connection_id: String,
    /// The event's id; with `by_transaction`, the `transactionId` of an Exchange create that
    /// may have made it (its id was never recorded).
    pub event_id: String,
    /// `event_id` is a `transactionId`: the event, if the create made it, is found by the
    /// same idempotent create, then deleted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_transaction: bool,
}

impl RetiredEvent {
    pub fn of(m: &EventMapping) -> RetiredEvent {
        RetiredEvent {
            provider: m.provider,
            connection_id: m.connection_id.clone(),
            event_id: m.external_event_id.clone(),
            by_transaction: false,
        }
    }
}

/// The most [`Session::unsettled_times`] kept (the oldest go first).
pub const UNSETTLED_TIMES: usize = 8;

impl Session {
    /// After a calendar write of `change` whose commit records it: when it wrote the
    /// session's current times (the platform's newest change, or a copy of the session as
    /// stored), no earlier time is kept ([`Session::unsettled_times`]). That calendar shows
    /// the current times and its mapping says so, so an older write's echo reads as stale
    /// there; waiting for every calendar instead would hold a staff member's move back to an
    /// earlier time forever when another of their calendars never settles (a disabled
    /// connection), each such move written back unseen.
    pub fn forget_unsettled_after(&mut self, change: &crate::calendar::SessionChange) {
        let current = change
            .version
            .is_none_or(|v| Some(v) == self.platform_version)
            && (change.start, change.end) == (self.start, self.end);
        if current {
            self.unsettled_times.clear();
        }
    }

    /// Records that every calendar has answered the platform's change `version` (its
    /// `calendar_version`): a retry of it is stale. (An answer is not always a write: a
    /// calendar whose booking's cancellation is pending writes nothing. So the times kept
    /// for echoes stay: [`Session::forget_unsettled_after`] clears them.)
    pub fn settle(&mut self, version: u64) {
        if self.calendar_version < Some(version) {
            self.calendar_version = Some(version);
        }
    }

    /// The session's retired events of `provider`, in two parts: the ones that are its own
    /// again (`current`: the event a write just wrote, the one mapped now), cleared without
    /// being deleted; and the ones still to delete. Each provider's outbound writer deletes
    /// the second part its own way.
    pub fn retired_in(
        &self,
        provider: Provider,
        current: [Option<&str>; 2],
    ) -> (Vec<RetiredEvent>, Vec<RetiredEvent>) {
        self.retired
            .iter()
            .filter(|r| r.provider == provider)
            .cloned()
            .partition(|r| current.contains(&Some(r.event_id.as_str())))
    }
}

/// A webhook event waiting in a session's outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEvent {
    pub event_type: String,
    pub payload: serde_json::Map<String, serde_json::Value>,
    /// Stable across retries, so a re-published event is delivered once.
    pub idempotency_key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retired(provider: Provider, event: &str) -> RetiredEvent {
        RetiredEvent {
            provider,
            connection_id: "c1".into(),
            event_id: event.into(),
            by_transaction: false,
        }
    }

    #[test]
    fn a_write_of_the_current_times_clears_the_earlier_ones_and_a_write_of_older_ones_does_not() {
        // Arrange: the platform's version 3 at the stored times; an earlier time kept.
        let mut s = crate::reconcile::tests::session(SessionStatus::Confirmed, false);
        s.platform_version = Some(3);
        s.unsettled_times = vec![(s.start - chrono::Duration::hours(2), s.start)];
        let mut change = crate::calendar::change_of(&s);
        change.as_stored = false;
        change.version = Some(2);

        // Act / Assert: version 2's write (older) keeps them; settling keeps them;
        // version 3's write clears them.
        s.forget_unsettled_after(&change);
        s.settle(3);
        assert_eq!(s.unsettled_times.len(), 1);
        change.version = Some(3);
        s.forget_unsettled_after(&change);
        assert_eq!(s.unsettled_times.len(), 0);
    }

    #[test]
    fn a_sessions_retired_events_of_a_provider_are_split_into_its_own_again_and_the_ones_to_delete()
    {
        // Arrange: two retired Exchange events (one written again), one Google event.
        let mut s = crate::reconcile::tests::session(SessionStatus::Confirmed, false);
        s.retired = vec![
            retired(Provider::Exchange, "e-old"),
            retired(Provider::Google, "g-old"),
            retired(Provider::Exchange, "e-again"),
        ];

        // Act
        let (own, to_delete) = s.retired_in(Provider::Exchange, [Some("e-again"), None]);

        // Assert: the Google event belongs to neither part.
        assert_eq!(own, vec![retired(Provider::Exchange, "e-again")]);
        assert_eq!(to_delete, vec![retired(Provider::Exchange, "e-old")]);
    }
}
