//! The Google Calendar adapter on reqwest (rustls).
//!
//! - Tokens: a service-account JWT (RS256, `sub` = the staff member) exchanged at
//!   `VOYAGE_GOOGLE_TOKEN_URL` (never a key file's own `token_uri`), cached per (account,
//!   staff member, key) until five minutes before expiry; a 401 drops it and retries once.
//! - 403/429 rate limits and 5xx: exponential backoff with full jitter, honouring
//!   `Retry-After`, within a bounded budget (the waits of one call add up to at most
//!   [`Backoff::max_wait`]; a longer `Retry-After` ends the call at once, never asked again
//!   early); then `RateLimited`/`Unavailable`.
//! - Header names are case-insensitive (HTTP); a channel's `expiration` is read as a number
//!   or a string.
//! - Event writes: `sendUpdates=none` on every insert, update and delete; `If-Match` with the
//!   etag when the caller gives one; 409 is `Duplicate`, 412 `PreconditionFailed`, and on an
//!   event's own URL 410 (deleted for good) is `NotFound` rather than `FullSyncRequired`.
//!   A retried write whose first answer was lost shows as `Duplicate` or
//!   `PreconditionFailed`: the caller re-reads the event.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use rand::Rng;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use voyage_core::config::Config;
use voyage_core::google::api::{
    deserialize_millis, Channel, EventsPage, GoogleApi, GoogleError, GoogleEvent, GoogleEventWrite,
    ListRequest, ServiceAccount, WatchRequest,
};
use voyage_core::google::jwt;

const TOKEN_EARLY: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub attempts: u32,
    /// The first wait; each next one doubles, with full jitter.
    pub base: Duration,
    /// The most one call waits between its attempts, all waits together; a `Retry-After`
    /// beyond what is left ends the call at once.
    pub max_wait: Duration,
    pub timeout: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            attempts: 4,
            base: Duration::from_millis(500),
            max_wait: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Client email, staff member, SHA-256 of the key.
type TokenKey = (String, String, [u8; 32]);

pub struct GoogleHttp {
    client: reqwest::Client,
    base: String,
    token_url: String,
    backoff: Backoff,
    tokens: Mutex<HashMap<TokenKey, (String, Instant)>>,
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[derive(Deserialize)]
struct RawPage {
    #[serde(default)]
    items: Vec<GoogleEvent>,
    #[serde(rename = "nextPageToken", default)]
    next_page_token: Option<String>,
    #[serde(rename = "nextSyncToken", default)]
    next_sync_token: Option<String>,
    #[serde(rename = "timeZone", default)]
    time_zone: Option<String>,
}

#[derive(Deserialize)]
struct RawChannel {
    id: String,
    #[serde(rename = "resourceId")]
    resource_id: String,
    #[serde(default, deserialize_with = "deserialize_millis")]
    expiration: Option<i64>,
}

impl GoogleHttp {
    pub fn new(config: &Config) -> Result<GoogleHttp, String> {
        Self::with_backoff(
            &config.google_calendar_base_url,
            &config.google_token_url,
            Backoff::default(),
        )
    }

    pub fn with_backoff(
        base: &str,
        token_url: &str,
        backoff: Backoff,
    ) -> Result<GoogleHttp, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("voyage-integrations")
            .build()
            .map_err(|e| format!("google client: {e}"))?;
        Ok(GoogleHttp {
            client,
            base: base.trim_end_matches('/').to_string(),
            token_url: token_url.to_string(),
            backoff,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    fn key(account: &ServiceAccount, subject: &str) -> TokenKey {
        (
            account.client_email.clone(),
            subject.to_ascii_lowercase(),
            Sha256::digest(account.private_key.as_bytes()).into(),
        )
    }

    async fn token(&self, account: &ServiceAccount, subject: &str) -> Result<String, GoogleError> {
        let key = Self::key(account, subject);
        if let Some((t, renew_at)) = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            if *renew_at > Instant::now() {
                return Ok(t.clone());
            }
        }
        let pair = jwt::key_pair(&account.private_key)
            .map_err(|m| GoogleError::Auth(format!("private_key {m}")))?;
        let assertion = jwt::assertion(
            &pair,
            &account.client_email,
            subject,
            &self.token_url,
            Utc::now().timestamp(),
        )
        .map_err(|e| GoogleError::Auth(e.to_string()))?;
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", jwt::GRANT_TYPE)
            .append_pair("assertion", &assertion)
            .finish();
        let resp = self
            .client
            .post(&self.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .timeout(self.backoff.timeout)
            .body(form)
            .send()
            .await
            .map_err(|e| {
                GoogleError::Unavailable(format!("token endpoint: {}", e.without_url()))
            })?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let error = body.get("error").and_then(Value::as_str).unwrap_or("error");
            let description = body
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or("no description");
            return Err(match status.as_u16() {
                400 | 401 | 403 => GoogleError::Auth(format!("{error}: {description}")),
                429 => GoogleError::RateLimited { retry_after: None },
                _ => GoogleError::Unavailable(format!("token endpoint answered {status}")),
            });
        }
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| GoogleError::Unavailable("token response without access_token".into()))?
            .to_string();
        let lifetime = body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(3599);
        let renew_at = Instant::now() + Duration::from_secs(lifetime).saturating_sub(TOKEN_EARLY);
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (token.clone(), renew_at));
        Ok(token)
    }

