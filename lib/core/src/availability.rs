//! What counts as busy: one table per provider, and the company's settings that tune it.
//!
//! Availability overrides decide which moves are accepted and what the platform offers, so
//! they must match what a staff member sees as busy in their own calendar. The rules, also
//! written as a table in the README ("What counts as busy"):
//!
//! | event | Exchange (Graph) | Google |
//! |---|---|---|
//! | busy (`showAs` `busy`; Google opaque) | busy | busy |
//! | no `showAs` at all (Graph's default) | busy | - |
//! | `free` / Google `transparency: transparent` | free | free |
//! | `tentative` / Google `attendees[self].responseStatus: tentative` | the company's `tentative` setting | the company's `tentative` setting |
//! | `oof` / Google `eventType: outOfOffice` | the company's `out_of_office` setting | the company's `out_of_office` setting |
//! | `workingElsewhere` | busy | - |
//! | Google invitation not answered yet (`needsAction`) or accepted | - | busy |
//! | Google `eventType` `focusTime`, `fromGmail`, `default` | - | busy |
//! | `unknown` | free | - |
//! | cancelled (`isCancelled` / `status: cancelled`) | free | free |
//! | declined by the staff member (Graph `responseStatus.response`, Google `attendees[self].responseStatus`) | free | free |
//! | Google `eventType` `workingLocation` or `birthday` | - | never busy |
//! | the platform's own events (sessions) | never an override | never an override |
//!
//! On Google, an event that any row makes free is free (a declined out-of-office invitation,
//! say). Google's `attendees[self]` is the entry of the calendar's owner (Google marks it).
//!
//! The settings are read when an event is read: changing them applies to every event read
//! from then on (a full sync re-reads everything; the next change of an event re-reads it).

use serde::{Deserialize, Serialize};

use crate::store::Store;
use crate::Result;

/// Whether a kind of event blocks booking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Busyness {
    #[default]
    Busy,
    Free,
}

impl Busyness {
    pub fn is_busy(self) -> bool {
        self == Busyness::Busy
    }
}

/// A company's availability settings (`PUT /v1/settings/availability`); both default to
/// `busy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AvailabilitySettings {
    /// Graph `showAs: tentative`, Google `attendees[self].responseStatus: tentative`.
    #[serde(default)]
    pub tentative: Busyness,
    /// Graph `showAs: oof`, Google `eventType: outOfOffice`.
    #[serde(default)]
    pub out_of_office: Busyness,
}

/// The company's settings (the defaults when it never set any).
pub async fn settings(store: &Store, company: &str) -> Result<AvailabilitySettings> {
    Ok(store
        .availability_settings(company)
        .await?
        .unwrap_or_default())
}
