//! The Microsoft Graph port: the calls the Exchange integration makes, in Graph's own terms,
//! and the shapes it reads back. The HTTP adapter lives in `voyage-providers`; tests and the
//! sandbox point it at the Graph simulator.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// The single-value extended property that tags every event the platform writes:
/// `String {GUID} Name VoyageSessionId`, value `<company>/<session>`.
pub const SESSION_TAG_ID: &str =
    "String {6f3a2b0e-5c1d-4e8a-9b7f-2d4c6e8a1b3c} Name VoyageSessionId";

/// App-only credentials of a tenant's Entra ID app registration.
#[derive(Clone, PartialEq, Eq)]
pub struct GraphCredentials {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
}

impl std::fmt::Debug for GraphCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphCredentials")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

/// Whose calendar: the mailbox (`users/{user}`) and, when not the default, the calendar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarRef {
    pub user: String,
    pub calendar: Option<String>,
}

impl CalendarRef {
    /// The events collection path, relative to `/v1.0/`.
    pub fn events_path(&self) -> String {
        match &self.calendar {
            Some(c) => format!("users/{}/calendars/{}/events", enc(&self.user), enc(c)),
            None => format!("users/{}/events", enc(&self.user)),
        }
    }

    /// The `calendarView/delta` path, relative to `/v1.0/`.
    pub fn delta_path(&self) -> String {
        match &self.calendar {
            Some(c) => format!(
                "users/{}/calendars/{}/calendarView/delta",
                enc(&self.user),
                enc(c)
            ),
            None => format!("users/{}/calendarView/delta", enc(&self.user)),
        }
    }
}

/// Percent-encodes one path segment (calendar ids carry `=`, `/` and `+`).
fn enc(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'@' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum GraphError {
    /// The identity platform refused the app credentials (wrong secret, unknown app or
    /// tenant), or Graph refused the token. Retrying will not help until the tenant acts.
    #[error("Microsoft refused the app's credentials or permissions: {0}")]
    Auth(String),
    /// 429 (or 503) after the bounded retries; `retry_after` is Graph's last hint.
    #[error("Microsoft Graph is throttling requests (retry after {retry_after:?})")]
    Throttled { retry_after: Option<Duration> },
    /// A network failure, timeout or 5xx.
    #[error("Microsoft Graph is unavailable: {0}")]
    Unavailable(String),
    #[error("the Graph item was not found")]
    NotFound,
    /// `If-Match` named an older `@odata.etag`: the item changed since we read it.
    #[error("the Graph item changed since it was read (etag mismatch)")]
    PreconditionFailed,
    /// A delta token Graph no longer knows (410 `syncStateNotFound`): resync from scratch.
    #[error("the delta token expired (syncStateNotFound)")]
    SyncStateNotFound,
    /// Any other refusal, with Graph's status, code and message.
    #[error("Microsoft Graph refused the request: {status} {code}: {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
}

impl GraphError {
    /// A refusal that retrying the same call will not change until someone acts: the
    /// credentials or permissions refused, or a 4xx other than a timeout, a conflict, a stale
    /// etag or throttling (403 for a mailbox the app may no longer reach, a disabled account).
    pub fn refused_for_good(&self) -> bool {
        match self {
            GraphError::Auth(_) => true,
            GraphError::Rejected { status, .. } => {
                (400..500).contains(status) && ![408, 409, 412, 429].contains(status)
            }
            _ => false,
        }
    }
}

/// Graph's `dateTimeTimeZone`: local digits (often seven fractional digits) and a zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphDateTime {
    #[serde(rename = "dateTime")]
    pub date_time: String,
    #[serde(rename = "timeZone", default)]
    pub time_zone: Option<String>,
}

impl GraphDateTime {
    /// `t` in UTC, as written to Graph (we always write UTC; Outlook shows it in the staff
    /// member's zone).
    pub fn utc(t: DateTime<Utc>) -> GraphDateTime {
        GraphDateTime {
            date_time: format!(
                "{}.{:07}",
                t.format("%Y-%m-%dT%H:%M:%S"),
                t.timestamp_subsec_nanos() / 100
            ),
            time_zone: Some("UTC".into()),
        }
    }

