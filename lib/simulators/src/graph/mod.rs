//! A stateful Microsoft Graph simulator: the token endpoint, mailbox events, `calendarView`
//! delta and change-notification subscriptions, with Graph's shapes and error codes.
//!
//! Graph routes (all need a bearer token from the token endpoint):
//! - `POST /{tenant}/oauth2/v2.0/token` (client credentials, form-encoded);
//! - `GET|POST /v1.0/users/{user}/events`, `GET|PATCH|DELETE /v1.0/users/{user}/events/{id}`,
//!   `POST /v1.0/users/{user}/events/{id}/decline`, and the same under
//!   `/v1.0/users/{user}/calendars/{calendar}/events`;
//! - `GET /v1.0/users/{user}/calendarView/delta` (and `/calendars/{calendar}/calendarView/delta`);
//! - `POST /v1.0/subscriptions`, `GET|PATCH|DELETE /v1.0/subscriptions/{id}`;
//! - `GET|PATCH /v1.0/users/{user}/mailboxSettings` (`timeZone`: a Windows or IANA name,
//!   `UTC` until set);
//! - `POST /v1.0/$batch` (JSON batching: at most 20 requests, each served by the routes above
//!   with the batch's token, faults and request log included, answered in one body).
//!
//! Control routes (what Graph has no route for; no token needed):
//! - `POST /_control/apps` `{"tenant_id", "client_id", "client_secret"}`: register an app;
//! - `POST /_control/faults` `{"method"?, "path_contains"?, "status"?, "retry_after"?,
//!   "latency_ms"?, "count"?, "after"?, "lose_answer"?}`; `DELETE /_control/faults`
//!   (`lose_answer`: the request is served, then answered `status`, 503 by default: an
//!   answer lost after the write happened);
//! - `GET /_control/requests` (every Graph request served), `DELETE` to clear;
//! - `GET /_control/users/{user}/events`: every event, deleted ones included, with their
//!   extended properties and transaction ids;
//! - `POST /_control/users/{user}/events/{id}/restore`: bring a deleted event back from
//!   Deleted Items (Graph has no such route; Outlook does it);
//! - `POST /_control/delta/expire`: every delta token now answers 410 `syncStateNotFound`;
//!   `POST /_control/delta/page-size` `{"max": n}`: serve delta pages of at most `n` events;
//!   `POST /_control/delta/partial` `{"omit": ["showAs", ...]}`: delta entries of live events
//!   leave out these properties (as Microsoft's published delta examples do); `[]` restores
//!   whole entries;
//! - `GET /_control/subscriptions`; `POST /_control/subscriptions/{id}/lifecycle`
//!   `{"lifecycleEvent": "reauthorizationRequired"|"subscriptionRemoved"|"missed"}`: POSTs
//!   the lifecycle notification and answers `{"delivered_status"}`, or in capture mode keeps
//!   it and answers 202 `{"captured": true}`.
//!
//! Simplifications, on purpose: one default calendar per user named `calendar`; times are
//! stored and returned in UTC (`dateTime` with seven fractional digits, `timeZone: "UTC"`)
//! with the caller's zone kept in `originalStartTimeZone`; any registered app may act on any
//! mailbox (application permissions).
//!
//! All-day events ([`GraphSimulator::staff_create_all_day`]) come back as Graph serves them
//! with times asked in UTC: local midnight of the mailbox's days, labelled UTC.
//!
//! Graph quirks simulated on purpose: in an incremental `calendarView/delta` round, an event
//! changed (moved, created, edited) outside the round's window is reported as
//! `{"@odata.type": "#microsoft.graph.event", "id", "@removed": {"reason": "deleted"}}`, a
//! false removal exactly like a real deletion (microsoftgraph/microsoft-graph-docs issues
//! #6599, #10687, #4659); in the initial round such events are simply not listed.
//!
//! In-process tests also have a Rust-side API (no HTTP):
//! - [`GraphSimulator::seeded`]: every generated id, change key, iCalUId and token (access
//!   tokens, subscription ids, validation tokens, error `request-id`s) comes from a
//!   SplitMix64 stream seeded with the seed, so the same sequence of requests gives the same
//!   ids and the same delta page order (times stay on the real clock);
//! - [`GraphSimulator::capture_notifications`] / [`GraphSimulator::take_notifications`]:
//!   keep Graph's pushes (change and lifecycle notifications) instead of POSTing them, for the
//!   test to deliver, drop, duplicate or reorder; in that mode a new subscription's validation
//!   handshake is taken as passed without calling the notification URL;
//! - `staff_create` / `staff_move` / `staff_decline` / `staff_delete` / `staff_restore`: what a
//!   staff member does in Outlook, through the same code paths as the Graph and control
//!   routes (same sequence numbers, change keys and notifications); [`GraphSimulator::events_of`]
//!   reads a mailbox back as [`SimEventView`]s.

