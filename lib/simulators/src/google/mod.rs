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

mod auth;
mod control;
mod events;
mod push;
mod schema;
mod sync;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use ring::signature::KeyPair;
use serde_json::{json, Map, Value};

use crate::util::{persisting, Fault, Persistence, Saves, Served};

use self::auth::{google_edge, token};
use self::control::{
    control_account, control_calendar, control_channels, control_clear_faults,
    control_clear_requests, control_events, control_expire, control_fault, control_push,
    control_requests,
};
use self::events::{
    apply_fields, delete_event, get_event, insert_event, new_event_id, patch_event, stamp,
    update_event,
};
use self::push::{stop_channel, watch, ChannelState};
use self::schema::check_request;
use self::sync::list_events;

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
    pub description: Option<String>,
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

/// The sandbox's service account key (test and sandbox use only; never a real account).
pub const SANDBOX_PRIVATE_KEY: &str = include_str!("../../sandbox-service-account.pem");
pub const SANDBOX_CLIENT_EMAIL: &str = "sandbox@voyage-sandbox.iam.gserviceaccount.com";

#[derive(Clone)]
pub struct GoogleSimulator {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<SimState>,
    http: reqwest::Client,
    persistence: Persistence,
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
    /// What events' `updated` is read from (the real clock unless set: see
    /// [`GoogleSimulator::set_event_clock`]), and the last value stamped.
    event_clock: Option<EventClock>,
    last_updated: Option<DateTime<Utc>>,
}

/// A clock for events' `updated` stamps.
pub type EventClock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

impl SimState {
    /// The next `updated` stamp: the event clock's now, and always after the last stamp (as
    /// Google's are, to the millisecond), so two changes at one instant of a manual clock
    /// still come in order.
    fn next_updated(&mut self) -> DateTime<Utc> {
        let now = self.event_clock.as_ref().map_or_else(Utc::now, |c| c());
        let next = match self.last_updated {
            Some(last) if now <= last => last + chrono::Duration::milliseconds(1),
            _ => now,
        };
        self.last_updated = Some(next);
        next
    }
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Calendar {
    time_zone: Option<String>,
    events: BTreeMap<String, SimEvent>,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
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
            description: text("description"),
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
                persistence: Persistence::default(),
            }),
        }
    }

    /// Keeps the simulator's state in the file at `path` (`voyage serve` gives its data
    /// directory's `simulated-google.json`), so a restart keeps the calendars: first loads
    /// what an earlier run saved there, then saves after every request that may change
    /// something. Kept: the service accounts, the tokens issued, the calendars with their
    /// events (cancelled ones too), the push channels, and the counters sync tokens and
    /// `updated` stamps come from (a sync token issued before the restart still works). Not
    /// kept: faults, the request log, a test's event clock.
    pub fn persist_at(&self, path: std::path::PathBuf) -> Result<(), String> {
        if let Some(durable) = Persistence::load::<GoogleDurable>(&path)? {
            let (accounts, tokens, calendars, channels, epoch, seq, last_updated) = durable;
            let mut s = self.state();
            s.accounts.extend(accounts);
            s.tokens = tokens;
            s.calendars = calendars;
            s.channels = channels;
            s.epoch = epoch;
            s.seq = seq;
            s.last_updated = last_updated;
        }
        self.inner.persistence.set(path);
        Ok(())
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

    /// A staff member turns an event into an all-day one from `first` to `last` (both
    /// included), as a `PATCH` of `start` and `end` with `date`s does. `false` when there is
    /// no such live event or `last` is before `first`.
    pub fn staff_make_all_day(
        &self,
        calendar: &str,
        id: &str,
        first: chrono::NaiveDate,
        last: chrono::NaiveDate,
    ) -> bool {
        let key = calendar.to_ascii_lowercase();
        let zone = self
            .state()
            .calendars
            .get(&key)
            .and_then(|c| c.time_zone.clone());
        let Some(end) = last.succ_opt().filter(|_| last >= first) else {
            return false;
        };
        self.staff_change(calendar, id, |e| {
            if e.cancelled() {
                return false;
            }
            let mut body = Map::new();
            body.insert("start".into(), json!({"date": first.to_string()}));
            body.insert("end".into(), json!({"date": end.to_string()}));
            apply_fields(e, &body, zone.as_deref(), &key).is_ok()
        })
    }

    /// Expires every sync token handed out so far (as `POST /_control/sync-tokens/expire`
    /// does): the next incremental list answers 410 `fullSyncRequired`.
    pub fn expire_sync_tokens(&self) {
        self.state().epoch += 1;
    }

    /// Sets a calendar's time zone (as `POST /_control/calendars/{id}` does): its lists name
    /// it, and its all-day events are read in it.
    pub fn set_time_zone(&self, calendar: &str, zone: &str) {
        self.state()
            .calendars
            .entry(calendar.to_ascii_lowercase())
            .or_default()
            .time_zone = Some(zone.to_string());
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
            let updated = state.next_updated();
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
            stamp(&mut next, seq, updated);
            *event = next;
            state.seq = seq;
        }
        self.push_all(&key, "exists");
        true
    }

    pub fn add_fault(&self, fault: Fault) {
        self.state().faults.push(fault);
    }

    /// Stamps events' `updated` from `clock` instead of the real clock (a simulation that
    /// runs on a manual clock, so Google's times and the system's agree).
    pub fn set_event_clock(&self, clock: EventClock) {
        self.state().event_clock = Some(clock);
    }

    /// Removes every injected fault (as `DELETE /_control/faults` does).
    pub fn clear_faults(&self) {
        self.state().faults.clear();
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
            let updated = state.next_updated();
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
            stamp(&mut event, seq, updated);
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
        google
            .merge(control)
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                persisting::<Self>,
            ))
            .with_state(self.clone())
    }
}

/// What [`GoogleSimulator::persist_at`] keeps: the accounts, the tokens, the calendars, the
/// channels, the sync epoch, the change counter and the last `updated` stamp.
type GoogleDurable = (
    HashMap<String, Vec<u8>>,
    HashMap<String, (String, DateTime<Utc>)>,
    HashMap<String, Calendar>,
    BTreeMap<String, ChannelState>,
    u64,
    u64,
    Option<DateTime<Utc>>,
);

/// Saves the state [`GoogleSimulator::persist_at`] keeps (nothing without a file).
impl Saves for GoogleSimulator {
    fn save(&self) {
        self.inner.persistence.save(|| {
            let s = self.state();
            serde_json::to_vec(&(
                &s.accounts,
                &s.tokens,
                &s.calendars,
                &s.channels,
                s.epoch,
                s.seq,
                s.last_updated,
            ))
        });
    }
}
