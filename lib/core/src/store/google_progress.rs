//! Where an unfinished Google sync resumes: its paging checkpoint.
//!
//! A sync that runs out of its time budget between pages leaves the `nextPageToken` of the
//! last page it applied here, with what kind of sync it is (full, from when; or incremental,
//! from which sync token), and the next invocation reads on from it. The record is small and
//! constant in size whatever the calendar's size. It names the delta cursor version it
//! started from, so a record left behind by a crash after the sync token was stored is
//! recognised as stale and dropped. It expires after [`PROGRESS_TTL_HOURS`] untouched.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::{company_pk, decode, encode, Store, Versioned};
use crate::ports::{Condition, Item, Key};
use crate::Result;

/// An abandoned checkpoint (its connection failing for days) is forgotten after this long;
/// the next sync then starts over.
pub const PROGRESS_TTL_HOURS: i64 = 48;

fn key_of(company: &str, connection: &str) -> Key {
    Key::new(company_pk(company), format!("GSYNCPROG#{connection}"))
}

/// A Google sync's paging checkpoint, written after each applied page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoogleSyncProgress {
    pub company_id: String,
    pub connection_id: String,
    /// The `nextPageToken` after the last applied page: where the next invocation reads on.
    pub page_token: String,
    /// A full sync over the window around `started_at`, or an incremental one.
    pub full: bool,
    /// The sync token an incremental sync pages from (`None` for a full sync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_token: Option<String>,
    /// When the sync began. A full sync's window is `[started_at - 1 day, started_at + 180
    /// days)`, and after its last page the connection's overrides written before it (their
    /// events were not listed) are removed.
    pub started_at: DateTime<Utc>,
    /// The delta cursor version the sync started from (0: none).
    pub cursor_version: u64,
    /// The sync started over after a 410.
    #[serde(default)]
    pub resynced: bool,
    /// Pages applied so far, over every invocation.
    #[serde(default)]
    pub pages: u64,
    /// Set once a full sync's listing is complete: its last page's `nextSyncToken`, stored
    /// as the cursor when the mapped events the listing did not show have all been read
    /// (`page_token` is then empty: nothing is listed again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_sync_token: Option<String>,
    /// Those mapped events are read in event-id order; this is the last one done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlisted_after: Option<String>,
    /// The calendar's zone as the listing's pages named it, for all-day events read then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calendar_time_zone: Option<String>,
    pub updated_at: DateTime<Utc>,
}

impl Versioned for GoogleSyncProgress {
    fn set_version(&mut self, _: u64) {}
}

impl Store {
    /// The connection's checkpoint, if a sync of it is unfinished.
    pub async fn google_sync_progress(
        &self,
        company: &str,
        connection: &str,
    ) -> Result<Option<GoogleSyncProgress>> {
        match self.table.get(&key_of(company, connection)).await? {
            Some(item) if self.live(&item) => Ok(Some(decode(&item)?)),
            _ => Ok(None),
        }
    }

    /// Stores the checkpoint (one writer: the holder of the connection's lease).
    pub async fn save_google_sync_progress(&self, progress: &GoogleSyncProgress) -> Result<()> {
        let mut item = Item::new(
            key_of(&progress.company_id, &progress.connection_id),
            encode(progress)?,
        );
        item.expires_at =
            Some((progress.updated_at + Duration::hours(PROGRESS_TTL_HOURS)).timestamp());
        self.table.put(item, Condition::None).await?;
        Ok(())
    }

    /// Forgets the checkpoint: the sync finished, started over, or its connection is gone.
    pub async fn clear_google_sync_progress(&self, company: &str, connection: &str) -> Result<()> {
        self.table
            .delete(&key_of(company, connection), Condition::None)
            .await?;
        Ok(())
    }
}
