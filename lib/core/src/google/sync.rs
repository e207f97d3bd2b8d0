//! Google delta sync: a staff member's busy time becomes availability overrides.
//!
//! Per connection: `events.list` with the stored sync token (or a full sync over
//! [`WINDOW_PAST_DAYS`]..[`WINDOW_FUTURE_DAYS`] around the sync's start, `singleEvents=true`),
//! following `nextPageToken`; `nextSyncToken` comes only with the last page and is stored
//! then, with a versioned write, after every page is applied. Which events are busy is the
//! Google column of the busy table in [`crate::availability`] ([`verdict`]), with the
//! company's settings read once per sync. Busy events become overrides; free ones (cancelled,
//! transparent, declined, ...) remove theirs. All-day events are read in the calendar's time
//! zone. Each page's overrides are one batched write.
//!
//! **Resumable.** After each applied page the sync checkpoints its paging progress
//! ([`GoogleSyncProgress`]: the next page token, full or incremental, the full sync's start).
//! Between pages it checks its time budget (`VOYAGE_SYNC_BUDGET`): when over, it queues a
//! follow-up sync of the connection on the google-sync queue and returns; the next
//! invocation reads on from the checkpoint, so a calendar of any size finishes across
//! invocations, each inside the budget. A full sync labels every override it writes with
//! itself (its start, kept in the checkpoint) and removes, after its last page and a page at
//! a time, the connection's overrides with another label: their events were not listed. So
//! nothing it saw needs remembering between invocations, and no clock is compared. A 410
//! on the sync token or on a saved page token starts a full sync over. After a full
//! listing, the mapped events it did not show are read one by one
//! ([`super::inbound::reconcile_unlisted`]) in the same budget: out of it (or on a failed
//! read), the checkpoint keeps the listing's `nextSyncToken` and the last event read, and
//! the next invocation reads on from there without listing again.

use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::api::{EventsPage, GoogleError, GoogleEvent, ListRequest};
use super::{credentials, push};
use crate::availability::{self, AvailabilitySettings};
use crate::calendar::engine::Reconciled;
use crate::deps::Deps;
use crate::model::availability::OverrideRef;
use crate::model::{
    AvailabilityOverride, Connection, ConnectionStatus, CursorToken, DeltaCursor, Provider,
};
use crate::store::GoogleSyncProgress;
use crate::{Error, Result};

pub use crate::calendar::{WINDOW_FUTURE_DAYS, WINDOW_PAST_DAYS};
/// `maxResults` per page (Google's default; at most 2500).
pub const PAGE_SIZE: u32 = 250;

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
    /// This invocation read on from an earlier one's checkpoint.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    /// The time budget ran out between pages: progress is saved and a follow-up sync of the
    /// connection is queued.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub continues: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Booking commands caused by the staff member's changes to the platform's events.
    #[serde(skip_serializing_if = "is_zero")]
    pub commands: usize,
    /// Writes to the platform's events (write-backs, rejected moves, deletions).
    #[serde(skip_serializing_if = "is_zero")]
    pub calendar_writes: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
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
        Ok(r) if r.continues => "continued",
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
    // The budget covers every run of this invocation (a coalesced request's extra runs too).
    let began = Instant::now();
    let mut runs = 0;
    loop {
        runs += 1;
        let result = run_and_record(deps, conn, &account, began).await;
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
        let out_of_budget = report.continues || began.elapsed() >= deps.config.sync_budget;
        let mut follow_ups = usize::from(report.continues);
        match released {
            // At most three runs for one request, inside the budget; the five-minute job
            // syncs what came after.
            Ok(crate::store::Released::RunAgain(held))
                if report.skipped.is_none() && runs < 3 && !out_of_budget =>
            {
                lease = held;
                continue;
            }
            Ok(crate::store::Released::RunAgain(held)) => {
                let _ = deps.store.release_lease(held).await;
                // A request came meanwhile: it is owed a sync after this one (queued after
                // the follow-up when there is one).
                if report.skipped.is_none() && out_of_budget {
                    follow_ups += 1;
                }
            }
            Ok(crate::store::Released::Done) => {}
            Err(e) => {
                tracing::warn!(connection = %conn.id, error = %e, "sync lease not released");
            }
        }
        // Queued once the lease is free, so the follow-up never finds it held by us.
        for _ in 0..follow_ups {
            push::queue_sync(deps, &conn.company_id, &conn.id, std::time::Duration::ZERO).await?;
        }
        return Ok(report);
    }
}

