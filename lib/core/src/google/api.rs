//! The Google Calendar port: the calls the sync and the outbound writer make, in Google's
//! terms, and the shapes it reads back (tolerant: every field but `id` may be missing). The
//! HTTP adapter lives in `voyage-providers`; tests and the sandbox point it at the Google
//! simulator.
//!
//! Writes mirror the Graph port's (`create`/`update`/`get`/`delete`): the platform chooses
//! each event's id ([`event_id_for`], so a retried insert answers [`GoogleError::Duplicate`]
//! instead of making a second event), tags it in `extendedProperties.private`
//! ([`SESSION_PROPERTY`] = `<company>/<session>`), never invites anyone (no `attendees`) and
//! sends every write with `sendUpdates=none`, so no mail leaves on the platform's behalf.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

/// The private extended property that tags the platform's own events; its value is
/// `<company>/<session>`.
pub const SESSION_PROPERTY: &str = "voyageSessionId";
/// The private property naming the staff member an event was written for: an event of ours
/// left by an earlier placement (the session given to another staff member since) is told
/// from the session's event in a calendar two staff members share.
pub const STAFF_PROPERTY: &str = "voyageStaffId";

/// The id of the Google event written for a session: the lowercase hex SHA-256 of
/// `<company>/<session>` (64 characters, all within Google's base32hex alphabet `a-v0-9`,
/// inside its 5..=1024 length). The same session always gets the same id, so a retried
/// insert is refused as [`GoogleError::Duplicate`] instead of making a second event.
pub fn event_id_for(company: &str, session: &str) -> String {
    hex::encode(Sha256::digest(
        session_tag_value(company, session).as_bytes(),
    ))
}

/// The id of the Google event of one placement of a session (its first booking, a booking
/// again after a cancellation, a change of staff member): the lowercase hex SHA-256 of
/// `<company>/<session>#<generation>`. Recorded in the session before the insert
/// (`Session::google_event`), so a retried insert is a duplicate of its own event, and a new
/// placement never collides with an old, deleted event.
pub fn event_id_for_placement(company: &str, session: &str, generation: u64) -> String {
    hex::encode(Sha256::digest(
        format!("{}#{generation}", session_tag_value(company, session)).as_bytes(),
    ))
}

/// The value of the platform's tag ([`SESSION_PROPERTY`]) for a session: `<company>/<session>`.
pub fn session_tag_value(company: &str, session: &str) -> String {
    format!("{company}/{session}")
}

/// Whether Google accepts `id` as a client-chosen event id: 5 to 1024 characters of
/// base32hex (`a-v`, `0-9`).
pub fn is_valid_event_id(id: &str) -> bool {
    (5..=1024).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b))
}

/// A tenant's service account: who signs, with what, and where tokens come from.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub client_email: String,
    pub private_key: String,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum GoogleError {
    /// The token endpoint refused the assertion (bad key, unknown account, no delegation).
    #[error("Google refused the service account: {0}")]
    Auth(String),
    /// 403/429 rate limits after the bounded backoff.
    #[error("Google is rate limiting requests")]
    RateLimited { retry_after: Option<Duration> },
    /// 410: the sync token is no longer valid; sync from scratch.
    #[error("the sync token expired (fullSyncRequired)")]
    FullSyncRequired,
    /// 404; for an event also 410 (deleted for good). Whether a missing event is a success
    /// (a delete that finds nothing to delete) is the caller's decision.
    #[error("the calendar, event or channel was not found")]
    NotFound,
    /// 409 `duplicate`: the calendar already has an event with this id (a deleted one
    /// included): the insert happened before, e.g. a retried create.
    #[error("an event with this id already exists (duplicate)")]
    Duplicate,
    /// 412 `conditionNotMet`: `If-Match` named an older etag; the event changed since it was
    /// read.
    #[error("the event changed since it was read (etag mismatch)")]
    PreconditionFailed,
    #[error("Google is unavailable: {0}")]
    Unavailable(String),
    #[error("Google refused the request: {status} {reason}: {message}")]
    Rejected {
        status: u16,
        reason: String,
        message: String,
    },
}

