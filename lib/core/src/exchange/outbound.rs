//! Sessions become Graph events: `POST /v1/exchange/outbound` and the outbound queue.
//!
//! The hot path is three store round trips and one Graph write: one batch read (session,
//! the staff member's connection, the company's credentials, the session's mapping); the
//! session mirror written *before* the Graph call (what the system is about to write is
//! recorded first, so the echo of the write is recognised even if everything after the call
//! is lost: inbound reconciliation compares the event with this record); the Graph call;
//! and one transaction that records the mapping, the connection's sync state and, when it
//! changed, the session. A crash between the Graph call and the transaction is repaired by
//! the platform's retry (creates carry a `transactionId` derived from the session, so Graph
//! returns the event it already made) or by inbound adoption of the unmapped event.
//!
//! **Ordering.** A change may carry the platform's `version` of the session (increasing with
//! each platform change). A version older than the newest recorded, or equal to one whose
//! calendar write completed, is `stale`: 200, nothing stored, nothing called. The same
//! version again before its write completed is a retry and goes on. Without `version`,
//! changes apply in arrival order.
//!
//! **A cancelled session stays cancelled under `updated`** (a retried edit arriving after the
//! cancellation, or an edit the platform made before it learnt of a cancellation from
//! Outlook); only `created` books it again.
//!
//! **What the calendar should show follows from the session, not the action:** a confirmed
//! session has its event at its times; a cancelled one has none; while a cancellation is
//! pending (the staff member deleted the event) nothing is written: a platform edit stores
//! the new times and keeps the cancellation pending (a restore brings the event back and
//! moves it to them). An update that finds the event gone (404) is the staff member's
//! deletion not yet reconciled: the cancellation starts pending, and no second event is
//! made. Only an event that is gone because the session was cancelled is created anew when
//! the platform confirms the session again.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::api::{
    CalendarRef, EventBody, EventLocation, EventWrite, ExtendedProperty, GraphDateTime, GraphEvent,
    SESSION_TAG_ID,
};
use super::channels::calendar_of;
use super::{credentials, provider_error, GraphApi, GraphCredentials, GraphError};
use crate::calendar::placement::Placement;
use crate::deps::Deps;
use crate::model::{
    Connection, ConnectionStatus, EventMapping, HistoryEntry, Provider, RetiredEvent, Session,
    SessionClient, SessionStatus,
};
use crate::store::{OutboundContext, OutboundWrite};
use crate::{validate, Error, Result};

pub const ORIGIN_PLATFORM: &str = "platform";
/// Every `transactionId` the platform writes starts with this.
pub const TRANSACTION_PREFIX: &str = "voyage-";
/// A session keeps its newest history entries only, so its record stays far below
/// DynamoDB's 400 KB item limit however often it changes.
pub const HISTORY_LIMIT: usize = 100;
/// A successful write refreshes a healthy connection's `last_sync_at` only when it is at
/// least this old (every write rewriting the connection record made writes of different
/// sessions of one staff member race on it).
const SYNC_TIME_REFRESH_SECS: i64 = 60;
/// Tries of the intent's and the closing transaction's commits (the Graph call is not
/// repeated): [`crate::retry::LOST_RACE_ATTEMPTS`].
const COMMIT_ATTEMPTS: usize = crate::retry::LOST_RACE_ATTEMPTS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Updated,
    Cancelled,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Cancelled => "cancelled",
        }
    }
}

/// The body of `POST /v1/exchange/outbound` and of an outbound queue message.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionChangeInput {
    pub action: Action,
    pub session: SessionInput,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionInput {
    pub id: String,
    pub company_id: String,
    pub staff_id: String,
    pub start: String,
    pub end: String,
    pub time_zone: String,
    pub title: String,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub client: Option<ClientInput>,
    /// The platform's version of the session: an integer >= 1, increasing with each platform
    /// change of it. Optional; without it changes apply in arrival order.
    #[serde(default)]
    pub version: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientInput {
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
}

/// A change that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionChange {
    pub action: Action,
    pub id: String,
    pub company_id: String,
    pub staff_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub time_zone: String,
    pub title: String,
    pub location: Option<String>,
    pub client: Option<SessionClient>,
    /// The platform's version of the session, when it sends one.
    pub version: Option<u64>,
    /// The session as stored, not a platform change: a booking command's follow-up
    /// ([`crate::calendar::follow`], [`crate::calendar::change_of`]). It is written only
    /// while the stored session still says the same; once another change has been stored
    /// since (a platform move, a re-booking), that change's own write puts it into every
    /// calendar, and this copy, older, writes nothing (`superseded`), so it never reverts
    /// the newer change in the store or in the calendar.
    pub as_stored: bool,
}

/// The largest `version`: 2^53 - 1, the largest integer every JSON client keeps exact (a
/// version beyond it would make every later change stale).
pub const MAX_VERSION: u64 = (1 << 53) - 1;

/// The longest session we accept: longer is a data error on the platform's side.
pub use crate::calendar::engine::MAX_SESSION_DAYS;

fn instant(field: &str, value: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            Error::validation(
                field,
                "must be an RFC 3339 date-time with an offset, like 2026-12-01T09:00:00Z",
            )
        })
}

impl SessionChangeInput {
    pub fn validate(self) -> Result<SessionChange> {
        let s = self.session;
        validate::identifier("session.id", &s.id)?;
        validate::identifier("session.company_id", &s.company_id)?;
        validate::identifier("session.staff_id", &s.staff_id)?;
        let start = instant("session.start", &s.start)?;
        let end = instant("session.end", &s.end)?;
        if end <= start {
            return Err(Error::validation(
                "session.end",
                "must be after session.start",
            ));
        }
        if end - start > chrono::Duration::days(MAX_SESSION_DAYS) {
            return Err(Error::validation(
                "session.end",
                format!("the session may last at most {MAX_SESSION_DAYS} days"),
            ));
        }
        if s.time_zone != "UTC" && s.time_zone.parse::<chrono_tz::Tz>().is_err() {
            return Err(Error::validation(
                "session.time_zone",
                "must be an IANA time zone, like Europe/Berlin",
            ));
        }
        if s.title.trim().is_empty() {
            return Err(Error::validation("session.title", "must not be empty"));
        }
        validate::text("session.title", &s.title, 255)?;
        if let Some(l) = &s.location {
            validate::text("session.location", l, 255)?;
        }
        let client = match s.client {
            Some(c) => {
                if c.name.trim().is_empty() {
                    return Err(Error::validation(
                        "session.client.name",
                        "must not be empty",
                    ));
                }
                validate::text("session.client.name", &c.name, 200)?;
                if let Some(e) = &c.email {
                    validate::email("session.client.email", e)?;
                }
                Some(SessionClient {
                    name: c.name,
                    email: c.email,
                })
            }
            None => None,
        };
        let version = match &s.version {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if (1..=MAX_VERSION).contains(&n) => Some(n),
                _ => {
                    return Err(Error::validation(
                        "session.version",
                        format!("must be an integer from 1 to {MAX_VERSION}"),
                    ))
                }
            },
        };
        Ok(SessionChange {
            action: self.action,
            id: s.id,
            company_id: s.company_id,
            staff_id: s.staff_id,
            start,
            end,
            time_zone: s.time_zone,
            title: s.title,
            location: s.location,
            client,
            version,
            as_stored: false,
        })
    }
}

