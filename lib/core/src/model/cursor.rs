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
    /// 0 for a cursor not stored yet.
    #[serde(default)]
    pub version: u64,
}