    fn forget(&self, account: &ServiceAccount, subject: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&Self::key(account, subject));
    }

    /// One call within the backoff budget; returns the successful body.
    async fn call(
        &self,
        account: &ServiceAccount,
        subject: &str,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Vec<u8>, GoogleError> {
        self.call_if_match(account, subject, method, url, body, None)
            .await
    }

    /// [`Self::call`] with `If-Match: <etag>` when `if_match` is given.
    async fn call_if_match(
        &self,
        account: &ServiceAccount,
        subject: &str,
        method: Method,
        url: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Vec<u8>, GoogleError> {
        let mut refreshed = false;
        let mut attempt: u32 = 0;
        let mut waited = Duration::ZERO;
        loop {
            attempt += 1;
            let token = self.token(account, subject).await?;
            let mut req = self
                .client
                .request(method.clone(), url)
                .bearer_auth(&token)
                .timeout(self.backoff.timeout);
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(etag) = if_match {
                req = req.header("if-match", etag);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| GoogleError::Unavailable(e.without_url().to_string()))?;
            let status = resp.status();
            let hint = resp
                .headers()
                .get("retry-after")
                .and_then(|h| h.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| GoogleError::Unavailable(e.without_url().to_string()))?
                .to_vec();
            if status.is_success() {
                return Ok(bytes);
            }
            let error = classify(status, &bytes);
            if matches!(error, GoogleError::RateLimited { .. }) {
                voyage_core::metrics::count(
                    "provider_throttles",
                    &[("provider", "google"), ("status", status.as_str())],
                    1,
                );
            }
            let retryable = matches!(
                error,
                GoogleError::RateLimited { .. } | GoogleError::Unavailable(_)
            );
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                refreshed = true;
                self.forget(account, subject);
                attempt -= 1;
                continue;
            }
            if !retryable || attempt >= self.backoff.attempts {
                return Err(match error {
                    GoogleError::RateLimited { .. } => {
                        GoogleError::RateLimited { retry_after: hint }
                    }
                    other => other,
                });
            }
            // Exponential backoff with full jitter; Google's hint wins when it is longer. The
            // waits of one call add up to at most `max_wait`, and a hint beyond it ends the
            // call at once (as Graph's budget does): it is never cut short and asked again
            // early, and a call never outwaits the invocation it runs in.
            let ceiling = self.backoff.base * 2u32.saturating_pow(attempt - 1);
            let jittered =
                Duration::from_millis(rand::thread_rng().gen_range(0..=ceiling.as_millis() as u64));
            let wait = hint.map_or(jittered, |h| h.max(jittered));
            if waited + wait > self.backoff.max_wait {
                return Err(match error {
                    GoogleError::RateLimited { .. } => {
                        GoogleError::RateLimited { retry_after: hint }
                    }
                    other => other,
                });
            }
            waited += wait;
            tracing::debug!(
                status = status.as_u16(),
                wait_ms = wait.as_millis() as u64,
                "google asked to back off"
            );
            tokio::time::sleep(wait).await;
        }
    }

    fn calendar_url(&self, calendar: &str, rest: &str) -> String {
        format!(
            "{}/calendar/v3/calendars/{}/events{rest}",
            self.base,
            enc(calendar)
        )
    }

    /// One event's URL, with `query` (starting with `?`, or empty).
    fn event_url(&self, calendar: &str, event_id: &str, query: &str) -> String {
        self.calendar_url(calendar, &format!("/{}{query}", enc(event_id)))
    }
}

