//! Exchange inbound: one delta round for one connection, run from the inbound queue.
//!
//! A round follows `calendarView/delta` from the stored `deltaLink` (or starts a full sync
//! over [`WINDOW_PAST_DAYS`]..[`WINDOW_FUTURE_DAYS`] around now) through every `nextLink`,
//! making each page's effects durable before the next, and stores the new `deltaLink` only
//! at the end, with a versioned write (DESIGN-NOTES 1.2): a crash replays pages, never skips
//! them, and every effect is idempotent.
//!
//! **The window moves.** A cursor remembers when its full sync began (`based_at`); a round
//! whose cursor is a day old or more first follows it to its end (so no change since it is
//! lost, outside the window included), then runs a fresh full sync over the window around
//! now, and replaces the old cursor only when that completes (compare-and-set on the old
//! cursor's version), so inbound sync never goes blind as time passes. A 410 (`syncStateNotFound`)
//! does the same at once. After a full sync, overrides not written since it began are removed
//! (their events were not listed), and mapped events that were not listed are read, in
//! batches.
//!
//! **Resumable.** A round pages until its invocation's time budget is spent
//! ([`crate::config::Config::sync_budget`], at least one page per invocation), then stores its
//! progress ([`RoundProgress`]) and queues its continuation: a first sync of any size
//! completes across invocations, each inside the function's timeout.
//!
//! **Busy time** follows [`crate::availability`]: a delta entry lacking what the round needs
//! is read in full (batched), never guessed; all-day events are read in the mailbox's zone.
//!
//! **Removal is confirmed, never assumed** (DESIGN-NOTES 1.8). Graph reports an event moved
//! out of the window (or created outside it) as `@removed` with reason `deleted`, exactly like
//! a deletion. So an `@removed` mapped event, or one missing from a full listing, is read
//! directly: only a 404 makes it deleted; an event that still exists is reconciled with its
//! real times, wherever they now lie.
//!
//! **One round at a time per connection.** A round holds the connection's lease
//! ([`crate::store::LeaseClaim`]); a request arriving meanwhile coalesces into one more round
//! by the holder.
//!
//! Per page: one batch read of the mappings of its events, one batch read of the mapped
//! sessions, batched override writes; the platform's own events (mapped, or carrying our
//! `transactionId`) never become overrides, and one of ours without a mapping (a create whose
//! closing commit was lost) is adopted through its session tag. Each mapped event is planned
//! ([`crate::reconcile::plan`]) against its session and carried out by the booking command
//! engine with origin `exchange-inbound`, re-planning from fresh state after a lost
//! compare-and-set. A move onto another session or busy time is rejected by writing the
//! event back to the booked time (our write, recorded in the mapping, so it does not echo).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chrono::{DateTime, Duration, NaiveDateTime, TimeZone, Utc};
use serde::Serialize;

use super::api::{
    CalendarRef, DeltaRequest, EventBody, EventWrite, GraphDateTime, GraphError, GraphEvent,
};
use super::channels::{self, calendar_of};
use super::outbound::TRANSACTION_PREFIX;
use super::push::SyncRequest;
use super::{credentials, GraphCredentials};
use crate::availability::AvailabilitySettings;
use crate::booking::{self, Command, ORIGIN_EXCHANGE_INBOUND};
use crate::calendar::engine;
use crate::deps::Deps;
use crate::model::availability::OverrideRef;
use crate::model::{
    AvailabilityOverride, Connection, ConnectionStatus, CursorToken, DeltaCursor, EventMapping,
    Provider, RoundProgress, Session, SessionStatus,
};
use crate::reconcile::{EventSnapshot, SnapshotState};
use crate::store::{LeaseClaim, Released};
use crate::{Error, Result};

/// The window a full sync reads: from a day back (sessions in progress) to half a year ahead.
pub use crate::calendar::{WINDOW_FUTURE_DAYS, WINDOW_PAST_DAYS};
/// A cursor whose full sync began this long ago is replaced by a fresh full sync, so the
/// window follows the clock.
pub const REBASE_AFTER_HOURS: i64 = 24;
/// Pages per invocation at most, whatever the time budget: a bound on one message's work
/// (Graph pages hold up to 100); the round checkpoints and continues from a queued message.
pub const MAX_PAGES: usize = 500;
/// Mapped events a full listing remembers having listed, at most (a checkpoint is one store
/// item: DynamoDB's 400 KB hold this many of Graph's ~150-character ids with room to spare).
const MAX_SEEN_MAPPED: usize = 1_500;

/// The label of a full listing's overrides: its start, which its checkpoint keeps (a label
/// compared for equality, never a clock compared across processes).
fn listing_of(started: DateTime<Utc>) -> String {
    started.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// The `reason` of the queued message that continues a checkpointed round.
pub const CONTINUE_REASON: &str = "continue";
/// Rounds one message runs at most (the first, and the ones requests coalesced into).
const MAX_ROUNDS: usize = 3;

/// What a round did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoundReport {
    pub pages: usize,
    pub events: usize,
    /// Mapped events whose change key was our own write.
    pub echoes: usize,
    /// Booking commands applied.
    pub commands: usize,
    pub overrides_upserted: usize,
    pub overrides_removed: usize,
    /// Events read directly to confirm a removal (or fill in missing times).
    pub confirmations: usize,
    /// Calendar writes made to follow the platform (write-backs, events deleted again).
    pub calendar_writes: usize,
    /// The round read the whole window (first sync, 410, or the daily re-base).
    pub resynced: bool,
    /// The round continued from a checkpoint of an earlier invocation.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    /// Times the round ran out of its budget, stored its progress and queued the rest.
    #[serde(skip_serializing_if = "is_zero")]
    pub checkpoints: usize,
    /// Another round of this connection was running: this request joined it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub coalesced: bool,
    /// Why nothing was done, when nothing was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn skipped(reason: impl Into<String>) -> RoundReport {
    RoundReport {
        skipped: Some(reason.into()),
        ..Default::default()
    }
}

/// Handles one queued sync request: lifecycle work first, then delta rounds under the
/// connection's lease, paging for at most the configured budget
/// ([`crate::config::Config::sync_budget`]).
pub async fn handle(deps: &Deps, req: &SyncRequest) -> Result<RoundReport> {
    handle_until(deps, req, Instant::now() + deps.config.sync_budget).await
}

