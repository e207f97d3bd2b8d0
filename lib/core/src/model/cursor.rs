//! Where a connection's delta sync resumes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum CursorToken {
    /// Google `nextSyncToken`.
    GoogleSyncToken(String),
    /// Graph `@odata.deltaLink` (a whole URL).
    GraphDeltaLink(String),
}

/// Advanced only after a round's effects are durable, with a version check, so that a crash
/// replays a page instead of skipping it (DESIGN-NOTES 1.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaCursor {
    pub company_id: String,
    pub connection_id: String,
    pub token: CursorToken,
    pub updated_at: DateTime<Utc>,
    /// When the full sync this cursor continues began: the sync window is
    /// `[based_at - 1 day, based_at + 180 days)`, and a cursor older than a day is replaced by
    /// a fresh full sync (the window moves with time). `None` for cursors stored before
    /// windows were re-based: they are re-based at the next round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub based_at: Option<DateTime<Utc>>,
    /// The calendar's time zone, in which its all-day events are read: Graph's mailbox time
    /// zone (`mailboxSettings.timeZone`) as read at the start of the full sync this cursor
    /// continues; Google's calendar time zone (an events list's `timeZone`) as of the sync
    /// that stored the cursor, for the events read one at a time, outside a listing.
    /// Stored as `mailbox_time_zone`, its name from before Google used it too, so cursors
    /// written by either version of the code read the same in the other.
    #[serde(
        default,
        rename = "mailbox_time_zone",
        skip_serializing_if = "Option::is_none"
    )]
    pub calendar_time_zone: Option<String>,
    /// 0 for a cursor not stored yet.
    #[serde(default)]
    pub version: u64,
}

/// How far an unfinished Graph delta round got: stored after each applied page when the
/// round runs out of its time budget, so the next invocation continues where it stopped
/// (a first sync of any size completes across invocations). The stored `deltaLink`
/// ([`DeltaCursor`]) is only replaced when a round completes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundProgress {
    pub company_id: String,
    pub connection_id: String,
    /// The `nextLink` to follow next (its pages are not applied yet); `None` when the round
    /// stopped just before starting the full listing over the window based at `started`.
    #[serde(default)]
    pub link: Option<String>,
    /// The version of the cursor the round continues from; progress of a round whose cursor
    /// was replaced since is stale and dropped.
    pub cursor_version: u64,
    /// The round is a full listing of the window (first sync, 410, re-base).
    pub full: bool,
    /// The round is following an old cursor to its end before a re-base.
    pub rebase: bool,
    /// When the full listing began: overrides not written since are of events not listed.
    pub started: DateTime<Utc>,
    pub based_at: Option<DateTime<Utc>>,
    /// Mapped (or platform-tagged) events the full listing has shown so far.
    #[serde(default)]
    pub seen_mapped: Vec<String>,
    /// More were shown than a checkpoint keeps: every mapped event is read at the end.
    #[serde(default)]
    pub seen_overflow: bool,
    /// The mailbox's time zone the listing read when it began.
    #[serde(default)]
    pub mailbox_time_zone: Option<String>,
    /// Pages applied so far by the round.
    pub pages: usize,
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calendar_zone_is_stored_under_the_name_older_code_reads() {
        let stored = r#"{"company_id":"acme","connection_id":"c1",
            "token":{"kind":"graph_delta_link","value":"https://x/delta"},
            "updated_at":"2026-11-30T00:00:00Z","mailbox_time_zone":"Tokyo Standard Time",
            "version":3}"#;
        let cursor: DeltaCursor = serde_json::from_str(stored).unwrap();
        assert_eq!(
            cursor.calendar_time_zone.as_deref(),
            Some("Tokyo Standard Time")
        );
        // Written back under the same name, and read again.
        let written = serde_json::to_string(&cursor).unwrap();
        assert!(written.contains("\"mailbox_time_zone\":\"Tokyo Standard Time\""));
        let again: DeltaCursor = serde_json::from_str(&written).unwrap();
        assert_eq!(again, cursor);
    }
}
