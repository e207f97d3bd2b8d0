//! Google delta sync: a staff member's busy time becomes availability overrides.
//!
//! Per connection: `events.list` with the stored sync token (or a full sync over
//! [`WINDOW_PAST_DAYS`]..[`WINDOW_FUTURE_DAYS`] with `singleEvents=true`), following
//! `nextPageToken`; `nextSyncToken` comes only with the last page and is stored then, with a
//! versioned write. Busy events (not `transparent`, not cancelled, not the platform's own,
//! tagged in `extendedProperties.private`) become overrides; cancelled or freed ones remove
//! theirs. All-day events are read in the calendar's time zone. A 410 clears the token and
//! runs a full sync, after which overrides whose events are gone are removed. Each page's
//! overrides are one batched write.

use std::collections::HashSet;

use chrono::Duration;
use futures::stream::{self, StreamExt};
use serde::Serialize;

use super::api::{GoogleError, ListRequest};
use super::credentials;
use crate::deps::Deps;
use crate::model::availability::OverrideRef;
use crate::model::{
    AvailabilityOverride, Connection, ConnectionStatus, CursorToken, DeltaCursor, Provider,
};
use crate::{Error, Result};

pub const WINDOW_PAST_DAYS: i64 = 1;
pub const WINDOW_FUTURE_DAYS: i64 = 180;
/// `maxResults` per page (Google's default; at most 2500).
pub const PAGE_SIZE: u32 = 250;
/// Connections synced at once by the job: one slow calendar never holds the others back,
/// and Google's per-project rate limit is not stampeded.
pub const CONCURRENCY: usize = 8;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    pub pages: usize,
    pub events: usize,
    pub overrides_upserted: usize,
    pub overrides_removed: usize,
    pub full: bool,
    /// The token expired and the sync started over.
    pub resynced: bool,
    /// Another sync of this connection was running: this request joined it (it runs once
    /// more when done).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub coalesced: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// Why a connection cannot be synced at all (logged, no error status): it lacks what a sync
/// needs, which is the tenant's to fix and not a failure of the calendar.
fn missing_field(c: &Connection) -> Option<&'static str> {
    if c.staff_id.trim().is_empty() {
        Some("staff id")
    } else if c.staff_email.trim().is_empty() {
        Some("staff email")
    } else if c.calendar_id.as_deref().is_none_or(|s| s.trim().is_empty()) {
        Some("calendar id")
    } else if c.company_id.trim().is_empty() {
        Some("tenant id")
    } else {
        None
    }
}

/// Syncs one connection and records the outcome on it. Provider failures become the
/// connection's `error` status (the next run tries again); store failures are returned.
pub async fn sync_connection(deps: &Deps, conn: &mut Connection) -> Result<SyncReport> {
    let result = sync_connection_once(deps, conn).await;
    let outcome = match &result {
        Ok(r) if r.skipped.is_some() => "skipped",
        Ok(r) if r.coalesced => "coalesced",
        Ok(r) if r.full || r.resynced => "full",
        Ok(_) => "ok",
        Err(_) => "error",
    };
    crate::metrics::count("google_syncs", &[("outcome", outcome)], 1);
    result
}

