//! Sessions become Graph events: `POST /v1/exchange/outbound` and the outbound queue.
//!
//! The hot path is two store round trips and one Graph write: one batch read (session,
//! the staff member's connection, the company's credentials, the session's mapping), the
//! Graph call, and one transaction that records the session, the mapping and the
//! connection's sync state. The session mirror is written in that same closing transaction
//! whatever the Graph call did, so a failure never loses the platform's change. A crash
//! between the Graph call and the transaction is repaired by the platform's retry: creates
//! carry a `transactionId` derived from the session, so Graph returns the event it already
//! made instead of a second one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::graph::{
    CalendarRef, EventBody, EventLocation, EventWrite, ExtendedProperty, GraphDateTime, GraphEvent,
    SESSION_TAG_ID,
};
use super::subscriptions::calendar_of;
use super::{credentials, provider_error, GraphApi, GraphCredentials, GraphError};
use crate::deps::Deps;
use crate::model::{
    Connection, ConnectionStatus, EventMapping, HistoryEntry, Provider, Session, SessionClient,
    SessionStatus,
};
use crate::store::{OutboundContext, OutboundWrite};
use crate::{validate, Error, Result};

pub const ORIGIN_PLATFORM: &str = "platform";
/// Every `transactionId` the platform writes starts with this.
pub const TRANSACTION_PREFIX: &str = "voyage-";
/// A session keeps its newest history entries only, so its record stays far below
/// DynamoDB's 400 KB item limit however often it changes.
pub const HISTORY_LIMIT: usize = 100;
/// Store-conflict retries of the closing transaction (the Graph call is not repeated).
const COMMIT_ATTEMPTS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Updated,
    Cancelled,
}

impl Action {
    fn as_str(self) -> &'static str {
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
}

/// The longest session we accept: longer is a data error on the platform's side.
const MAX_SESSION_DAYS: i64 = 31;

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
        })
    }
}

