//! A stateful Google Calendar simulator: the service-account token endpoint, events with
//! real paging and sync tokens, push channels, with Google's shapes and error reasons.
//! Every request it accepts is checked against Google's discovery document (parameter
//! names, integer and boolean types, enums, minimums; body fields of `Event` and `Channel`,
//! nested ones such as `attendees[]` against `EventAttendee`, and the values a field's
//! description lists as possible, such as `eventType` and `responseStatus`). Events carry
//! `eventType` (`default` unless given; it cannot change, `fromGmail` cannot be created) and
//! `attendees`, where the entry of the calendar's owner is marked `self: true` by the
//! simulator (read-only, as Google's) and a missing `responseStatus` is `needsAction`.
//!
//! Google routes (all but the token endpoint need a bearer token from it):
//! - `POST /token`: `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`;
//!   the RS256 signature is checked against the registered account's key;
//! - `GET|POST /calendar/v3/calendars/{calendarId}/events`,
//!   `GET|PUT|PATCH|DELETE /calendar/v3/calendars/{calendarId}/events/{eventId}`,
//!   `POST /calendar/v3/calendars/{calendarId}/events/watch`, `POST /calendar/v3/channels/stop`.
//!
//! Writes, as Google documents them:
//! - `POST .../events` takes a client-chosen `id`: 5-1024 characters of base32hex (`a-v`,
//!   `0-9`), else 400 `invalid`; an id the calendar already has, a cancelled event's
//!   included, answers 409 `duplicate`. Ids the simulator makes are base32hex too.
//! - `PUT .../events/{id}` is a full update: every writable field not in the body is
//!   cleared (`attendees` included), `start` and `end` are required; `id`, `created`,
//!   `eventType` and `iCalUID` stay; a body without `status` keeps the current one.
//!   `PATCH` changes only the fields given.
//! - `PUT`, `PATCH` and `DELETE` honour `If-Match` (412 `conditionNotMet` when it names
//!   another etag; `*` matches any); every change gets a new `etag` and `updated`.
//! - `sendUpdates` (`all`, `externalOnly`, `none`) is accepted on every write; the simulator
//!   sends no mail either way, the request log shows what was asked.
//! - `DELETE` is soft: the event turns `status: cancelled` with its details kept (a second
//!   `DELETE` answers 410 `deleted`); `GET` still answers it (200, `status: cancelled`); a
//!   `PUT` or `PATCH` setting `status: confirmed` restores it.
//! - Incremental `events.list` (a `syncToken`) reports every event changed since, cancelled
//!   ones included; every change (insert, update, patch, delete, restore, and the staff
//!   helpers below) sends an `exists` push to every channel watching the calendar.
//!
//! Control routes (no token): `POST /_control/service-accounts` `{"client_email",
//! "private_key"}`; `POST|DELETE /_control/faults` (as the Graph simulator's);
//! `GET|DELETE /_control/requests` (every Google request served: method, path, query,
//! `If-Match`, JSON body, status); `POST /_control/sync-tokens/expire` (every sync token
//! then answers 410 `fullSyncRequired`); `POST /_control/calendars/{id}` `{"time_zone"}`;
//! `GET /_control/calendars/{id}/events` (cancelled ones included); `GET /_control/channels`;
//! `POST /_control/channels/{id}/push` `{"state"}` (send a push now, as Google would).
//!
//! In-process tests also have a Rust-side API (no HTTP): [`GoogleSimulator::requests`] (the
//! request log above); `staff_delete` / `staff_restore` / `staff_move` / `staff_decline`:
//! what a staff member does in Google Calendar, with the same sequence numbers, etags and
//! pushes as the routes; [`GoogleSimulator::events_of`] reads a calendar back as
//! [`GoogleEventView`]s.
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
use chrono::{DateTime, NaiveDate, SecondsFormat, TimeZone, Utc};
use ring::signature::{KeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use serde_json::{json, Map, Value};

use crate::util::{random_token, take_fault, Fault, FaultAction, Served};

/// A request the Google simulator served, with what a test checks of a write.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GoogleRequest {
    pub method: String,
    pub path: String,
    /// The raw query string (`sendUpdates=none`), empty when there is none.
    pub query: String,
    /// The `If-Match` header, when sent.
    pub if_match: Option<String>,
    /// The JSON body of a Calendar API request, when it had one (the token endpoint's form
    /// is never kept).
    pub body: Option<Value>,
    pub status: u16,
}

impl GoogleRequest {
    /// The value of query parameter `name`, when sent.
    pub fn param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// One event of a calendar as [`GoogleSimulator::events_of`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoogleEventView {
    pub id: String,
    /// `confirmed`, `tentative` or `cancelled` (deleted, restorable).
    pub status: String,
    pub summary: Option<String>,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    /// `extendedProperties.private.voyageSessionId` (`<company>/<session>`).
    pub session_tag: Option<String>,
    pub etag: String,
    /// The calendar owner's attendee entry (`self`) answers `declined`.
    pub declined: bool,
    /// Every attendee's email, the owner's included.
    pub attendees: Vec<String>,
}