async fn sync_connection_once(deps: &Deps, conn: &mut Connection) -> Result<SyncReport> {
    if let Some(field) = missing_field(conn) {
        tracing::info!(connection = %conn.id, field, "google sync skipped: connection lacks a field");
        return Ok(SyncReport {
            skipped: Some(format!("the connection has no {field}")),
            ..Default::default()
        });
    }
    let Some(account) = credentials::load(deps, &conn.company_id).await? else {
        tracing::info!(connection = %conn.id, "google sync skipped: no credentials");
        return Ok(SyncReport {
            skipped: Some(credentials::MISSING.into()),
            ..Default::default()
        });
    };
    // One sync at a time per connection: a request meanwhile coalesces into one more run.
    let mut lease = match deps.store.claim_lease(&conn.company_id, &conn.id).await? {
        crate::store::LeaseClaim::Acquired(lease) => lease,
        crate::store::LeaseClaim::Coalesced => {
            return Ok(SyncReport {
                coalesced: true,
                ..Default::default()
            })
        }
    };
    let mut runs = 0;
    loop {
        runs += 1;
        let result = run_and_record(deps, conn, &account).await;
        let released = deps.store.release_lease(lease).await;
        let report = match result {
            Ok(report) => report,
            Err(e) => {
                if let Ok(crate::store::Released::RunAgain(held)) = released {
                    let _ = deps.store.release_lease(held).await;
                }
                return Err(e);
            }
        };
        match released {
            // At most three runs for one request; the five-minute job syncs what came after.
            Ok(crate::store::Released::RunAgain(held)) if report.skipped.is_none() && runs < 3 => {
                lease = held
            }
            Ok(crate::store::Released::RunAgain(held)) => {
                let _ = deps.store.release_lease(held).await;
                return Ok(report);
            }
            Ok(crate::store::Released::Done) => return Ok(report),
            Err(e) => {
                tracing::warn!(connection = %conn.id, error = %e, "sync lease not released");
                return Ok(report);
            }
        }
    }
}

async fn run_and_record(
    deps: &Deps,
    conn: &mut Connection,
    account: &super::ServiceAccount,
) -> Result<SyncReport> {
    let result = run(deps, conn, account).await;
    let outcome = match &result {
        Ok(_) => None,
        Err(SyncError::Google(e)) => Some(e.to_string()),
        Err(SyncError::Store(_)) => None,
    };
    match result {
        Ok(report) => {
            deps.store.record_sync(conn, None).await?;
            Ok(report)
        }
        Err(SyncError::Google(GoogleError::RateLimited { .. })) => {
            // Backed off within the budget already; the next run (or the queue) retries.
            Err(Error::Unavailable(
                "Google is rate limiting this calendar".into(),
            ))
        }
        Err(SyncError::Google(_)) => {
            deps.store.record_sync(conn, outcome).await?;
            Ok(SyncReport {
                skipped: conn.last_error.clone(),
                ..Default::default()
            })
        }
        Err(SyncError::Store(e)) => Err(e),
    }
}

enum SyncError {
    Google(GoogleError),
    Store(Error),
}

impl From<Error> for SyncError {
    fn from(e: Error) -> Self {
        SyncError::Store(e)
    }
}