/// [`handle`], paging until `deadline` (a batch of messages shares one: the invocation's),
/// then checkpointing and queueing the rest. At least one page is applied whatever the
/// deadline, so every invocation makes progress.
pub async fn handle_until(
    deps: &Deps,
    req: &SyncRequest,
    deadline: Instant,
) -> Result<RoundReport> {
    let mut conn = match deps
        .store
        .get_connection(&req.company_id, &req.connection_id)
        .await
    {
        Ok(c) => c,
        Err(Error::NotFound { .. }) => return Ok(skipped("the connection no longer exists")),
        Err(e) => return Err(e),
    };
    if conn.provider != Provider::Exchange || conn.status == ConnectionStatus::Disabled {
        return Ok(skipped(
            "the connection is not an enabled Exchange connection",
        ));
    }
    match req.reason.as_str() {
        "reauthorizationRequired" => {
            channels::renew(deps, &mut conn).await?;
        }
        "subscriptionRemoved" => {
            // Graph dropped it: a new one first (changes from now on are notified), then
            // the delta round below catches up on what happened meanwhile. The dropped one
            // stays recorded until the new one replaces it (a lost race is checked against
            // it); its removal then finds it gone.
            channels::subscribe(deps, &mut conn).await?;
        }
        _ => {}
    }
    let Some(creds) = credentials::load(deps, &conn.company_id).await? else {
        deps.store
            .record_sync(&mut conn, Some(credentials::MISSING.to_string()))
            .await?;
        return Ok(skipped(credentials::MISSING));
    };
    let mut lease = match deps.store.claim_lease(&conn.company_id, &conn.id).await? {
        LeaseClaim::Acquired(lease) => lease,
        LeaseClaim::Coalesced => {
            return Ok(RoundReport {
                coalesced: true,
                ..Default::default()
            })
        }
    };
    let mut rounds = 0;
    loop {
        rounds += 1;
        let outcome = round_and_record(deps, &mut conn, &creds, deadline).await;
        let released = deps.store.release_lease(lease).await;
        let report = match outcome {
            Ok(report) => report,
            Err(e) => {
                // The queue offers the message again; the lease must not make it coalesce.
                if let Ok(Released::RunAgain(held)) = released {
                    let _ = deps.store.release_lease(held).await;
                }
                return Err(e);
            }
        };
        match released {
            Ok(Released::RunAgain(held)) if report.checkpoints > 0 => {
                // The round's continuation is queued and reads fresh state: it serves the
                // requests that arrived meanwhile too.
                let _ = deps.store.release_lease(held).await;
                return Ok(report);
            }
            Ok(Released::RunAgain(held)) if report.skipped.is_none() && rounds < MAX_ROUNDS => {
                lease = held
            }
            Ok(Released::RunAgain(held)) if report.skipped.is_none() => {
                // Requests keep coming: hand the next round to the queue rather than run
                // until the function's timeout.
                let _ = deps.store.release_lease(held).await;
                let follow_up = SyncRequest {
                    reason: "coalesced".into(),
                    ..req.clone()
                };
                super::push::enqueue(deps, &follow_up).await?;
                return Ok(report);
            }
            Ok(Released::RunAgain(held)) => {
                // Nothing more can be done now; free the lease for the next request.
                let _ = deps.store.release_lease(held).await;
                return Ok(report);
            }
            Ok(Released::Done) => return Ok(report),
            Err(e) => {
                // The lease expires by itself; the round's effects are durable.
                tracing::warn!(connection = %conn.id, error = %e, "sync lease not released");
                return Ok(report);
            }
        }
    }
}

/// One round, with its outcome recorded on the connection.
async fn round_and_record(
    deps: &Deps,
    conn: &mut Connection,
    creds: &GraphCredentials,
    deadline: Instant,
) -> Result<RoundReport> {
    match round(deps, conn, creds, deadline).await {
        Ok(report) => {
            deps.store.record_sync(conn, None).await?;
            Ok(report)
        }
        Err(RoundError::Graph(e)) => {
            deps.store
                .record_sync(conn, Some(format!("inbound sync: {e}")))
                .await?;
            match e {
                // Waiting helps: the queue offers the message again.
                GraphError::Throttled { .. } | GraphError::Unavailable(_) => {
                    Err(super::provider_error(&e))
                }
                // The tenant must act; retrying the message would not help.
                _ => Ok(skipped(e.to_string())),
            }
        }
        Err(RoundError::Store(e)) => Err(e),
    }
}

enum RoundError {
    Graph(GraphError),
    Store(Error),
}

impl From<Error> for RoundError {
    fn from(e: Error) -> Self {
        RoundError::Store(e)
    }
}

impl From<engine::Failure<GraphError>> for RoundError {
    fn from(e: engine::Failure<GraphError>) -> Self {
        match e {
            engine::Failure::Store(e) => RoundError::Store(e),
            engine::Failure::Calendar(e) => RoundError::Graph(e),
        }
    }
}

impl From<GraphError> for RoundError {
    fn from(e: GraphError) -> Self {
        RoundError::Graph(e)
    }
}

type RoundResult<T> = std::result::Result<T, RoundError>;

/// What every step of a round needs about the connection.
struct RoundCtx<'a> {
    deps: &'a Deps,
    conn: &'a Connection,
    creds: &'a GraphCredentials,
    calendar: CalendarRef,
    /// The company's availability settings, read once per round.
    settings: AvailabilitySettings,
    /// The mailbox's time zone name (for all-day events), when known.
    zone: Option<String>,
}

/// Whether a cursor must be replaced by a fresh full sync: it predates window re-basing, or
/// its window began a day ago or more.
pub fn needs_rebase(cursor: &DeltaCursor, now: DateTime<Utc>) -> bool {
    cursor
        .based_at
        .is_none_or(|b| now - b >= Duration::hours(REBASE_AFTER_HOURS))
}

/// Where a round stands while it pages: what a checkpoint stores and a resume restores.
struct Paging {
    request: DeltaRequest,
    full: bool,
    rebase: bool,
    started: DateTime<Utc>,
    based_at: Option<DateTime<Utc>>,
    seen_mapped: HashSet<String>,
    /// More mapped events were listed than a checkpoint holds: all are read at the end.
    seen_overflow: bool,
}

impl Paging {
    /// A full listing of the window around `now`.
    fn full_sync(ctx: &RoundCtx<'_>, now: DateTime<Utc>) -> Paging {
        Paging {
            request: window_request(ctx, now),
            full: true,
            rebase: false,
            started: now,
            based_at: Some(now),
            seen_mapped: HashSet::new(),
            seen_overflow: false,
        }
    }
}

