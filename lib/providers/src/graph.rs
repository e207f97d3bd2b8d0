//! The Microsoft Graph adapter on reqwest (rustls).
//!
//! - App-only tokens (client credentials) are cached per app registration until five
//!   minutes before they expire; a 401 with a cached token drops it and tries once more.
//! - 429 and 503 are retried within a bounded budget, honouring `Retry-After` up to a cap,
//!   so a request never hangs for Graph's longest hints; past the budget the caller gets
//!   `Throttled`/`Unavailable` and its own retry (queue, platform) takes over.
//! - Every request says `Prefer: IdType="ImmutableId"` (ids survive folder moves) and
//!   `outlook.timezone="UTC"` (times come back in UTC).
//! - Error codes are compared case-insensitively; links Graph returns are followed only
//!   when they point at the configured Graph base URL, so a token never leaves for another
//!   host.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use voyage_core::config::Config;
use voyage_core::exchange::api::{
    CalendarRef, DeltaPage, DeltaRequest, EventWrite, GraphApi, GraphCredentials, GraphError,
    GraphEvent, GraphSubscription, NewSubscription, MAILBOX_CONCURRENCY, SESSION_TAG_ID,
};

/// A `$batch` answer: one response per request, in any order.
#[derive(serde::Deserialize)]
struct BatchAnswer {
    #[serde(default)]
    responses: Vec<BatchResponse>,
}

#[derive(serde::Deserialize)]
struct BatchResponse {
    id: String,
    status: u16,
    #[serde(default)]
    headers: serde_json::Map<String, Value>,
    #[serde(default)]
    body: Value,
}

const PREFER: &str = "IdType=\"ImmutableId\", outlook.timezone=\"UTC\"";
const TOKEN_SCOPE: &str = "https://graph.microsoft.com/.default";
/// A token is renewed this long before Graph says it expires.
const TOKEN_EARLY: Duration = Duration::from_secs(300);
/// Delta page size asked of Graph.
pub const DELTA_PAGE_SIZE: usize = 100;

/// Bounds on waiting for Graph inside one request.
#[derive(Debug, Clone, Copy)]
pub struct RetryBudget {
    /// Attempts per call, the first included.
    pub attempts: u32,
    /// The longest single wait; a longer `Retry-After` ends the budget at once.
    pub max_wait: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            attempts: 3,
            max_wait: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone)]
struct CachedToken {
    token: String,
    renew_at: Instant,
}

pub struct GraphHttp {
    client: reqwest::Client,
    graph_base: String,
    login_base: String,
    budget: RetryBudget,
    /// Keyed by tenant, client id and a hash of the secret: a rotated secret gets a new
    /// token at once, and the map never holds a secret.
    tokens: Mutex<HashMap<TokenKey, CachedToken>>,
}

/// Tenant, client id, SHA-256 of the secret.
type TokenKey = (String, String, [u8; 32]);

type Sent = (StatusCode, reqwest::header::HeaderMap, Vec<u8>);

impl GraphHttp {
    pub fn new(config: &Config) -> Result<GraphHttp, String> {
        Self::with_budget(
            &config.graph_base_url,
            &config.ms_login_base_url,
            RetryBudget {
                timeout: config.graph_timeout,
                ..RetryBudget::default()
            },
        )
    }

    pub fn with_budget(
        graph_base: &str,
        login_base: &str,
        budget: RetryBudget,
    ) -> Result<GraphHttp, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("voyage-integrations")
            .build()
            .map_err(|e| format!("graph client: {e}"))?;
        Ok(GraphHttp {
            client,
            graph_base: graph_base.trim_end_matches('/').to_string(),
            login_base: login_base.trim_end_matches('/').to_string(),
            budget,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    fn cache_key(creds: &GraphCredentials) -> TokenKey {
        (
            creds.tenant_id.clone(),
            creds.client_id.clone(),
            Sha256::digest(creds.client_secret.as_bytes()).into(),
        )
    }

    fn cached(&self, creds: &GraphCredentials) -> Option<String> {
        let map = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&Self::cache_key(creds))
            .filter(|t| t.renew_at > Instant::now())
            .map(|t| t.token.clone())
    }

    fn forget(&self, creds: &GraphCredentials) {
        let mut map = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&Self::cache_key(creds));
    }