// Handlers return a ready Graph error response as their `Err`: the natural shape here, and
// the size of `Response` does not matter for a test simulator.
#![allow(clippy::result_large_err)]

mod auth;
mod batch;
mod control;
mod events;
mod ids;
mod mailbox;
mod push;
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
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::{json, Map, Value};

use crate::util::{persisting, random_token, Fault, Persistence, Saves, Served};

use self::auth::{graph_edge, serving, token};
use self::batch::batch;
use self::control::{
    control_add_fault, control_clear_faults, control_clear_requests, control_events,
    control_expire_delta, control_lifecycle, control_page_size, control_partial,
    control_register_app, control_requests, control_restore, control_subscriptions,
};
use self::events::{
    apply_fields, create_default, create_in_calendar, decline_event, decline_event_in,
    delete_event, delete_event_in, get_event, get_event_in, list_default, list_in_calendar,
    live_event_mut, patch_event, patch_event_in, time_json,
};
use self::ids::{mix64, IdSource, SplitMix64};
use self::mailbox::{get_mailbox_settings, patch_mailbox_settings};
use self::push::{
    create_subscription, delete_subscription, get_subscription, renew_subscription, Subscription,
};
use self::sync::{delta_default, delta_in_calendar};

const DEFAULT_CALENDAR: &str = "calendar";
/// Graph's limit for Outlook event subscriptions.
pub const MAX_SUBSCRIPTION_MINUTES: i64 = 10_080;

/// The extended property the platform tags its events with, `<company>/<session>`: the same
/// id as `voyage_core::exchange::api::SESSION_TAG_ID` (the simulators do not depend on the
/// core). Only [`GraphSimulator::events_of`] reads it.
const SESSION_TAG_ID: &str = "String {6f3a2b0e-5c1d-4e8a-9b7f-2d4c6e8a1b3c} Name VoyageSessionId";

#[derive(Clone)]
pub struct GraphSimulator {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<SimState>,
    http: reqwest::Client,
    ids: IdSource,
    persistence: Persistence,
}

tokio::task_local! {
    /// The simulator serving the current request, so that an error body built deep in a
    /// handler draws its `request-id` from that simulator's [`IdSource`].
    static SERVING: GraphSimulator;
}

/// A push the simulator would have POSTed, kept instead while capture is on
/// ([`GraphSimulator::capture_notifications`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CapturedNotification {
    /// The subscription's `notificationUrl` (`lifecycleNotificationUrl` for a lifecycle
    /// notification).
    pub url: String,
    /// The JSON body Graph would POST there: `{"value": [...]}`.
    pub body: Value,
}

/// One event of a mailbox as [`GraphSimulator::events_of`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimEventView {
    pub id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// In Deleted Items (gone from every Graph route, restorable).
    pub deleted: bool,
    /// `responseStatus.response` is `declined`.
    pub declined: bool,
    pub is_cancelled: bool,
    /// The value of the platform's session tag extended property (`<company>/<session>`).
    pub session_tag: Option<String>,
    pub transaction_id: Option<String>,
    pub show_as: String,
    /// `body.content`.
    pub body: Option<String>,
}