/// The private extended property the platform tags its events with: the same name as
/// `voyage_core::google::api::SESSION_PROPERTY` (the simulators do not depend on the core).
/// Only [`GoogleSimulator::events_of`] reads it.
const SESSION_PROPERTY: &str = "voyageSessionId";

/// Whether Google accepts `id` as a client-chosen event id: 5-1024 characters of base32hex.
fn valid_event_id(id: &str) -> bool {
    (5..=1024).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b))
}

/// A new server-chosen event id: 26 base32hex characters, as Google's.
fn new_event_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuv";
    let mut rng = rand::thread_rng();
    (0..26)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

/// An etag without its weak marker and quotes, for comparing.
fn bare_etag(etag: &str) -> &str {
    let etag = etag.trim();
    etag.strip_prefix("W/").unwrap_or(etag).trim_matches('"')
}

/// `If-Match`: 412 `conditionNotMet` when it names another version than `event`'s.
fn check_if_match(headers: &HeaderMap, event: &SimEvent) -> Result<(), Response> {
    let Some(wanted) = headers.get("if-match") else {
        return Ok(());
    };
    let current = event
        .json
        .get("etag")
        .and_then(Value::as_str)
        .map(bare_etag)
        .unwrap_or_default();
    let matched = wanted.to_str().is_ok_and(|w| {
        w.split(',')
            .map(str::trim)
            .any(|w| w == "*" || bare_etag(w) == current)
    });
    if matched {
        Ok(())
    } else {
        Err(google_error(
            StatusCode::PRECONDITION_FAILED,
            "conditionNotMet",
            "Precondition Failed",
        ))
    }
}

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
    requests: Vec<GoogleRequest>,
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

    fn view(&self) -> GoogleEventView {
        let text = |k: &str| self.json.get(k).and_then(Value::as_str).map(str::to_string);
        let attendees = self
            .json
            .get("attendees")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        GoogleEventView {
            id: text("id").unwrap_or_default(),
            status: text("status").unwrap_or_else(|| "confirmed".into()),
            summary: text("summary"),
            start: self.start,
            end: self.end,
            session_tag: self
                .json
                .get("extendedProperties")
                .and_then(|p| p.get("private"))
                .and_then(|p| p.get(SESSION_PROPERTY))
                .and_then(Value::as_str)
                .map(str::to_string),
            etag: text("etag").unwrap_or_default(),
            declined: attendees
                .iter()
                .any(|a| a["self"] == true && a["responseStatus"] == "declined"),
            attendees: attendees
                .iter()
                .filter_map(|a| a.get("email").and_then(Value::as_str))
                .map(str::to_string)
                .collect(),
        }
    }

    /// What a full update (`PUT`) keeps of the event: the fields nobody writes.
    fn replaced(&self) -> SimEvent {
        let json = self
            .json
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k.as_str(),
                    "kind"
                        | "id"
                        | "status"
                        | "created"
                        | "eventType"
                        | "iCalUID"
                        | "etag"
                        | "updated"
                        | "creator"
                        | "organizer"
                        | "htmlLink"
                )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        SimEvent {
            json,
            seq: self.seq,
            start: None,
            end: None,
        }
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
        check_object(schema, body, 0)?;
    }
    Ok(())
}

/// Checks an object's fields against a discovery schema: names, scalar types, and the
/// values a field's description lists as its possible ones (`eventType`,
/// `attendees[].responseStatus`); nested objects and arrays of objects are checked against
/// their own schemas (`attendees` against `EventAttendee`).
fn check_object(schema: &str, body: &Map<String, Value>, depth: usize) -> Result<(), Response> {
    let doc = discovery();
    let properties = &doc["schemas"][schema]["properties"];
    let bad = |key: &str, why: &str| {
        google_error(
            StatusCode::BAD_REQUEST,
            "invalid",
            &format!("Invalid value for {schema}.{key}: {why}"),
        )
    };
    for (key, value) in body {
        let Some(property) = properties.get(key) else {
            return Err(google_error(
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!("Unknown field in {schema}: {key}"),
            ));
        };
        if value.is_null() || depth > 2 {
            continue;
        }
        match property["type"].as_str() {
            Some("string") => {
                let Some(text) = value.as_str() else {
                    return Err(bad(key, "a string is required"));
                };
                let allowed = described_values(property["description"].as_str().unwrap_or(""));
                if !allowed.is_empty() && !allowed.iter().any(|a| a == text) {
                    return Err(bad(key, &format!("`{text}` is not one of {allowed:?}")));
                }
            }
            Some("boolean") if !value.is_boolean() => {
                return Err(bad(key, "a boolean is required"))
            }
            Some("integer") if !value.is_i64() => return Err(bad(key, "an integer is required")),
            Some("array") => {
                let Some(items) = value.as_array() else {
                    return Err(bad(key, "an array is required"));
                };
                if let Some(item_schema) = property["items"]["$ref"].as_str() {
                    for item in items {
                        let Some(object) = item.as_object() else {
                            return Err(bad(key, "objects are required"));
                        };
                        check_object(item_schema, object, depth + 1)?;
                    }
                }
            }
            _ => {
                if let (Some(nested), Some(object)) = (property["$ref"].as_str(), value.as_object())
                {
                    check_object(nested, object, depth + 1)?;
                }
            }
        }
    }
    Ok(())
}