async fn run(
    deps: &Deps,
    conn: &Connection,
    account: &super::ServiceAccount,
) -> std::result::Result<SyncReport, SyncError> {
    let google = deps.google()?;
    let calendar_id = conn.calendar_id.clone().unwrap_or_default();
    let mut report = SyncReport::default();
    let mut cursor = deps.store.get_cursor(&conn.company_id, &conn.id).await?;
    let token = |c: &Option<DeltaCursor>| match c.as_ref().map(|c| &c.token) {
        Some(CursorToken::GoogleSyncToken(t)) => Some(t.clone()),
        _ => None,
    };
    let mut sync_token = token(&cursor);
    report.full = sync_token.is_none();
    let mut seen: HashSet<String> = HashSet::new();
    let mut page_token: Option<String> = None;
    loop {
        let now = deps.store.now();
        let request = ListRequest {
            calendar_id: calendar_id.clone(),
            sync_token: sync_token.clone(),
            time_min: sync_token
                .is_none()
                .then(|| now - Duration::days(WINDOW_PAST_DAYS)),
            time_max: sync_token
                .is_none()
                .then(|| now + Duration::days(WINDOW_FUTURE_DAYS)),
            page_token: page_token.clone(),
            max_results: PAGE_SIZE,
        };
        let page = match google
            .list_events(account, &conn.staff_email, &request)
            .await
        {
            Ok(p) => p,
            Err(GoogleError::FullSyncRequired) if !report.resynced => {
                tracing::info!(connection = %conn.id, "google sync token expired; full sync");
                deps.store.clear_cursor(&conn.company_id, &conn.id).await?;
                cursor = None;
                sync_token = None;
                page_token = None;
                report.resynced = true;
                report.full = true;
                seen.clear();
                continue;
            }
            Err(e) => return Err(SyncError::Google(e)),
        };
        report.pages += 1;
        report.events += page.items.len();
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        for event in &page.items {
            let reference = OverrideRef {
                company_id: conn.company_id.clone(),
                staff_id: conn.staff_id.clone(),
                connection_id: conn.id.clone(),
                external_event_id: event.id.clone(),
            };
            if event.is_platform_event() {
                continue;
            }
            if event.is_cancelled() || event.is_transparent() {
                removals.push(reference);
                continue;
            }
            let zone = page.time_zone.as_deref();
            let times = (
                event.start.as_ref().and_then(|t| t.to_utc(zone)),
                event.end.as_ref().and_then(|t| t.to_utc(zone)),
            );
            let (Some(start), Some(end)) = times else {
                tracing::warn!(event = %event.id, "google event with unreadable times skipped");
                continue;
            };
            if report.full {
                seen.insert(event.id.clone());
            }
            upserts.push(AvailabilityOverride {
                company_id: conn.company_id.clone(),
                staff_id: conn.staff_id.clone(),
                connection_id: conn.id.clone(),
                source: Provider::Google,
                external_event_id: event.id.clone(),
                start,
                end,
                all_day: event.is_all_day(),
                updated_at: now,
            });
        }
        if !upserts.is_empty() || !removals.is_empty() {
            deps.store.apply_overrides(&upserts, &removals).await?;
            report.overrides_upserted += upserts.len();
            report.overrides_removed += removals.len();
        }
        if let Some(next) = page.next_page_token {
            page_token = Some(next);
            continue;
        }
        let Some(next_sync) = page.next_sync_token else {
            return Err(SyncError::Google(GoogleError::Rejected {
                status: 200,
                reason: "no_sync_token".into(),
                message: "the last page carried no nextSyncToken".into(),
            }));
        };
        if report.full {
            let gone: Vec<OverrideRef> = deps
                .store
                .overrides_for_connection(&conn.company_id, &conn.staff_id, &conn.id)
                .await?
                .into_iter()
                .filter(|o| !seen.contains(&o.external_event_id))
                .map(|o| o.reference())
                .collect();
            if !gone.is_empty() {
                deps.store.apply_overrides(&[], &gone).await?;
                report.overrides_removed += gone.len();
            }
        }
        let mut next = DeltaCursor {
            company_id: conn.company_id.clone(),
            connection_id: conn.id.clone(),
            token: CursorToken::GoogleSyncToken(next_sync),
            updated_at: deps.store.now(),
            based_at: None,
            version: cursor.as_ref().map_or(0, |c| c.version),
        };
        match deps.store.save_cursor(&mut next).await {
            // A concurrent sync of this connection stored its token first: as good as ours.
            Ok(()) | Err(Error::Conflict { .. }) => return Ok(report),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The `google-sync` job: every Google connection with status `active` or `error`, each
/// independently, [`CONCURRENCY`] at a time.
pub async fn sync_all(deps: &Deps) -> Result<crate::jobs::JobReport> {
    let mut connections = Vec::new();
    let mut cursor = None;
    loop {
        let page = deps.store.all_connections(Provider::Google, cursor).await?;
        connections.extend(
            page.items
                .into_iter()
                .filter(|c| matches!(c.status, ConnectionStatus::Active | ConnectionStatus::Error)),
        );
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    let results: Vec<bool> = stream::iter(connections)
        .map(|mut c| async move {
            match sync_connection(deps, &mut c).await {
                Ok(r) => r.skipped.is_none() || c.status != ConnectionStatus::Error,
                Err(e) => {
                    tracing::warn!(connection = %c.id, error = %e, "google sync failed");
                    false
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    Ok(crate::jobs::JobReport {
        job: "google-sync".into(),
        processed: results.iter().filter(|ok| **ok).count() as u64,
        failed: results.iter().filter(|ok| !**ok).count() as u64,
    })
}
