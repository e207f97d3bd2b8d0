//! A stateful Google Calendar simulator: the service-account token endpoint, events with
//! real paging and sync tokens, push channels, with Google's shapes and error reasons.
//! Every request it accepts is checked against Google's discovery document (parameter
//! names, integer and boolean types, enums, minimums; body fields of `Event` and `Channel`).
//!
//! Google routes (all but the token endpoint need a bearer token from it):
//! - `POST /token`: `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`;
//!   the RS256 signature is checked against the registered account's key;
//! - `GET|POST /calendar/v3/calendars/{calendarId}/events`,
//!   `GET|PATCH|DELETE /calendar/v3/calendars/{calendarId}/events/{eventId}`,
//!   `POST /calendar/v3/calendars/{calendarId}/events/watch`, `POST /calendar/v3/channels/stop`.
//!
//! Control routes (no token): `POST /_control/service-accounts` `{"client_email",
//! "private_key"}`; `POST|DELETE /_control/faults` (as the Graph simulator's);
//! `GET|DELETE /_control/requests`; `POST /_control/sync-tokens/expire` (every sync token
//! then answers 410 `fullSyncRequired`); `POST /_control/calendars/{id}` `{"time_zone"}`;
//! `GET /_control/calendars/{id}/events` (cancelled ones included); `GET /_control/channels`;
//! `POST /_control/channels/{id}/push` `{"state"}` (send a push now, as Google would).
//!
//! Simplifications: deleted events are kept as `status: cancelled` forever; `primary` is
//! the calendar named by the token's subject; recurring events are not expanded (events
//! are single).

#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use ring::signature::{KeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use serde_json::{json, Map, Value};

use crate::util::{random_token, take_fault, Fault, FaultAction, Served};

const DISCOVERY: &str = include_str!("../google-calendar-v3-discovery.json");
/// The sandbox's service account key (test and sandbox use only; never a real account).
pub const SANDBOX_PRIVATE_KEY: &str = include_str!("../sandbox-service-account.pem");
pub const SANDBOX_CLIENT_EMAIL: &str = "sandbox@voyage-sandbox.iam.gserviceaccount.com";

fn discovery() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::from_str(DISCOVERY).unwrap_or(Value::Null))
}

#[derive(Clone)]
pub struct GoogleSimulator {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<SimState>,
    http: reqwest::Client,
}

#[derive(Default)]
struct SimState {
    accounts: HashMap<String, Vec<u8>>,
    tokens: HashMap<String, (String, DateTime<Utc>)>,
    calendars: HashMap<String, Calendar>,
    channels: BTreeMap<String, ChannelState>,
    faults: Vec<Fault>,
    served: Vec<Served>,
    epoch: u64,
    seq: u64,
}

#[derive(Default)]
struct Calendar {
    time_zone: Option<String>,
    events: BTreeMap<String, SimEvent>,
}

#[derive(Clone)]
struct SimEvent {
    json: Map<String, Value>,
    seq: u64,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
}

impl SimEvent {
    fn cancelled(&self) -> bool {
        self.json.get("status").and_then(Value::as_str) == Some("cancelled")
    }
}

#[derive(Clone)]
struct ChannelState {
    id: String,
    calendar: String,
    address: String,
    token: Option<String>,
    resource_id: String,
    expiration_ms: i64,
    messages: u64,
}

fn google_error(status: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({"error": {
        "errors": [{"domain": "global", "reason": reason, "message": message}],
        "code": status.as_u16(),
        "message": message,
    }});
    (status, Json(body)).into_response()
}

fn invalid(message: &str) -> Response {
    google_error(StatusCode::BAD_REQUEST, "invalid", message)
}

fn not_found() -> Response {
    google_error(StatusCode::NOT_FOUND, "notFound", "Not Found")
}

