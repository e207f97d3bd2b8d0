//! A change that takes effect later unless undone (a cancellation with a grace period).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingKind {
    Cancellation,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingChange {
    pub company_id: String,
    pub session_id: String,
    pub kind: PendingKind,
    /// When the scheduled job may commit it.
    pub due_at: DateTime<Utc>,
    pub origin: String,
    pub created_at: DateTime<Utc>,
}