async fn round(
    deps: &Deps,
    conn: &Connection,
    creds: &GraphCredentials,
    deadline: Instant,
) -> RoundResult<RoundReport> {
    let cursor = deps.store.get_cursor(&conn.company_id, &conn.id).await?;
    let settings = crate::availability::settings(&deps.store, &conn.company_id).await?;
    let mut ctx = RoundCtx {
        deps,
        conn,
        creds,
        calendar: calendar_of(conn),
        settings,
        zone: cursor.as_ref().and_then(|c| c.calendar_time_zone.clone()),
    };
    let graph = deps.graph()?;
    let mut report = RoundReport::default();
    let cursor_version = cursor.as_ref().map_or(0, |c| c.version);
    let mut paging = match resume(&ctx, cursor_version).await? {
        Some((resumed, zone)) => {
            report.resumed = true;
            // The zone the listing began with (a changed zone is read by the next one).
            if zone.is_some() {
                ctx.zone = zone;
            }
            resumed
        }
        None => {
            let now = deps.store.now();
            match cursor.as_ref().map(|c| (&c.token, c.based_at)) {
                Some((CursorToken::GraphDeltaLink(link), based_at)) => Paging {
                    request: DeltaRequest::Link(link.clone()),
                    full: false,
                    // A cursor due for re-basing is first followed to its end (changes since
                    // it, events outside the window included, are not lost), then the full
                    // sync over the new window runs and replaces it.
                    rebase: cursor.as_ref().is_some_and(|c| needs_rebase(c, now)),
                    started: now,
                    based_at,
                    seen_mapped: HashSet::new(),
                    seen_overflow: false,
                },
                // A full sync that no incremental catch-up preceded (the first one, or after
                // a 410) cannot know what happened outside the window since: it reads every
                // mapped event not listed, cancelled sessions' included.
                _ => Paging::full_sync(&ctx, now),
            }
        }
    };
    if paging.full && (ctx.zone.is_none() || !report.resumed) {
        // Every full listing reads the mailbox's zone afresh.
        ctx.zone = Some(mailbox_zone(&ctx).await?);
    }
    report.resynced = paging.full;
    let mut pages_this_call = 0;
    loop {
        if pages_this_call > 0 && (Instant::now() >= deadline || pages_this_call >= MAX_PAGES) {
            // Out of time: the pages so far are applied; the rest waits for the next
            // invocation, which continues from here.
            checkpoint(&ctx, &paging, cursor_version, &mut report).await?;
            return Ok(report);
        }
        let page = match graph.delta_page(creds, &paging.request).await {
            Ok(p) => p,
            Err(GraphError::SyncStateNotFound) if !paging.full || report.resumed => {
                // An expired cursor (or the checkpointed link of an unfinished listing):
                // the old cursor stays until the full sync completes and replaces it.
                tracing::info!(connection = %conn.id, "delta token expired; full resync");
                report.resumed = false;
                paging = Paging::full_sync(&ctx, deps.store.now());
                report.resynced = true;
                ctx.zone = Some(mailbox_zone(&ctx).await?);
                continue;
            }
            Err(e) => return Err(RoundError::Graph(e)),
        };
        report.pages += 1;
        pages_this_call += 1;
        report.events += page.events.len();
        let listing = paging.full.then(|| listing_of(paging.started));
        let listed_mapped = apply_page(&ctx, &page.events, listing.as_deref(), &mut report).await?;
        if paging.full && !paging.seen_overflow {
            paging.seen_mapped.extend(listed_mapped);
            if paging.seen_mapped.len() > MAX_SEEN_MAPPED {
                // Too many to checkpoint in one record: forget them, and read every mapped
                // event of a session not over at the end instead (correct, only dearer).
                paging.seen_mapped.clear();
                paging.seen_overflow = true;
            }
        }
        match (page.next_link, page.delta_link) {
            (Some(next), _) => paging.request = DeltaRequest::Link(next),
            (None, Some(_)) if paging.rebase => {
                // Caught up; now the full sync over the window around now.
                paging = Paging::full_sync(&ctx, deps.store.now());
                report.resynced = true;
                ctx.zone = Some(mailbox_zone(&ctx).await?);
            }
            (None, Some(delta)) => {
                if paging.full {
                    remove_vanished(&ctx, &listing_of(paging.started), &mut report).await?;
                    reconcile_vanished(&ctx, &paging.seen_mapped, paging.started, &mut report)
                        .await?;
                }
                let mut next = DeltaCursor {
                    company_id: conn.company_id.clone(),
                    connection_id: conn.id.clone(),
                    token: CursorToken::GraphDeltaLink(delta),
                    updated_at: deps.store.now(),
                    based_at: paging.based_at,
                    calendar_time_zone: ctx.zone.clone(),
                    version: cursor_version,
                };
                match deps.store.save_cursor(&mut next).await {
                    Ok(()) => {}
                    // Another round of this connection got there first (its lease expired
                    // under it): its cursor is as good as ours, both rounds' effects being
                    // durable and idempotent.
                    Err(Error::Conflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                if report.resumed || report.checkpoints > 0 {
                    deps.store
                        .clear_round_progress(&conn.company_id, &conn.id)
                        .await?;
                }
                return Ok(report);
            }
            (None, None) => {
                return Err(RoundError::Graph(GraphError::Rejected {
                    status: 200,
                    code: "no_link".into(),
                    message: "a delta page with neither nextLink nor deltaLink".into(),
                }))
            }
        }
    }
}

/// The checkpoint of an unfinished round, when there is one for the current cursor, with the
/// mailbox zone its listing read.
async fn resume(
    ctx: &RoundCtx<'_>,
    cursor_version: u64,
) -> Result<Option<(Paging, Option<String>)>> {
    let (deps, conn) = (ctx.deps, ctx.conn);
    let Some(p) = deps
        .store
        .get_round_progress(&conn.company_id, &conn.id)
        .await?
    else {
        return Ok(None);
    };
    if p.cursor_version != cursor_version {
        // The cursor was replaced since (a round whose lease expired under it finished):
        // continue from the newer cursor instead.
        deps.store
            .clear_round_progress(&conn.company_id, &conn.id)
            .await?;
        return Ok(None);
    }
    Ok(Some((
        Paging {
            request: match p.link {
                Some(link) => DeltaRequest::Link(link),
                None => window_request(ctx, p.started),
            },
            full: p.full,
            rebase: p.rebase,
            started: p.started,
            based_at: p.based_at,
            seen_mapped: p.seen_mapped.into_iter().collect(),
            seen_overflow: p.seen_overflow,
        },
        p.mailbox_time_zone,
    )))
}

/// Stores where the round stands and queues its continuation.
async fn checkpoint(
    ctx: &RoundCtx<'_>,
    paging: &Paging,
    cursor_version: u64,
    report: &mut RoundReport,
) -> Result<()> {
    let (deps, conn) = (ctx.deps, ctx.conn);
    let link = match &paging.request {
        DeltaRequest::Link(link) => Some(link.clone()),
        // About to start the full listing (after a catch-up or a 410): it starts over the
        // window based at `started`.
        DeltaRequest::Start { .. } => None,
    };
    let mut seen_mapped: Vec<String> = paging.seen_mapped.iter().cloned().collect();
    seen_mapped.sort();
    deps.store
        .save_round_progress(&RoundProgress {
            company_id: conn.company_id.clone(),
            connection_id: conn.id.clone(),
            link,
            cursor_version,
            full: paging.full,
            rebase: paging.rebase,
            started: paging.started,
            based_at: paging.based_at,
            seen_mapped,
            seen_overflow: paging.seen_overflow,
            mailbox_time_zone: ctx.zone.clone(),
            pages: report.pages,
            updated_at: deps.store.now(),
        })
        .await?;
    report.checkpoints += 1;
    super::push::enqueue(deps, &SyncRequest::for_connection(conn, CONTINUE_REASON)).await?;
    tracing::info!(connection = %conn.id, pages = report.pages, "delta round checkpointed; continued by a queued message");
    Ok(())
}

/// The mailbox's time zone for all-day events, read at the start of every full listing
/// (kept with the cursor between them). A mailbox whose settings cannot be read (the app
/// lacks `MailboxSettings.Read`) or name an unknown zone is read as UTC, with a warning.
async fn mailbox_zone(ctx: &RoundCtx<'_>) -> RoundResult<String> {
    match ctx
        .deps
        .graph()?
        .mailbox_time_zone(ctx.creds, &ctx.calendar.user)
        .await
    {
        Ok(zone) => Ok(zone),
        Err(e @ (GraphError::Throttled { .. } | GraphError::Unavailable(_))) => {
            Err(RoundError::Graph(e))
        }
        Err(e) => {
            tracing::warn!(connection = %ctx.conn.id, error = %e, "mailbox time zone not readable; all-day events read as UTC");
            Ok("UTC".into())
        }
    }
}

/// A full sync over the window around `now`.
fn window_request(ctx: &RoundCtx<'_>, now: DateTime<Utc>) -> DeltaRequest {
    DeltaRequest::Start {
        calendar: ctx.calendar.clone(),
        from: now - Duration::days(WINDOW_PAST_DAYS),
        to: now + Duration::days(WINDOW_FUTURE_DAYS),
    }
}

/// The snapshot of a Graph event; `None` when it is a removal report or its times cannot be
/// read (both call for a direct read of the event).
pub fn snapshot(e: &GraphEvent) -> Option<EventSnapshot> {
    if e.removed.is_some() {
        return None;
    }
    let start = e.start.as_ref()?.to_utc()?;
    let end = e.end.as_ref()?.to_utc()?;
    Some(EventSnapshot {
        event_id: e.id.clone(),
        change_key: e.change_key.clone(),
        state: SnapshotState::Live {
            start,
            end,
            cancelled: e.is_cancelled.unwrap_or(false),
            declined: e
                .response_status
                .as_ref()
                .and_then(|r| r.response.as_deref())
                .is_some_and(|r| r.eq_ignore_ascii_case("declined")),
        },
        modified: e.last_modified,
    })
}

/// Reads one event directly: `Removed` on 404, `None` when its times cannot be read.
async fn read_snapshot(
    ctx: &RoundCtx<'_>,
    id: &str,
    report: &mut RoundReport,
) -> RoundResult<Option<EventSnapshot>> {
    report.confirmations += 1;
    match ctx
        .deps
        .graph()?
        .get_event(ctx.creds, &ctx.calendar, id)
        .await
    {
        Ok(current) => Ok(snapshot(&current)),
        Err(GraphError::NotFound) => Ok(Some(EventSnapshot::removed(id.to_string()))),
        Err(e) => Err(RoundError::Graph(e)),
    }
}

/// Busy for availability (the README's table, [`crate::availability`]): no `showAs` (Graph's
/// default) or `busy` or `workingElsewhere`; `tentative` and `oof` as the company's settings
/// say; never `free` or `unknown`, a cancelled event, or one the staff member declined.
pub fn blocks_time(e: &GraphEvent, settings: &AvailabilitySettings) -> bool {
    if e.removed.is_some() || e.is_cancelled.unwrap_or(false) || is_declined(e) {
        return false;
    }
    match e.show_as.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("busy") | Some("workingelsewhere") => true,
        Some("tentative") => settings.tentative.is_busy(),
        Some("oof") => settings.out_of_office.is_busy(),
        Some(_) => false,
    }
}

fn is_declined(e: &GraphEvent) -> bool {
    e.response_status
        .as_ref()
        .and_then(|r| r.response.as_deref())
        .is_some_and(|r| r.eq_ignore_ascii_case("declined"))
}

/// Whether a delta entry lacks something the round needs (delta pages may carry only some
/// of an event's properties): a removal report; no readable times; no `isCancelled`; for the
/// platform's events no `responseStatus`; for others no `showAs` or `isAllDay`. Such an entry
/// is read in full, never guessed.
fn lacks_what_the_round_needs(e: &GraphEvent, mapped: bool) -> bool {
    e.removed.is_some()
        || snapshot(e).is_none()
        || e.is_cancelled.is_none()
        || if mapped {
            e.response_status.is_none()
        } else {
            e.show_as.is_none() || e.is_all_day.is_none()
        }
}

/// An event's busy time. An all-day event comes back (with times asked in UTC) as local
/// midnight labelled UTC: its days are read in the mailbox's zone.
fn busy_times(e: &GraphEvent, zone: Option<&str>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let (start, end) = (e.start.as_ref()?, e.end.as_ref()?);
    let labelled_utc = |t: &GraphDateTime| {
        t.time_zone
            .as_deref()
            .is_none_or(|z| z.eq_ignore_ascii_case("UTC"))
    };
    if e.is_all_day == Some(true) && labelled_utc(start) && labelled_utc(end) {
        let tz = zone
            .and_then(super::zones::to_iana)
            .unwrap_or(chrono_tz::UTC);
        let local = |t: &GraphDateTime| {
            let naive = NaiveDateTime::parse_from_str(&t.date_time, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
            // A midnight a DST change skips (Havana, Beirut, Cairo, Santiago) begins the day
            // at the first instant that exists.
            tz.from_local_datetime(&naive)
                .earliest()
                .or_else(|| {
                    tz.from_local_datetime(&(naive + Duration::hours(1)))
                        .earliest()
                })
                .map(|t| t.with_timezone(&Utc))
        };
        return Some((local(start)?, local(end)?));
    }
    Some((start.to_utc()?, end.to_utc()?))
}

/// Reads every listed entry that needs reading, in batches: `None` for an event that is gone
/// (404), the event otherwise.
async fn read_listed(
    ctx: &RoundCtx<'_>,
    ids: Vec<String>,
    report: &mut RoundReport,
) -> RoundResult<HashMap<String, Option<GraphEvent>>> {
    let mut read = HashMap::new();
    if ids.is_empty() {
        return Ok(read);
    }
    report.confirmations += ids.len();
    let answers = ctx
        .deps
        .graph()?
        .get_events(ctx.creds, &ctx.calendar, &ids)
        .await?;
    for (id, answer) in ids.into_iter().zip(answers) {
        match answer {
            Ok(event) => {
                read.insert(id, Some(event));
            }
            Err(GraphError::NotFound) => {
                read.insert(id, None);
            }
            Err(e) => return Err(RoundError::Graph(e)),
        }
    }
    Ok(read)
}

/// Applies one delta page. Returns the listed (not removed) events that are the platform's
/// (mapped, or carrying its transaction id), which a full listing keeps track of.
async fn apply_page(
    ctx: &RoundCtx<'_>,
    events: &[GraphEvent],
    listing: Option<&str>,
    report: &mut RoundReport,
) -> RoundResult<Vec<String>> {
    let (deps, conn) = (ctx.deps, ctx.conn);
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let (mappings, mut sessions) = engine::page_state(deps, conn, &ids).await?;
    // Echoes of our own writes need nothing more; entries lacking what the round needs are
    // read, all of the page's at once.
    let mut echoes = HashSet::new();
    let mut to_read = Vec::new();
    for listed in events {
        let mapping = mappings.get(&listed.id);
        if let (Some(m), None) = (mapping, &listed.removed) {
            let echo = listed.change_key.is_some() && listed.change_key == m.change_key;
            let agrees = sessions.get(&m.session_id).is_some_and(|s| {
                s.status == SessionStatus::Confirmed
                    && snapshot(listed).and_then(|snap| snap.times()) == Some((s.start, s.end))
            });
            if echo && agrees {
                echoes.insert(listed.id.clone());
                continue;
            }
        }
        if lacks_what_the_round_needs(listed, mapping.is_some()) && !to_read.contains(&listed.id) {
            to_read.push(listed.id.clone());
        }
    }
    let read = read_listed(ctx, to_read, report).await?;
    let mut platform_listed = Vec::new();
    let mut upserts = Vec::new();
    let mut removals = Vec::new();
    let now = deps.store.now();
    for listed in events {
        let mapping = mappings.get(&listed.id);
        if echoes.contains(&listed.id) {
            report.echoes += 1;
            platform_listed.push(listed.id.clone());
            continue;
        }
        // A removal report is a hint: the event was read, and only a 404 makes it gone.
        // Graph reports events moved out of the window, ours and the staff member's alike,
        // as removed.
        let event = match read.get(&listed.id) {
            Some(read) => read.as_ref(),
            None => Some(listed),
        };
        if let Some(mapping) = mapping {
            if listed.removed.is_none() {
                platform_listed.push(listed.id.clone());
            }
            // The platform's own event: reconciled against its session, never an override.
            let Some(session) = sessions.get_mut(&mapping.session_id) else {
                continue;
            };
            let snap = match event {
                None => EventSnapshot::removed(listed.id.clone()),
                Some(e) => match snapshot(e) {
                    Some(snap) => snap,
                    None => {
                        tracing::warn!(event = %e.id, "graph event with unreadable times skipped");
                        continue;
                    }
                },
            };
            reconcile_event(ctx, mapping, &snap, session, report).await?;
            continue;
        }
        let ours = event
            .and_then(|e| e.transaction_id.as_deref())
            .is_some_and(|t| t.starts_with(TRANSACTION_PREFIX));
        if let (true, Some(e)) = (ours, event) {
            if listed.removed.is_none() {
                platform_listed.push(listed.id.clone());
            }
            adopt(ctx, e, report).await?;
            continue;
        }
        let reference = OverrideRef {
            company_id: conn.company_id.clone(),
            staff_id: conn.staff_id.clone(),
            connection_id: conn.id.clone(),
            external_event_id: listed.id.clone(),
        };
        match event
            .filter(|e| blocks_time(e, &ctx.settings))
            .and_then(|e| busy_times(e, ctx.zone.as_deref()).map(|t| (t, e.is_all_day)))
        {
            Some(((start, end), all_day)) if start < end => upserts.push(AvailabilityOverride {
                company_id: conn.company_id.clone(),
                staff_id: conn.staff_id.clone(),
                connection_id: conn.id.clone(),
                source: Provider::Exchange,
                external_event_id: listed.id.clone(),
                start,
                end,
                all_day: all_day.unwrap_or(false),
                updated_at: now,
                listing: listing.map(str::to_string),
            }),
            _ => removals.push(reference),
        }
    }
    if !upserts.is_empty() || !removals.is_empty() {
        deps.store.apply_overrides(&upserts, &removals).await?;
        report.overrides_upserted += upserts.len();
        report.overrides_removed += removals.len();
    }
    Ok(platform_listed)
}

/// One of our events without a mapping: a create whose answer or closing commit was lost
/// (and which the staff member may have moved, deleted or restored since). Read with its tag;
/// when it names a
/// session of this company that has no Exchange event mapped, it is adopted (mapped) and
/// reconciled like any mapped event: kept if the session is confirmed, deleted if the
/// session is cancelled. An event of a session mapped to another event is left alone (the
/// mapped one is the session's event; a create racing with us may be about to map this one).
async fn adopt(
    ctx: &RoundCtx<'_>,
    listed: &GraphEvent,
    report: &mut RoundReport,
) -> RoundResult<()> {
    let deps = ctx.deps;
    let read;
    let event = if listed.session_tag().is_some() {
        listed
    } else {
        report.confirmations += 1;
        match deps
            .graph()?
            .get_event(ctx.creds, &ctx.calendar, &listed.id)
            .await
        {
            Ok(e) => {
                read = e;
                &read
            }
            Err(GraphError::NotFound) => return Ok(()),
            Err(e) => return Err(RoundError::Graph(e)),
        }
    };
    let Some((company, session_id)) = event.session_tag().and_then(|t| t.split_once('/')) else {
        return Ok(());
    };
    if company != ctx.conn.company_id {
        return Ok(());
    }
    let Some(mut session) = deps.store.find_session(company, session_id).await? else {
        return Ok(());
    };
    let existing = deps
        .store
        .mapping_for_session(company, Provider::Exchange, session_id)
        .await?;
    if existing
        .as_ref()
        .is_some_and(|m| m.external_event_id == event.id)
    {
        return Ok(());
    }
    // Retired by id, or by the `transactionId` of a create that was never recorded (the
    // event that create made is an earlier placement's too, and its deletion may be under
    // way: it never becomes the session's event again).
    let retired = session.retired.iter().any(|r| {
        r.provider == Provider::Exchange
            && if r.by_transaction {
                event.transaction_id.as_deref() == Some(r.event_id.as_str())
            } else {
                r.event_id == event.id
            }
    });
    if retired || session.staff_id != ctx.conn.staff_id {
        // The session was given to another staff member, or retired this event (booked
        // again, given back): it is what an earlier placement left (restored by the staff
        // member, or a create whose answer was lost): it goes, and it never takes the place
        // of the session's event.
        if !event.is_cancelled.unwrap_or(false) {
            match deps
                .graph()?
                .delete_event(ctx.creds, &ctx.calendar, &event.id)
                .await
            {
                Ok(()) | Err(GraphError::NotFound) => {}
                Err(e) => return Err(RoundError::Graph(e)),
            }
            tracing::info!(session = %session_id, event = %event.id, "event of a session given to another staff member deleted");
            report.calendar_writes += 1;
        }
        return Ok(());
    }
    if let Some(m) = &existing {
        // The session shows as another event. If that one is live, this is a duplicate
        // (a create retried after its answer was lost, the first copy restored since): it
        // goes. If that one is gone, this one takes its place.
        report.confirmations += 1;
        let mapped_calendar = match deps
            .store
            .find_connection(company, &m.connection_id)
            .await?
        {
            Some(c) => calendar_of(&c),
            None => ctx.calendar.clone(),
        };
        match deps
            .graph()?
            .get_event(ctx.creds, &mapped_calendar, &m.external_event_id)
            .await
        {
            // (An item Graph still shows as cancelled is gone too.)
            Ok(mapped) if !mapped.is_cancelled.unwrap_or(false) => {
                match deps
                    .graph()?
                    .delete_event(ctx.creds, &ctx.calendar, &event.id)
                    .await
                {
                    Ok(()) | Err(GraphError::NotFound) => {}
                    Err(e) => return Err(RoundError::Graph(e)),
                }
                tracing::info!(session = %session_id, event = %event.id, "duplicate platform event deleted");
                report.calendar_writes += 1;
                return Ok(());
            }
            Ok(_) | Err(GraphError::NotFound) => {}
            Err(e) => return Err(RoundError::Graph(e)),
        }
    }
    let Some(snap) = snapshot(event) else {
        return Ok(());
    };
    let Some((start, end)) = snap.times() else {
        return Ok(());
    };
    let mut mapping = EventMapping {
        company_id: company.to_string(),
        session_id: session_id.to_string(),
        connection_id: ctx.conn.id.clone(),
        provider: Provider::Exchange,
        external_event_id: event.id.clone(),
        // Not our last write as far as the store knows: the event is reconciled.
        change_key: None,
        last_start: start,
        last_end: end,
        updated_at: deps.store.now(),
        version: existing.as_ref().map_or(0, |m| m.version),
        modified: None,
    };
    match deps.store.save_mapping(&mut mapping).await {
        Ok(()) => {}
        // A create (or another round) mapped the session meanwhile.
        Err(Error::Duplicate { .. }) | Err(Error::Conflict { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    tracing::info!(session = %session_id, event = %event.id, "unmapped platform event adopted");
    reconcile_event(ctx, &mapping, &snap, &mut session, report).await
}

/// Graph's writes to one of the platform's events, for the calendar seam's engine
/// ([`crate::calendar::engine`]).
pub struct GraphEventWriter<'a> {
    ctx: &'a RoundCtx<'a>,
}

#[async_trait::async_trait]
impl crate::calendar::engine::EventWriter for GraphEventWriter<'_> {
    type Error = GraphError;

    fn origin(&self) -> &'static str {
        ORIGIN_EXCHANGE_INBOUND
    }

    async fn write_session(
        &self,
        mapping: &EventMapping,
        snap: &EventSnapshot,
        session: &Session,
        note: &str,
    ) -> std::result::Result<Option<engine::Written>, GraphError> {
        let etag = snap.change_key.as_ref().map(|k| format!("W/\"{k}\""));
        let graph = self
            .ctx
            .deps
            .graph()
            .map_err(|e| GraphError::Unavailable(e.to_string()))?;
        match graph
            .update_event(
                self.ctx.creds,
                &self.ctx.calendar,
                &mapping.external_event_id,
                etag.as_deref(),
                &session_event(session, note),
            )
            .await
        {
            Ok(written) => Ok(Some(engine::Written {
                change_key: written.change_key,
                modified: written.last_modified,
            })),
            Err(GraphError::PreconditionFailed) | Err(GraphError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete_event(
        &self,
        mapping: &EventMapping,
    ) -> std::result::Result<crate::calendar::engine::Deleted, GraphError> {
        let graph = self
            .ctx
            .deps
            .graph()
            .map_err(|e| GraphError::Unavailable(e.to_string()))?;
        match graph
            .delete_event(
                self.ctx.creds,
                &self.ctx.calendar,
                &mapping.external_event_id,
            )
            .await
        {
            Ok(()) => Ok(crate::calendar::engine::Deleted::Now),
            Err(GraphError::NotFound) => Ok(crate::calendar::engine::Deleted::AlreadyGone),
            Err(e) => Err(e),
        }
    }
}

/// Reconciles one mapped event through the calendar seam's engine, counting what it did.
async fn reconcile_event(
    ctx: &RoundCtx<'_>,
    mapping: &EventMapping,
    snap: &EventSnapshot,
    session: &mut Session,
    report: &mut RoundReport,
) -> RoundResult<()> {
    let writer = GraphEventWriter { ctx };
    let done = engine::reconcile_event(
        ctx.deps,
        &writer,
        &ctx.conn.staff_id,
        mapping,
        snap,
        session,
    )
    .await?;
    report.commands += done.commands;
    report.calendar_writes += done.calendar_writes;
    Ok(())
}

/// The event as the session says it should be (a write-back; no transaction id, no tag
/// change).
fn session_event(session: &Session, note: &str) -> EventWrite {
    EventWrite {
        subject: session.title.clone(),
        body: EventBody {
            content_type: "text".into(),
            content: note.into(),
        },
        start: GraphDateTime::utc(session.start),
        end: GraphDateTime::utc(session.end),
        location: None,
        show_as: "busy".into(),
        transaction_id: None,
        extended: Vec::new(),
    }
}

/// After a full sync: overrides of this connection whose events were not listed are gone.
async fn remove_vanished(
    ctx: &RoundCtx<'_>,
    listing: &str,
    report: &mut RoundReport,
) -> Result<()> {
    let (deps, conn) = (ctx.deps, ctx.conn);
    // Every busy event the listing showed was written by it; what was not is of an event it
    // did not show.
    report.overrides_removed += deps
        .store
        .remove_overrides_not_of_listing(&conn.company_id, &conn.staff_id, &conn.id, listing, None)
        .await?;
    Ok(())
}

/// After a full sync: a mapped event that was not listed was deleted while we held no
/// cursor, or lies outside the window (a full listing reports neither). Each is read
/// directly and reconciled as it really is (an event mapped during the round and so not
/// listed is read too: it is live, and agrees with its session). Only sessions that are not
/// over (a session that ended over a day ago is history), cancelled ones included: a change
/// to one of their events outside the window between the catch-up and the listing (which a
/// checkpoint can make hours) is reported by neither (simulation seed 118).
async fn reconcile_vanished(
    ctx: &RoundCtx<'_>,
    seen: &HashSet<String>,
    started: DateTime<Utc>,
    report: &mut RoundReport,
) -> RoundResult<()> {
    let (deps, conn) = (ctx.deps, ctx.conn);
    let window_start = started - Duration::days(WINDOW_PAST_DAYS);
    let vanished: Vec<EventMapping> = deps
        .store
        .mappings_for_connection(&conn.company_id, &conn.id)
        .await?
        .into_iter()
        // History is not read: a mapping whose event last ended before the window belongs to
        // a session that is over (this keeps the work a round does independent of how many
        // sessions the staff member ever had), or to an event left in the past: one the
        // platform cancelled before its move reached the calendar, restored there by the
        // staff member, stays where it is, days ago (simulation seed 715511).
        .filter(|m| m.last_end > window_start && !seen.contains(&m.external_event_id))
        .collect();
    if vanished.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = vanished.iter().map(|m| m.session_id.clone()).collect();
    let mut sessions = deps.store.get_sessions(&conn.company_id, &ids).await?;
    sessions.retain(|_, s| s.end > window_start);
    let wanted: Vec<String> = vanished
        .iter()
        .filter(|m| sessions.contains_key(&m.session_id))
        .map(|m| m.external_event_id.clone())
        .collect();
    let read = read_listed(ctx, wanted, report).await?;
    for m in &vanished {
        let (Some(session), Some(event)) = (
            sessions.get_mut(&m.session_id),
            read.get(&m.external_event_id),
        ) else {
            continue;
        };
        let snap = match event {
            None => EventSnapshot::removed(m.external_event_id.clone()),
            Some(e) => match snapshot(e) {
                Some(snap) => snap,
                None => continue,
            },
        };
        reconcile_event(ctx, m, &snap, session, report).await?;
    }
    Ok(())
}

/// The scheduled sweep: commits every pending cancellation whose grace has passed. A
/// cancellation caused by an Exchange deletion is confirmed first: the event is read, and if
/// it is back (a restore whose notification was lost or is still queued) the session is
/// reconciled with it instead; if Graph cannot be reached, it waits for the next sweep.
/// Stops at [`PENDING_SWEEP_BUDGET`].
pub async fn commit_pending_cancellations(deps: &Deps) -> Result<crate::jobs::JobReport> {
    commit_pending_cancellations_within(deps, PENDING_SWEEP_BUDGET).await
}

/// [`commit_pending_cancellations`] with another time budget: no booking is begun once
/// `budget` has passed since the sweep started (the one in hand is finished), except the
/// first, which is always tried, so every sweep makes progress.
pub async fn commit_pending_cancellations_within(
    deps: &Deps,
    budget: std::time::Duration,
) -> Result<crate::jobs::JobReport> {
    let mut report = crate::jobs::JobReport {
        job: "commit-pending-cancellations".into(),
        ..Default::default()
    };
    // Outboxes first: a session whose events are not yet published is not in the pending
    // index until they are.
    let relayed = booking::relay_outboxes(deps).await?;
    report.failed += relayed.failed;
    if relayed.failed > 0 {
        // The bus is down: sessions still holding events are not in the pending index, but
        // their cancellations are due all the same (their events wait in the outbox).
        let now = deps.store.now();
        for mut session in deps.store.sessions_with_outbox(10_000).await? {
            let due = session.status == SessionStatus::PendingCancellation
                && session.pending.as_ref().is_some_and(|p| p.due_at <= now);
            if !due {
                continue;
            }
            match commit_one(deps, &mut session, now).await {
                Ok(()) => report.processed += 1,
                Err(e) => {
                    tracing::warn!(session = %session.id, error = %e, "pending cancellation not committed");
                    report.failed += 1;
                }
            }
        }
    }
    // Page by cursor: a session that cannot be committed now (its calendar unreachable, say)
    // stays where it is in the index and the sweep moves on past it, so however many fail,
    // the ones due after them are still committed; the next sweep tries the failed again.
    // A calendar (connection) whose provider was unreachable for three of its sessions in a
    // row is not asked again in this sweep: each ask can take the provider's whole retry
    // budget (seconds). A failure of one event (a refusal, not an outage) never counts, so
    // one bad event cannot hold back its calendar's other cancellations. The sweep stops at
    // its time budget (the scheduled function runs its jobs one after another).
    // The bound stays that of the sweep's start, so every page is of the same query (a
    // DynamoDB cursor must lie within its query's range); what falls due meanwhile waits for
    // the next sweep.
    let until = deps.store.now();
    let started = std::time::Instant::now();
    let mut outages: HashMap<String, u32> = HashMap::new();
    let mut cursor = None;
    // At least one session is tried whatever the budget, so a sweep whose first read alone
    // outlasts it (a loaded machine, a slow store) still makes progress.
    let mut tried = 0usize;
    'pages: loop {
        let page = deps
            .store
            .due_pending_cancellations(until, PENDING_PAGE, cursor)
            .await?;
        let now = deps.store.now();
        for mut session in page.items {
            if tried > 0 && started.elapsed() >= budget {
                tracing::warn!(
                    "pending-cancellation sweep stopped at its time budget; the next sweep goes on"
                );
                break 'pages;
            }
            // The session's calendar is looked up only while some calendar has failed in
            // this sweep (a healthy sweep reads nothing more than it did); a failed lookup
            // leaves it unknown: tried all the same, and not counted.
            tried += 1;
            let mut calendar = None;
            if !outages.is_empty() {
                calendar = calendar_of_pending(deps, &session).await.unwrap_or(None);
                if calendar
                    .as_ref()
                    .is_some_and(|c| outages.get(c).copied().unwrap_or(0) >= OUTAGE_ASKS)
                {
                    report.failed += 1;
                    continue;
                }
            }
            match commit_one(deps, &mut session, now).await {
                Ok(()) => {
                    report.processed += 1;
                    if let Some(c) = calendar {
                        outages.remove(&c);
                    }
                }
                Err(e) => {
                    tracing::warn!(session = %session.id, error = %e, "pending cancellation not committed");
                    report.failed += 1;
                    if is_outage(&e) {
                        if calendar.is_none() {
                            calendar = calendar_of_pending(deps, &session).await.unwrap_or(None);
                        }
                        if let Some(c) = calendar {
                            *outages.entry(c).or_default() += 1;
                        }
                    }
                }
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(report)
}

/// Sessions of one calendar whose provider was unreachable, in a row, after which a sweep
/// stops asking that calendar.
const OUTAGE_ASKS: u32 = 3;

/// The connection whose calendar decides whether a pending cancellation commits (the one its
/// origin's event is mapped to), if any.
async fn calendar_of_pending(deps: &Deps, session: &Session) -> Result<Option<String>> {
    let Some(provider) = session
        .pending
        .as_ref()
        .and_then(|p| booking::origin_provider(&p.origin))
    else {
        return Ok(None);
    };
    Ok(deps
        .store
        .mapping_for_session(&session.company_id, provider, &session.id)
        .await?
        .map(|m| m.connection_id))
}

/// A provider that could not be reached or asked us to wait (Graph's 503/429 and network
/// errors; Google's answers, which its confirmation read reports as unavailable), not a
/// refusal of one event.
fn is_outage(e: &Error) -> bool {
    matches!(
        e,
        Error::Provider { status: 503, .. } | Error::Unavailable(_)
    )
}

/// How long one pending-cancellation sweep pages on before it leaves the rest to the next
/// (the five-minute function runs its other jobs after it, within its 300 s timeout).
pub const PENDING_SWEEP_BUDGET: std::time::Duration = std::time::Duration::from_secs(120);

/// Due pending cancellations read per page by [`commit_pending_cancellations`].
pub const PENDING_PAGE: usize = 100;

async fn commit_one(deps: &Deps, session: &mut Session, now: DateTime<Utc>) -> Result<()> {
    // The cancellation's cause is its origin: a write back there is filtered.
    let origin = session
        .pending
        .as_ref()
        .map(|p| p.origin.clone())
        .unwrap_or_else(|| ORIGIN_EXCHANGE_INBOUND.to_string());
    if origin == ORIGIN_EXCHANGE_INBOUND && event_is_back(deps, session).await? {
        return Ok(());
    }
    if origin == booking::ORIGIN_GOOGLE_INBOUND
        && crate::google::inbound::event_is_back(deps, session).await?
    {
        return Ok(());
    }
    let command = Command::CommitCancellation { now };
    crate::calendar::insure(deps, session, &command, &origin).await;
    if booking::execute(deps, session, &command, &origin).await? {
        // The events go from every other calendar; the mappings stay, so a later restore
        // of an event is deleted again.
        crate::calendar::follow(deps, session, &command, &origin).await;
    }
    Ok(())
}

/// Reads the pending session's event. If it exists again, reconciles the session with it
/// (a restore) and says so; a 404, a missing mapping or connection means it is gone. Graph
/// being unreachable, or an event whose times cannot be read, is an error (the commit waits).
async fn event_is_back(deps: &Deps, session: &mut Session) -> Result<bool> {
    let Some((mapping, conn)) =
        engine::mapped_connection(deps, session, Provider::Exchange).await?
    else {
        return Ok(false);
    };
    let Some(creds) = credentials::load(deps, &conn.company_id).await? else {
        return Ok(false);
    };
    let ctx = RoundCtx {
        deps,
        conn: &conn,
        creds: &creds,
        calendar: calendar_of(&conn),
        settings: AvailabilitySettings::default(),
        zone: None,
    };
    let mut report = RoundReport::default();
    let snap = match read_snapshot(&ctx, &mapping.external_event_id, &mut report).await {
        Ok(Some(snap)) => snap,
        // A live event whose times cannot be read is not taken for gone: the commit waits
        // (as Google's does), rather than cancel a booking whose event may be back.
        Ok(None) => {
            return Err(Error::Unavailable(
                "the event's times cannot be read; the cancellation waits".into(),
            ))
        }
        Err(RoundError::Graph(e)) => return Err(super::provider_error(&e)),
        Err(RoundError::Store(e)) => return Err(e),
    };
    // Gone: not found, or shown cancelled.
    if !matches!(
        snap.state,
        SnapshotState::Live {
            cancelled: false,
            ..
        }
    ) {
        return Ok(false);
    }
    match reconcile_event(&ctx, &mapping, &snap, session, &mut report).await {
        Ok(()) => Ok(true),
        Err(RoundError::Graph(e)) => Err(super::provider_error(&e)),
        Err(RoundError::Store(e)) => Err(e),
    }
}

/// The hourly job that keeps windows moving for quiet calendars too: every enabled Exchange
/// connection whose cursor is missing or a day old gets a round queued (reason `rebase`),
/// which re-bases it. Busy calendars re-base in their own rounds anyway.
pub async fn rebase_sync_windows(deps: &Deps) -> Result<crate::jobs::JobReport> {
    let mut report = crate::jobs::JobReport {
        job: "rebase-sync-windows".into(),
        ..Default::default()
    };
    let mut page_cursor = None;
    loop {
        let page = deps
            .store
            .all_connections(Provider::Exchange, page_cursor)
            .await?;
        for conn in page.items {
            if conn.status == ConnectionStatus::Disabled || conn.status == ConnectionStatus::Pending
            {
                continue;
            }
            let now = deps.store.now();
            let due = match deps.store.get_cursor(&conn.company_id, &conn.id).await? {
                Some(c) => needs_rebase(&c, now),
                None => true,
            };
            if !due {
                continue;
            }
            let request = SyncRequest::for_connection(&conn, "rebase");
            match super::push::enqueue(deps, &request).await {
                Ok(()) => report.processed += 1,
                Err(e) => {
                    tracing::warn!(connection = %conn.id, error = %e, "re-base round not queued");
                    report.failed += 1;
                }
            }
        }
        match page.next {
            Some(next) => page_cursor = Some(next),
            None => return Ok(report),
        }
    }
}

/// The five-minute job that finishes what a dead round owed: a connection whose lease expired
/// with a request coalesced into it (the holder crashed or timed out before running once
/// more) gets a round queued (reason `resume`).
pub async fn resume_coalesced_rounds(deps: &Deps) -> Result<crate::jobs::JobReport> {
    let mut report = crate::jobs::JobReport {
        job: "resume-coalesced-rounds".into(),
        ..Default::default()
    };
    for (company, connection) in deps.store.abandoned_leases(deps.store.now(), 100).await? {
        let conn = deps.store.find_connection(&company, &connection).await?;
        // Google connections are synced by the five-minute google-sync job anyway; deleted or
        // disabled ones owe nothing. Their markers go, so they never crowd out real ones.
        let Some(conn) = conn
            .filter(|c| c.provider == Provider::Exchange && c.status != ConnectionStatus::Disabled)
        else {
            deps.store.drop_lease(&company, &connection).await?;
            continue;
        };
        let request = SyncRequest {
            company_id: company,
            connection_id: connection,
            subscription_id: conn
                .channel
                .as_ref()
                .map(|c| c.id.clone())
                .unwrap_or_default(),
            reason: "resume".into(),
        };
        match super::push::enqueue(deps, &request).await {
            Ok(()) => report.processed += 1,
            Err(e) => {
                tracing::warn!(connection = %conn.id, error = %e, "resumed round not queued");
                report.failed += 1;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::api::{Removed, ResponseStatus};

    fn event(show_as: &str) -> GraphEvent {
        GraphEvent {
            id: "e1".into(),
            show_as: Some(show_as.into()),
            start: Some(GraphDateTime {
                date_time: "2026-12-01T09:00:00.0000000".into(),
                time_zone: Some("UTC".into()),
            }),
            end: Some(GraphDateTime {
                date_time: "2026-12-01T10:00:00.0000000".into(),
                time_zone: Some("UTC".into()),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn busy_means_no_show_as_busy_or_working_elsewhere_and_not_cancelled_or_declined() {
        let defaults = AvailabilitySettings::default();
        for s in ["busy", "OOF", "tentative", "workingElsewhere"] {
            assert!(blocks_time(&event(s), &defaults), "{s}");
        }
        for s in ["free", "unknown"] {
            assert!(!blocks_time(&event(s), &defaults), "{s}");
        }
        let mut without = event("busy");
        without.show_as = None;
        assert!(blocks_time(&without, &defaults), "Graph's default is busy");
        let mut cancelled = event("busy");
        cancelled.is_cancelled = Some(true);
        assert!(!blocks_time(&cancelled, &defaults));
        let mut removed = event("busy");
        removed.removed = Some(Removed {
            reason: Some("deleted".into()),
        });
        assert!(!blocks_time(&removed, &defaults));
        let mut declined = event("busy");
        declined.response_status = Some(ResponseStatus {
            response: Some("declined".into()),
        });
        assert!(!blocks_time(&declined, &defaults));
    }

    #[test]
    fn tentative_and_out_of_office_follow_the_company_settings() {
        let free = AvailabilitySettings {
            tentative: crate::availability::Busyness::Free,
            out_of_office: crate::availability::Busyness::Free,
        };
        assert!(!blocks_time(&event("tentative"), &free));
        assert!(!blocks_time(&event("oof"), &free));
        assert!(blocks_time(&event("busy"), &free));
    }

    #[test]
    fn all_day_events_are_read_in_the_mailbox_zone() {
        let mut e = event("busy");
        e.is_all_day = Some(true);
        e.start = Some(GraphDateTime {
            date_time: "2026-12-01T00:00:00.0000000".into(),
            time_zone: Some("UTC".into()),
        });
        e.end = Some(GraphDateTime {
            date_time: "2026-12-02T00:00:00.0000000".into(),
            time_zone: Some("UTC".into()),
        });
        let (start, end) = busy_times(&e, Some("Pacific Standard Time")).unwrap();
        assert_eq!(start.to_rfc3339(), "2026-12-01T08:00:00+00:00");
        assert_eq!(end.to_rfc3339(), "2026-12-02T08:00:00+00:00");
        let (start, _) = busy_times(&e, Some("Asia/Tokyo")).unwrap();
        assert_eq!(start.to_rfc3339(), "2026-11-30T15:00:00+00:00");
        let (start, _) = busy_times(&e, None).unwrap();
        assert_eq!(start.to_rfc3339(), "2026-12-01T00:00:00+00:00");
    }

    #[test]
    fn entries_missing_what_the_round_needs_are_read() {
        let mut full = event("busy");
        full.is_cancelled = Some(false);
        full.is_all_day = Some(false);
        full.response_status = Some(ResponseStatus {
            response: Some("organizer".into()),
        });
        assert!(!lacks_what_the_round_needs(&full, false));
        assert!(!lacks_what_the_round_needs(&full, true));
        let mut no_show_as = full.clone();
        no_show_as.show_as = None;
        assert!(lacks_what_the_round_needs(&no_show_as, false));
        assert!(!lacks_what_the_round_needs(&no_show_as, true));
        let mut no_cancel_flag = full.clone();
        no_cancel_flag.is_cancelled = None;
        assert!(lacks_what_the_round_needs(&no_cancel_flag, true));
        let mut no_times = full;
        no_times.end = None;
        assert!(lacks_what_the_round_needs(&no_times, false));
    }

    #[test]
    fn snapshots_read_removal_cancellation_and_decline() {
        let mut e = event("busy");
        e.response_status = Some(ResponseStatus {
            response: Some("Declined".into()),
        });
        match snapshot(&e).unwrap().state {
            SnapshotState::Live {
                declined,
                cancelled,
                ..
            } => assert!(declined && !cancelled),
            other => panic!("{other:?}"),
        }
        // A removal report is never a snapshot: it is confirmed by reading the event.
        let removed = GraphEvent {
            id: "e2".into(),
            removed: Some(Removed {
                reason: Some("deleted".into()),
            }),
            ..Default::default()
        };
        assert!(snapshot(&removed).is_none());
        let unreadable = GraphEvent {
            id: "e3".into(),
            ..Default::default()
        };
        assert!(snapshot(&unreadable).is_none());
    }
}