impl GoogleError {
    /// A refusal that retrying the same call will not change until someone acts: the
    /// service account refused for this user (a suspended account, delegation withdrawn), or
    /// a 4xx other than a timeout, a conflict, a stale etag or rate limiting.
    pub fn refused_for_good(&self) -> bool {
        match self {
            GoogleError::Auth(_) => true,
            GoogleError::Rejected { status, .. } => {
                (400..500).contains(status) && ![408, 409, 412, 429].contains(status)
            }
            _ => false,
        }
    }
}

/// `start`/`end`: `date` for all-day events, `dateTime` (+ `timeZone`) for timed ones.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EventTime {
    #[serde(default)]
    pub date: Option<String>,
    #[serde(rename = "dateTime", default)]
    pub date_time: Option<String>,
    #[serde(rename = "timeZone", default)]
    pub time_zone: Option<String>,
}

impl EventTime {
    /// The instant, reading an all-day `date` as midnight in `calendar_zone` (the
    /// calendar's own zone, so a day off in Berlin blocks Berlin's day).
    pub fn to_utc(&self, calendar_zone: Option<&str>) -> Option<DateTime<Utc>> {
        if let Some(dt) = &self.date_time {
            if let Ok(t) = DateTime::parse_from_rfc3339(dt) {
                return Some(t.with_timezone(&Utc));
            }
            let naive = NaiveDateTime::parse_from_str(dt, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
            return local(naive, self.time_zone.as_deref().or(calendar_zone));
        }
        let day = NaiveDate::parse_from_str(self.date.as_deref()?, "%Y-%m-%d").ok()?;
        local(day.and_hms_opt(0, 0, 0)?, calendar_zone)
    }
}

fn local(naive: NaiveDateTime, zone: Option<&str>) -> Option<DateTime<Utc>> {
    match zone {
        None | Some("UTC") | Some("Etc/UTC") => Some(Utc.from_utc_datetime(&naive)),
        Some(z) => {
            let tz: chrono_tz::Tz = z.parse().ok()?;
            // A local time a DST change skips (a midnight in Havana, say) is read as the
            // first instant after it that exists.
            tz.from_local_datetime(&naive)
                .earliest()
                .or_else(|| {
                    tz.from_local_datetime(&(naive + chrono::Duration::hours(1)))
                        .earliest()
                })
                .map(|t| t.with_timezone(&Utc))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExtendedProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<std::collections::BTreeMap<String, String>>,
}

impl ExtendedProperties {
    /// The private properties of the platform's event for a session: its tag, and the staff
    /// member it was written for.
    pub fn session(company: &str, session: &str, staff: &str) -> ExtendedProperties {
        ExtendedProperties {
            private: Some(std::collections::BTreeMap::from([
                (
                    SESSION_PROPERTY.to_string(),
                    session_tag_value(company, session),
                ),
                (STAFF_PROPERTY.to_string(), staff.to_string()),
            ])),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GoogleEvent {
    pub id: String,
    /// The version of the event, for `If-Match` (a new one on every change).
    #[serde(default)]
    pub etag: Option<String>,
    /// `confirmed`, `tentative` or `cancelled` (deleted; on the organizer's calendar the
    /// details stay, and setting `confirmed` back restores it).
    #[serde(default)]
    pub status: Option<String>,
    /// When the event last changed (RFC 3339).
    #[serde(default)]
    pub updated: Option<String>,
    #[serde(default)]
    pub summary: Option<String>,
    /// `opaque` (busy, the default) or `transparent` (free).
    #[serde(default)]
    pub transparency: Option<String>,
    #[serde(default)]
    pub start: Option<EventTime>,
    #[serde(default)]
    pub end: Option<EventTime>,
    #[serde(rename = "extendedProperties", default)]
    pub extended_properties: Option<ExtendedProperties>,
    /// `default`, `outOfOffice`, `focusTime`, `workingLocation`, `birthday`, `fromGmail`
    /// (missing: `default`).
    #[serde(rename = "eventType", default)]
    pub event_type: Option<String>,
    /// The guests, the calendar's owner among them (`self: true`) when it is an invitation.
    #[serde(default)]
    pub attendees: Option<Vec<Attendee>>,
    /// For an occurrence of a recurring event (listed with `singleEvents=true`): the series'
    /// id. Occurrences carry the series' extended properties.
    #[serde(
        rename = "recurringEventId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub recurring_event_id: Option<String>,
}

/// One guest of an event: only what decides whether the calendar's owner is busy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Attendee {
    #[serde(default)]
    pub email: Option<String>,
    /// This entry is the calendar the event was read from (its owner).
    #[serde(rename = "self", default)]
    pub is_self: bool,
    /// `needsAction`, `declined`, `tentative` or `accepted`.
    #[serde(rename = "responseStatus", default)]
    pub response_status: Option<String>,
}

impl GoogleEvent {
    pub fn is_cancelled(&self) -> bool {
        self.status.as_deref() == Some("cancelled")
    }

    pub fn is_transparent(&self) -> bool {
        self.transparency.as_deref() == Some("transparent")
    }

    /// The platform's own event (tagged in its private extended properties). Not an
    /// occurrence of a series (`recurringEventId`): a staff member who makes a booking's event
    /// recurring makes a series of their own, whose occurrences carry the series' tag; they
    /// are the staff member's busy time, neither reconciled with the booking nor deleted.
    pub fn is_platform_event(&self) -> bool {
        self.recurring_event_id.is_none()
            && self
                .extended_properties
                .as_ref()
                .and_then(|p| p.private.as_ref())
                .is_some_and(|p| p.contains_key(SESSION_PROPERTY))
    }

    /// The session this event was written for, from its tag (`<company>/<session>`).
    pub fn session_tag(&self) -> Option<&str> {
        self.extended_properties
            .as_ref()?
            .private
            .as_ref()?
            .get(SESSION_PROPERTY)
            .map(String::as_str)
    }

    /// The staff member this event was written for ([`STAFF_PROPERTY`]; events written
    /// before it was recorded have none).
    pub fn staff_tag(&self) -> Option<&str> {
        self.extended_properties
            .as_ref()?
            .private
            .as_ref()?
            .get(STAFF_PROPERTY)
            .map(String::as_str)
    }

    /// When the event last changed, when Google said and it reads as RFC 3339.
    pub fn updated_at(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(self.updated.as_deref()?)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The calendar owner's answer to the invitation (`None` when the event has no attendee
    /// marked `self`: the owner's own event).
    pub fn self_response(&self) -> Option<&str> {
        self.attendees
            .as_deref()?
            .iter()
            .find(|a| a.is_self)?
            .response_status
            .as_deref()
    }

    pub fn event_type(&self) -> &str {
        self.event_type.as_deref().unwrap_or("default")
    }

    pub fn is_all_day(&self) -> bool {
        self.start.as_ref().is_some_and(|s| s.date.is_some())
    }
}

/// A timed `start`/`end` as the platform writes it: `dateTime` with its `timeZone`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoogleDateTime {
    #[serde(rename = "dateTime")]
    pub date_time: String,
    #[serde(rename = "timeZone")]
    pub time_zone: String,
}

impl GoogleDateTime {
    /// `t` in UTC (RFC 3339, whole seconds), zone `UTC`: Google shows it in the calendar's
    /// own zone.
    pub fn utc(t: DateTime<Utc>) -> GoogleDateTime {
        GoogleDateTime {
            date_time: t.to_rfc3339_opts(SecondsFormat::Secs, true),
            time_zone: "UTC".into(),
        }
    }

    /// The instant, read like an [`EventTime`]'s.
    pub fn to_utc(&self) -> Option<DateTime<Utc>> {
        EventTime {
            date: None,
            date_time: Some(self.date_time.clone()),
            time_zone: Some(self.time_zone.clone()),
        }
        .to_utc(None)
    }
}

/// The body of an event insert or (full) update: only what the platform writes. There is no
/// `attendees` field on purpose: the platform never invites anyone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GoogleEventWrite {
    /// The client-chosen id ([`event_id_for`]); sent on insert only (an update's path names
    /// the event).
    pub id: String,
    pub summary: String,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub start: GoogleDateTime,
    pub end: GoogleDateTime,
    /// `opaque` (busy) for sessions.
    pub transparency: String,
    /// `Some("confirmed")` restores a cancelled (deleted) event on update; `None` leaves the
    /// status as it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `private`: the platform's tag ([`ExtendedProperties::session`]).
    #[serde(rename = "extendedProperties")]
    pub extended_properties: ExtendedProperties,
    /// Only ever the attendees the event already has, carried over by an update (a full
    /// update clears what it does not send, and the staff member's own answer is among
    /// them); the platform never adds one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attendees: Option<Vec<Attendee>>,
}

/// One `events.list` request: a page of a full sync over a window, or of an incremental one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRequest {
    pub calendar_id: String,
    /// Incremental: the stored token. Full: `None`, with the window.
    pub sync_token: Option<String>,
    pub time_min: Option<DateTime<Utc>>,
    pub time_max: Option<DateTime<Utc>>,
    pub page_token: Option<String>,
    pub max_results: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventsPage {
    pub items: Vec<GoogleEvent>,
    pub next_page_token: Option<String>,
    pub next_sync_token: Option<String>,
    /// The calendar's time zone, for all-day events.
    pub time_zone: Option<String>,
}

/// Google sends a channel's `expiration` as a number or as a string of milliseconds.
pub fn deserialize_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Millis {
        N(i64),
        S(String),
    }
    Ok(match Option::<Millis>::deserialize(d)? {
        Some(Millis::N(n)) => Some(n),
        Some(Millis::S(s)) => s.trim().parse().ok(),
        None => None,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRequest {
    pub calendar_id: String,
    pub channel_id: String,
    pub token: String,
    pub address: String,
    pub ttl_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub id: String,
    pub resource_id: String,
    pub expires_at: DateTime<Utc>,
}

/// The Google Calendar calls the sync and the outbound writer make, each acting as `subject`
/// (the staff member) through the tenant's service account. Implementations get and cache
/// tokens themselves and back off on rate limits within a bounded budget.
///
/// Writes (`insert_event`, `update_event`, `delete_event`) go with `sendUpdates=none`. A
/// write retried after an answer was lost shows as `Duplicate` (insert) or
/// `PreconditionFailed` (update with an etag): the caller re-reads the event.
#[async_trait]
pub trait GoogleApi: Send + Sync {
    async fn list_events(
        &self,
        account: &ServiceAccount,
        subject: &str,
        request: &ListRequest,
    ) -> Result<EventsPage, GoogleError>;

    async fn watch(
        &self,
        account: &ServiceAccount,
        subject: &str,
        request: &WatchRequest,
    ) -> Result<Channel, GoogleError>;

    async fn stop_channel(
        &self,
        account: &ServiceAccount,
        subject: &str,
        channel_id: &str,
        resource_id: &str,
    ) -> Result<(), GoogleError>;

    /// `events.insert` with the event's own `id`: 409 (the id is taken, a deleted event's
    /// included) is [`GoogleError::Duplicate`].
    async fn insert_event(
        &self,
        account: &ServiceAccount,
        subject: &str,
        calendar_id: &str,
        event: &GoogleEventWrite,
    ) -> Result<GoogleEvent, GoogleError>;

    /// `events.update` (PUT: a full update) with `If-Match: etag` when given: 412 is
    /// [`GoogleError::PreconditionFailed`]; 404/410 [`GoogleError::NotFound`]. Writing
    /// `status: confirmed` restores a cancelled event.
    async fn update_event(
        &self,
        account: &ServiceAccount,
        subject: &str,
        calendar_id: &str,
        event_id: &str,
        etag: Option<&str>,
        event: &GoogleEventWrite,
    ) -> Result<GoogleEvent, GoogleError>;

    /// `events.get`: a deleted event of the organizer's calendar comes back with `status:
    /// cancelled` (200); 404/410 is [`GoogleError::NotFound`].
    async fn get_event(
        &self,
        account: &ServiceAccount,
        subject: &str,
        calendar_id: &str,
        event_id: &str,
    ) -> Result<GoogleEvent, GoogleError>;

    /// `events.delete` (a soft delete: the event turns `cancelled`) with `If-Match: etag`
    /// when given. 404 and 410 (already deleted) are [`GoogleError::NotFound`]: whether
    /// that counts as done is the caller's decision.
    async fn delete_event(
        &self,
        account: &ServiceAccount,
        subject: &str,
        calendar_id: &str,
        event_id: &str,
        etag: Option<&str>,
    ) -> Result<(), GoogleError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_day_events_are_read_in_the_calendars_zone() {
        let day = EventTime {
            date: Some("2026-12-24".into()),
            ..Default::default()
        };
        assert_eq!(
            day.to_utc(Some("Europe/Berlin")).unwrap().to_rfc3339(),
            "2026-12-23T23:00:00+00:00"
        );
        assert_eq!(
            day.to_utc(None).unwrap().to_rfc3339(),
            "2026-12-24T00:00:00+00:00"
        );
        let timed = EventTime {
            date_time: Some("2026-12-01T10:00:00+01:00".into()),
            ..Default::default()
        };
        assert_eq!(
            timed.to_utc(None).unwrap().to_rfc3339(),
            "2026-12-01T09:00:00+00:00"
        );
    }

    #[test]
    fn a_sessions_event_id_is_deterministic_valid_base32hex_and_unique_per_session() {
        let id = event_id_for("acme", "s1");
        assert_eq!(
            id,
            event_id_for("acme", "s1"),
            "a retried create gets the same id"
        );
        assert_eq!(id.len(), 64);
        assert!(is_valid_event_id(&id), "{id}");
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b)));
        assert_ne!(id, event_id_for("acme", "s2"));
        assert_ne!(id, event_id_for("globex", "s1"));
    }

    #[test]
    fn event_id_validity_follows_googles_rules() {
        assert!(is_valid_event_id("abcde"));
        assert!(is_valid_event_id(&"v".repeat(1024)));
        assert!(!is_valid_event_id("abcd"), "too short");
        assert!(!is_valid_event_id(&"a".repeat(1025)), "too long");
        assert!(!is_valid_event_id("abcdw"), "w is not base32hex");
        assert!(!is_valid_event_id("ABCDE"), "upper case is not base32hex");
        assert!(!is_valid_event_id("abc-de"));
    }

    #[test]
    fn a_write_carries_the_tag_and_no_attendees_and_reads_back_as_tagged() {
        let t = Utc.with_ymd_and_hms(2026, 12, 1, 9, 30, 0).unwrap();
        let write = GoogleEventWrite {
            id: event_id_for("acme", "s1"),
            summary: "Session".into(),
            description: "With Bea".into(),
            location: None,
            start: GoogleDateTime::utc(t),
            end: GoogleDateTime::utc(t + chrono::Duration::hours(1)),
            transparency: "opaque".into(),
            status: None,
            extended_properties: ExtendedProperties::session("acme", "s1", "ann"),
            attendees: None,
        };
        let json = serde_json::to_value(&write).unwrap();
        assert_eq!(
            json["start"],
            serde_json::json!({"dateTime": "2026-12-01T09:30:00Z", "timeZone": "UTC"})
        );
        assert_eq!(
            json["extendedProperties"]["private"][SESSION_PROPERTY],
            "acme/s1"
        );
        assert!(json.get("attendees").is_none());
        assert!(json.get("location").is_none() && json.get("status").is_none());
        assert_eq!(write.start.to_utc(), Some(t));
        let read: GoogleEvent = serde_json::from_value(serde_json::json!({
            "id": write.id, "etag": "\"1\"", "status": "confirmed",
            "updated": "2026-12-01T08:00:00.000Z",
            "extendedProperties": json["extendedProperties"],
        }))
        .unwrap();
        assert_eq!(read.session_tag(), Some("acme/s1"));
        assert_eq!(read.etag.as_deref(), Some("\"1\""));
        assert_eq!(
            read.updated_at(),
            Some(Utc.with_ymd_and_hms(2026, 12, 1, 8, 0, 0).unwrap())
        );
        assert_eq!(GoogleEvent::default().session_tag(), None);
    }

    #[test]
    fn channel_expiration_reads_as_number_or_string() {
        #[derive(Deserialize)]
        struct C {
            #[serde(default, deserialize_with = "deserialize_millis")]
            expiration: Option<i64>,
        }
        let n: C = serde_json::from_str(r#"{"expiration": 1764439200000}"#).unwrap();
        let s: C = serde_json::from_str(r#"{"expiration": "1764439200000"}"#).unwrap();
        assert_eq!(n.expiration, Some(1764439200000));
        assert_eq!(s.expiration, n.expiration);
    }
}