/// Checks a request's query parameters (and body fields) against the discovery document.
fn check_request(
    resource: &str,
    method: &str,
    query: &HashMap<String, String>,
    body: Option<&Map<String, Value>>,
) -> Result<(), Response> {
    let doc = discovery();
    let spec = &doc["resources"][resource]["methods"][method];
    if spec.is_null() {
        return Err(invalid("unknown method"));
    }
    for (name, value) in query {
        let param = spec["parameters"]
            .get(name)
            .filter(|p| p["location"] == "query")
            .or_else(|| doc["parameters"].get(name));
        let Some(param) = param else {
            return Err(google_error(
                StatusCode::BAD_REQUEST,
                "invalidParameter",
                &format!("Invalid parameter: {name}"),
            ));
        };
        let bad = || {
            google_error(
                StatusCode::BAD_REQUEST,
                "invalidParameter",
                &format!("Invalid value for {name}: {value}"),
            )
        };
        match param["type"].as_str() {
            Some("integer") => {
                let n: i64 = value.parse().map_err(|_| bad())?;
                if let Some(min) = param["minimum"]
                    .as_str()
                    .and_then(|m| m.parse::<i64>().ok())
                {
                    if n < min {
                        return Err(bad());
                    }
                }
            }
            Some("boolean") if value != "true" && value != "false" => return Err(bad()),
            _ => {}
        }
        if let Some(allowed) = param["enum"].as_array() {
            if !allowed.iter().any(|a| a.as_str() == Some(value.as_str())) {
                return Err(bad());
            }
        }
    }
    if let (Some(body), Some(schema)) = (body, spec["request"]["$ref"].as_str()) {
        let properties = &doc["schemas"][schema]["properties"];
        for key in body.keys() {
            if properties.get(key).is_none() {
                return Err(google_error(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    &format!("Unknown field in {schema}: {key}"),
                ));
            }
        }
    }
    Ok(())
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// Reads `start`/`end`: `dateTime` (RFC 3339) or an all-day `date` (midnight in `zone`).
fn event_time(v: &Value, zone: Option<&str>) -> Option<DateTime<Utc>> {
    if let Some(dt) = v.get("dateTime").and_then(Value::as_str) {
        return DateTime::parse_from_rfc3339(dt)
            .ok()
            .map(|t| t.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(v.get("date")?.as_str()?, "%Y-%m-%d").ok()?;
    let naive = day.and_hms_opt(0, 0, 0)?;
    match zone.and_then(|z| z.parse::<chrono_tz::Tz>().ok()) {
        Some(tz) => tz
            .from_local_datetime(&naive)
            .earliest()
            .map(|t| t.with_timezone(&Utc)),
        None => Some(Utc.from_utc_datetime(&naive)),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PageState {
    epoch: u64,
    calendar: String,
    since: Option<u64>,
    upto: u64,
    min: Option<DateTime<Utc>>,
    max: Option<DateTime<Utc>>,
    offset: usize,
}

fn encode_state(s: &PageState) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(s).unwrap_or_default())
}

fn decode_state(t: &str) -> Option<PageState> {
    serde_json::from_slice(&b64url(t)?).ok()
}

impl Default for GoogleSimulator {
    fn default() -> Self {
        Self::new()
    }
}

impl GoogleSimulator {
    pub fn new() -> Self {
        GoogleSimulator {
            inner: Arc::new(Inner {
                state: Mutex::new(SimState::default()),
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap_or_default(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a service account by its private key (the simulator keeps the public half).
    pub fn register_account(
        &self,
        client_email: &str,
        private_key_pem: &str,
    ) -> Result<(), String> {
        let body: String = private_key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| "not a PEM key".to_string())?;
        let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).map_err(|e| e.to_string())?;
        self.state().accounts.insert(
            client_email.to_string(),
            pair.public_key().as_ref().to_vec(),
        );
        Ok(())
    }

    pub fn served(&self) -> Vec<Served> {
        self.state().served.clone()
    }

    pub fn clear_served(&self) {
        self.state().served.clear();
    }

    pub fn add_fault(&self, fault: Fault) {
        self.state().faults.push(fault);
    }

    pub fn router(&self) -> Router {
        let google = Router::new()
            .route("/token", post(token))
            .route(
                "/calendar/v3/calendars/{calendar}/events",
                get(list_events).post(insert_event),
            )
            .route(
                "/calendar/v3/calendars/{calendar}/events/watch",
                post(watch),
            )
            .route(
                "/calendar/v3/calendars/{calendar}/events/{event}",
                get(get_event).patch(patch_event).delete(delete_event),
            )
            .route("/calendar/v3/channels/stop", post(stop_channel))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                google_edge,
            ));
        let control = Router::new()
            .route("/_control/service-accounts", post(control_account))
            .route(
                "/_control/faults",
                post(control_fault).delete(control_clear_faults),
            )
            .route(
                "/_control/requests",
                get(control_requests).delete(control_clear_requests),
            )
            .route("/_control/sync-tokens/expire", post(control_expire))
            .route("/_control/calendars/{calendar}", post(control_calendar))
            .route("/_control/calendars/{calendar}/events", get(control_events))
            .route("/_control/channels", get(control_channels))
            .route("/_control/channels/{id}/push", post(control_push));
        google.merge(control).with_state(self.clone())
    }

    /// Pushes `state` to every channel watching `calendar`.
    fn push_all(&self, calendar: &str, state: &str) {
        let ids: Vec<String> = self
            .state()
            .channels
            .values()
            .filter(|c| c.calendar == calendar)
            .map(|c| c.id.clone())
            .collect();
        for id in ids {
            let sim = self.clone();
            let state = state.to_string();
            tokio::spawn(async move {
                sim.push(&id, &state).await;
            });
        }
    }

    /// One push with Google's headers and an empty body; returns the receiver's status.
    async fn push(&self, channel_id: &str, resource_state: &str) -> Option<u16> {
        let channel = {
            let mut state = self.state();
            let c = state.channels.get_mut(channel_id)?;
            c.messages += 1;
            c.clone()
        };
        let expiration = Utc
            .timestamp_millis_opt(channel.expiration_ms)
            .single()
            .map(|t| t.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
            .unwrap_or_default();
        let mut req = self
            .inner
            .http
            .post(&channel.address)
            .header("X-Goog-Channel-ID", &channel.id)
            .header("X-Goog-Channel-Expiration", expiration)
            .header("X-Goog-Resource-ID", &channel.resource_id)
            .header(
                "X-Goog-Resource-URI",
                format!(
                    "https://www.googleapis.com/calendar/v3/calendars/{}/events",
                    channel.calendar
                ),
            )
            .header("X-Goog-Resource-State", resource_state)
            .header("X-Goog-Message-Number", channel.messages.to_string())
            .header("content-type", "application/json; charset=UTF-8")
            .header("content-length", "0");
        if let Some(t) = &channel.token {
            req = req.header("X-Goog-Channel-Token", t);
        }
        req.send().await.ok().map(|r| r.status().as_u16())
    }

    fn calendar_key(&self, calendar: &str, headers: &HeaderMap) -> String {
        if calendar == "primary" {
            if let Some(subject) =
                bearer(headers).and_then(|t| self.state().tokens.get(&t).map(|(s, _)| s.clone()))
            {
                return subject.to_ascii_lowercase();
            }
        }
        calendar.to_ascii_lowercase()
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::to_string)
}

async fn google_edge(State(sim): State<GoogleSimulator>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let fault = take_fault(&mut sim.state().faults, &method, &path);
    let mut delay = None;
    let response = match fault {
        Some(FaultAction::Fail {
            status,
            retry_after,
        }) => {
            let reason = match status.as_u16() {
                429 => "rateLimitExceeded",
                403 => "userRateLimitExceeded",
                410 => "fullSyncRequired",
                _ => "backendError",
            };
            let mut resp = google_error(status, reason, "injected fault");
            if let Some(secs) = retry_after {
                if let Ok(v) = secs.to_string().parse() {
                    resp.headers_mut().insert("retry-after", v);
                }
            }
            resp
        }
        other => {
            if let Some(FaultAction::Delay(d)) = other {
                delay = Some(d);
            }
            let authorised = path == "/token"
                || bearer(req.headers())
                    .and_then(|t| sim.state().tokens.get(&t).cloned())
                    .is_some_and(|(_, exp)| exp > Utc::now());
            if authorised {
                next.run(req).await
            } else {
                google_error(StatusCode::UNAUTHORIZED, "authError", "Invalid Credentials")
            }
        }
    };
    sim.state().served.push(Served {
        method: method.to_string(),
        path,
        status: response.status().as_u16(),
    });
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    response
}

async fn token(State(sim): State<GoogleSimulator>, body: Bytes) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let oauth = |error: &str, description: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": error, "error_description": description})),
        )
            .into_response()
    };
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return oauth("unsupported_grant_type", "Invalid grant_type.");
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth("invalid_request", "Missing required parameter: assertion");
    };
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return oauth(
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe",
        );
    };
    let Some(claims_json) = b64url(claims).and_then(|c| serde_json::from_slice::<Value>(&c).ok())
    else {
        return oauth("invalid_grant", "Invalid JWT claims.");
    };
    let header_ok = b64url(header)
        .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
        .is_some_and(|h| h["alg"] == "RS256");
    let iss = claims_json["iss"].as_str().unwrap_or_default().to_string();
    let Some(public) = sim.state().accounts.get(&iss).cloned() else {
        return oauth(
            "invalid_client",
            &format!("The OAuth client was not found: {iss}"),
        );
    };
    let signed = format!("{header}.{claims}");
    let verified = header_ok
        && b64url(signature).is_some_and(|sig| {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &public)
                .verify(signed.as_bytes(), &sig)
                .is_ok()
        });
    if !verified {
        return oauth("invalid_grant", "Invalid JWT Signature.");
    }
    let now = Utc::now().timestamp();
    let (iat, exp) = (
        claims_json["iat"].as_i64().unwrap_or(0),
        claims_json["exp"].as_i64().unwrap_or(0),
    );
    if exp <= now || iat > now + 60 || exp - iat > 3600 {
        return oauth("invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.");
    }
    if !claims_json["scope"]
        .as_str()
        .unwrap_or_default()
        .contains("auth/calendar")
    {
        return oauth(
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        );
    }
    let Some(subject) = claims_json["sub"].as_str().map(str::to_string) else {
        return oauth(
            "invalid_grant",
            "Missing sub: domain-wide delegation needs a subject.",
        );
    };
    let token = format!("ya29.sim-{}", random_token(24));
    sim.state().tokens.insert(
        token.clone(),
        (subject, Utc::now() + chrono::Duration::seconds(3599)),
    );
    Json(json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})).into_response()
}