/// What happened, as answered by the route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub session_id: String,
    pub action: Action,
    /// `created`, `updated`, `deleted`, `skipped`, `no_event` (a cancel with nothing to
    /// remove), `stale` (an older platform version than one already applied: nothing done) or
    /// `superseded` (a newer change was written while this one was: it stands).
    pub outcome: &'static str,
    pub session_status: SessionStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The calendar shows what the change asked for (or needs nothing more): with the other
    /// calendars settled too, a retry of the same version is stale.
    #[serde(skip)]
    pub settled: bool,
}

/// The id Graph deduplicates creates by: stable for a session, so a retried create (after a
/// timeout, a crash, a queue redelivery) finds the event the first try made. `generation`
/// distinguishes a deliberate re-create after the staff member deleted the event.
pub fn transaction_id(company: &str, session: &str, generation: u64) -> String {
    let digest = Sha256::digest(format!("{company}/{session}/{generation}").as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    // Graph takes any string; the prefix lets the inbound path recognise our own event even
    // before its mapping is stored (a create whose answer was lost).
    format!("{TRANSACTION_PREFIX}{hex}")
}

/// The tag value naming the session an event shows.
pub fn session_tag(company: &str, session: &str) -> String {
    format!("{company}/{session}")
}

fn event_body(change: &SessionChange, transaction: Option<String>) -> EventWrite {
    let content = crate::calendar::event_description(change.client.as_ref());
    EventWrite {
        subject: change.title.clone(),
        body: EventBody {
            content_type: "text".into(),
            content,
        },
        start: GraphDateTime::utc(change.start),
        end: GraphDateTime::utc(change.end),
        location: change.location.as_ref().map(|l| EventLocation {
            display_name: l.clone(),
        }),
        show_as: "busy".into(),
        transaction_id: transaction,
        extended: vec![ExtendedProperty {
            id: SESSION_TAG_ID.into(),
            value: Some(session_tag(&change.company_id, &change.id)),
        }],
    }
}

/// The session as it should be stored after `change`, from what is stored now.
fn merged_session(
    existing: Option<&Session>,
    change: &SessionChange,
    now: DateTime<Utc>,
) -> Session {
    let status = match (change.action, existing.map(|s| s.status)) {
        (Action::Cancelled, _) => SessionStatus::Cancelled,
        // A cancelled booking is final for edits: an `updated` (a late retry, or an edit the
        // platform made before it learnt of the cancellation) is stored but does not bring
        // it back. Only `created` books it again.
        (Action::Updated, Some(SessionStatus::Cancelled)) => SessionStatus::Cancelled,
        // A booking given to another staff member while the first one's deletion of its
        // event waits for its grace: that deletion was about the first staff member's
        // calendar; the platform has placed the booking elsewhere, so it is confirmed (the
        // pending cancellation ends, the new staff member's calendar gets the event).
        (_, Some(SessionStatus::PendingCancellation))
            if existing.is_some_and(|s| s.staff_id != change.staff_id) =>
        {
            SessionStatus::Confirmed
        }
        // A staff member's deletion awaiting its grace period is not undone by a platform
        // edit of the same session: the pending cancellation keeps running.
        (_, Some(SessionStatus::PendingCancellation)) => SessionStatus::PendingCancellation,
        _ => SessionStatus::Confirmed,
    };
    let mut next = Session {
        id: change.id.clone(),
        company_id: change.company_id.clone(),
        staff_id: change.staff_id.clone(),
        start: change.start,
        end: change.end,
        time_zone: change.time_zone.clone(),
        title: change.title.clone(),
        location: change.location.clone(),
        client: change.client.clone(),
        status,
        // A staff member's decline is of their placement: the booking given to another
        // staff member, or booked again, is not declined until that placement is (and that
        // decline is flagged and sent again, review 8, finding 5).
        declined: existing.is_some_and(|s| {
            let rebooked =
                s.status == SessionStatus::Cancelled && status != SessionStatus::Cancelled;
            s.declined && s.staff_id == change.staff_id && !rebooked
        }),
        history: existing.map(|s| s.history.clone()).unwrap_or_default(),
        pending: match status {
            SessionStatus::PendingCancellation => existing.and_then(|s| s.pending.clone()),
            _ => None,
        },
        outbox: existing.map(|s| s.outbox.clone()).unwrap_or_default(),
        platform_version: existing
            .and_then(|s| s.platform_version)
            .max(change.version),
        calendar_version: existing.and_then(|s| s.calendar_version),
        event_txn: existing.and_then(|s| s.event_txn.clone()),
        google_event: existing.and_then(|s| s.google_event.clone()),
        retired: existing.map(|s| s.retired.clone()).unwrap_or_default(),
        unsettled_times: existing
            .map(|s| unsettled_times(s, change))
            .unwrap_or_default(),
        times_changed_at: match existing {
            Some(s)
                if (&s.staff_id, s.start, s.end)
                    == (&change.staff_id, change.start, change.end) =>
            {
                s.times_changed_at
            }
            _ => Some(now),
        },
        updated_at: now,
        version: existing.map_or(0, |s| s.version),
    };
    let unchanged = existing.is_some_and(|s| {
        (
            &s.staff_id,
            s.start,
            s.end,
            &s.time_zone,
            &s.title,
            &s.location,
            &s.client,
            s.status,
            s.platform_version,
        ) == (
            &next.staff_id,
            next.start,
            next.end,
            &next.time_zone,
            &next.title,
            &next.location,
            &next.client,
            next.status,
            next.platform_version,
        )
    });
    if unchanged {
        // A redelivered change: same record, no new history entry.
        if let Some(s) = existing {
            next.updated_at = s.updated_at;
        }
    } else {
        push_history(
            &mut next,
            now,
            &format!("platform.{}", change.action.as_str()),
            ORIGIN_PLATFORM,
            None,
        );
    }
    // A pending cancellation ended by giving the booking to another staff member: the
    // tenant, told it was about to be cancelled, is told it is not (`session.restored`,
    // `reason` `reassigned`). Published once the write is in (see [`record_intent`]).
    let reassigned = existing.is_some_and(|s| s.status == SessionStatus::PendingCancellation)
        && next.status == SessionStatus::Confirmed;
    if reassigned {
        let mut extra = serde_json::Map::new();
        extra.insert("reason".into(), serde_json::json!(REASSIGNED));
        let event = crate::booking::session_event(
            &next,
            "session.restored",
            "platform.reassign",
            ORIGIN_PLATFORM,
            extra,
        );
        next.outbox.push(event);
    }
    next
}

/// The `reason` of a `session.restored` sent when the platform gave a booking whose
/// cancellation was pending to another staff member.
pub const REASSIGNED: &str = "reassigned";

/// `existing`'s [`Session::unsettled_times`] once `change` replaces its times: with them
/// added (a write of them may have moved an event with its commit lost).
fn unsettled_times(
    existing: &Session,
    change: &SessionChange,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut times = existing.unsettled_times.clone();
    let before = (existing.start, existing.end);
    if before != (change.start, change.end) && !times.contains(&before) {
        times.push(before);
        if times.len() > crate::model::session::UNSETTLED_TIMES {
            times.remove(0);
        }
    }
    times
}

pub fn push_history(
    s: &mut Session,
    at: DateTime<Utc>,
    command: &str,
    origin: &str,
    detail: Option<String>,
) {
    s.history.push(HistoryEntry {
        at,
        command: command.to_string(),
        origin: origin.to_string(),
        detail,
    });
    if s.history.len() > HISTORY_LIMIT {
        let excess = s.history.len() - HISTORY_LIMIT;
        s.history.drain(..excess);
    }
}

/// Whether `change` is older than what the session already reflects: a version below the
/// newest recorded, or the newest one again once its calendar write completed.
pub fn is_stale(session: Option<&Session>, change: &SessionChange) -> bool {
    let (Some(s), Some(v)) = (session, change.version) else {
        return false;
    };
    match s.platform_version {
        Some(p) if v < p => true,
        // (Not while an earlier placement's event is left to delete: a write that could not
        // delete it answered `failed`, and its retry deletes it, whatever marked the version
        // done since: a pending cancellation's write, the commit of a cancellation.)
        Some(p) if v == p => s.calendar_version == Some(p) && s.retired.is_empty(),
        _ => false,
    }
}

/// What a retry of the platform's newest change amounts to once that change is answered
/// (its calendar write done, `calendar_version` says so) while an earlier placement's event
/// is still left to delete (so [`is_stale`] lets it through): the session as stored
/// ([`crate::calendar::change_of`]), not the change. What answered the change since stands (a
/// cancellation committed after the staff member deleted the booking's event, a move made
/// in the calendar), and only the leftover goes; merged again, a `created` would book a
/// cancelled session again after `session.cancelled` was sent (review 8, finding 1).
pub fn leftovers_only(session: Option<&Session>, change: &SessionChange) -> Option<SessionChange> {
    let s = session?;
    let answered = change.version.is_some()
        && s.platform_version == change.version
        && s.calendar_version == change.version;
    (answered && !s.retired.is_empty() && s.staff_id == change.staff_id)
        .then(|| crate::calendar::change_of(s))
}

/// Whether `change` is a follow-up's copy of the session ([`SessionChange::as_stored`])
/// that the stored session no longer matches (changed since, or gone).
fn overtaken(session: Option<&Session>, change: &SessionChange) -> bool {
    change.as_stored && session.is_none_or(|s| crate::calendar::change_of(s) != *change)
}

/// What the Graph step decided or did.
#[derive(Debug, Clone)]
enum Step {
    NoConnection,
    Skipped(String),
    NoCredentials,
    /// The session's cancellation is pending: nothing is written to the calendar.
    Pending,
    /// The mapped event is gone (404) and the session was not cancelled: the staff member
    /// deleted it, and the deletion is reconciled here.
    EventGone,
    Wrote(Box<GraphEvent>, &'static str),
    /// Another platform change of the session overtook this one while it was being written
    /// (the event changed under it): nothing is overwritten or recorded; the newer change's
    /// write stands.
    Superseded,
    /// The event was deleted; when it was found through its `transactionId` (no mapping),
    /// the event, so the mapping records it (a restore of it is then known).
    Deleted(Option<Box<GraphEvent>>),
    NothingToDelete,
    Failed(GraphError),
}

impl Step {
    /// Whether the calendar shows what the change asked for (or needs nothing more). A change
    /// skipped for a pending or disabled connection does not: its retry must still write. Nor
    /// does a gone event: its pending cancellation is started after the commit, and if that
    /// fails, the same change sent again must find the event gone again and start it (a
    /// settled version would make the retry stale).
    fn settles_calendar(&self) -> bool {
        matches!(
            self,
            Step::Pending | Step::Wrote(..) | Step::Deleted(_) | Step::NothingToDelete
        )
    }
}

/// Applies a validated change: the session mirror (first), the Graph event, the mapping.
pub async fn apply(deps: &Deps, change: &SessionChange) -> Result<Outcome> {
    let (outcome, failure, _, _) = write(deps, change).await?;
    match failure {
        Some(e) => Err(e),
        None => Ok(outcome),
    }
}

/// [`apply`] for the calendar seam ([`crate::calendar::changes`]): a calendar that could not
/// be written is an outcome, not an error: `no_connection` (the staff member has no
/// Exchange connection) or `failed` with the reason (the same change retried writes it).
pub async fn apply_to_calendar(deps: &Deps, change: &SessionChange) -> Result<Outcome> {
    apply_to_calendars(deps, change).await.map(|(o, _, _)| o)
}

/// [`apply_to_calendar`], also returning what the write read and wrote last: the session as
/// stored, and the other providers' connections, credentials and mappings (read in the same
/// batch), for the calendar seam to write the other calendars without reading again; and
/// the change written instead of `change`, when it was a retry that only clears leftovers
/// ([`leftovers_only`]): the other calendars write that one too.
pub async fn apply_to_calendars(
    deps: &Deps,
    change: &SessionChange,
) -> Result<(Outcome, OutboundContext, Option<SessionChange>)> {
    let (mut outcome, failure, ctx, instead) = write(deps, change).await?;
    if let Some(e) = failure {
        outcome.outcome = match e {
            Error::BadRequest {
                code: "exchange_connection_not_found",
                ..
            } => "no_connection",
            _ => "failed",
        };
        if outcome.outcome == "failed" && outcome.reason.is_none() {
            outcome.reason = Some(e.to_string());
        }
    }
    Ok((outcome, ctx, instead))
}

/// Records the change and writes the event: the outcome, the error the Exchange route
/// answers with when the calendar could not be written, the context read and written last,
/// and the change written instead of `change` ([`leftovers_only`]).
async fn write(
    deps: &Deps,
    change: &SessionChange,
) -> Result<(
    Outcome,
    Option<Error>,
    OutboundContext,
    Option<SessionChange>,
)> {
    let ctx = read_context(deps, change).await?;
    let instead = leftovers_only(ctx.session.as_ref(), change);
    if instead.is_some() {
        tracing::info!(session = %change.id, "a retry of an answered change: the session as stored is written, its leftover events deleted");
    }
    let (mut outcome, failure, ctx) =
        write_from(deps, instead.as_ref().unwrap_or(change), ctx).await?;
    outcome.action = change.action;
    Ok((outcome, failure, ctx, instead))
}

async fn read_context(deps: &Deps, change: &SessionChange) -> Result<OutboundContext> {
    deps.store
        .outbound_context(
            &change.company_id,
            &change.staff_id,
            &change.id,
            Provider::Exchange,
        )
        .await
}

/// [`write`] of `change` from `ctx`, read for it.
async fn write_from(
    deps: &Deps,
    change: &SessionChange,
    mut ctx: OutboundContext,
) -> Result<(Outcome, Option<Error>, OutboundContext)> {
    let read = || read_context(deps, change);
    let previous = match record_intent(deps, &mut ctx, change, &read).await? {
        Intent::Stale => {
            let outcome = stale(change, &ctx);
            return Ok((outcome, None, ctx));
        }
        Intent::Overtaken => {
            tracing::debug!(session = %change.id, "follow-up overtaken by a newer change of the session: superseded");
            let outcome = Outcome {
                outcome: "superseded",
                reason: Some("the session changed again since: that change is written".into()),
                ..stale(change, &ctx)
            };
            return Ok((outcome, None, ctx));
        }
        Intent::Recorded { previous } => previous.map(|p| *p),
    };
    // An event written through another connection (the session was given to another staff
    // member): it goes from that calendar.
    if let Some(old) = ctx.mapping.clone().filter(|m| {
        ctx.connection
            .as_ref()
            .is_none_or(|c| c.id != m.connection_id)
    }) {
        match remove_elsewhere(deps, &ctx, &old).await {
            Ok(()) => {
                // Gone from there: the session has no Exchange event until this write makes
                // one (a write that fails leaves no mapping to a deleted event behind).
                let mut writes = [OutboundWrite::DeleteMapping(old)];
                match deps.store.commit_outbound(&mut writes).await {
                    Ok(()) => ctx.mapping = None,
                    Err(e) => {
                        tracing::debug!(session = %change.id, error = %e, "moved session's exchange mapping not removed yet")
                    }
                }
            }
            Err(e) => {
                // The old mailbox still shows the booking: nothing is written in the new one
                // until it is gone (the same change sent again removes it first).
                let outcome = Outcome {
                    session_id: change.id.clone(),
                    action: change.action,
                    outcome: "failed",
                    session_status: ctx
                        .session
                        .as_ref()
                        .map_or(SessionStatus::Confirmed, |s| s.status),
                    // The mailbox that still shows the booking, when the staff member has
                    // none now: the failure is reported (and the change retried) all the same.
                    connection_id: Some(
                        ctx.connection
                            .as_ref()
                            .map_or_else(|| old.connection_id.clone(), |c| c.id.clone()),
                    ),
                    event_id: None,
                    reason: Some(format!(
                        "the event in the previous staff member's mailbox could not be removed: {e}"
                    )),
                    settled: false,
                };
                return Ok((outcome, Some(provider_error(&e)), ctx));
            }
        }
    }
    let mut step = graph_step(deps, &ctx, change, previous.as_ref()).await?;
    let (cleared, undeleted) = delete_retired(deps, &ctx, change, &step).await;
    let placed = placement_of(&ctx);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let now = deps.store.now();
        let settles = undeleted.is_none();
        let (mut writes, outcome) = closing_writes(&ctx, change, &step, &cleared, settles, now);
        match deps.store.commit_outbound(&mut writes).await {
            Ok(()) => {
                for w in writes {
                    if let OutboundWrite::Session(s) = w {
                        ctx.session = Some(s);
                    }
                }
                let (outcome, failure) =
                    finish_step(deps, change, outcome, &step, &mut ctx).await?;
                // Its own part done, an earlier placement's event left behind: retried.
                let (outcome, failure) = match undeleted {
                    Some(u) if !matches!(outcome.outcome, "failed" | "superseded") => {
                        u.fail(outcome)
                    }
                    _ => (outcome, failure),
                };
                break Ok((outcome, failure, ctx));
            }
            Err(Error::Conflict { .. }) if attempt < COMMIT_ATTEMPTS => {
                tracing::debug!(session = %change.id, "outbound commit lost a race; re-reading");
                crate::retry::after_lost_race().await;
                ctx = read().await?;
                step = still_ours(deps, &ctx, &placed, step).await;
            }
            Err(Error::Conflict { .. }) => {
                return Err(crate::retry::contended("session", &change.id))
            }
            Err(e) => return Err(e),
        }
    }
}

/// What recording a change's intent found.
enum Intent {
    /// The change is older than what the session reflects: nothing was stored.
    Stale,
    /// A follow-up's copy of the session ([`SessionChange::as_stored`]) that the stored
    /// session no longer matches: a newer change was stored since; nothing is written.
    Overtaken,
    /// The session as the change makes it is stored (`ctx.session`); `previous` is the
    /// session as it was before (`None`: there was none).
    Recorded { previous: Option<Box<Session>> },
}

/// Stores the session as the change makes it, before any Graph call (re-reading after a lost
/// race).
///
/// A cancelled session booked again retires its old event's mapping in the same commit: from
/// the moment the session is confirmed again, the old event (deleted with the cancellation)
/// is no longer its event, and a delta round that reads the old event's removal must find no
/// mapping, not a confirmed session to put into pending cancellation.
async fn record_intent<F, Fut>(
    deps: &Deps,
    ctx: &mut OutboundContext,
    change: &SessionChange,
    read: &F,
) -> Result<Intent>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<OutboundContext>>,
{
    for attempt in 1..=COMMIT_ATTEMPTS {
        if is_stale(ctx.session.as_ref(), change) {
            return Ok(Intent::Stale);
        }
        if overtaken(ctx.session.as_ref(), change) {
            return Ok(Intent::Overtaken);
        }
        let previous = ctx.session.clone();
        let mut next = merged_session(previous.as_ref(), change, deps.store.now());
        let mapped = ctx.mapping.as_ref().is_some_and(|m| {
            ctx.connection
                .as_ref()
                .is_some_and(|c| c.id == m.connection_id)
        });
        let writable = ctx.credentials.is_some()
            && ctx.connection.as_ref().is_some_and(|c| {
                matches!(c.status, ConnectionStatus::Active | ConnectionStatus::Error)
            });
        // A cancelled session confirmed again: a new placement (a new `transactionId`, a
        // new Google event id).
        let rebooked = next.status == SessionStatus::Confirmed
            && previous
                .as_ref()
                .is_some_and(|p| p.status == SessionStatus::Cancelled);
        // A new placement gets new create ids: booked again, or given to another staff
        // member (a move and a move back both in flight must not share one: the write
        // overtaken by the other tells it has been by the pending id, see
        // [`crate::calendar::placement`]). A twin of the same change finds the staff member
        // already recorded and keeps the ids.
        let staff_changed = previous
            .as_ref()
            .is_some_and(|p| p.staff_id != next.staff_id);
        let new_placement = rebooked || staff_changed;
        // The session given back to a staff member whose event is still mapped: the move
        // away may be deleting that event right now (or failed to), so it is not written
        // over in place; its mapping is retired with the intent, as a re-booking's is, and a
        // new event is made (the retired one is deleted after it, see [`delete_retired`]).
        let reclaimed = staff_changed && mapped && next.status == SessionStatus::Confirmed;
        let retire = rebooked || reclaimed;
        let may_create = writable && next.status == SessionStatus::Confirmed && (!mapped || retire);
        if may_create && (new_placement || next.event_txn.is_none()) {
            // Recorded before the create, so a create whose answer is lost can be found.
            next.event_txn = Some(transaction_id(
                &change.company_id,
                &change.id,
                next.version + 1,
            ));
        } else if staff_changed && !may_create {
            // Given to a staff member with no event to make here: an older placement's
            // pending id is no longer the session's (its write, overtaken, sees that).
            next.event_txn = None;
        }
        // The other calendars' mappings retired with the intent, by the same rules: all of
        // them for a re-booking; for a session given back, one still mapped in the staff
        // member's own calendar (its event may be being deleted by the move away).
        let confirmed = next.status == SessionStatus::Confirmed;
        let retired_others: Vec<Provider> = ctx
            .others
            .iter()
            .filter(|(_, o)| {
                let own = o
                    .mapping
                    .as_ref()
                    .zip(o.connection.as_ref())
                    .is_some_and(|(m, c)| m.connection_id == c.id);
                o.mapping.is_some() && (rebooked || (staff_changed && confirmed && own))
            })
            .map(|(p, _)| *p)
            .collect();
        let google_retired = retired_others.contains(&Provider::Google);
        let google_owed = google_create_owed(ctx, &next, rebooked || google_retired);
        if google_owed && (new_placement || next.google_event.is_none()) {
            // A new placement gets a new Google event id (see `Session::google_event`).
            next.google_event = Some(crate::google::api::event_id_for_placement(
                &change.company_id,
                &change.id,
                next.version + 1,
            ));
        } else if staff_changed && !google_owed {
            next.google_event = None;
        }
        // The retired mappings go in this commit; their events are remembered in the
        // session until a write of their provider deletes them ([`delete_retired`]).
        let own = ctx.mapping.clone().filter(|_| retire);
        let retired: Vec<EventMapping> = own
            .into_iter()
            .chain(
                ctx.others
                    .iter()
                    .filter(|(p, _)| retired_others.contains(p))
                    .filter_map(|(_, o)| o.mapping.clone()),
            )
            .collect();
        let unrecorded = match previous.as_ref().filter(|_| staff_changed) {
            Some(p) => unrecorded_creates(deps, ctx, p).await?,
            None => Vec::new(),
        };
        for event in retired.iter().map(RetiredEvent::of).chain(unrecorded) {
            if !next.retired.contains(&event) {
                next.retired.push(event);
            }
        }
        if previous.as_ref() == Some(&next) {
            return Ok(Intent::Recorded {
                previous: previous.map(Box::new),
            });
        }
        let mut writes = vec![OutboundWrite::Session(next)];
        writes.extend(retired.into_iter().map(OutboundWrite::DeleteMapping));
        match deps.store.commit_outbound(&mut writes).await {
            Ok(()) => {
                let Some(OutboundWrite::Session(mut written)) = writes.into_iter().next() else {
                    return Err(Error::Internal("intent write lost its session".into()));
                };
                // Events the write made (a pending cancellation ended by a reassignment)
                // go out now; one whose publish fails stays for the outbox relay.
                if !written.outbox.is_empty() {
                    crate::booking::publish_own_outbox(deps, &mut written).await;
                }
                ctx.session = Some(written);
                if retire {
                    ctx.mapping = None;
                }
                for (p, other) in &mut ctx.others {
                    if retired_others.contains(p) {
                        other.mapping = None;
                    }
                }
                return Ok(Intent::Recorded {
                    previous: previous.map(Box::new),
                });
            }
            Err(Error::Conflict { .. }) if attempt < COMMIT_ATTEMPTS => {
                crate::retry::after_lost_race().await;
                *ctx = read().await?;
            }
            Err(Error::Conflict { .. }) => break,
            Err(e) => return Err(e),
        }
    }
    Err(crate::retry::contended("session", &change.id))
}

/// The creates of `previous`'s placement that may have happened without being recorded, now
/// that the session is given to another staff member: a pending create id (Exchange's
/// `transactionId`, Google's event id) that no mapping names, in the previous staff member's
/// calendar of that provider. A write that failed after the provider made the event leaves
/// it so; its retry is stale once the session has moved on, so the event is retired here
/// (simulation seed 2054, two-staff with rounds held: an Exchange event made for ann, its
/// commit refused, stayed in her calendar after the booking went to bob).
async fn unrecorded_creates(
    deps: &Deps,
    ctx: &OutboundContext,
    previous: &Session,
) -> Result<Vec<RetiredEvent>> {
    let google_mapped = ctx
        .others
        .iter()
        .find(|(p, _)| *p == Provider::Google)
        .and_then(|(_, o)| o.mapping.as_ref())
        .map(|m| m.external_event_id.as_str());
    let pending = [
        (
            Provider::Exchange,
            previous.event_txn.clone().filter(|_| ctx.mapping.is_none()),
            true,
        ),
        (
            Provider::Google,
            previous
                .google_event
                .clone()
                .filter(|id| google_mapped != Some(id.as_str())),
            false,
        ),
    ];
    let mut out = Vec::new();
    for (provider, id, by_transaction) in pending {
        let Some(id) = id else { continue };
        let Some(conn) = deps
            .store
            .connection_for_staff(&previous.company_id, &previous.staff_id, provider)
            .await?
        else {
            continue;
        };
        out.push(RetiredEvent {
            provider,
            connection_id: conn.id,
            event_id: id,
            by_transaction,
        });
    }
    Ok(out)
}

/// Whether the session, as `next`, needs a Google event created: the staff member has a
/// writable Google connection and no event of this session in it (none mapped, one mapped
/// through another connection: the session was given to another staff member, or it is
/// booked again after a cancellation: its old event's mapping is retired).
fn google_create_owed(ctx: &OutboundContext, next: &Session, retiring: bool) -> bool {
    if next.status != SessionStatus::Confirmed {
        return false;
    }
    ctx.others
        .iter()
        .filter(|(p, _)| *p == Provider::Google)
        .any(|(_, g)| {
            g.credentials.is_some()
                && g.connection.as_ref().is_some_and(|c| {
                    matches!(c.status, ConnectionStatus::Active | ConnectionStatus::Error)
                        && (retiring || g.mapping.as_ref().is_none_or(|m| m.connection_id != c.id))
                })
        })
}

fn stale(change: &SessionChange, ctx: &OutboundContext) -> Outcome {
    Outcome {
        session_id: change.id.clone(),
        action: change.action,
        outcome: "stale",
        session_status: ctx
            .session
            .as_ref()
            .map_or(SessionStatus::Confirmed, |s| s.status),
        connection_id: ctx.connection.as_ref().map(|c| c.id.clone()),
        event_id: ctx.mapping.as_ref().map(|m| m.external_event_id.clone()),
        reason: Some(format!(
            "version {} is not newer than the session's {}",
            change.version.unwrap_or_default(),
            ctx.session
                .as_ref()
                .and_then(|s| s.platform_version)
                .unwrap_or_default()
        )),
        settled: true,
    }
}

async fn graph_step(
    deps: &Deps,
    ctx: &OutboundContext,
    change: &SessionChange,
    previous: Option<&Session>,
) -> Result<Step> {
    let Some(conn) = &ctx.connection else {
        return Ok(Step::NoConnection);
    };
    match conn.status {
        ConnectionStatus::Pending => {
            return Ok(Step::Skipped(
                "the Exchange connection is still pending".into(),
            ))
        }
        ConnectionStatus::Disabled => {
            return Ok(Step::Skipped("the Exchange connection is disabled".into()))
        }
        ConnectionStatus::Active | ConnectionStatus::Error => {}
    }
    let Some(session) = &ctx.session else {
        return Err(Error::Internal(
            "outbound: no session after the intent".into(),
        ));
    };
    if session.status == SessionStatus::PendingCancellation {
        return Ok(Step::Pending);
    }
    let Some(record) = &ctx.credentials else {
        return Ok(Step::NoCredentials);
    };
    let creds = credentials::open(deps, record)?;
    let graph = deps.graph()?;
    let calendar = calendar_of(conn);
    // A mapping made through an older connection points into a calendar we may no longer
    // reach; only a mapping of this connection is updated in place.
    let mapping = ctx.mapping.as_ref().filter(|m| m.connection_id == conn.id);
    let txn = session
        .event_txn
        .clone()
        .unwrap_or_else(|| transaction_id(&change.company_id, &change.id, session.version));
    Ok(match session.status {
        SessionStatus::Cancelled => match (mapping, &session.event_txn) {
            (None, None) => Step::NothingToDelete,
            (None, Some(txn)) => find_and_delete(graph, &creds, &calendar, change, txn).await,
            (Some(m), _) => match graph
                .delete_event(&creds, &calendar, &m.external_event_id)
                .await
            {
                Ok(()) | Err(GraphError::NotFound) => Step::Deleted(None),
                Err(e) => Step::Failed(e),
            },
        },
        _ => match mapping {
            None => create(deps, graph, &creds, &calendar, change, &txn).await,
            Some(m) => {
                let was_cancelled = previous.is_some_and(|p| p.status == SessionStatus::Cancelled);
                update(
                    deps,
                    graph,
                    &creds,
                    &calendar,
                    m,
                    change,
                    &txn,
                    was_cancelled,
                )
                .await
            }
        },
    })
}

/// Deletes the session's retired Exchange events ([`Session::retired`]) once this write has
/// put the calendar right (written, deleted, nothing to delete, or no Exchange calendar for
/// the staff member: a retired event may be in another staff member's): the ones gone now, or
/// whose connection is gone, which the closing commit clears. An event the session maps
/// again (adopted since), or that this write wrote, is cleared without being deleted. Best
/// effort: one that could not be deleted stays in the session, and the first failure is
/// returned with the connection that holds the event ([`Undeleted`]): the write then
/// answers `failed`, so the change is retried (a retired event nobody touches is never
/// listed by an incremental sync again, and no later write of the session may come).
async fn delete_retired(
    deps: &Deps,
    ctx: &OutboundContext,
    change: &SessionChange,
    step: &Step,
) -> (Vec<RetiredEvent>, Option<Undeleted>) {
    let written = match step {
        Step::Wrote(e, _) | Step::Deleted(Some(e)) => Some(e.id.as_str()),
        Step::Deleted(None) | Step::NothingToDelete | Step::NoConnection => None,
        _ => return (Vec::new(), None),
    };
    let Some(session) = &ctx.session else {
        return (Vec::new(), None);
    };
    let mut undeleted = None;
    let mapped = ctx.mapping.as_ref().map(|m| m.external_event_id.as_str());
    let (mut cleared, to_delete) = session.retired_in(Provider::Exchange, [written, mapped]);
    for r in to_delete {
        let removed = if r.by_transaction {
            let current = [written, mapped];
            remove_created(deps, ctx, change, &r.connection_id, &r.event_id, current).await
        } else {
            remove_from(
                deps,
                ctx,
                &session.company_id,
                &r.connection_id,
                &r.event_id,
            )
            .await
        };
        match removed {
            Ok(()) => {
                tracing::debug!(event = %r.event_id, "retired event deleted");
                cleared.push(r);
            }
            // Refused for good (a mailbox the app may no longer reach, the credentials
            // gone): kept for later writes, but no retry of this change would fare better,
            // so it is not reported (every change of the booking would fail for it).
            Err(e) if e.refused_for_good() => {
                tracing::warn!(event = %r.event_id, error = %e, "retired event refused its deletion")
            }
            Err(e) => {
                tracing::warn!(event = %r.event_id, error = %e, "retired event not deleted yet");
                undeleted.get_or_insert(Undeleted {
                    connection_id: r.connection_id.clone(),
                    error: e,
                });
            }
        }
    }
    (cleared, undeleted)
}

/// A retired event [`delete_retired`] could not delete: the connection whose calendar
/// still shows it, and why.
struct Undeleted {
    connection_id: String,
    error: GraphError,
}

impl Undeleted {
    /// `outcome`, a write that did its own part, made `failed` for this event: not settled,
    /// so the same change sent again is no stale retry and deletes it.
    fn fail(self, outcome: Outcome) -> (Outcome, Option<Error>) {
        let failure = provider_error(&self.error);
        let outcome = Outcome {
            outcome: "failed",
            connection_id: outcome.connection_id.or(Some(self.connection_id)),
            reason: Some(format!(
                "an earlier placement's event could not be deleted from the calendar: {}",
                self.error
            )),
            settled: false,
            ..outcome
        };
        (outcome, Some(failure))
    }
}

async fn create(
    deps: &Deps,
    graph: &dyn GraphApi,
    creds: &GraphCredentials,
    calendar: &CalendarRef,
    change: &SessionChange,
    txn: &str,
) -> Step {
    let body = event_body(change, Some(txn.to_string()));
    let created = match graph.create_event(creds, calendar, &body).await {
        Ok(e) => e,
        Err(e) => return Step::Failed(e),
    };
    // A retried create returns the event the first try made, as it is now: if the staff
    // member moved it meanwhile, the platform's times are written over it.
    let times = (
        created.start.as_ref().and_then(|t| t.to_utc()),
        created.end.as_ref().and_then(|t| t.to_utc()),
    );
    if times == (Some(change.start), Some(change.end)) {
        return Step::Wrote(Box::new(created), "created");
    }
    if superseded(deps, change).await {
        return Step::Superseded;
    }
    match graph
        .update_event(
            creds,
            calendar,
            &created.id,
            created.etag.as_deref(),
            &event_body(change, None),
        )
        .await
    {
        Ok(e) => Step::Wrote(Box::new(e), "created"),
        Err(e) => Step::Failed(e),
    }
}

/// A cancelled session with no mapped event, whose create may have happened unrecorded: the
/// same idempotent create (same `transactionId`) returns that event if Graph made it (or
/// makes one), and it is deleted. Costs two calls, only after a create whose result was
/// never recorded.
async fn find_and_delete(
    graph: &dyn GraphApi,
    creds: &GraphCredentials,
    calendar: &CalendarRef,
    change: &SessionChange,
    txn: &str,
) -> Step {
    let found = match graph
        .create_event(creds, calendar, &event_body(change, Some(txn.to_string())))
        .await
    {
        Ok(e) => e,
        Err(e) => return Step::Failed(e),
    };
    match graph.delete_event(creds, calendar, &found.id).await {
        Ok(()) | Err(GraphError::NotFound) => Step::Deleted(Some(Box::new(found))),
        Err(e) => Step::Failed(e),
    }
}

/// Whether the stored session has moved past `change` since its intent was recorded: a newer
/// `version`, or (without versions) other times or another status; for a follow-up's copy
/// ([`SessionChange::as_stored`]), any difference (a platform change that kept the times,
/// a new title, was written meanwhile). Read only on the rare paths that would overwrite what
/// the calendar shows now.
pub(crate) async fn superseded(deps: &Deps, change: &SessionChange) -> bool {
    let Ok(Some(now)) = deps
        .store
        .find_session(&change.company_id, &change.id)
        .await
    else {
        return false;
    };
    if change.as_stored {
        return overtaken(Some(&now), change);
    }
    let newer = match (now.platform_version, change.version) {
        (Some(stored), Some(mine)) => stored > mine,
        _ => false,
    };
    let cancelled = now.status == SessionStatus::Cancelled && change.action != Action::Cancelled;
    newer || cancelled || (now.start, now.end) != (change.start, change.end)
}

/// Moves the mapped event to the session's state. The platform's booking is the truth for
/// an outbound change: an event edited in Outlook since our last write (412) is re-read and
/// overwritten. An event that is gone was deleted by the staff member (the cancellation
/// starts pending), unless the session was cancelled: then it was ours, and the confirmed
/// session gets a new one.
#[allow(clippy::too_many_arguments)]
async fn update(
    deps: &Deps,
    graph: &dyn GraphApi,
    creds: &GraphCredentials,
    calendar: &CalendarRef,
    m: &EventMapping,
    change: &SessionChange,
    txn: &str,
    was_cancelled: bool,
) -> Step {
    let body = event_body(change, None);
    let etag = m.change_key.as_ref().map(|k| format!("W/\"{k}\""));
    let first = graph
        .update_event(
            creds,
            calendar,
            &m.external_event_id,
            etag.as_deref(),
            &body,
        )
        .await;
    let result = match first {
        Err(GraphError::PreconditionFailed) if superseded(deps, change).await => {
            return Step::Superseded;
        }
        Err(GraphError::PreconditionFailed) => {
            match graph.get_event(creds, calendar, &m.external_event_id).await {
                Ok(current) => {
                    graph
                        .update_event(
                            creds,
                            calendar,
                            &m.external_event_id,
                            current.etag.as_deref(),
                            &body,
                        )
                        .await
                }
                Err(e) => Err(e),
            }
        }
        other => other,
    };
    match result {
        Ok(e) => Step::Wrote(Box::new(e), "updated"),
        Err(GraphError::NotFound) if was_cancelled => {
            create(deps, graph, creds, calendar, change, txn).await
        }
        Err(GraphError::NotFound) => Step::EventGone,
        Err(e) => Step::Failed(e),
    }
}

/// The closing transaction for `step`, built from the freshest read so it can be retried
/// after a lost race without repeating the Graph call. `settles`: no retired event was left
/// behind (one was: the change's version is not marked done, so its retry is no stale one).
fn closing_writes(
    ctx: &OutboundContext,
    change: &SessionChange,
    step: &Step,
    cleared: &[RetiredEvent],
    settles: bool,
    now: DateTime<Utc>,
) -> (Vec<OutboundWrite>, &'static str) {
    let mut session = ctx.session.clone();
    if let Some(s) = session.as_mut() {
        s.retired.retain(|r| !cleared.contains(r));
    }
    let mut writes = Vec::new();
    let conn = ctx.connection.clone();
    let mark = |conn: Option<Connection>, error: Option<String>| -> Option<OutboundWrite> {
        let mut c = conn?;
        match error {
            Some(message) => {
                c.status = ConnectionStatus::Error;
                c.last_error = Some(message);
            }
            None => {
                // A healthy connection's sync time is refreshed at most once a minute, so
                // writes of different sessions of one staff member do not all race on it.
                let fresh = c
                    .last_sync_at
                    .is_some_and(|t| now - t < chrono::Duration::seconds(SYNC_TIME_REFRESH_SECS));
                // Still conditioned on the connection existing: a write that finishes after
                // its connection was deleted records no mapping through it.
                if c.status == ConnectionStatus::Active && c.last_error.is_none() && fresh {
                    return Some(OutboundWrite::ConnectionExists(c));
                }
                c.status = ConnectionStatus::Active;
                c.last_error = None;
                c.last_sync_at = Some(now);
            }
        }
        Some(OutboundWrite::Connection(c))
    };
    let mut note = |command: &str, detail: String| {
        if let Some(s) = session.as_mut() {
            push_history(s, now, command, ORIGIN_PLATFORM, Some(detail));
        }
    };
    let outcome = match step {
        Step::NoConnection => "no_connection",
        Step::Skipped(reason) => {
            note("exchange.skipped", reason.clone());
            "skipped"
        }
        Step::Pending | Step::EventGone => "skipped",
        Step::Superseded => "superseded",
        Step::NoCredentials => {
            writes.extend(mark(conn, Some(credentials::MISSING.into())));
            "failed"
        }
        Step::Failed(e) => {
            note("exchange.failed", e.to_string());
            writes.extend(mark(conn, Some(format!("outbound: {e}"))));
            "failed"
        }
        Step::Deleted(found) => {
            if let Some(s) = session.as_mut() {
                s.event_txn = None;
            }
            // The mapping stays (or, for an event found through its transaction id, is
            // made): an event restored from Deleted Items is then known as the cancelled
            // session's and deleted again, wherever it lies.
            if let (Some(event), Some(c)) = (found, &conn) {
                writes.push(OutboundWrite::Mapping {
                    next: mapping_of(change, c, event, ctx, now),
                    previous: ctx.mapping.clone(),
                });
            }
            writes.extend(mark(conn, None));
            "deleted"
        }
        Step::NothingToDelete => "no_event",
        Step::Wrote(event, what) => {
            if let Some(s) = session.as_mut() {
                s.event_txn = None;
            }
            if let Some(c) = &conn {
                writes.push(OutboundWrite::Mapping {
                    next: mapping_of(change, c, event, ctx, now),
                    previous: ctx.mapping.clone(),
                });
            }
            writes.extend(mark(conn, None));
            what
        }
    };
    // The version is done once every calendar shows it: with another calendar connected, or
    // another provider's retired events still to delete, the calendar seam marks it after
    // that provider's write ([`crate::google::outbound`]).
    let alone = ctx.others.iter().all(|(_, o)| o.connection.is_none())
        && session
            .as_ref()
            .is_none_or(|s| s.retired.iter().all(|r| r.provider == Provider::Exchange));
    if let (Some(s), Some(v)) = (session.as_mut(), change.version) {
        if alone && settles && step.settles_calendar() && s.calendar_version < Some(v) {
            s.settle(v);
        }
    }
    if let (Some(s), Step::Wrote(..)) = (session.as_mut(), step) {
        s.forget_unsettled_after(change);
    }
    if let Some(s) = session {
        if ctx.session.as_ref() != Some(&s) {
            writes.insert(0, OutboundWrite::Session(s));
        } else if !writes.is_empty() || matches!(step, Step::EventGone) {
            // Not rewritten: still conditioned on it, so a newer change's intent (or a
            // round's command) since the read makes this commit lose, re-read and check
            // its placement ([`still_ours`]); a gone event's pending cancellation too.
            writes.insert(0, OutboundWrite::SessionUnchanged(s));
        }
    }
    (writes, outcome)
}

/// The placement (mapped event, pending `transactionId`) a step was decided on.
fn placement_of(ctx: &OutboundContext) -> Placement {
    Placement::of(
        ctx.mapping.as_ref(),
        ctx.session.as_ref().and_then(|s| s.event_txn.as_deref()),
        ctx.connection.as_ref().map(|c| c.id.as_str()),
        ctx.session.as_ref().map(|s| s.staff_id.as_str()),
    )
}

/// After a lost race and a re-read: `step` as it was, or [`Step::Superseded`] when another
/// write moved the session to another placement meanwhile ([`Placement::moved_on`]): then
/// nothing of this step is recorded (no mapping back to a replaced event, the newer
/// placement's `transactionId` kept, no pending cancellation for an event that is no longer
/// the session's). An event this step created is deleted when it is none of the session's
/// (not mapped, before or now) and its placement's `transactionId` is no longer the one
/// pending (a twin write of the same change, about to map the same event, still has it);
/// one left behind is a tagged duplicate, which a delta round that lists it deletes.
async fn still_ours(deps: &Deps, ctx: &OutboundContext, placed: &Placement, step: Step) -> Step {
    let event = match &step {
        Step::Wrote(e, _) | Step::Deleted(Some(e)) => Some(e.id.clone()),
        Step::EventGone | Step::Deleted(None) => placed.mapped.clone(),
        _ => return step,
    };
    let fresh = placement_of(ctx);
    if !placed.moved_on(&fresh, event.as_deref()) {
        return step;
    }
    tracing::info!(session = ?ctx.session.as_ref().map(|s| &s.id), "a newer placement was recorded while this write was in flight: superseded");
    if let Step::Wrote(e, _) = &step {
        let known = [&fresh.mapped, &placed.mapped, &placed.elsewhere];
        let stray = known.iter().all(|id| id.as_deref() != Some(e.id.as_str()))
            && fresh.pending != placed.pending;
        if stray {
            delete_overtaken(deps, ctx, e).await;
        }
    }
    Step::Superseded
}

/// Deletes an event written for a session that was cancelled meanwhile, or for a placement
/// replaced meanwhile ([`still_ours`]). Best effort: if Graph fails now, the first is mapped
/// and the next delta round deletes it again; the second is a tagged duplicate, which a
/// round that lists it deletes.
async fn delete_overtaken(deps: &Deps, ctx: &OutboundContext, event: &GraphEvent) {
    let (Some(conn), Some(record)) = (&ctx.connection, &ctx.credentials) else {
        return;
    };
    let result = match (credentials::open(deps, record), deps.graph()) {
        (Ok(creds), Ok(graph)) => graph
            .delete_event(&creds, &calendar_of(conn), &event.id)
            .await
            .map_err(|e| e.to_string()),
        (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
    };
    match result {
        Ok(()) => {
            tracing::info!(event = %event.id, "event of a session cancelled meanwhile deleted")
        }
        Err(e) => {
            tracing::warn!(event = %event.id, error = %e, "event of a cancelled session not deleted yet")
        }
    }
}

/// Deletes the event `old` maps, in the mailbox of the connection it was written through.
/// Done when it is deleted or already gone, or when that connection no longer exists (its
/// deletion took its events' mappings with it).
async fn remove_elsewhere(
    deps: &Deps,
    ctx: &OutboundContext,
    old: &EventMapping,
) -> std::result::Result<(), GraphError> {
    remove_from(
        deps,
        ctx,
        &old.company_id,
        &old.connection_id,
        &old.external_event_id,
    )
    .await?;
    tracing::info!(session = %old.session_id, "event removed from the previous staff member's mailbox");
    Ok(())
}

/// Deletes `event` from the mailbox of `connection`. Done when it is deleted or already
/// gone, or when that connection no longer exists (its deletion took its events' mappings
/// with it).
async fn remove_from(
    deps: &Deps,
    ctx: &OutboundContext,
    company: &str,
    connection: &str,
    event: &str,
) -> std::result::Result<(), GraphError> {
    let Some(conn) = deps
        .store
        .find_connection(company, connection)
        .await
        .map_err(|e| GraphError::Unavailable(e.to_string()))?
    else {
        return Ok(());
    };
    let Some(record) = &ctx.credentials else {
        return Err(GraphError::Auth(credentials::MISSING.into()));
    };
    let creds = credentials::open(deps, record).map_err(|e| GraphError::Auth(e.to_string()))?;
    let graph = deps
        .graph()
        .map_err(|e| GraphError::Unavailable(e.to_string()))?;
    match graph.delete_event(&creds, &calendar_of(&conn), event).await {
        Ok(()) | Err(GraphError::NotFound) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes the event a create with `txn` made in `connection`'s mailbox, if it made one: the
/// same idempotent create returns it (or makes one, deleted at once). Done when it is
/// deleted, when that connection or its mailbox no longer exists, or when the event found is
/// the session's own now (`current`: written by this write, or mapped; it is left alone, and
/// the entry is done).
async fn remove_created(
    deps: &Deps,
    ctx: &OutboundContext,
    change: &SessionChange,
    connection: &str,
    txn: &str,
    current: [Option<&str>; 2],
) -> std::result::Result<(), GraphError> {
    let Some(conn) = deps
        .store
        .find_connection(&change.company_id, connection)
        .await
        .map_err(|e| GraphError::Unavailable(e.to_string()))?
    else {
        return Ok(());
    };
    let Some(record) = &ctx.credentials else {
        return Err(GraphError::Auth(credentials::MISSING.into()));
    };
    let creds = credentials::open(deps, record).map_err(|e| GraphError::Auth(e.to_string()))?;
    let graph = deps
        .graph()
        .map_err(|e| GraphError::Unavailable(e.to_string()))?;
    let calendar = calendar_of(&conn);
    let found = match graph
        .create_event(
            &creds,
            &calendar,
            &event_body(change, Some(txn.to_string())),
        )
        .await
    {
        Ok(e) => e,
        Err(GraphError::NotFound) => return Ok(()),
        Err(e) => return Err(e),
    };
    if current.contains(&Some(found.id.as_str())) {
        return Ok(());
    }
    match graph.delete_event(&creds, &calendar, &found.id).await {
        Ok(()) | Err(GraphError::NotFound) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The mapping of `event`, written for `change` through connection `c`.
fn mapping_of(
    change: &SessionChange,
    c: &Connection,
    event: &GraphEvent,
    ctx: &OutboundContext,
    now: DateTime<Utc>,
) -> EventMapping {
    EventMapping {
        company_id: change.company_id.clone(),
        session_id: change.id.clone(),
        connection_id: c.id.clone(),
        provider: Provider::Exchange,
        external_event_id: event.id.clone(),
        change_key: event.change_key.clone(),
        last_start: change.start,
        last_end: change.end,
        updated_at: now,
        version: ctx.mapping.as_ref().map_or(0, |m| m.version),
        modified: event.last_modified,
    }
}

/// After the closing commit: a gone event starts the pending cancellation (the staff
/// member's deletion, found by the write before the delta round found it); then the answer.
async fn finish_step(
    deps: &Deps,
    change: &SessionChange,
    outcome: &'static str,
    step: &Step,
    ctx: &mut OutboundContext,
) -> Result<(Outcome, Option<Error>)> {
    // A cancellation that overtook this write (handled while the write was in flight): the
    // event just written must not outlive it. The mapping keeps pointing at it, so a restore
    // of it is deleted again too.
    if let (Step::Wrote(event, _), Some(session)) = (step, ctx.session.as_ref()) {
        if session.status == SessionStatus::Cancelled {
            delete_overtaken(deps, ctx, event).await;
        }
    }
    let gone = ctx.mapping.as_ref().map(|m| m.external_event_id.clone());
    if let (Step::EventGone, Some(session), Some(gone)) = (step, ctx.session.as_mut(), gone) {
        let grace = deps.config.pending_grace();
        crate::booking::execute_for_event(
            deps,
            session,
            &crate::booking::Command::PendingCancellation { grace },
            crate::booking::ORIGIN_EXCHANGE_INBOUND,
            Provider::Exchange,
            &gone,
        )
        .await
        .map_err(crate::retry::lost_every_race)?;
    }
    // The deletion found was not applied (the booking given away or booked again
    // meanwhile, still confirmed): this write was overtaken, and says so.
    let overtaken = matches!(step, Step::EventGone)
        && ctx
            .session
            .as_ref()
            .is_some_and(|s| s.status == SessionStatus::Confirmed);
    let (outcome, step) = if overtaken {
        ("superseded", &Step::Superseded)
    } else {
        (outcome, step)
    };
    let status = ctx
        .session
        .as_ref()
        .map_or(SessionStatus::Confirmed, |s| s.status);
    finish(change, outcome, status, step, ctx)
}

fn finish(
    change: &SessionChange,
    outcome: &'static str,
    status: SessionStatus,
    step: &Step,
    ctx: &OutboundContext,
) -> Result<(Outcome, Option<Error>)> {
    let failure = match step {
        Step::NoConnection => Some(Error::BadRequest {
            status: 404,
            code: "exchange_connection_not_found",
            message: format!(
                "staff member `{}` has no Exchange connection (POST /v1/connections)",
                change.staff_id
            ),
        }),
        Step::NoCredentials => Some(Error::BadRequest {
            status: 409,
            code: "exchange_credentials_missing",
            message: credentials::MISSING.into(),
        }),
        Step::Failed(e) => Some(provider_error(e)),
        _ => None,
    };
    let outcome = Outcome {
            session_id: change.id.clone(),
            action: change.action,
            outcome,
            session_status: status,
            connection_id: ctx.connection.as_ref().map(|c| c.id.clone()),
            event_id: match step {
                Step::Wrote(e, _) => Some(e.id.clone()),
                _ => None,
            },
            reason: match step {
                Step::Skipped(r) => Some(r.clone()),
                Step::Pending => Some(
                    "the staff member deleted the event; the booking's cancellation is pending (the new times are stored)"
                        .into(),
                ),
                Step::EventGone => Some(
                    "the event was deleted in Outlook; the booking's cancellation is pending"
                        .into(),
                ),
                Step::Superseded => Some(
                    "a newer change of the session was written to the calendar meanwhile".into(),
                ),
                _ => None,
            },
        settled: step.settles_calendar() || matches!(step, Step::NoConnection),
    };
    Ok((outcome, failure))
}