    /// Reads the instant: `UTC` (or no zone), an IANA zone, or an offset in `dateTime`.
    pub fn to_utc(&self) -> Option<DateTime<Utc>> {
        if let Ok(t) = DateTime::parse_from_rfc3339(&self.date_time) {
            return Some(t.with_timezone(&Utc));
        }
        let naive = NaiveDateTime::parse_from_str(&self.date_time, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
        match self.time_zone.as_deref().map(str::trim) {
            None | Some("") => Some(Utc.from_utc_datetime(&naive)),
            Some(z)
                if z.eq_ignore_ascii_case("UTC")
                    || z.eq_ignore_ascii_case("tzone://Microsoft/Utc")
                    || z.eq_ignore_ascii_case("Etc/GMT") =>
            {
                Some(Utc.from_utc_datetime(&naive))
            }
            Some(z) => {
                let tz: chrono_tz::Tz = z.parse().ok()?;
                tz.from_local_datetime(&naive)
                    .earliest()
                    .map(|t| t.with_timezone(&Utc))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseStatus {
    #[serde(default)]
    pub response: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtendedProperty {
    pub id: String,
    #[serde(default)]
    pub value: Option<String>,
}

/// An event as Graph returns it (only the fields we read; unknown fields are ignored, every
/// field but `id` may be missing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GraphEvent {
    pub id: String,
    #[serde(rename = "changeKey", default)]
    pub change_key: Option<String>,
    #[serde(rename = "@odata.etag", default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub start: Option<GraphDateTime>,
    #[serde(default)]
    pub end: Option<GraphDateTime>,
    #[serde(rename = "showAs", default)]
    pub show_as: Option<String>,
    #[serde(rename = "isCancelled", default)]
    pub is_cancelled: Option<bool>,
    #[serde(rename = "isAllDay", default)]
    pub is_all_day: Option<bool>,
    #[serde(rename = "responseStatus", default)]
    pub response_status: Option<ResponseStatus>,
    #[serde(rename = "transactionId", default)]
    pub transaction_id: Option<String>,
    #[serde(rename = "singleValueExtendedProperties", default)]
    pub extended: Option<Vec<ExtendedProperty>>,
    #[serde(rename = "@removed", default)]
    pub removed: Option<Removed>,
    /// When the event was last changed, by the mailbox's clock: orders a read against our
    /// last write or read of it ([`crate::reconcile::is_stale_read`]). A delta entry may
    /// leave it out (partial entries): then no read is taken for stale.
    #[serde(rename = "lastModifiedDateTime", default)]
    pub last_modified: Option<DateTime<Utc>>,
}

impl GraphEvent {
    /// The session this event was written for, from its tag (`<company>/<session>`).
    pub fn session_tag(&self) -> Option<&str> {
        self.extended
            .as_ref()?
            .iter()
            .find(|p| p.id.eq_ignore_ascii_case(SESSION_TAG_ID))?
            .value
            .as_deref()
    }
}

/// The body of an event create or update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventWrite {
    pub subject: String,
    pub body: EventBody,
    pub start: GraphDateTime,
    pub end: GraphDateTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<EventLocation>,
    #[serde(rename = "showAs")]
    pub show_as: String,
    #[serde(rename = "transactionId", skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(rename = "singleValueExtendedProperties")]
    pub extended: Vec<ExtendedProperty>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventBody {
    #[serde(rename = "contentType")]
    pub content_type: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventLocation {
    #[serde(rename = "displayName")]
    pub display_name: String,
}

/// A subscription to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSubscription {
    pub resource: String,
    pub change_types: String,
    pub notification_url: String,
    pub lifecycle_url: String,
    pub expires_at: DateTime<Utc>,
    pub client_state: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphSubscription {
    pub id: String,
    pub expires_at: DateTime<Utc>,
}

/// Where a delta page request starts: a new round over a window, or a link Graph gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaRequest {
    Start {
        calendar: CalendarRef,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    Link(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeltaPage {
    pub events: Vec<GraphEvent>,
    pub next_link: Option<String>,
    pub delta_link: Option<String>,
}

/// Most requests Graph runs at once for one mailbox (Outlook's limit; more answer 429).
pub const MAILBOX_CONCURRENCY: usize = 4;

/// The Graph calls the integration makes. Implementations get and cache the app-only token
/// themselves, retry 429/503 within a bounded budget, and map Graph's errors onto
/// [`GraphError`] (codes compared case-insensitively).
#[async_trait]
pub trait GraphApi: Send + Sync {
    async fn create_event(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        event: &EventWrite,
    ) -> Result<GraphEvent, GraphError>;

    /// PATCH with `If-Match: etag` when given.
    async fn update_event(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        id: &str,
        etag: Option<&str>,
        event: &EventWrite,
    ) -> Result<GraphEvent, GraphError>;

    async fn get_event(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        id: &str,
    ) -> Result<GraphEvent, GraphError>;

    /// Reads several events of one mailbox at once (JSON batching: at most
    /// [`MAILBOX_CONCURRENCY`] requests per batch, so a batch never runs more requests at
    /// once than a mailbox allows). One result per id, in order; a request-level failure
    /// (the batch itself refused, throttled past the budget) is the outer error.
    async fn get_events(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        ids: &[String],
    ) -> Result<Vec<Result<GraphEvent, GraphError>>, GraphError>;

    /// The mailbox's time zone (`GET /users/{user}/mailboxSettings`, `timeZone`): usually a
    /// Windows name such as `Pacific Standard Time`, sometimes an IANA one.
    async fn mailbox_time_zone(
        &self,
        creds: &GraphCredentials,
        user: &str,
    ) -> Result<String, GraphError>;

    async fn delete_event(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        id: &str,
    ) -> Result<(), GraphError>;

    async fn create_subscription(
        &self,
        creds: &GraphCredentials,
        sub: &NewSubscription,
    ) -> Result<GraphSubscription, GraphError>;

    async fn renew_subscription(
        &self,
        creds: &GraphCredentials,
        id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<GraphSubscription, GraphError>;

    async fn delete_subscription(
        &self,
        creds: &GraphCredentials,
        id: &str,
    ) -> Result<(), GraphError>;

    async fn delta_page(
        &self,
        creds: &GraphCredentials,
        request: &DeltaRequest,
    ) -> Result<DeltaPage, GraphError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_times_read_in_every_documented_form() {
        let want = Utc.with_ymd_and_hms(2026, 12, 1, 9, 30, 0).unwrap();
        for (dt, tz) in [
            ("2026-12-01T09:30:00.0000000", Some("UTC")),
            ("2026-12-01T09:30:00", None),
            ("2026-12-01T10:30:00.0000000", Some("Europe/Berlin")),
            ("2026-12-01T09:30:00Z", Some("Pacific Standard Time")),
            ("2026-12-01T09:30:00.0000000", Some("tzone://Microsoft/Utc")),
        ] {
            let g = GraphDateTime {
                date_time: dt.into(),
                time_zone: tz.map(Into::into),
            };
            assert_eq!(g.to_utc(), Some(want), "{dt} {tz:?}");
        }
        assert_eq!(
            GraphDateTime::utc(want).date_time,
            "2026-12-01T09:30:00.0000000"
        );
        let bad = GraphDateTime {
            date_time: "yesterday".into(),
            time_zone: None,
        };
        assert_eq!(bad.to_utc(), None);
    }

    #[test]
    fn calendar_ids_are_escaped_in_paths() {
        let c = CalendarRef {
            user: "ann@example.com".into(),
            calendar: Some("AAMk+x/y=".into()),
        };
        assert_eq!(
            c.events_path(),
            "users/ann@example.com/calendars/AAMk%2Bx%2Fy%3D/events"
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = GraphCredentials {
            tenant_id: "t".into(),
            client_id: "c".into(),
            client_secret: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