/// The values a discovery description lists as "Possible values are:" (lines
/// `- "value" - meaning`); empty when it lists none.
fn described_values(description: &str) -> Vec<String> {
    if !description.contains("Possible values are:") {
        return Vec::new();
    }
    description
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- \""))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
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
        self.state()
            .requests
            .iter()
            .map(|r| Served {
                method: r.method.clone(),
                path: r.path.clone(),
                status: r.status,
            })
            .collect()
    }

    /// Every Google request served (token requests included), with query, `If-Match` and
    /// JSON body.
    pub fn requests(&self) -> Vec<GoogleRequest> {
        self.state().requests.clone()
    }

    pub fn clear_served(&self) {
        self.state().requests.clear();
    }

    /// A staff member deletes an event in Google Calendar: it turns `cancelled`, details
    /// kept, as `DELETE .../events/{id}` does. `false` when there is no such live event.
    pub fn staff_delete(&self, calendar: &str, id: &str) -> bool {
        self.staff_change(calendar, id, |e| {
            if e.cancelled() {
                return false;
            }
            e.json.insert("status".into(), json!("cancelled"));
            true
        })
    }

    /// A staff member restores a deleted event from the bin: `status` back to `confirmed`,
    /// as a `PATCH` of `status` does. `false` when there is no such cancelled event.
    pub fn staff_restore(&self, calendar: &str, id: &str) -> bool {
        self.staff_change(calendar, id, |e| {
            if !e.cancelled() {
                return false;
            }
            e.json.insert("status".into(), json!("confirmed"));
            true
        })
    }

    /// A staff member moves an event, as a `PATCH` of its `start` and `end` (in UTC, the
    /// event's `timeZone` kept) does. `false` when there is no such live event or `end` is
    /// before `start`.
    pub fn staff_move(
        &self,
        calendar: &str,
        id: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> bool {
        let key = calendar.to_ascii_lowercase();
        self.staff_change(calendar, id, |e| {
            if e.cancelled() {
                return false;
            }
            let time = |field: &str, t: DateTime<Utc>| {
                let mut v = json!({"dateTime": t.to_rfc3339_opts(SecondsFormat::Secs, true)});
                if let Some(zone) = e.json.get(field).and_then(|f| f.get("timeZone")) {
                    v["timeZone"] = zone.clone();
                }
                v
            };
            let mut body = Map::new();
            body.insert("start".into(), time("start", start));
            body.insert("end".into(), time("end", end));
            apply_fields(e, &body, None, &key).is_ok()
        })
    }

    /// A staff member declines an event on their calendar: their own attendee entry (the
    /// one marked `self`, added when the event has none) answers `declined`, as a `PATCH` of
    /// `attendees` does. `false` when there is no such live event.
    pub fn staff_decline(&self, calendar: &str, id: &str) -> bool {
        let key = calendar.to_ascii_lowercase();
        self.staff_change(calendar, id, |e| {
            if e.cancelled() {
                return false;
            }
            let mut attendees = e
                .json
                .get("attendees")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            match attendees.iter_mut().find(|a| a["self"] == true) {
                Some(own) => own["responseStatus"] = json!("declined"),
                None => attendees
                    .push(json!({"email": key, "self": true, "responseStatus": "declined"})),
            }
            e.json.insert("attendees".into(), Value::Array(attendees));
            true
        })
    }

    /// Every event of `calendar`, cancelled ones included, in id order.
    pub fn events_of(&self, calendar: &str) -> Vec<GoogleEventView> {
        self.state()
            .calendars
            .get(&calendar.to_ascii_lowercase())
            .map(|c| c.events.values().map(SimEvent::view).collect())
            .unwrap_or_default()
    }

    /// One change a staff member makes: `change` edits a copy of the event and says whether
    /// it applies; an applied change gets a new sequence number and etag and is pushed.
    fn staff_change(
        &self,
        calendar: &str,
        id: &str,
        change: impl FnOnce(&mut SimEvent) -> bool,
    ) -> bool {
        let key = calendar.to_ascii_lowercase();
        {
            let mut state = self.state();
            let seq = state.seq + 1;
            let Some(event) = state
                .calendars
                .get_mut(&key)
                .and_then(|c| c.events.get_mut(id))
            else {
                return false;
            };
            let mut next = event.clone();
            if !change(&mut next) {
                return false;
            }
            stamp(&mut next, seq);
            *event = next;
            state.seq = seq;
        }
        self.push_all(&key, "exists");
        true
    }

    pub fn add_fault(&self, fault: Fault) {
        self.state().faults.push(fault);
    }

    /// Inserts events into `calendar` at once, as `events.insert` would (the same checks and
    /// fields) but without pushes: for seeding large calendars in tests and benchmarks.
    /// Returns the new ids, or the first refusal's message.
    pub fn seed_events(&self, calendar: &str, events: Vec<Value>) -> Result<Vec<String>, String> {
        let key = calendar.to_ascii_lowercase();
        let mut state = self.state();
        let mut ids = Vec::with_capacity(events.len());
        for body in events {
            let Value::Object(body) = body else {
                return Err("an event must be a JSON object".into());
            };
            let refused = |r: Response| format!("refused with {}", r.status());
            check_request("events", "insert", &HashMap::new(), Some(&body)).map_err(refused)?;
            state.seq += 1;
            let seq = state.seq;
            let cal = state.calendars.entry(key.clone()).or_default();
            let id = new_event_id();
            let mut json = Map::new();
            json.insert("kind".into(), json!("calendar#event"));
            json.insert("id".into(), json!(id));
            json.insert("status".into(), json!("confirmed"));
            if !body.contains_key("eventType") {
                json.insert("eventType".into(), json!("default"));
            }
            json.insert("created".into(), json!(Utc::now().to_rfc3339()));
            let mut event = SimEvent {
                json,
                seq,
                start: None,
                end: None,
            };
            apply_fields(&mut event, &body, cal.time_zone.as_deref(), &key).map_err(refused)?;
            stamp(&mut event, seq);
            cal.events.insert(id.clone(), event);
            ids.push(id);
        }
        Ok(ids)
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
                get(get_event)
                    .put(update_event)
                    .patch(patch_event)
                    .delete(delete_event),
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

    /// Pushes `state` to every channel watching `calendar` (in the background: none outside
    /// a Tokio runtime).
    fn push_all(&self, calendar: &str, state: &str) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
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
            runtime.spawn(async move {
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
    let query = req.uri().query().unwrap_or_default().to_string();
    let if_match = req
        .headers()
        .get("if-match")
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    // Keep the JSON body for the log, then hand the request on unchanged.
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let logged_body = if path.starts_with("/calendar/") && !bytes.is_empty() {
        serde_json::from_slice::<Value>(&bytes).ok()
    } else {
        None
    };
    let req = Request::from_parts(parts, axum::body::Body::from(bytes));
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
    sim.state().requests.push(GoogleRequest {
        method: method.to_string(),
        path,
        query,
        if_match,
        body: logged_body,
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

/// Applies an insert's or a patch's fields to `event` on `calendar` (whose owner is the
/// attendee marked `self`).
fn apply_fields(
    event: &mut SimEvent,
    body: &Map<String, Value>,
    zone: Option<&str>,
    calendar: &str,
) -> Result<(), Response> {
    for (k, v) in body {
        match k.as_str() {
            "id" | "etag" | "updated" | "created" | "kind" | "htmlLink" | "iCalUID" => {}
            "eventType" => {
                let current = event.json.get("eventType").cloned();
                if current.is_some_and(|c| &c != v) {
                    return Err(google_error(
                        StatusCode::BAD_REQUEST,
                        "eventTypeRestriction",
                        "The event type cannot be changed.",
                    ));
                }
                if v.as_str() == Some("fromGmail") {
                    return Err(google_error(
                        StatusCode::BAD_REQUEST,
                        "eventTypeRestriction",
                        "Events of type fromGmail cannot be created.",
                    ));
                }
                event.json.insert(k.clone(), v.clone());
            }
            "attendees" => {
                // `self` is read-only: Google marks the calendar's own entry.
                let attendees: Vec<Value> = v
                    .as_array()
                    .map(|list| {
                        list.iter()
                            .map(|a| {
                                let mut a = a.as_object().cloned().unwrap_or_default();
                                a.remove("self");
                                let own = a
                                    .get("email")
                                    .and_then(Value::as_str)
                                    .is_some_and(|e| e.eq_ignore_ascii_case(calendar));
                                if own {
                                    a.insert("self".into(), json!(true));
                                }
                                if !a.contains_key("responseStatus") {
                                    a.insert("responseStatus".into(), json!("needsAction"));
                                }
                                Value::Object(a)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                event.json.insert(k.clone(), Value::Array(attendees));
            }
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
        let id = match body.get("id") {
            None | Some(Value::Null) => new_event_id(),
            Some(Value::String(id)) if valid_event_id(id) => id.clone(),
            Some(_) => return invalid("Invalid resource id value."),
        };
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
        if !body.contains_key("eventType") {
            event.json.insert("eventType".into(), json!("default"));
        }
        if let Err(r) = apply_fields(&mut event, &body, cal.time_zone.as_deref(), &key) {
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
        if let Err(r) = check_if_match(&headers, e) {
            return r;
        }
        let mut next = e.clone();
        if let Err(r) = apply_fields(&mut next, &body, zone.as_deref(), &key) {
            return r;
        }
        stamp(&mut next, seq);
        *e = next.clone();
        Value::Object(next.json)
    };
    sim.push_all(&key, "exists");
    Json(out).into_response()
}

/// `PUT`: a full update (see the module docs).
async fn update_event(
    State(sim): State<GoogleSimulator>,
    Path((calendar, event)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return invalid("The body must be a JSON Event.");
    };
    if let Err(r) = check_request("events", "update", &q, Some(&body)) {
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
        let Some(cal) = state.calendars.get_mut(&key) else {
            return not_found();
        };
        let zone = cal.time_zone.clone();
        let Some(e) = cal.events.get_mut(&event) else {
            return not_found();
        };
        if let Err(r) = check_if_match(&headers, e) {
            return r;
        }
        let mut next = e.replaced();
        if let Err(r) = apply_fields(&mut next, &body, zone.as_deref(), &key) {
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
        if let Err(r) = check_if_match(&headers, e) {
            return r;
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
    Json(json!({"value": sim.requests()}))
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
    use tower::ServiceExt;

    const ANN: &str = "ann@contoso.example";

    /// A simulator with a token acting as Ann (no JWT needed in-process).
    fn sim_as_ann() -> GoogleSimulator {
        let sim = GoogleSimulator::new();
        sim.state().tokens.insert(
            "t-ann".into(),
            (ANN.into(), Utc::now() + chrono::Duration::hours(1)),
        );
        sim
    }

    /// One Google request as Ann: the status and the JSON body (`Null` when none).
    async fn call(
        sim: &GoogleSimulator,
        method: &str,
        path_and_query: &str,
        if_match: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(format!(
                "/calendar/v3/calendars/{ANN}/events{path_and_query}"
            ))
            .header("authorization", "Bearer t-ann")
            .header("content-type", "application/json");
        if let Some(etag) = if_match {
            req = req.header("if-match", etag);
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = req.body(axum::body::Body::from(body)).unwrap();
        let Ok(resp) = sim.router().oneshot(req).await;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn session(id: &str) -> Value {
        json!({"id": id, "summary": "Session", "description": "With Bea",
            "start": {"dateTime": "2030-01-01T09:00:00Z", "timeZone": "UTC"},
            "end": {"dateTime": "2030-01-01T10:00:00Z", "timeZone": "UTC"},
            "transparency": "opaque",
            "extendedProperties": {"private": {"voyageSessionId": "acme/s1"}}})
    }

    fn reason(body: &Value) -> &str {
        body["error"]["errors"][0]["reason"]
            .as_str()
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn client_chosen_ids_must_be_base32hex_and_a_reused_id_is_a_duplicate_even_when_cancelled(
    ) {
        let sim = sim_as_ann();
        for bad in ["abcd", "ABCDEF12", "session-1", "wxyz0123"] {
            let (status, body) = call(&sim, "POST", "", None, Some(session(bad))).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
            assert_eq!(reason(&body), "invalid");
        }
        let id = "0123456789abcdefghijklmnopqrstuv";
        let (status, created) =
            call(&sim, "POST", "?sendUpdates=none", None, Some(session(id))).await;
        assert_eq!(status, StatusCode::OK, "{created}");
        assert_eq!(created["id"], id);
        let (status, body) = call(&sim, "POST", "?sendUpdates=none", None, Some(session(id))).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(reason(&body), "duplicate");
        assert_eq!(
            call(&sim, "DELETE", &format!("/{id}"), None, None).await.0,
            StatusCode::NO_CONTENT
        );
        let (status, body) = call(&sim, "POST", "", None, Some(session(id))).await;
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "a cancelled event keeps its id"
        );
        assert_eq!(reason(&body), "duplicate");
        let (status, own) = call(&sim, "POST", "", None, Some(json!({"start": {"dateTime": "2030-01-02T09:00:00Z"}, "end": {"dateTime": "2030-01-02T10:00:00Z"}}))).await;
        assert_eq!(status, StatusCode::OK);
        assert!(valid_event_id(own["id"].as_str().unwrap()), "{own}");
    }

    #[tokio::test]
    async fn writes_honour_if_match_and_every_change_gets_a_new_etag() {
        let sim = sim_as_ann();
        let (_, created) = call(&sim, "POST", "", None, Some(session("sessionaaaa1"))).await;
        let first = created["etag"].as_str().unwrap().to_string();
        let (status, patched) = call(
            &sim,
            "PATCH",
            "/sessionaaaa1?sendUpdates=none",
            Some(&first),
            Some(json!({"summary": "Moved"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{patched}");
        let second = patched["etag"].as_str().unwrap().to_string();
        assert_ne!(second, first);
        let (status, body) = call(
            &sim,
            "PUT",
            "/sessionaaaa1?sendUpdates=none",
            Some(&first),
            Some(session("sessionaaaa1")),
        )
        .await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(reason(&body), "conditionNotMet");
        let (status, _) = call(
            &sim,
            "PATCH",
            "/sessionaaaa1",
            Some(&first),
            Some(json!({"summary": "x"})),
        )
        .await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED);
        let (status, _) = call(&sim, "DELETE", "/sessionaaaa1", Some(&first), None).await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(
            sim.events_of(ANN)[0].status,
            "confirmed",
            "refused writes change nothing"
        );
        assert_eq!(sim.events_of(ANN)[0].summary.as_deref(), Some("Moved"));
        let (status, put) = call(
            &sim,
            "PUT",
            "/sessionaaaa1",
            Some(&second),
            Some(session("sessionaaaa1")),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{put}");
        let third = put["etag"].as_str().unwrap().to_string();
        assert_ne!(third, second);
        assert_eq!(
            call(
                &sim,
                "PATCH",
                "/sessionaaaa1",
                Some("*"),
                Some(json!({"location": "Room 1"}))
            )
            .await
            .0,
            StatusCode::OK
        );
        let (status, _) = call(&sim, "DELETE", "/sessionaaaa1", Some(&third), None).await;
        assert_eq!(
            status,
            StatusCode::PRECONDITION_FAILED,
            "the wildcard patch made a new version"
        );
        let current = sim.events_of(ANN)[0].etag.clone();
        assert_eq!(
            call(
                &sim,
                "DELETE",
                "/sessionaaaa1?sendUpdates=none",
                Some(&current),
                None
            )
            .await
            .0,
            StatusCode::NO_CONTENT
        );
    }

    #[tokio::test]
    async fn a_delete_is_soft_and_a_put_or_patch_with_status_confirmed_restores_it() {
        let sim = sim_as_ann();
        call(&sim, "POST", "", None, Some(session("sessionbbbb1"))).await;
        let (_, listed) = call(&sim, "GET", "?maxResults=10", None, None).await;
        let sync_token = listed["nextSyncToken"].as_str().unwrap().to_string();
        assert_eq!(
            call(&sim, "DELETE", "/sessionbbbb1?sendUpdates=none", None, None)
                .await
                .0,
            StatusCode::NO_CONTENT
        );
        let (status, got) = call(&sim, "GET", "/sessionbbbb1", None, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(got["status"], "cancelled");
        assert_eq!(got["summary"], "Session", "details are kept");
        let (status, body) = call(&sim, "DELETE", "/sessionbbbb1", None, None).await;
        assert_eq!((status, reason(&body)), (StatusCode::GONE, "deleted"));
        let (_, changes) = call(&sim, "GET", &format!("?syncToken={sync_token}"), None, None).await;
        assert_eq!(changes["items"][0]["status"], "cancelled", "{changes}");
        let sync_token = changes["nextSyncToken"].as_str().unwrap().to_string();

        // A full update without status leaves it cancelled; with `confirmed` it restores.
        let (status, put) = call(
            &sim,
            "PUT",
            "/sessionbbbb1",
            None,
            Some(session("sessionbbbb1")),
        )
        .await;
        assert_eq!(
            (status, put["status"].as_str()),
            (StatusCode::OK, Some("cancelled"))
        );
        let mut restore = session("sessionbbbb1");
        restore["status"] = json!("confirmed");
        let (status, put) = call(
            &sim,
            "PUT",
            "/sessionbbbb1?sendUpdates=none",
            None,
            Some(restore),
        )
        .await;
        assert_eq!(
            (status, put["status"].as_str()),
            (StatusCode::OK, Some("confirmed"))
        );
        let (_, changes) = call(&sim, "GET", &format!("?syncToken={sync_token}"), None, None).await;
        assert_eq!(changes["items"][0]["status"], "confirmed", "{changes}");

        call(&sim, "DELETE", "/sessionbbbb1", None, None).await;
        let (status, patched) = call(
            &sim,
            "PATCH",
            "/sessionbbbb1",
            None,
            Some(json!({"status": "confirmed"})),
        )
        .await;
        assert_eq!(
            (status, patched["status"].as_str()),
            (StatusCode::OK, Some("confirmed"))
        );
    }

    #[tokio::test]
    async fn a_full_update_clears_what_it_does_not_carry_and_keeps_what_nobody_writes() {
        let sim = sim_as_ann();
        let mut invited = session("sessioncccc1");
        invited["attendees"] = json!([{"email": "bea@fabrikam.example"}]);
        invited["location"] = json!("Room 1");
        let (_, created) = call(&sim, "POST", "", None, Some(invited)).await;
        let (status, put) = call(
            &sim,
            "PUT",
            "/sessioncccc1",
            None,
            Some(session("sessioncccc1")),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{put}");
        assert!(
            put.get("attendees").is_none() && put.get("location").is_none(),
            "{put}"
        );
        assert_eq!(put["created"], created["created"]);
        assert_eq!(put["eventType"], "default");
        let mut no_end = session("sessioncccc1");
        no_end.as_object_mut().unwrap().remove("end");
        assert_eq!(
            call(&sim, "PUT", "/sessioncccc1", None, Some(no_end))
                .await
                .0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            call(
                &sim,
                "PUT",
                "/nosuchevent1",
                None,
                Some(session("nosuchevent1"))
            )
            .await
            .0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(
                &sim,
                "PUT",
                "/sessioncccc1?sendUpdates=never",
                None,
                Some(session("sessioncccc1"))
            )
            .await
            .0,
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn the_request_log_keeps_query_if_match_and_json_body() {
        let sim = sim_as_ann();
        call(
            &sim,
            "POST",
            "?sendUpdates=none",
            None,
            Some(session("sessiondddd1")),
        )
        .await;
        call(
            &sim,
            "DELETE",
            "/sessiondddd1?sendUpdates=none",
            Some("\"nope\""),
            None,
        )
        .await;
        let log = sim.requests();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].param("sendUpdates").as_deref(), Some("none"));
        assert_eq!(log[0].body.as_ref().unwrap()["id"], "sessiondddd1");
        assert_eq!((log[1].method.as_str(), log[1].status), ("DELETE", 412));
        assert_eq!(log[1].if_match.as_deref(), Some("\"nope\""));
        assert_eq!(log[1].body, None);
        assert_eq!(sim.served().len(), 2);
        sim.clear_served();
        assert!(sim.requests().is_empty());
    }

    /// A push receiver: the `X-Goog-Resource-State` of every push, in order.
    async fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let kept = seen.clone();
        let app = Router::new().route(
            "/push",
            post(move |headers: HeaderMap| {
                let kept = kept.clone();
                async move {
                    let state = headers
                        .get("x-goog-resource-state")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    kept.lock().unwrap().push(state);
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/push", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, seen)
    }

    async fn pushes_reach(seen: &Arc<Mutex<Vec<String>>>, n: usize) -> Vec<String> {
        for _ in 0..200 {
            if seen.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn staff_changes_read_back_in_the_view_and_every_change_is_pushed_to_every_channel() {
        let sim = sim_as_ann();
        let (url, seen) = receiver().await;
        for channel in ["ch-1", "ch-2"] {
            let (status, _) = call(
                &sim,
                "POST",
                "/watch",
                None,
                Some(json!({"id": channel, "type": "web_hook", "address": url, "token": "t"})),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
        }
        assert_eq!(pushes_reach(&seen, 2).await, ["sync", "sync"]);
        call(
            &sim,
            "POST",
            "?sendUpdates=none",
            None,
            Some(session("sessioneeee1")),
        )
        .await;
        let view = sim.events_of(ANN);
        assert_eq!(view.len(), 1);
        assert_eq!(view[0].session_tag.as_deref(), Some("acme/s1"));
        assert!(!view[0].declined && view[0].attendees.is_empty());
        let mut etags = vec![view[0].etag.clone()];

        assert!(sim.staff_delete(ANN, "sessioneeee1"));
        assert!(!sim.staff_delete(ANN, "sessioneeee1"), "already deleted");
        assert!(
            !sim.staff_move(ANN, "sessioneeee1", Utc::now(), Utc::now()),
            "deleted events do not move"
        );
        assert_eq!(sim.events_of(ANN)[0].status, "cancelled");
        etags.push(sim.events_of(ANN)[0].etag.clone());
        assert!(sim.staff_restore(ANN, "sessioneeee1"));
        assert!(!sim.staff_restore(ANN, "sessioneeee1"), "not deleted");
        assert_eq!(sim.events_of(ANN)[0].status, "confirmed");
        etags.push(sim.events_of(ANN)[0].etag.clone());
        let start = Utc.with_ymd_and_hms(2030, 1, 3, 14, 0, 0).unwrap();
        let end = start + chrono::Duration::hours(1);
        assert!(
            !sim.staff_move(ANN, "sessioneeee1", end, start),
            "end before start"
        );
        assert!(sim.staff_move(ANN, "sessioneeee1", start, end));
        let moved = &sim.events_of(ANN)[0];
        assert_eq!((moved.start, moved.end), (Some(start), Some(end)));
        etags.push(moved.etag.clone());
        assert!(sim.staff_decline(ANN, "sessioneeee1"));
        let declined = &sim.events_of(ANN)[0];
        assert!(declined.declined);
        assert_eq!(declined.attendees, [ANN]);
        etags.push(declined.etag.clone());
        assert!(!sim.staff_decline(ANN, "nosuchevent1"));
        let mut unique = etags.clone();
        unique.dedup();
        assert_eq!(unique, etags, "a new etag on every change");

        // One insert and four staff changes, each pushed to both channels.
        let pushes = pushes_reach(&seen, 2 + 5 * 2).await;
        assert_eq!(pushes.len(), 12, "{pushes:?}");
        assert!(pushes[2..].iter().all(|s| s == "exists"), "{pushes:?}");
    }

    #[test]
    fn staff_decline_marks_an_existing_own_attendee_entry() {
        let sim = GoogleSimulator::new();
        let ids = sim
            .seed_events(ANN, vec![json!({"start": {"dateTime": "2030-01-01T09:00:00Z"}, "end": {"dateTime": "2030-01-01T10:00:00Z"},
                "attendees": [{"email": "org@fabrikam.example", "responseStatus": "accepted"}, {"email": ANN, "responseStatus": "accepted"}]})])
            .unwrap();
        assert!(valid_event_id(&ids[0]));
        assert!(!sim.events_of(ANN)[0].declined);
        assert!(
            sim.staff_decline(ANN, &ids[0]),
            "works outside a runtime too"
        );
        let view = &sim.events_of(ANN)[0];
        assert!(view.declined);
        assert_eq!(view.attendees.len(), 2, "no second entry for the owner");
    }

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

    #[test]
    fn event_types_and_attendees_are_checked_against_the_discovery_document() {
        let insert = |v: Value| {
            let body = v.as_object().cloned().unwrap_or_default();
            check_request("events", "insert", &HashMap::new(), Some(&body))
        };
        assert!(insert(json!({"eventType": "outOfOffice"})).is_ok());
        assert!(insert(json!({"eventType": "workingLocation"})).is_ok());
        assert!(insert(json!({"eventType": "holiday"})).is_err());
        assert!(insert(
            json!({"attendees": [{"email": "a@b.c", "responseStatus": "declined", "self": true}]})
        )
        .is_ok());
        assert!(
            insert(json!({"attendees": [{"email": "a@b.c", "responseStatus": "maybe"}]})).is_err()
        );
        assert!(insert(json!({"attendees": [{"email": "a@b.c", "rsvp": "yes"}]})).is_err());
        assert!(insert(json!({"attendees": [{"email": "a@b.c", "optional": "yes"}]})).is_err());
        assert!(insert(json!({"attendees": {"email": "a@b.c"}})).is_err());
        assert!(insert(json!({"transparency": "see-through"})).is_err());
    }

    #[test]
    fn the_calendar_owner_is_the_attendee_marked_self_and_event_types_never_change() {
        let sim = GoogleSimulator::new();
        let start = json!({"dateTime": "2030-01-01T09:00:00Z"});
        let end = json!({"dateTime": "2030-01-01T10:00:00Z"});
        let ids = sim
            .seed_events(
                "Ann@contoso.example",
                vec![json!({"start": start, "end": end, "eventType": "outOfOffice",
                    "attendees": [{"email": "ann@contoso.example"}, {"email": "bob@contoso.example", "self": true}]})],
            )
            .unwrap();
        let event = sim.state().calendars["ann@contoso.example"].events[&ids[0]].clone();
        let attendees = event.json["attendees"].as_array().unwrap();
        assert_eq!(attendees[0]["self"], true);
        assert_eq!(attendees[0]["responseStatus"], "needsAction");
        assert!(attendees[1].get("self").is_none(), "self is read-only");
        let mut changed = event;
        let patch = json!({"eventType": "default"});
        let refused = apply_fields(
            &mut changed,
            patch.as_object().unwrap(),
            None,
            "ann@contoso.example",
        );
        assert_eq!(
            refused.map_err(|r| r.status()).err(),
            Some(StatusCode::BAD_REQUEST)
        );
        assert!(sim
            .seed_events(
                "ann@contoso.example",
                vec![json!({"start": start, "end": end, "eventType": "fromGmail"})]
            )
            .is_err());
    }
}