async fn run_and_record(
    deps: &Deps,
    conn: &mut Connection,
    account: &super::ServiceAccount,
    began: Instant,
) -> Result<SyncReport> {
    let result = run(deps, conn, account, began).await;
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

impl From<crate::calendar::engine::Failure<GoogleError>> for SyncError {
    fn from(e: crate::calendar::engine::Failure<GoogleError>) -> Self {
        match e {
            crate::calendar::engine::Failure::Store(e) => SyncError::Store(e),
            crate::calendar::engine::Failure::Calendar(e) => SyncError::Google(e),
        }
    }
}

/// What an event means for its owner's availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not an override's business: the platform's own event (its session blocks the time).
    Ignore,
    /// Busy time: an override.
    Busy,
    /// Free: any override of it is removed. The reason is for logs and tests.
    Free(&'static str),
}

/// The Google column of the busy table ([`crate::availability`]), applied to one event with
/// the company's settings.
pub fn verdict(event: &GoogleEvent, settings: &AvailabilitySettings) -> Verdict {
    if event.is_platform_event() {
        return Verdict::Ignore;
    }
    if event.is_cancelled() {
        return Verdict::Free("cancelled");
    }
    if event.is_transparent() {
        return Verdict::Free("transparent");
    }
    match event.event_type() {
        "workingLocation" => return Verdict::Free("working location"),
        "birthday" => return Verdict::Free("birthday"),
        "outOfOffice" if !settings.out_of_office.is_busy() => {
            return Verdict::Free("out of office (company setting)")
        }
        _ => {}
    }
    match event.self_response() {
        Some("declined") => Verdict::Free("declined"),
        Some("tentative") if !settings.tentative.is_busy() => {
            Verdict::Free("tentative (company setting)")
        }
        _ => Verdict::Busy,
    }
}

/// Where this invocation's paging stands.
struct Paging {
    full: bool,
    sync_token: Option<String>,
    page_token: Option<String>,
    started_at: DateTime<Utc>,
    cursor_version: u64,
    /// A checkpoint exists (this invocation resumed one or wrote one): cleared at the end.
    checkpointed: bool,
}

impl Paging {
    fn fresh(sync_token: Option<String>, now: DateTime<Utc>, cursor_version: u64) -> Paging {
        Paging {
            full: sync_token.is_none(),
            sync_token,
            page_token: None,
            started_at: now,
            cursor_version,
            checkpointed: false,
        }
    }
}

async fn run(
    deps: &Deps,
    conn: &Connection,
    account: &super::ServiceAccount,
    began: Instant,
) -> std::result::Result<SyncReport, SyncError> {
    let google = deps.google()?;
    let budget = deps.config.sync_budget;
    let calendar_id = conn.calendar_id.clone().unwrap_or_default();
    let (company, id) = (conn.company_id.as_str(), conn.id.as_str());
    // Read once per sync: they apply to every event read from here on.
    let settings = availability::settings(&deps.store, company).await?;
    let mut report = SyncReport::default();
    let cursor = deps.store.get_cursor(company, id).await?;
    let cursor_version = cursor.as_ref().map_or(0, |c| c.version);
    // The calendar's zone, for all-day events read outside a page (each page names it).
    let mut zone = cursor.as_ref().and_then(|c| c.calendar_time_zone.clone());
    let sync_token = match cursor.as_ref().map(|c| &c.token) {
        Some(CursorToken::GoogleSyncToken(t)) => Some(t.clone()),
        _ => None,
    };
    let mut pages_before = 0u64;
    // The platform's events this invocation listed (a full sync reads the others after).
    let mut listed_ours = std::collections::HashSet::new();
    // A full sync whose listing was complete: where its reading of unlisted events stands.
    let mut listing_done = None;
    let mut paging = match deps.store.google_sync_progress(company, id).await? {
        Some(p) if p.cursor_version == cursor_version => {
            report.resumed = true;
            pages_before = p.pages;
            report.resynced = p.resynced;
            tracing::info!(connection = %id, full = p.full, pages = p.pages, "google sync resumes from its checkpoint");
            if let Some(next_sync) = p.next_sync_token {
                if p.calendar_time_zone.is_some() {
                    zone = p.calendar_time_zone;
                }
                listing_done = Some((next_sync, p.unlisted_after));
            }
            Paging {
                full: p.full,
                sync_token: p.sync_token,
                page_token: Some(p.page_token),
                started_at: p.started_at,
                cursor_version,
                checkpointed: true,
            }
        }
        stale => {
            if stale.is_some() {
                // Left by a sync whose token was stored after all: it finished.
                deps.store.clear_google_sync_progress(company, id).await?;
            }
            Paging::fresh(sync_token, deps.store.now(), cursor_version)
        }
    };
    report.full = paging.full;
    // Started over in this invocation already: a second 410 is Google's trouble, not a token
    // to drop again (the restored report says nothing about this invocation).
    let mut started_over = false;
    let (next_sync, mut position) = match listing_done {
        Some(done) => done,
        None => loop {
            let request = ListRequest {
                calendar_id: calendar_id.clone(),
                sync_token: if paging.full {
                    None
                } else {
                    paging.sync_token.clone()
                },
                // Every page of a full sync asks for the same window (Google wants the first
                // request's parameters with each page token), wherever its invocation runs.
                time_min: paging
                    .full
                    .then(|| paging.started_at - Duration::days(WINDOW_PAST_DAYS)),
                time_max: paging
                    .full
                    .then(|| paging.started_at + Duration::days(WINDOW_FUTURE_DAYS)),
                page_token: paging.page_token.clone(),
                max_results: PAGE_SIZE,
            };
            let page = match google
                .list_events(account, &conn.staff_email, &request)
                .await
            {
                Ok(p) => p,
                Err(GoogleError::FullSyncRequired) if !started_over => {
                    started_over = true;
                    // The sync token, or a saved page token, is no longer valid: start over. The
                    // cursor stays until the full sync replaces it (its version guards that
                    // write): what it keeps besides the token, the calendar's zone, is still
                    // true, and reads between now and then (`event_is_back`) need it.
                    tracing::info!(connection = %id, resumed = report.resumed, "google sync or page token expired; full sync");
                    deps.store.clear_google_sync_progress(company, id).await?;
                    paging = Paging::fresh(None, deps.store.now(), cursor_version);
                    pages_before = 0;
                    report.resynced = true;
                    report.full = true;
                    continue;
                }
                Err(e) => return Err(SyncError::Google(e)),
            };
            report.pages += 1;
            report.events += page.items.len();
            let listing = paging.full.then(|| listing_of(paging.started_at));
            let ours = apply_page(
                deps,
                conn,
                account,
                &settings,
                &page,
                listing.as_deref(),
                &mut report,
            )
            .await?;
            listed_ours.extend(ours);
            if page.time_zone.is_some() {
                zone.clone_from(&page.time_zone);
            }
            if let Some(next) = page.next_page_token {
                // Checkpoint after every applied page: an invocation that stops (its budget, a
                // crash) is resumed from here, and no page is applied twice.
                let progress = GoogleSyncProgress {
                    company_id: company.to_string(),
                    connection_id: id.to_string(),
                    page_token: next.clone(),
                    full: paging.full,
                    sync_token: (!paging.full).then(|| paging.sync_token.clone()).flatten(),
                    started_at: paging.started_at,
                    cursor_version: paging.cursor_version,
                    resynced: report.resynced,
                    pages: pages_before + report.pages as u64,
                    next_sync_token: None,
                    unlisted_after: None,
                    calendar_time_zone: None,
                    updated_at: deps.store.now(),
                };
                deps.store.save_google_sync_progress(&progress).await?;
                paging.checkpointed = true;
                paging.page_token = Some(next);
                if began.elapsed() >= budget {
                    // The caller queues the follow-up once the lease is released.
                    tracing::info!(connection = %id, pages = progress.pages, "google sync out of its time budget; the rest is queued");
                    report.continues = true;
                    return Ok(report);
                }
                continue;
            }
            let Some(next_sync) = page.next_sync_token else {
                return Err(SyncError::Google(GoogleError::Rejected {
                    status: 200,
                    reason: "no_sync_token".into(),
                    message: "the last page carried no nextSyncToken".into(),
                }));
            };
            if paging.full {
                // Every busy event listed was written at or after the sync began: what is older
                // belongs to events that are gone (or left the window).
                // A page at a time: memory stays bounded whatever the calendar's size.
                report.overrides_removed += deps
                    .store
                    .remove_overrides_not_of_listing(
                        company,
                        &conn.staff_id,
                        id,
                        &listing_of(paging.started_at),
                        Some(paging.started_at + Duration::days(WINDOW_FUTURE_DAYS)),
                    )
                    .await?;
                report.overrides_removed += confirm_beyond_window(
                    deps,
                    conn,
                    account,
                    &settings,
                    &listing_of(paging.started_at),
                    paging.started_at + Duration::days(WINDOW_FUTURE_DAYS),
                )
                .await?;
            }
            break (next_sync, None);
        },
    };
    let resumed_at = position.clone();
    if paging.full {
        // Mapped events the listing did not show (deleted ones are not listed; others lie
        // outside the window) are read one by one and reconciled: a full sync replaces the
        // sync token, so what changed before it is seen now or never. When the listing
        // spanned invocations, this one knows only its own pages: all are read. In the
        // budget, like the pages: out of it, the checkpoint keeps the token and the last
        // event read, and the follow-up reads on from there without listing again.
        let scope = super::inbound::UnlistedScope {
            listed: (!report.resumed).then_some(&listed_ours),
            calendar_zone: zone.as_deref(),
        };
        let out_of_time = || began.elapsed() >= budget;
        let mut done = Reconciled::default();
        let read = super::inbound::reconcile_unlisted(
            deps,
            conn,
            account,
            scope,
            &mut position,
            &out_of_time,
            &mut done,
        )
        .await;
        report.commands += done.commands;
        report.calendar_writes += done.calendar_writes;
        let checkpoint = |position: &Option<String>| GoogleSyncProgress {
            company_id: company.to_string(),
            connection_id: id.to_string(),
            page_token: String::new(),
            full: true,
            sync_token: None,
            started_at: paging.started_at,
            cursor_version: paging.cursor_version,
            resynced: report.resynced,
            pages: pages_before + report.pages as u64,
            next_sync_token: Some(next_sync.clone()),
            unlisted_after: position.clone(),
            calendar_time_zone: zone.clone(),
            updated_at: deps.store.now(),
        };
        match read {
            Ok(true) => {}
            Ok(false) => {
                deps.store
                    .save_google_sync_progress(&checkpoint(&position))
                    .await?;
                tracing::info!(connection = %id, "google sync out of its time budget while reading unlisted events; the rest is queued");
                report.continues = true;
                return Ok(report);
            }
            Err(e) => {
                // What was read stays read: the retry reads on after it. Saved only when this
                // invocation moved on (a save without progress would keep the checkpoint
                // from expiring, `PROGRESS_TTL_HOURS`).
                if position.is_some() && position != resumed_at {
                    if let Err(saved) = deps
                        .store
                        .save_google_sync_progress(&checkpoint(&position))
                        .await
                    {
                        tracing::warn!(connection = %id, error = %saved, "google sync checkpoint not saved");
                    } else {
                        paging.checkpointed = true;
                    }
                }
                return Err(e.into());
            }
        }
    }
    let mut next = DeltaCursor {
        company_id: company.to_string(),
        connection_id: id.to_string(),
        token: CursorToken::GoogleSyncToken(next_sync),
        updated_at: deps.store.now(),
        based_at: None,
        calendar_time_zone: zone,
        version: paging.cursor_version,
    };
    match deps.store.save_cursor(&mut next).await {
        Ok(()) => {
            if paging.checkpointed {
                deps.store.clear_google_sync_progress(company, id).await?;
            }
            Ok(report)
        }
        // A concurrent sync of this connection stored its token first: as good as ours.
        // A checkpoint of ours no longer matches the cursor's version and is dropped.
        Err(Error::Conflict { .. }) => Ok(report),
        Err(e) => Err(e.into()),
    }
}

/// Reads of overrides beyond a full listing's window, at most, per full sync.
pub const BEYOND_WINDOW_READS: usize = 50;

/// After a full listing: the connection's overrides beyond its window (found by incremental
/// syncs, which report events at any distance; the listing could not show them, so they
/// were kept) are read one by one, at most [`BEYOND_WINDOW_READS`] of them, and removed when
/// their event is gone or no longer busy. A full sync follows a lost sync token, when a
/// deletion may have been missed. A read that fails ends the reading (the rest are kept: a
/// busy time kept too long is safer than one removed while it holds). Answers how many
/// were removed.
async fn confirm_beyond_window(
    deps: &Deps,
    conn: &Connection,
    account: &super::ServiceAccount,
    settings: &AvailabilitySettings,
    listing: &str,
    window_end: DateTime<Utc>,
) -> std::result::Result<usize, SyncError> {
    let google = deps.google()?;
    let calendar_id = conn.calendar_id.clone().unwrap_or_default();
    let beyond: Vec<AvailabilityOverride> = deps
        .store
        .overrides_for_connection(&conn.company_id, &conn.staff_id, &conn.id)
        .await?
        .into_iter()
        .filter(|o| o.start >= window_end && o.listing.as_deref() != Some(listing))
        .take(BEYOND_WINDOW_READS)
        .collect();
    let mut gone = Vec::new();
    for o in &beyond {
        match google
            .get_event(
                account,
                &conn.staff_email,
                &calendar_id,
                &o.external_event_id,
            )
            .await
        {
            Ok(event) if verdict(&event, settings) == Verdict::Busy => {}
            Ok(_) | Err(GoogleError::NotFound) => gone.push(o.reference()),
            Err(e) => {
                tracing::info!(connection = %conn.id, error = %e, "overrides beyond the window not confirmed; kept");
                break;
            }
        }
    }
    deps.store.apply_overrides(&[], &gone).await?;
    Ok(gone.len())
}

/// The label of a full sync's overrides: its start, which its checkpoint keeps (a label,
/// compared for equality, never a clock compared across processes).
fn listing_of(started_at: DateTime<Utc>) -> String {
    started_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// One page's overrides, one batched write; during a full sync each carries its `listing`.
async fn apply_page(
    deps: &Deps,
    conn: &Connection,
    account: &super::ServiceAccount,
    settings: &AvailabilitySettings,
    page: &EventsPage,
    listing: Option<&str>,
    report: &mut SyncReport,
) -> std::result::Result<Vec<String>, SyncError> {
    let now = deps.store.now();
    let zone = page.time_zone.as_deref();
    // The platform's own events are reconciled with their sessions, never overrides.
    let (reconciled, ours) =
        super::inbound::reconcile_page(deps, conn, account, &page.items, zone).await?;
    report.commands += reconciled.commands;
    report.calendar_writes += reconciled.calendar_writes;
    let mut upserts = Vec::new();
    let mut removals = Vec::new();
    let skip: std::collections::HashSet<&str> = ours.iter().map(String::as_str).collect();
    for event in page.items.iter().filter(|e| !skip.contains(e.id.as_str())) {
        let reference = OverrideRef {
            company_id: conn.company_id.clone(),
            staff_id: conn.staff_id.clone(),
            connection_id: conn.id.clone(),
            external_event_id: event.id.clone(),
        };
        match verdict(event, settings) {
            Verdict::Ignore => continue,
            Verdict::Free(reason) => {
                tracing::debug!(event = %event.id, reason, "google event is free");
                removals.push(reference);
                continue;
            }
            Verdict::Busy => {}
        }
        let times = (
            event.start.as_ref().and_then(|t| t.to_utc(zone)),
            event.end.as_ref().and_then(|t| t.to_utc(zone)),
        );
        let (Some(start), Some(end)) = times else {
            tracing::warn!(event = %event.id, "google event with unreadable times skipped");
            continue;
        };
        if end <= start {
            // No time to block (Graph's side skips these the same way).
            removals.push(reference);
            continue;
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
            listing: listing.map(str::to_string),
        });
    }
    if !upserts.is_empty() || !removals.is_empty() {
        deps.store.apply_overrides(&upserts, &removals).await?;
        report.overrides_upserted += upserts.len();
        report.overrides_removed += removals.len();
    }
    Ok(ours)
}

/// What a fan-out queued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Queued {
    pub queued: u64,
    pub failed: u64,
}