async fn list_events(
    State(sim): State<GoogleSimulator>,
    Path(calendar): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = check_request("events", "list", &q, None) {
        return r;
    }
    if q.contains_key("syncToken")
        && [
            "timeMin",
            "timeMax",
            "q",
            "orderBy",
            "privateExtendedProperty",
            "updatedMin",
            "iCalUID",
        ]
        .iter()
        .any(|k| q.contains_key(*k))
    {
        return invalid("syncToken cannot be combined with timeMin, timeMax, q, orderBy, privateExtendedProperty, updatedMin or iCalUID.");
    }
    let key = sim.calendar_key(&calendar, &headers);
    let state = sim.state();
    let max: usize = q
        .get("maxResults")
        .and_then(|m| m.parse().ok())
        .unwrap_or(250usize)
        .min(2500);
    let page = match (q.get("pageToken"), q.get("syncToken")) {
        (Some(t), _) => match decode_state(t) {
            Some(p) if p.epoch == state.epoch => p,
            Some(_) => {
                return google_error(
                    StatusCode::GONE,
                    "fullSyncRequired",
                    "Sync token is no longer valid, a full sync is required.",
                )
            }
            None => return invalid("Invalid pageToken."),
        },
        (None, Some(t)) => match decode_state(t) {
            Some(p) if p.epoch == state.epoch && p.calendar == key => PageState {
                since: Some(p.upto),
                upto: state.seq,
                offset: 0,
                ..p
            },
            _ => {
                return google_error(
                    StatusCode::GONE,
                    "fullSyncRequired",
                    "Sync token is no longer valid, a full sync is required.",
                )
            }
        },
        (None, None) => PageState {
            epoch: state.epoch,
            calendar: key.clone(),
            since: None,
            upto: state.seq,
            min: q
                .get("timeMin")
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
            max: q
                .get("timeMax")
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
            offset: 0,
        },
    };
    let cal = state.calendars.get(&page.calendar);
    let show_deleted = q.get("showDeleted").is_some_and(|v| v == "true");
    let mut matching: Vec<&SimEvent> = cal
        .map(|c| {
            c.events
                .values()
                .filter(|e| e.seq <= page.upto)
                .filter(|e| match page.since {
                    Some(since) => e.seq > since,
                    None => {
                        (show_deleted || !e.cancelled())
                            && page.min.is_none_or(|m| e.end.is_none_or(|end| end > m))
                            && page
                                .max
                                .is_none_or(|m| e.start.is_none_or(|start| start < m))
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    matching.sort_by_key(|e| e.seq);
    let items: Vec<Value> = matching
        .iter()
        .skip(page.offset)
        .take(max)
        .map(|e| Value::Object(e.json.clone()))
        .collect();
    let mut body = json!({
        "kind": "calendar#events",
        "summary": page.calendar,
        "timeZone": cal.and_then(|c| c.time_zone.clone()).unwrap_or_else(|| "UTC".into()),
        "updated": Utc::now().to_rfc3339(),
        "items": items,
    });
    if page.offset + max < matching.len() {
        body["nextPageToken"] = json!(encode_state(&PageState {
            offset: page.offset + max,
            ..page
        }));
    } else {
        body["nextSyncToken"] = json!(encode_state(&PageState {
            offset: 0,
            since: None,
            ..page
        }));
    }
    Json(body).into_response()
}

fn apply_fields(
    event: &mut SimEvent,
    body: &Map<String, Value>,
    zone: Option<&str>,
) -> Result<(), Response> {
    for (k, v) in body {
        match k.as_str() {
            "id" | "etag" | "updated" | "created" | "kind" | "htmlLink" | "iCalUID" => {}
            "start" | "end" => {
                let t = event_time(v, zone)
                    .ok_or_else(|| invalid(&format!("{k}: a date or dateTime is required")))?;
                if k == "start" {
                    event.start = Some(t);
                } else {
                    event.end = Some(t);
                }
                event.json.insert(k.clone(), v.clone());
            }
            _ => {
                event.json.insert(k.clone(), v.clone());
            }
        }
    }
    if let (Some(s), Some(e)) = (event.start, event.end) {
        if e < s {
            return Err(google_error(
                StatusCode::BAD_REQUEST,
                "timeRangeEmpty",
                "The specified time range is empty.",
            ));
        }
    }
    Ok(())
}

fn stamp(event: &mut SimEvent, seq: u64) {
    event.seq = seq;
    event.json.insert(
        "etag".into(),
        json!(format!("\"{seq}{}\"", random_token(4))),
    );
    event
        .json
        .insert("updated".into(), json!(Utc::now().to_rfc3339()));
}

async fn insert_event(
    State(sim): State<GoogleSimulator>,
    Path(calendar): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return invalid("The body must be a JSON Event.");
    };
    if let Err(r) = check_request("events", "insert", &q, Some(&body)) {
        return r;
    }
    if body.get("start").is_none() || body.get("end").is_none() {
        return google_error(StatusCode::BAD_REQUEST, "required", "Missing end time.");
    }
    let key = sim.calendar_key(&calendar, &headers);
    let out = {
        let mut state = sim.state();
        state.seq += 1;
        let seq = state.seq;
        let cal = state.calendars.entry(key.clone()).or_default();
        let id = body
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                random_token(16)
                    .to_ascii_lowercase()
                    .replace(['-', '_'], "x")
            });
        if cal.events.contains_key(&id) {
            return google_error(
                StatusCode::CONFLICT,
                "duplicate",
                "The requested identifier already exists.",
            );
        }
        let mut json = Map::new();
        json.insert("kind".into(), json!("calendar#event"));
        json.insert("id".into(), json!(id));
        json.insert("status".into(), json!("confirmed"));
        json.insert("created".into(), json!(Utc::now().to_rfc3339()));
        let mut event = SimEvent {
            json,
            seq,
            start: None,
            end: None,
        };
        if let Err(r) = apply_fields(&mut event, &body, cal.time_zone.as_deref()) {
            return r;
        }
        stamp(&mut event, seq);
        let out = Value::Object(event.json.clone());
        cal.events.insert(id, event);
        out
    };
    sim.push_all(&key, "exists");
    Json(out).into_response()
}

async fn get_event(
    State(sim): State<GoogleSimulator>,
    Path((calendar, event)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = check_request("events", "get", &q, None) {
        return r;
    }
    let key = sim.calendar_key(&calendar, &headers);
    let state = sim.state();
    match state.calendars.get(&key).and_then(|c| c.events.get(&event)) {
        Some(e) => Json(Value::Object(e.json.clone())).into_response(),
        None => not_found(),
    }
}

async fn patch_event(
    State(sim): State<GoogleSimulator>,
    Path((calendar, event)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return invalid("The body must be a JSON Event.");
    };
    if let Err(r) = check_request("events", "patch", &q, Some(&body)) {
        return r;
    }
    let key = sim.calendar_key(&calendar, &headers);
    let out = {
        let mut state = sim.state();
        state.seq += 1;
        let seq = state.seq;
        let Some(cal) = state.calendars.get_mut(&key) else {
            return not_found();
        };
        let zone = cal.time_zone.clone();
        let Some(e) = cal.events.get_mut(&event) else {
            return not_found();
        };
        let mut next = e.clone();
        if let Err(r) = apply_fields(&mut next, &body, zone.as_deref()) {
            return r;
        }
        stamp(&mut next, seq);
        *e = next.clone();
        Value::Object(next.json)
    };
    sim.push_all(&key, "exists");
    Json(out).into_response()
}

async fn delete_event(
    State(sim): State<GoogleSimulator>,
    Path((calendar, event)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = check_request("events", "delete", &q, None) {
        return r;
    }
    let key = sim.calendar_key(&calendar, &headers);
    {
        let mut state = sim.state();
        state.seq += 1;
        let seq = state.seq;
        let Some(e) = state
            .calendars
            .get_mut(&key)
            .and_then(|c| c.events.get_mut(&event))
        else {
            return not_found();
        };
        if e.cancelled() {
            return google_error(StatusCode::GONE, "deleted", "Resource has been deleted");
        }
        e.json.insert("status".into(), json!("cancelled"));
        stamp(e, seq);
    }
    sim.push_all(&key, "exists");
    StatusCode::NO_CONTENT.into_response()
}

async fn watch(
    State(sim): State<GoogleSimulator>,
    Path(calendar): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return invalid("The body must be a JSON Channel.");
    };
    if let Err(r) = check_request("events", "watch", &q, Some(&body)) {
        return r;
    }
    let field = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(id), Some(address)) = (field("id"), field("address")) else {
        return google_error(
            StatusCode::BAD_REQUEST,
            "required",
            "id and address are required.",
        );
    };
    if field("type").as_deref() != Some("web_hook") {
        return invalid("type must be web_hook.");
    }
    let ttl: i64 = body
        .get("params")
        .and_then(|p| p.get("ttl"))
        .and_then(|t| t.as_str().and_then(|s| s.parse().ok()).or(t.as_i64()))
        .unwrap_or(604_800)
        .min(604_800);
    let key = sim.calendar_key(&calendar, &headers);
    let channel = {
        let mut state = sim.state();
        if state.channels.contains_key(&id) {
            return google_error(
                StatusCode::BAD_REQUEST,
                "channelIdNotUnique",
                "Channel id not unique",
            );
        }
        let channel = ChannelState {
            id: id.clone(),
            calendar: key.clone(),
            address,
            token: field("token"),
            resource_id: random_token(18),
            expiration_ms: (Utc::now() + chrono::Duration::seconds(ttl)).timestamp_millis(),
            messages: 0,
        };
        state.channels.insert(id.clone(), channel.clone());
        channel
    };
    let sim2 = sim.clone();
    let first = id.clone();
    tokio::spawn(async move {
        sim2.push(&first, "sync").await;
    });
    Json(json!({
        "kind": "api#channel",
        "id": channel.id,
        "resourceId": channel.resource_id,
        "resourceUri": format!("https://www.googleapis.com/calendar/v3/calendars/{key}/events?alt=json"),
        "token": channel.token,
        // Google sends the expiration as a string of milliseconds.
        "expiration": channel.expiration_ms.to_string(),
    }))
    .into_response()
}

async fn stop_channel(State(sim): State<GoogleSimulator>, body: Bytes) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return invalid("The body must be a JSON Channel.");
    };
    if let Err(r) = check_request("channels", "stop", &HashMap::new(), Some(&body)) {
        return r;
    }
    let id = body.get("id").and_then(Value::as_str).unwrap_or_default();
    let resource = body
        .get("resourceId")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut state = sim.state();
    match state.channels.get(id) {
        Some(c) if c.resource_id == resource => {
            state.channels.remove(id);
            StatusCode::NO_CONTENT.into_response()
        }
        _ => google_error(
            StatusCode::NOT_FOUND,
            "notFound",
            &format!("Channel '{id}' not found for project"),
        ),
    }
}