    /// An app-only token from the cache, or a new one from the identity platform.
    async fn token(&self, creds: &GraphCredentials) -> Result<String, GraphError> {
        if let Some(t) = self.cached(creds) {
            return Ok(t);
        }
        let url = format!(
            "{}/{}/oauth2/v2.0/token",
            self.login_base,
            encode_segment(&creds.tenant_id)
        );
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &creds.client_id)
            .append_pair("client_secret", &creds.client_secret)
            .append_pair("scope", TOKEN_SCOPE)
            .append_pair("grant_type", "client_credentials")
            .finish();
        let resp = self
            .client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .timeout(self.budget.timeout)
            .body(form)
            .send()
            .await
            .map_err(|e| GraphError::Unavailable(format!("token endpoint: {}", without_url(e))))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let error = body.get("error").and_then(Value::as_str).unwrap_or("error");
            let description = body
                .get("error_description")
                .and_then(Value::as_str)
                .and_then(|d| d.lines().next())
                .unwrap_or("no description");
            return Err(match status.as_u16() {
                400 | 401 | 403 => GraphError::Auth(format!("{error}: {description}")),
                429 => GraphError::Throttled { retry_after: None },
                _ => GraphError::Unavailable(format!("token endpoint answered {status}")),
            });
        }
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| GraphError::Unavailable("token response without access_token".into()))?
            .to_string();
        let lifetime = body
            .get("expires_in")
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .unwrap_or(3599);
        let renew_at = Instant::now() + Duration::from_secs(lifetime).saturating_sub(TOKEN_EARLY);
        let mut map = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(
            Self::cache_key(creds),
            CachedToken {
                token: token.clone(),
                renew_at,
            },
        );
        Ok(token)
    }

    /// Sends one Graph request within the retry budget. `url` is absolute.
    async fn send(
        &self,
        creds: &GraphCredentials,
        method: Method,
        url: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
        timeout: Duration,
    ) -> Result<Sent, GraphError> {
        let mut refreshed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let token = self.token(creds).await?;
            // Graph reads one Prefer header with comma-separated preferences.
            let prefer = if url.contains("/calendarView/delta") {
                format!("{PREFER}, odata.maxpagesize={DELTA_PAGE_SIZE}")
            } else {
                PREFER.to_string()
            };
            let mut req = self
                .client
                .request(method.clone(), url)
                .bearer_auth(&token)
                .header("prefer", prefer)
                .timeout(timeout);
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| GraphError::Unavailable(without_url(e)))?;
            let status = resp.status();
            let resp_headers = resp.headers().clone();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| GraphError::Unavailable(without_url(e)))?
                .to_vec();
            match status.as_u16() {
                401 if !refreshed => {
                    // A cached token revoked or expired early: one fresh token, once.
                    refreshed = true;
                    self.forget(creds);
                    attempt -= 1;
                    continue;
                }
                429 | 503 | 504 => {
                    voyage_core::metrics::count(
                        "provider_throttles",
                        &[("provider", "graph"), ("status", status.as_str())],
                        1,
                    );
                    let hint = retry_after(&resp_headers);
                    let wait = hint.unwrap_or(Duration::from_secs(1 << attempt.min(4)));
                    if attempt >= self.budget.attempts || wait > self.budget.max_wait {
                        return Err(if status.as_u16() == 429 {
                            GraphError::Throttled { retry_after: hint }
                        } else {
                            GraphError::Unavailable(format!("Graph answered {status}"))
                        });
                    }
                    tracing::debug!(
                        status = status.as_u16(),
                        wait_ms = wait.as_millis() as u64,
                        "graph asked to wait"
                    );
                    tokio::time::sleep(wait).await;
                }
                _ => return Ok((status, resp_headers, bytes)),
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1.0/{path}", self.graph_base)
    }

    async fn call(
        &self,
        creds: &GraphCredentials,
        method: Method,
        url: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<Vec<u8>, GraphError> {
        let (status, _, bytes) = self
            .send(creds, method, url, body, headers, self.budget.timeout)
            .await?;
        check(status, &bytes)?;
        Ok(bytes)
    }
}

/// Maps a non-success answer onto [`GraphError`].
fn check(status: StatusCode, bytes: &[u8]) -> Result<(), GraphError> {
    if status.is_success() {
        return Ok(());
    }
    let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let code = body
        .pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let message = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let lower = code.to_ascii_lowercase();
    Err(match status.as_u16() {
        404 => GraphError::NotFound,
        412 => GraphError::PreconditionFailed,
        410 if lower == "syncstatenotfound" || lower == "resyncrequired" || lower.is_empty() => {
            GraphError::SyncStateNotFound
        }
        401 | 403 => GraphError::Auth(format!("{code}: {message}")),
        s if s >= 500 => GraphError::Unavailable(format!("Graph answered {status}: {code}")),
        s => GraphError::Rejected {
            status: s,
            code,
            message,
        },
    })
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    (at - Utc::now()).to_std().ok().or(Some(Duration::ZERO))
}

/// reqwest errors quote the URL; ours carry nothing secret, but keep messages short.
fn without_url(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    format!("{kind}: {}", e.without_url())
}

fn encode_segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, GraphError> {
    serde_json::from_slice(bytes).map_err(|e| GraphError::Rejected {
        status: 200,
        code: "unreadable_response".into(),
        message: e.to_string(),
    })
}

fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn read_subscription(bytes: &[u8]) -> Result<GraphSubscription, GraphError> {
    let v: Value = parse(bytes)?;
    let id = v.get("id").and_then(Value::as_str);
    let expires = v
        .get("expirationDateTime")
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok());
    match (id, expires) {
        (Some(id), Some(exp)) => Ok(GraphSubscription {
            id: id.to_string(),
            expires_at: exp.with_timezone(&Utc),
        }),
        _ => Err(GraphError::Rejected {
            status: 200,
            code: "unreadable_response".into(),
            message: "subscription without id or expirationDateTime".into(),
        }),
    }
}

fn event_url_path(calendar: &CalendarRef, id: &str) -> String {
    // Events are addressable by id in the mailbox whatever their calendar.
    let mailbox = CalendarRef {
        user: calendar.user.clone(),
        calendar: None,
    };
    format!("{}/{}", mailbox.events_path(), encode_segment(id))
}

#[async_trait]
impl GraphApi for GraphHttp {
    async fn create_event(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        event: &EventWrite,
    ) -> Result<GraphEvent, GraphError> {
        let body = serde_json::to_value(event).map_err(|e| GraphError::Rejected {
            status: 0,
            code: "encode".into(),
            message: e.to_string(),
        })?;
        let bytes = self
            .call(
                creds,
                Method::POST,
                &self.url(&calendar.events_path()),
                Some(&body),
                &[],
            )
            .await?;
        parse(&bytes)
    }

    async fn update_event(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        id: &str,
        etag: Option<&str>,
        event: &EventWrite,
    ) -> Result<GraphEvent, GraphError> {
        let body = serde_json::to_value(event).map_err(|e| GraphError::Rejected {
            status: 0,
            code: "encode".into(),
            message: e.to_string(),
        })?;
        let headers: Vec<(&str, String)> = etag
            .map(|e| ("if-match", e.to_string()))
            .into_iter()
            .collect();
        let bytes = self
            .call(
                creds,
                Method::PATCH,
                &self.url(&event_url_path(calendar, id)),
                Some(&body),
                &headers,
            )
            .await?;
        parse(&bytes)
    }

    async fn get_event(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        id: &str,
    ) -> Result<GraphEvent, GraphError> {
        let expand = format!("singleValueExtendedProperties($filter=id eq '{SESSION_TAG_ID}')");
        let url = format!(
            "{}?$expand={}",
            self.url(&event_url_path(calendar, id)),
            encode_segment(&expand)
        );
        let bytes = self.call(creds, Method::GET, &url, None, &[]).await?;
        parse(&bytes)
    }