#[derive(Default)]
struct SimState {
    apps: HashMap<(String, String), String>,
    tokens: HashMap<String, (String, DateTime<Utc>)>,
    users: HashMap<String, Mailbox>,
    subscriptions: BTreeMap<String, Subscription>,
    faults: Vec<Fault>,
    served: Vec<Served>,
    delta_epoch: u64,
    seq: u64,
    /// The largest delta page served, whatever the client prefers (Graph may choose smaller
    /// pages than asked).
    max_page_size: Option<usize>,
    /// Properties left out of delta entries of live events.
    partial_omit: Vec<String>,
    /// Keep notifications in `captured` instead of POSTing them.
    capture: bool,
    captured: Vec<CapturedNotification>,
    /// What events' `lastModifiedDateTime` is read from (the real clock unless set: see
    /// [`GraphSimulator::set_event_clock`]), and the last value stamped.
    event_clock: Option<crate::google::EventClock>,
    last_modified: Option<DateTime<Utc>>,
}

impl SimState {
    /// The next `lastModifiedDateTime`: the event clock's now, and always after the last
    /// stamp (Graph's carry seven fractional digits), so two changes at one instant of a
    /// manual clock still come in order.
    fn next_modified(&mut self) -> DateTime<Utc> {
        let now = self.event_clock.as_ref().map_or_else(Utc::now, |c| c());
        let next = match self.last_modified {
            Some(last) if now <= last => last + chrono::Duration::microseconds(1),
            _ => now,
        };
        self.last_modified = Some(next);
        next
    }
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Mailbox {
    events: BTreeMap<String, SimEvent>,
    /// `mailboxSettings.timeZone`, `None` until set (served as `UTC`).
    time_zone: Option<String>,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct SimEvent {
    calendar: String,
    json: Map<String, Value>,
    extended: Vec<Value>,
    transaction_id: Option<String>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    seq: u64,
    deleted: bool,
}

impl SimEvent {
    fn id(&self) -> &str {
        self.json
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    fn etag(&self) -> &str {
        self.json
            .get("@odata.etag")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    fn view(&self) -> SimEventView {
        let text = |k: &str| self.json.get(k).and_then(Value::as_str);
        SimEventView {
            id: self.id().to_string(),
            start: self.start,
            end: self.end,
            deleted: self.deleted,
            declined: self
                .json
                .get("responseStatus")
                .and_then(|r| r.get("response"))
                .and_then(Value::as_str)
                == Some("declined"),
            is_cancelled: self
                .json
                .get("isCancelled")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            session_tag: self
                .extended
                .iter()
                .find(|p| {
                    p.get("id")
                        .and_then(Value::as_str)
                        .is_some_and(|id| id.eq_ignore_ascii_case(SESSION_TAG_ID))
                })
                .and_then(|p| p.get("value"))
                .and_then(Value::as_str)
                .map(str::to_string),
            transaction_id: self.transaction_id.clone(),
            show_as: text("showAs").unwrap_or("busy").to_string(),
            body: self
                .json
                .get("body")
                .and_then(|b| b.get("content"))
                .and_then(Value::as_str)
                .map(str::to_string),
        }
    }
}

/// A Graph error response: `{"error": {"code", "message", "innerError"}}`.
fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let request_id = SERVING
        .try_with(|sim| sim.inner.ids.request_id())
        .unwrap_or_else(|_| random_token(12));
    let body = json!({"error": {
        "code": code,
        "message": message,
        "innerError": {"date": graph_instant(Utc::now()), "request-id": request_id},
    }});
    (status, Json(body)).into_response()
}

fn not_found() -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "ErrorItemNotFound",
        "The specified object was not found in the store.",
    )
}

fn bad_request(message: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, "ErrorInvalidRequest", message)
}

/// Graph's instant format: seven fractional digits and a `Z`.
fn graph_instant(t: DateTime<Utc>) -> String {
    format!("{}Z", graph_local(t))
}

/// Graph's `dateTime` field: local digits with seven fractional digits, no offset.
fn graph_local(t: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.timestamp_subsec_nanos() / 100
    )
}

/// Query-string instants: RFC 3339, or Graph's zone-less form read as UTC.
fn parse_instant(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| Utc.from_utc_datetime(&n))
        })
}

fn user_key(user: &str) -> String {
    user.to_ascii_lowercase()
}

impl Default for GraphSimulator {
    fn default() -> Self {
        Self::new()
    }
}