#[derive(serde::Deserialize)]
struct Account {
    client_email: String,
    private_key: String,
}

async fn control_account(State(sim): State<GoogleSimulator>, Json(a): Json<Account>) -> Response {
    match sim.register_account(&a.client_email, &a.private_key) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => invalid(&e),
    }
}

async fn control_fault(State(sim): State<GoogleSimulator>, Json(f): Json<Fault>) -> StatusCode {
    sim.add_fault(f);
    StatusCode::NO_CONTENT
}

async fn control_clear_faults(State(sim): State<GoogleSimulator>) -> StatusCode {
    sim.state().faults.clear();
    StatusCode::NO_CONTENT
}

async fn control_requests(State(sim): State<GoogleSimulator>) -> Json<Value> {
    Json(json!({"value": sim.served()}))
}

async fn control_clear_requests(State(sim): State<GoogleSimulator>) -> StatusCode {
    sim.clear_served();
    StatusCode::NO_CONTENT
}

async fn control_expire(State(sim): State<GoogleSimulator>) -> StatusCode {
    sim.state().epoch += 1;
    StatusCode::NO_CONTENT
}

async fn control_calendar(
    State(sim): State<GoogleSimulator>,
    Path(calendar): Path<String>,
    Json(body): Json<Value>,
) -> StatusCode {
    let zone = body
        .get("time_zone")
        .and_then(Value::as_str)
        .map(str::to_string);
    sim.state()
        .calendars
        .entry(calendar.to_ascii_lowercase())
        .or_default()
        .time_zone = zone;
    StatusCode::NO_CONTENT
}

