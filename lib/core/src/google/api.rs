//! The Google Calendar port: the calls the sync makes, in Google's terms, and the shapes it
//! reads back (tolerant: every field but `id` may be missing). The HTTP adapter lives in
//! `voyage-providers`; tests and the sandbox point it at the Google simulator.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize};

/// The private extended property that tags the platform's own events.
pub const SESSION_PROPERTY: &str = "voyageSessionId";

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
    #[error("the calendar or channel was not found")]
    NotFound,
    #[error("Google is unavailable: {0}")]
    Unavailable(String),
    #[error("Google refused the request: {status} {reason}: {message}")]
    Rejected {
        status: u16,
        reason: String,
        message: String,
    },
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
            tz.from_local_datetime(&naive)
                .earliest()
                .map(|t| t.with_timezone(&Utc))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExtendedProperties {
    #[serde(default)]
    pub private: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GoogleEvent {
    pub id: String,
    /// `confirmed`, `tentative` or `cancelled` (deleted).
    #[serde(default)]
    pub status: Option<String>,
    /// `opaque` (busy, the default) or `transparent` (free).
    #[serde(default)]
    pub transparency: Option<String>,
    #[serde(default)]
    pub start: Option<EventTime>,
    #[serde(default)]
    pub end: Option<EventTime>,
    #[serde(rename = "extendedProperties", default)]
    pub extended_properties: Option<ExtendedProperties>,
}

impl GoogleEvent {
    pub fn is_cancelled(&self) -> bool {
        self.status.as_deref() == Some("cancelled")
    }

    pub fn is_transparent(&self) -> bool {
        self.transparency.as_deref() == Some("transparent")
    }

    /// The platform's own event (tagged in its private extended properties).
    pub fn is_platform_event(&self) -> bool {
        self.extended_properties
            .as_ref()
            .and_then(|p| p.private.as_ref())
            .is_some_and(|p| p.contains_key(SESSION_PROPERTY))
    }

    pub fn is_all_day(&self) -> bool {
        self.start.as_ref().is_some_and(|s| s.date.is_some())
    }
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

/// The Google Calendar calls the sync makes, each acting as `subject` (the staff member)
/// through the tenant's service account. Implementations get and cache tokens themselves
/// and back off on rate limits within a bounded budget.
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