/// On an event's own URL, 410 means the event is gone for good, not an expired sync token.
fn gone_is_not_found(e: GoogleError) -> GoogleError {
    match e {
        GoogleError::FullSyncRequired => GoogleError::NotFound,
        other => other,
    }
}

/// An event write's body: no `attendees` (the type has none), and no `id` on updates (the
/// path names the event).
fn write_body(event: &GoogleEventWrite, with_id: bool) -> Result<Value, GoogleError> {
    let mut body = serde_json::to_value(event).map_err(|e| GoogleError::Rejected {
        status: 0,
        reason: "unwritable_event".into(),
        message: e.to_string(),
    })?;
    if !with_id {
        if let Some(map) = body.as_object_mut() {
            map.remove("id");
        }
    }
    Ok(body)
}

/// Every write goes without notifications: no mail leaves on the platform's behalf.
const NO_UPDATES: &str = "?sendUpdates=none";

fn classify(status: StatusCode, bytes: &[u8]) -> GoogleError {
    let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let reason = body
        .pointer("/error/errors/0/reason")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let message = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let rate = [
        "ratelimitexceeded",
        "userratelimitexceeded",
        "quotaexceeded",
    ]
    .contains(&reason.to_ascii_lowercase().as_str());
    match status.as_u16() {
        429 => GoogleError::RateLimited { retry_after: None },
        403 if rate => GoogleError::RateLimited { retry_after: None },
        410 => GoogleError::FullSyncRequired,
        404 => GoogleError::NotFound,
        409 => GoogleError::Duplicate,
        412 => GoogleError::PreconditionFailed,
        401 => GoogleError::Auth(format!("{reason}: {message}")),
        s if s >= 500 => GoogleError::Unavailable(format!("Google answered {status}")),
        s => GoogleError::Rejected {
            status: s,
            reason,
            message,
        },
    }
}

fn unreadable(e: impl std::fmt::Display) -> GoogleError {
    GoogleError::Rejected {
        status: 200,
        reason: "unreadable_response".into(),
        message: e.to_string(),
    }
}

#[async_trait]
impl GoogleApi for GoogleHttp {
    async fn list_events(
        &self,
        account: &ServiceAccount,
        subject: &str,
        r: &ListRequest,
    ) -> Result<EventsPage, GoogleError> {
        let mut q = format!("?singleEvents=true&maxResults={}", r.max_results);
        match &r.sync_token {
            Some(t) => q.push_str(&format!("&syncToken={}", enc(t))),
            None => {
                if let Some(t) = r.time_min {
                    q.push_str(&format!("&timeMin={}", enc(&instant(t))));
                }
                if let Some(t) = r.time_max {
                    q.push_str(&format!("&timeMax={}", enc(&instant(t))));
                }
            }
        }
        if let Some(p) = &r.page_token {
            q.push_str(&format!("&pageToken={}", enc(p)));
        }
        let bytes = self
            .call(
                account,
                subject,
                Method::GET,
                &self.calendar_url(&r.calendar_id, &q),
                None,
            )
            .await?;
        let raw: RawPage = serde_json::from_slice(&bytes).map_err(unreadable)?;
        Ok(EventsPage {
            items: raw.items,
            next_page_token: raw.next_page_token,
            next_sync_token: raw.next_sync_token,
            time_zone: raw.time_zone,
        })
    }

    async fn watch(
        &self,
        account: &ServiceAccount,
        subject: &str,
        r: &WatchRequest,
    ) -> Result<Channel, GoogleError> {
        let body = json!({
            "id": r.channel_id,
            "type": "web_hook",
            "address": r.address,
            "token": r.token,
            "params": {"ttl": r.ttl_seconds.to_string()},
        });
        let bytes = self
            .call(
                account,
                subject,
                Method::POST,
                &self.calendar_url(&r.calendar_id, "/watch"),
                Some(&body),
            )
            .await?;
        let raw: RawChannel = serde_json::from_slice(&bytes).map_err(unreadable)?;
        let expires_at = raw
            .expiration
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .unwrap_or_else(|| Utc::now() + chrono::Duration::seconds(r.ttl_seconds as i64));
        Ok(Channel {
            id: raw.id,
            resource_id: raw.resource_id,
            expires_at,
        })
    }

    async fn stop_channel(
        &self,
        account: &ServiceAccount,
        subject: &str,
        channel_id: &str,
        resource_id: &str,
    ) -> Result<(), GoogleError> {
        let body = json!({"id": channel_id, "resourceId": resource_id});
        let url = format!("{}/calendar/v3/channels/stop", self.base);
        self.call(account, subject, Method::POST, &url, Some(&body))
            .await
            .map(|_| ())
    }