/// What happened, as answered by the route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub session_id: String,
    pub action: Action,
    /// `created`, `updated`, `deleted`, `skipped` or `no_event` (a cancel with nothing to
    /// remove).
    pub outcome: &'static str,
    pub session_status: SessionStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
    let content = match &change.client {
        Some(c) => format!("Voyage session with {}.", c.name),
        None => "Voyage session.".to_string(),
    };
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
        declined: existing.is_some_and(|s| s.declined),
        history: existing.map(|s| s.history.clone()).unwrap_or_default(),
        pending: match status {
            SessionStatus::PendingCancellation => existing.and_then(|s| s.pending.clone()),
            _ => None,
        },
        outbox: existing.map(|s| s.outbox.clone()).unwrap_or_default(),
        updated_at: now,
        version: existing.map_or(0, |s| s.version),
    };
    let unchanged = existing.is_some_and(|s| {
        (
            s.start,
            s.end,
            &s.time_zone,
            &s.title,
            &s.location,
            &s.client,
            s.status,
        ) == (
            next.start,
            next.end,
            &next.time_zone,
            &next.title,
            &next.location,
            &next.client,
            next.status,
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
    next
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

/// What the Graph step decided or did.
#[derive(Debug, Clone)]
enum Step {
    NoConnection,
    Skipped(String),
    NoCredentials,
    Wrote(Box<GraphEvent>, &'static str),
    Deleted,
    NothingToDelete,
    Failed(GraphError),
}

/// Applies a validated change: the session mirror, the Graph event, the mapping.
pub async fn apply(deps: &Deps, change: &SessionChange) -> Result<Outcome> {
    let read = || {
        deps.store.outbound_context(
            &change.company_id,
            &change.staff_id,
            &change.id,
            Provider::Exchange,
        )
    };
    let mut ctx = read().await?;
    let step = graph_step(deps, &ctx, change).await?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let now = deps.store.now();
        let (mut writes, outcome, status) = closing_writes(&ctx, change, &step, now);
        match deps.store.commit_outbound(&mut writes).await {
            Ok(()) => return finish(change, outcome, status, &step, &ctx),
            Err(Error::Conflict { .. }) if attempt < COMMIT_ATTEMPTS => {
                tracing::debug!(session = %change.id, "outbound commit lost a race; re-reading");
                ctx = read().await?;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn graph_step(deps: &Deps, ctx: &OutboundContext, change: &SessionChange) -> Result<Step> {
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
    let Some(record) = &ctx.credentials else {
        return Ok(Step::NoCredentials);
    };
    let creds = credentials::open(deps, record)?;
    let graph = deps.graph()?;
    let calendar = calendar_of(conn);
    // A mapping made through an older connection points into a calendar we may no longer
    // reach; only a mapping of this connection is updated in place.
    let mapping = ctx.mapping.as_ref().filter(|m| m.connection_id == conn.id);
    Ok(match change.action {
        Action::Cancelled => match mapping {
            None => Step::NothingToDelete,
            Some(m) => match graph
                .delete_event(&creds, &calendar, &m.external_event_id)
                .await
            {
                Ok(()) | Err(GraphError::NotFound) => Step::Deleted,
                Err(e) => Step::Failed(e),
            },
        },
        Action::Created | Action::Updated => match mapping {
            None => {
                let body = event_body(
                    change,
                    Some(transaction_id(&change.company_id, &change.id, 0)),
                );
                match graph.create_event(&creds, &calendar, &body).await {
                    Ok(e) => Step::Wrote(Box::new(e), "created"),
                    Err(e) => Step::Failed(e),
                }
            }
            Some(m) => update(graph, &creds, &calendar, m, change, ctx).await,
        },
    })
}

/// Moves the mapped event to the session's state. The platform's booking is the truth for
/// an outbound change: an event edited in Outlook since our last write (412) is re-read and
/// overwritten; an event deleted in Outlook is created again.
async fn update(
    graph: &dyn GraphApi,
    creds: &GraphCredentials,
    calendar: &CalendarRef,
    m: &EventMapping,
    change: &SessionChange,
    ctx: &OutboundContext,
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
        Err(GraphError::NotFound) => {
            let generation = ctx.session.as_ref().map_or(1, |s| s.version.max(1));
            let body = event_body(
                change,
                Some(transaction_id(&change.company_id, &change.id, generation)),
            );
            match graph.create_event(creds, calendar, &body).await {
                Ok(e) => Step::Wrote(Box::new(e), "created"),
                Err(e) => Step::Failed(e),
            }
        }
        Err(e) => Step::Failed(e),
    }
}

/// The closing transaction for `step`, built from the freshest read so it can be retried
/// after a lost race without repeating the Graph call.
fn closing_writes(
    ctx: &OutboundContext,
    change: &SessionChange,
    step: &Step,
    now: DateTime<Utc>,
) -> (Vec<OutboundWrite>, &'static str, SessionStatus) {
    let mut session = merged_session(ctx.session.as_ref(), change, now);
    let mut writes = Vec::new();
    let conn = ctx.connection.clone();
    let mark = |conn: Option<Connection>, error: Option<String>| -> Option<Connection> {
        let mut c = conn?;
        match error {
            Some(message) => {
                c.status = ConnectionStatus::Error;
                c.last_error = Some(message);
            }
            None => {
                c.status = ConnectionStatus::Active;
                c.last_error = None;
                c.last_sync_at = Some(now);
            }
        }
        Some(c)
    };
    let outcome = match step {
        Step::NoConnection => "no_connection",
        Step::Skipped(reason) => {
            push_history(
                &mut session,
                now,
                "exchange.skipped",
                ORIGIN_PLATFORM,
                Some(reason.clone()),
            );
            "skipped"
        }
        Step::NoCredentials => {
            writes.extend(
                mark(conn, Some(credentials::MISSING.into())).map(OutboundWrite::Connection),
            );
            "failed"
        }
        Step::Failed(e) => {
            push_history(
                &mut session,
                now,
                "exchange.failed",
                ORIGIN_PLATFORM,
                Some(e.to_string()),
            );
            writes
                .extend(mark(conn, Some(format!("outbound: {e}"))).map(OutboundWrite::Connection));
            "failed"
        }
        Step::Deleted => {
            if let Some(m) = &ctx.mapping {
                writes.push(OutboundWrite::DeleteMapping(m.clone()));
            }
            writes.extend(mark(conn, None).map(OutboundWrite::Connection));
            "deleted"
        }
        Step::NothingToDelete => "no_event",
        Step::Wrote(event, what) => {
            if let Some(c) = &conn {
                let next = EventMapping {
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
                };
                writes.push(OutboundWrite::Mapping {
                    next,
                    previous: ctx.mapping.clone(),
                });
            }
            writes.extend(mark(conn, None).map(OutboundWrite::Connection));
            what
        }
    };
    let status = session.status;
    if ctx.session.as_ref() != Some(&session) {
        writes.insert(0, OutboundWrite::Session(session));
    }
    (writes, outcome, status)
}

fn finish(
    change: &SessionChange,
    outcome: &'static str,
    status: SessionStatus,
    step: &Step,
    ctx: &OutboundContext,
) -> Result<Outcome> {
    match step {
        Step::NoConnection => Err(Error::BadRequest {
            status: 404,
            code: "exchange_connection_not_found",
            message: format!(
                "staff member `{}` has no Exchange connection (POST /v1/connections)",
                change.staff_id
            ),
        }),
        Step::NoCredentials => Err(Error::BadRequest {
            status: 409,
            code: "exchange_credentials_missing",
            message: credentials::MISSING.into(),
        }),
        Step::Failed(e) => Err(provider_error(e)),
        _ => Ok(Outcome {
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
                _ => None,
            },
        }),
    }
}
