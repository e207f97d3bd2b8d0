//! The link between a platform session and the provider event that shows it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Provider;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMapping {
    pub company_id: String,
    pub session_id: String,
    pub connection_id: String,
    pub provider: Provider,
    pub external_event_id: String,
    /// Graph `changeKey` / Google `etag` of our last write: a change carrying it is our echo.
    #[serde(default)]
    pub change_key: Option<String>,
    /// What we last wrote, to tell a staff member's move from our own.
    pub last_start: DateTime<Utc>,
    pub last_end: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the provider says the event last changed, as of our last write or read of it
    /// (Google's `updated`; `None` where the provider's reads do not carry it): a read of
    /// the event older than that is stale and reconciles nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<DateTime<Utc>>,
    #[serde(default)]
    pub version: u64,
}
