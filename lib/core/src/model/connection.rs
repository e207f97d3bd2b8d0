//! A staff member's calendar connected to the platform through Google or Exchange.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Google,
    Exchange,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Google => "google",
            Provider::Exchange => "exchange",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionStatus {
    /// Created; the push channel / subscription is not in place yet.
    Pending,
    Active,
    /// The last sync or subscription attempt failed; `last_error` says why. Retried.
    Error,
    /// Switched off by the tenant; never synced.
    Disabled,
}

/// A Google push channel or a Graph subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushChannel {
    /// Google channel id or Graph subscription id.
    pub id: String,
    /// Google's `resourceId` (needed to stop a channel); unused for Graph.
    #[serde(default)]
    pub resource_id: Option<String>,
    pub expires_at: DateTime<Utc>,
    /// Google channel token or Graph `clientState`: checked in constant time on every push,
    /// never returned by any route.
    pub secret: String,
    /// When the Graph subscription was made or last renewed (unused for Google): it is
    /// renewed a day later, so one Graph dropped without its lifecycle notification reaching
    /// us is found within a day. `None` in records written before it was kept (renewed at
    /// the next run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub id: String,
    pub company_id: String,
    pub provider: Provider,
    pub staff_id: String,
    pub staff_email: String,
    #[serde(default)]
    pub calendar_id: Option<String>,
    pub status: ConnectionStatus,
    #[serde(default)]
    pub last_sync_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub channel: Option<PushChannel>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Optimistic concurrency: every state change is a compare-and-set on this.
    #[serde(default)]
    pub version: u64,
}
