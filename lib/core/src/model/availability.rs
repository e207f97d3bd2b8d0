//! Busy time from a connected calendar that blocks booking.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Provider;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AvailabilityOverride {
    pub company_id: String,
    pub staff_id: String,
    pub connection_id: String,
    pub source: Provider,
    pub external_event_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    #[serde(default)]
    pub all_day: bool,
    pub updated_at: DateTime<Utc>,
    /// The full listing that last wrote it (none: an incremental round did). After a full
    /// listing, a connection's overrides of any other listing are of events it did not show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listing: Option<String>,
}

/// Names one override without its times: what a removal needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideRef {
    pub company_id: String,
    pub staff_id: String,
    pub connection_id: String,
    pub external_event_id: String,
}

impl AvailabilityOverride {
    pub fn reference(&self) -> OverrideRef {
        OverrideRef {
            company_id: self.company_id.clone(),
            staff_id: self.staff_id.clone(),
            connection_id: self.connection_id.clone(),
            external_event_id: self.external_event_id.clone(),
        }
    }
}
