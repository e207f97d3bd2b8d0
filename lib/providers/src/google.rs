//! The Google Calendar adapter on reqwest (rustls).
//!
//! - Tokens: a service-account JWT (RS256, `sub` = the staff member) exchanged at
//!   `VOYAGE_GOOGLE_TOKEN_URL` (never a key file's own `token_uri`), cached per (account,
//!   staff member, key) until five minutes before expiry; a 401 drops it and retries once.
//! - 403/429 rate limits and 5xx: exponential backoff with full jitter, honouring
//!   `Retry-After`, within a bounded budget; then `RateLimited`/`Unavailable`.
//! - Header names are case-insensitive (HTTP); a channel's `expiration` is read as a number
//!   or a string.

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
    deserialize_millis, Channel, EventsPage, GoogleApi, GoogleError, GoogleEvent, ListRequest,
    ServiceAccount, WatchRequest,
};
use voyage_core::google::jwt;

const TOKEN_EARLY: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub attempts: u32,
    /// The first wait; each next one doubles, with full jitter.
    pub base: Duration,
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
        let mut refreshed = false;
        let mut attempt: u32 = 0;
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
            // Exponential backoff with full jitter; Google's hint wins when it is longer.
            let ceiling = self.backoff.base * 2u32.saturating_pow(attempt - 1);
            let jittered =
                Duration::from_millis(rand::thread_rng().gen_range(0..=ceiling.as_millis() as u64));
            let wait = hint
                .map_or(jittered, |h| h.max(jittered))
                .min(self.backoff.max_wait);
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
}

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
}