async fn control_events(
    State(sim): State<GoogleSimulator>,
    Path(calendar): Path<String>,
) -> Json<Value> {
    let state = sim.state();
    let value: Vec<Value> = state
        .calendars
        .get(&calendar.to_ascii_lowercase())
        .map(|c| {
            c.events
                .values()
                .map(|e| Value::Object(e.json.clone()))
                .collect()
        })
        .unwrap_or_default();
    Json(json!({"value": value}))
}

async fn control_channels(State(sim): State<GoogleSimulator>) -> Json<Value> {
    let value: Vec<Value> = sim
        .state()
        .channels
        .values()
        .map(|c| json!({"id": c.id, "calendar": c.calendar, "address": c.address, "resourceId": c.resource_id, "expiration": c.expiration_ms.to_string()}))
        .collect();
    Json(json!({"value": value}))
}

async fn control_push(
    State(sim): State<GoogleSimulator>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let state = body
        .get("state")
        .and_then(Value::as_str)
        .unwrap_or("exists")
        .to_string();
    match sim.push(&id, &state).await {
        Some(status) => Json(json!({"delivered_status": status})).into_response(),
        None => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_against_the_discovery_document() {
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        assert!(check_request(
            "events",
            "list",
            &q(&[("maxResults", "250"), ("singleEvents", "true")]),
            None
        )
        .is_ok());
        assert!(check_request("events", "list", &q(&[("maxResult", "250")]), None).is_err());
        assert!(check_request("events", "list", &q(&[("maxResults", "0")]), None).is_err());
        assert!(check_request("events", "list", &q(&[("singleEvents", "yes")]), None).is_err());
        assert!(check_request("events", "list", &q(&[("orderBy", "random")]), None).is_err());
        let mut body = Map::new();
        body.insert("summary".into(), json!("x"));
        assert!(check_request("events", "insert", &HashMap::new(), Some(&body)).is_ok());
        body.insert("colour".into(), json!("red"));
        assert!(check_request("events", "insert", &HashMap::new(), Some(&body)).is_err());
    }
}