    async fn insert_event(
        &self,
        account: &ServiceAccount,
        subject: &str,
        calendar_id: &str,
        event: &GoogleEventWrite,
    ) -> Result<GoogleEvent, GoogleError> {
        let body = write_body(event, true)?;
        let url = self.calendar_url(calendar_id, NO_UPDATES);
        let bytes = self
            .call(account, subject, Method::POST, &url, Some(&body))
            .await?;
        tracing::debug!(event_id = %event.id, "google event inserted");
        serde_json::from_slice(&bytes).map_err(unreadable)
    }

    async fn update_event(
        &self,
        account: &ServiceAccount,
        subject: &str,
        calendar_id: &str,
        event_id: &str,
        etag: Option<&str>,
        event: &GoogleEventWrite,
    ) -> Result<GoogleEvent, GoogleError> {
        let body = write_body(event, false)?;
        let url = self.event_url(calendar_id, event_id, NO_UPDATES);
        let bytes = self
            .call_if_match(account, subject, Method::PUT, &url, Some(&body), etag)
            .await
            .map_err(gone_is_not_found)?;
        tracing::debug!(
            event_id,
            conditional = etag.is_some(),
            "google event updated"
        );
        serde_json::from_slice(&bytes).map_err(unreadable)
    }

    async fn get_event(
        &self,
        account: &ServiceAccount,
        subject: &str,
        calendar_id: &str,
        event_id: &str,
    ) -> Result<GoogleEvent, GoogleError> {
        let url = self.event_url(calendar_id, event_id, "");
        let bytes = self
            .call(account, subject, Method::GET, &url, None)
            .await
            .map_err(gone_is_not_found)?;
        serde_json::from_slice(&bytes).map_err(unreadable)
    }

    async fn delete_event(
        &self,
        account: &ServiceAccount,
        subject: &str,
        calendar_id: &str,
        event_id: &str,
        etag: Option<&str>,
    ) -> Result<(), GoogleError> {
        let url = self.event_url(calendar_id, event_id, NO_UPDATES);
        self.call_if_match(account, subject, Method::DELETE, &url, None, etag)
            .await
            .map_err(gone_is_not_found)?;
        tracing::debug!(
            event_id,
            conditional = etag.is_some(),
            "google event deleted"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn google(status: u16, reason: &str) -> GoogleError {
        let body = json!({"error": {"errors": [{"reason": reason}], "message": "m"}});
        classify(
            StatusCode::from_u16(status).unwrap(),
            &serde_json::to_vec(&body).unwrap(),
        )
    }

    #[test]
    fn an_updates_body_leaves_the_id_to_the_path_and_no_body_has_attendees() {
        use voyage_core::google::api::{ExtendedProperties, GoogleDateTime};
        let t = Utc::now();
        let event = GoogleEventWrite {
            id: "abcdef0123".into(),
            summary: "s".into(),
            description: "d".into(),
            location: None,
            start: GoogleDateTime::utc(t),
            end: GoogleDateTime::utc(t),
            transparency: "opaque".into(),
            status: Some("confirmed".into()),
            extended_properties: ExtendedProperties::session("acme", "s1", "ann"),
            attendees: None,
        };
        let insert = write_body(&event, true).unwrap();
        let update = write_body(&event, false).unwrap();
        assert_eq!(insert["id"], "abcdef0123");
        assert!(update.get("id").is_none());
        assert_eq!(update["status"], "confirmed");
        assert!(insert.get("attendees").is_none() && update.get("attendees").is_none());
    }

    #[test]
    fn write_refusals_map_onto_the_ports_errors() {
        assert_eq!(google(409, "duplicate"), GoogleError::Duplicate);
        assert_eq!(
            google(412, "conditionNotMet"),
            GoogleError::PreconditionFailed
        );
        assert_eq!(google(404, "notFound"), GoogleError::NotFound);
        assert_eq!(
            gone_is_not_found(google(410, "deleted")),
            GoogleError::NotFound,
            "410 on an event is a deleted event"
        );
        assert_eq!(
            google(410, "fullSyncRequired"),
            GoogleError::FullSyncRequired
        );
        assert!(matches!(
            google(403, "rateLimitExceeded"),
            GoogleError::RateLimited { .. }
        ));
    }
}