    async fn get_events(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        ids: &[String],
    ) -> Result<Vec<Result<GraphEvent, GraphError>>, GraphError> {
        let mut out: Vec<Option<Result<GraphEvent, GraphError>>> = vec![None; ids.len()];
        let expand = format!("singleValueExtendedProperties($filter=id eq '{SESSION_TAG_ID}')");
        for (chunk_no, chunk) in ids.chunks(MAILBOX_CONCURRENCY).enumerate() {
            // Items throttled inside a batch are sent again (within the retry budget).
            let mut pending: Vec<usize> = (0..chunk.len()).collect();
            let mut attempt = 0;
            while !pending.is_empty() {
                attempt += 1;
                let requests: Vec<Value> = pending
                    .iter()
                    .map(|&i| {
                        json!({
                            "id": i.to_string(),
                            "method": "GET",
                            "url": format!("/{}?$expand={}", event_url_path(calendar, &chunk[i]), encode_segment(&expand)),
                            "headers": {"Prefer": PREFER},
                        })
                    })
                    .collect();
                let bytes = self
                    .call(
                        creds,
                        Method::POST,
                        &self.url("$batch"),
                        Some(&json!({ "requests": requests })),
                        &[],
                    )
                    .await?;
                let answer: BatchAnswer = parse(&bytes)?;
                let mut retry = Vec::new();
                let mut longest_wait = None;
                for r in answer.responses {
                    let Some(i) = r.id.parse::<usize>().ok().filter(|i| pending.contains(i)) else {
                        continue;
                    };
                    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
                    if matches!(r.status, 429 | 503 | 504) {
                        let hint = r
                            .headers
                            .get("Retry-After")
                            .or_else(|| r.headers.get("retry-after"))
                            .and_then(|v| {
                                v.as_str()
                                    .and_then(|s| s.parse::<u64>().ok())
                                    .or_else(|| v.as_u64())
                            })
                            .map(Duration::from_secs);
                        longest_wait = longest_wait.max(hint.or(Some(Duration::from_secs(1))));
                        retry.push((i, status, hint));
                        continue;
                    }
                    let body = serde_json::to_vec(&r.body).unwrap_or_default();
                    out[chunk_no * MAILBOX_CONCURRENCY + i] =
                        Some(check(status, &body).and_then(|()| parse::<GraphEvent>(&body)));
                }
                let wait = longest_wait.unwrap_or(Duration::ZERO);
                if retry.is_empty()
                    || attempt >= self.budget.attempts
                    || wait > self.budget.max_wait
                {
                    for (i, status, hint) in retry {
                        out[chunk_no * MAILBOX_CONCURRENCY + i] =
                            Some(Err(if status.as_u16() == 429 {
                                GraphError::Throttled { retry_after: hint }
                            } else {
                                GraphError::Unavailable(format!(
                                    "Graph answered {status} in a batch"
                                ))
                            }));
                    }
                    break;
                }
                tokio::time::sleep(wait).await;
                pending = retry.into_iter().map(|(i, _, _)| i).collect();
            }
        }
        Ok(out
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(GraphError::Rejected {
                        status: 200,
                        code: "unreadable_response".into(),
                        message: "a batch answer without this request".into(),
                    })
                })
            })
            .collect())
    }

    async fn mailbox_time_zone(
        &self,
        creds: &GraphCredentials,
        user: &str,
    ) -> Result<String, GraphError> {
        let url = self.url(&format!("users/{}/mailboxSettings", encode_segment(user)));
        let bytes = self.call(creds, Method::GET, &url, None, &[]).await?;
        let v: Value = parse(&bytes)?;
        v.get("timeZone")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| GraphError::Rejected {
                status: 200,
                code: "unreadable_response".into(),
                message: "mailboxSettings without timeZone".into(),
            })
    }

    async fn delete_event(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        id: &str,
    ) -> Result<(), GraphError> {
        self.call(
            creds,
            Method::DELETE,
            &self.url(&event_url_path(calendar, id)),
            None,
            &[],
        )
        .await
        .map(|_| ())
    }

    async fn create_subscription(
        &self,
        creds: &GraphCredentials,
        sub: &NewSubscription,
    ) -> Result<GraphSubscription, GraphError> {
        let body = json!({
            "changeType": sub.change_types,
            "notificationUrl": sub.notification_url,
            "lifecycleNotificationUrl": sub.lifecycle_url,
            "resource": sub.resource,
            "expirationDateTime": instant(sub.expires_at),
            "clientState": sub.client_state,
        });
        // Graph validates the notification URL before it answers: allow for that round trip.
        let (status, _, bytes) = self
            .send(
                creds,
                Method::POST,
                &self.url("subscriptions"),
                Some(&body),
                &[],
                self.budget.timeout * 3,
            )
            .await?;
        check(status, &bytes)?;
        read_subscription(&bytes)
    }

    async fn renew_subscription(
        &self,
        creds: &GraphCredentials,
        id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<GraphSubscription, GraphError> {
        let body = json!({ "expirationDateTime": instant(expires_at) });
        let url = self.url(&format!("subscriptions/{}", encode_segment(id)));
        let bytes = self
            .call(creds, Method::PATCH, &url, Some(&body), &[])
            .await?;
        read_subscription(&bytes)
    }

    async fn delete_subscription(
        &self,
        creds: &GraphCredentials,
        id: &str,
    ) -> Result<(), GraphError> {
        let url = self.url(&format!("subscriptions/{}", encode_segment(id)));
        self.call(creds, Method::DELETE, &url, None, &[])
            .await
            .map(|_| ())
    }

    async fn delta_page(
        &self,
        creds: &GraphCredentials,
        request: &DeltaRequest,
    ) -> Result<DeltaPage, GraphError> {
        let url = match request {
            DeltaRequest::Start { calendar, from, to } => format!(
                "{}?startDateTime={}&endDateTime={}",
                self.url(&calendar.delta_path()),
                encode_segment(&instant(*from)),
                encode_segment(&instant(*to))
            ),
            DeltaRequest::Link(link) => {
                if !link.starts_with(&format!("{}/", self.graph_base)) {
                    return Err(GraphError::Rejected {
                        status: 0,
                        code: "foreign_link".into(),
                        message: "a delta link outside the configured Graph base URL".into(),
                    });
                }
                link.clone()
            }
        };
        let (status, _, bytes) = self
            .send(creds, Method::GET, &url, None, &[], self.budget.timeout)
            .await?;
        check(status, &bytes)?;
        let v: Value = parse(&bytes)?;
        let events: Vec<GraphEvent> = match v.get("value") {
            Some(list) => {
                serde_json::from_value(list.clone()).map_err(|e| GraphError::Rejected {
                    status: 200,
                    code: "unreadable_response".into(),
                    message: e.to_string(),
                })?
            }
            None => Vec::new(),
        };
        let link = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Ok(DeltaPage {
            events,
            next_link: link("@odata.nextLink"),
            delta_link: link("@odata.deltaLink"),
        })
    }
}