/// Queues one sync per Google connection with status `active` or `error` on the
/// google-sync queue (the workers run them, each connection independently and inside its
/// time budget): the `google-sync` job and `POST /v1/google-sync` `{}`.
pub async fn queue_all(deps: &Deps) -> Result<Queued> {
    let mut out = Queued::default();
    let mut cursor = None;
    loop {
        let page = deps.store.all_connections(Provider::Google, cursor).await?;
        for c in page
            .items
            .iter()
            .filter(|c| matches!(c.status, ConnectionStatus::Active | ConnectionStatus::Error))
        {
            match push::queue_sync(deps, &c.company_id, &c.id, std::time::Duration::ZERO).await {
                Ok(()) => out.queued += 1,
                Err(e) => {
                    tracing::warn!(connection = %c.id, error = %e, "google sync not queued");
                    out.failed += 1;
                }
            }
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    Ok(out)
}

/// The `google-sync` job (the backstop for lost pushes): [`queue_all`].
pub async fn sync_all(deps: &Deps) -> Result<crate::jobs::JobReport> {
    let queued = queue_all(deps).await?;
    Ok(crate::jobs::JobReport {
        job: "google-sync".into(),
        processed: queued.queued,
        failed: queued.failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::availability::Busyness;
    use crate::google::api::{Attendee, ExtendedProperties};

    fn event(f: impl FnOnce(&mut GoogleEvent)) -> GoogleEvent {
        let mut e = GoogleEvent {
            id: "e1".into(),
            ..Default::default()
        };
        f(&mut e);
        e
    }

    fn answered(response: &str) -> GoogleEvent {
        event(|e| {
            e.attendees = Some(vec![
                Attendee {
                    email: Some("organiser@fabrikam.example".into()),
                    is_self: false,
                    response_status: Some("declined".into()),
                },
                Attendee {
                    email: Some("ann@contoso.example".into()),
                    is_self: true,
                    response_status: Some(response.into()),
                },
            ])
        })
    }

    #[test]
    fn every_google_row_of_the_busy_table_holds_with_the_default_settings() {
        let s = AvailabilitySettings::default();
        assert_eq!(verdict(&event(|_| {}), &s), Verdict::Busy);
        let cancelled = event(|e| e.status = Some("cancelled".into()));
        assert_eq!(verdict(&cancelled, &s), Verdict::Free("cancelled"));
        let transparent = event(|e| e.transparency = Some("transparent".into()));
        assert_eq!(verdict(&transparent, &s), Verdict::Free("transparent"));
        for kind in ["workingLocation", "birthday"] {
            let e = event(|e| e.event_type = Some(kind.into()));
            assert!(matches!(verdict(&e, &s), Verdict::Free(_)), "{kind}");
        }
        for kind in ["default", "outOfOffice", "focusTime", "fromGmail"] {
            let e = event(|e| e.event_type = Some(kind.into()));
            assert_eq!(verdict(&e, &s), Verdict::Busy, "{kind}");
        }
        assert_eq!(
            verdict(&answered("declined"), &s),
            Verdict::Free("declined")
        );
        for response in ["accepted", "needsAction", "tentative"] {
            assert_eq!(
                verdict(&answered(response), &s),
                Verdict::Busy,
                "{response}"
            );
        }
        // Another guest declining does not free the owner's time.
        assert_eq!(verdict(&answered("accepted"), &s), Verdict::Busy);
        let ours = event(|e| {
            e.extended_properties = Some(ExtendedProperties {
                private: Some(
                    [(
                        crate::google::api::SESSION_PROPERTY.to_string(),
                        "acme/s1".to_string(),
                    )]
                    .into(),
                ),
            })
        });
        assert_eq!(verdict(&ours, &s), Verdict::Ignore);
    }

    #[test]
    fn the_company_settings_decide_tentative_answers_and_out_of_office() {
        let free = AvailabilitySettings {
            tentative: Busyness::Free,
            out_of_office: Busyness::Free,
        };
        let ooo = event(|e| e.event_type = Some("outOfOffice".into()));
        assert!(matches!(verdict(&ooo, &free), Verdict::Free(_)));
        assert!(matches!(
            verdict(&answered("tentative"), &free),
            Verdict::Free(_)
        ));
        assert_eq!(verdict(&answered("accepted"), &free), Verdict::Busy);
        let only_ooo = AvailabilitySettings {
            out_of_office: Busyness::Free,
            ..Default::default()
        };
        assert!(matches!(verdict(&ooo, &only_ooo), Verdict::Free(_)));
        assert_eq!(verdict(&answered("tentative"), &only_ooo), Verdict::Busy);
    }
}