impl GraphSimulator {
    /// A simulator whose ids and tokens are random.
    pub fn new() -> Self {
        Self::with_ids(IdSource { seeded: None })
    }

    /// A deterministic simulator: every generated id, change key, iCalUId and token comes
    /// from SplitMix64 streams seeded with `seed`, so the same sequence of requests (and
    /// Rust-side calls) gives the same ids, the same listing order and the same delta pages.
    /// Times (`createdDateTime`, `lastModifiedDateTime`, token expiry) stay on the real clock,
    /// unless [`GraphSimulator::set_event_clock`] sets the one events are stamped from.
    pub fn seeded(seed: u64) -> Self {
        let request_ids = mix64(seed ^ 0x5245_5155_4553_5449); // "REQUESTI"
        Self::with_ids(IdSource {
            seeded: Some((SplitMix64::new(seed), SplitMix64::new(request_ids))),
        })
    }

    fn with_ids(ids: IdSource) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        GraphSimulator {
            inner: Arc::new(Inner {
                state: Mutex::new(SimState::default()),
                http,
                ids,
                persistence: Persistence::default(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock must not take every later request down with it.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A URL-safe token of `bytes` bytes, random or from the seeded stream.
    fn token(&self, bytes: usize) -> String {
        self.inner.ids.token(bytes)
    }

    fn new_change_key(&self) -> String {
        self.token(12)
    }

    /// Stamps events' `lastModifiedDateTime` from `clock` instead of the real clock (a
    /// simulation that runs on a manual clock, so Graph's times and the system's agree).
    pub fn set_event_clock(&self, clock: crate::google::EventClock) {
        self.state().event_clock = Some(clock);
    }

    /// Registers an app registration's client credentials for a tenant.
    pub fn register_app(&self, tenant: &str, client_id: &str, client_secret: &str) {
        self.state().apps.insert(
            (tenant.to_string(), client_id.to_string()),
            client_secret.to_string(),
        );
    }

    /// Every Graph request served so far (control routes excluded).
    pub fn served(&self) -> Vec<Served> {
        self.state().served.clone()
    }

    pub fn clear_served(&self) {
        self.state().served.clear();
    }

    /// Forgets every injected fault not yet spent.
    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    pub fn add_fault(&self, fault: Fault) {
        self.state().faults.push(fault);
    }

    /// While `on`, change and lifecycle notifications are not POSTed but kept, for
    /// [`take_notifications`](Self::take_notifications); and a new subscription's validation
    /// handshake is taken as passed without calling its notification URLs. Turning capture
    /// off keeps what was captured until taken.
    pub fn capture_notifications(&self, on: bool) {
        self.state().capture = on;
    }

    /// Drains the captured notifications, oldest first.
    pub fn take_notifications(&self) -> Vec<CapturedNotification> {
        std::mem::take(&mut self.state().captured)
    }

    /// A staff member deletes an event in Outlook: it moves to Deleted Items, like `DELETE
    /// /v1.0/users/{user}/events/{id}`. `false` when there is no such live event.
    pub fn staff_delete(&self, user: &str, id: &str) -> bool {
        self.trash(user, None, id, None).is_ok()
    }

    /// A deletion Graph never reports (microsoftgraph docs issue #11728): the event goes to
    /// Deleted Items, but no delta round lists it and no notification is sent. Only a read
    /// of the event (404) or a full listing (it is missing) shows it. `false` when there is
    /// no such live event.
    pub fn staff_delete_unreported(&self, user: &str, id: &str) -> bool {
        let mut state = self.state();
        let SimState { users, .. } = &mut *state;
        match live_event_mut(users, user, None, id) {
            Some(event) => {
                event.deleted = true;
                true
            }
            None => false,
        }
    }

    /// A staff member restores an event from Deleted Items, like `POST
    /// /_control/users/{user}/events/{id}/restore`. `false` when no such event is deleted.
    pub fn staff_restore(&self, user: &str, id: &str) -> bool {
        self.untrash(user, id).is_some()
    }

    /// A staff member moves an event, like a `PATCH` of its `start` and `end` (in UTC).
    /// `false` when there is no such live event or `end` is before `start`.
    pub fn staff_move(
        &self,
        user: &str,
        id: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> bool {
        let body = times_body(start, end);
        self.mutate(user, None, id, None, "updated", |e| apply_fields(e, &body))
            .is_ok()
    }

    /// A staff member declines an event, like `POST .../events/{id}/decline`. `false` when
    /// there is no such live event.
    pub fn staff_decline(&self, user: &str, id: &str) -> bool {
        self.decline_live(user, None, id, None).is_ok()
    }

    /// A staff member creates an event of their own (no session tag, no transaction id) in
    /// their default calendar, like `POST /v1.0/users/{user}/events`; returns its id.
    ///
    /// # Panics
    ///
    /// When `end` is before `start` (Graph refuses such an event).
    pub fn staff_create(
        &self,
        user: &str,
        subject: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        show_as: &str,
    ) -> String {
        let mut body = times_body(start, end);
        body.insert("subject".into(), json!(subject));
        body.insert("showAs".into(), json!(show_as));
        match self.create_event(user, DEFAULT_CALENDAR, &body) {
            Ok(event) => event.id().to_string(),
            Err(_) => panic!("staff_create: the end {end} is before the start {start}"),
        }
    }

    /// Serves delta pages of at most `max` events, like `POST /_control/delta/page-size`.
    pub fn max_page_size(&self, max: usize) {
        self.state().max_page_size = Some(max.max(1));
    }

    /// Delta entries of live events leave out `properties` from now on (`&[]`: whole
    /// entries again), like `POST /_control/delta/partial`.
    pub fn partial_delta(&self, properties: &[&str]) {
        self.state().partial_omit = properties.iter().map(|p| p.to_string()).collect();
    }

    /// Sets `user`'s `mailboxSettings.timeZone`, like `PATCH .../mailboxSettings`.
    pub fn set_mailbox_time_zone(&self, user: &str, zone: &str) {
        self.state()
            .users
            .entry(user_key(user))
            .or_default()
            .time_zone = Some(zone.to_string());
    }

    /// A staff member creates an all-day event over `days` days from `first`, in the zone
    /// `zone` (the mailbox's, as the test set it); returns its id. Served like Graph serves
    /// all-day events with times asked in UTC: local midnight labelled UTC.
    pub fn staff_create_all_day(
        &self,
        user: &str,
        subject: &str,
        first: chrono::NaiveDate,
        days: u32,
        zone: chrono_tz::Tz,
        show_as: &str,
    ) -> String {
        let midnight = |d: chrono::NaiveDate| {
            let local = d.and_hms_opt(0, 0, 0).unwrap_or_default();
            zone.from_local_datetime(&local)
                .earliest()
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|| Utc.from_utc_datetime(&local))
        };
        let last = first + chrono::Duration::days(i64::from(days.max(1)));
        let id = self.staff_create(user, subject, midnight(first), midnight(last), show_as);
        let mut state = self.state();
        if let Some(e) = state
            .users
            .get_mut(&user_key(user))
            .and_then(|m| m.events.get_mut(&id))
        {
            let label = |d: chrono::NaiveDate| json!({"dateTime": format!("{}T00:00:00.0000000", d.format("%Y-%m-%d")), "timeZone": "UTC"});
            e.json.insert("isAllDay".into(), json!(true));
            e.json.insert("start".into(), label(first));
            e.json.insert("end".into(), label(last));
        }
        id
    }

    /// Every event of `user`'s mailbox, deleted ones included, in every calendar, in id
    /// order (deterministic in seeded mode).
    pub fn events_of(&self, user: &str) -> Vec<SimEventView> {
        self.state()
            .users
            .get(&user_key(user))
            .map(|m| m.events.values().map(SimEvent::view).collect())
            .unwrap_or_default()
    }

    /// Keeps the simulator's state in the file at `path` (`voyage serve` gives its data
    /// directory's `simulated-graph.json`), so a restart keeps the mailboxes: first loads what
    /// an earlier run saved there, then saves after every request that may change something.
    /// Kept: the registered apps, the tokens issued, the mailboxes with their events (Deleted
    /// Items too) and settings, the subscriptions, and the counters change keys and delta
    /// tokens come from (a delta token issued before the restart still works). Not kept:
    /// faults, captured notifications, the request log.
    pub fn persist_at(&self, path: std::path::PathBuf) -> Result<(), String> {
        if let Some(durable) = Persistence::load::<GraphDurable>(&path)? {
            let (apps, tokens, users, subscriptions, delta_epoch, seq) = durable;
            let mut s = self.state();
            s.apps.extend(apps);
            s.tokens = tokens;
            s.users = users;
            s.subscriptions = subscriptions;
            s.delta_epoch = delta_epoch;
            s.seq = seq;
        }
        self.inner.persistence.set(path);
        Ok(())
    }

    pub fn router(&self) -> Router {
        let graph = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route(
                "/v1.0/users/{user}/events",
                get(list_default).post(create_default),
            )
            .route(
                "/v1.0/users/{user}/events/{id}",
                get(get_event).patch(patch_event).delete(delete_event),
            )
            .route(
                "/v1.0/users/{user}/events/{id}/decline",
                post(decline_event),
            )
            .route(
                "/v1.0/users/{user}/calendars/{calendar}/events",
                get(list_in_calendar).post(create_in_calendar),
            )
            .route(
                "/v1.0/users/{user}/calendars/{calendar}/events/{id}",
                get(get_event_in)
                    .patch(patch_event_in)
                    .delete(delete_event_in),
            )
            .route(
                "/v1.0/users/{user}/calendars/{calendar}/events/{id}/decline",
                post(decline_event_in),
            )
            .route("/v1.0/users/{user}/calendarView/delta", get(delta_default))
            .route(
                "/v1.0/users/{user}/calendars/{calendar}/calendarView/delta",
                get(delta_in_calendar),
            )
            .route(
                "/v1.0/users/{user}/mailboxSettings",
                get(get_mailbox_settings).patch(patch_mailbox_settings),
            )
            .route("/v1.0/$batch", post(batch))
            .route("/v1.0/subscriptions", post(create_subscription))
            .route(
                "/v1.0/subscriptions/{id}",
                get(get_subscription)
                    .patch(renew_subscription)
                    .delete(delete_subscription),
            )
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                graph_edge,
            ));
        let control = Router::new()
            .route("/_control/apps", post(control_register_app))
            .route(
                "/_control/faults",
                post(control_add_fault).delete(control_clear_faults),
            )
            .route(
                "/_control/requests",
                get(control_requests).delete(control_clear_requests),
            )
            .route("/_control/users/{user}/events", get(control_events))
            .route(
                "/_control/users/{user}/events/{id}/restore",
                post(control_restore),
            )
            .route("/_control/delta/expire", post(control_expire_delta))
            .route("/_control/delta/page-size", post(control_page_size))
            .route("/_control/delta/partial", post(control_partial))
            .route("/_control/subscriptions", get(control_subscriptions))
            .route(
                "/_control/subscriptions/{id}/lifecycle",
                post(control_lifecycle),
            );
        graph
            .merge(control)
            .layer(axum::middleware::from_fn_with_state(self.clone(), serving))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                persisting::<Self>,
            ))
            .with_state(self.clone())
    }
}

/// What [`GraphSimulator::persist_at`] keeps: the apps, the tokens, the mailboxes, the
/// subscriptions, the delta epoch and the change counter.
type GraphDurable = (
    Vec<((String, String), String)>,
    HashMap<String, (String, DateTime<Utc>)>,
    HashMap<String, Mailbox>,
    BTreeMap<String, push::Subscription>,
    u64,
    u64,
);

/// `{"start", "end"}` in Graph's shape, for the Rust-side helpers.
fn times_body(start: DateTime<Utc>, end: DateTime<Utc>) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("start".into(), time_json(start));
    body.insert("end".into(), time_json(end));
    body
}

/// Saves the state [`GraphSimulator::persist_at`] keeps (nothing without a file).
impl Saves for GraphSimulator {
    fn save(&self) {
        self.inner.persistence.save(|| {
            let s = self.state();
            let apps: Vec<(&(String, String), &String)> = s.apps.iter().collect();
            serde_json::to_vec(&(
                apps,
                &s.tokens,
                &s.users,
                &s.subscriptions,
                s.delta_epoch,
                s.seq,
            ))
        });
    }
}
