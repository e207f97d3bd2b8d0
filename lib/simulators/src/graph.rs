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
//!   "latency_ms"?, "count"?, "after"?}`; `DELETE /_control/faults`;
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

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::{json, Map, Value};

use crate::util::{external_root, random_token, take_fault, Fault, FaultAction, Served};

const DEFAULT_CALENDAR: &str = "calendar";
/// Graph's limit for Outlook event subscriptions.
pub const MAX_SUBSCRIPTION_MINUTES: i64 = 10_080;
const DEFAULT_PAGE_SIZE: usize = 10;
const TOKEN_LIFETIME_SECS: i64 = 3599;
/// The extended property the platform tags its events with, `<company>/<session>`: the same
/// id as `voyage_core::exchange::graph::SESSION_TAG_ID` (the simulators do not depend on the
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
}

/// Where generated ids and tokens come from: the thread RNG, or in seeded mode two SplitMix64
/// streams (one for ids, change keys and tokens, one for error `request-id`s, so that an error
/// answered along the way does not shift the ids that follow). The streams are atomics, not
/// part of [`SimState`], so they can be drawn from with or without the state lock held.
struct IdSource {
    seeded: Option<(SplitMix64, SplitMix64)>,
}

impl IdSource {
    /// A URL-safe token of `bytes` bytes.
    fn token(&self, bytes: usize) -> String {
        match &self.seeded {
            None => random_token(bytes),
            Some((ids, _)) => ids.token(bytes),
        }
    }

    /// The `request-id` of an error body.
    fn request_id(&self) -> String {
        match &self.seeded {
            None => random_token(12),
            Some((_, request_ids)) => request_ids.token(12),
        }
    }
}

/// SplitMix64 (Steele, Lea and Flood): a counter stepped by the golden gamma and mixed. Its
/// own code, not `rand`'s `StdRng`, whose algorithm may change between `rand` versions.
struct SplitMix64(AtomicU64);

impl SplitMix64 {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    fn new(seed: u64) -> Self {
        SplitMix64(AtomicU64::new(seed))
    }

    fn next(&self) -> u64 {
        let z = self
            .0
            .fetch_add(Self::GAMMA, Ordering::Relaxed)
            .wrapping_add(Self::GAMMA);
        mix64(z)
    }

    fn token(&self, bytes: usize) -> String {
        let mut buf = Vec::with_capacity(bytes + 8);
        while buf.len() < bytes {
            buf.extend_from_slice(&self.next().to_le_bytes());
        }
        buf.truncate(bytes);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
    }
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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
}

#[derive(Default)]
struct Mailbox {
    events: BTreeMap<String, SimEvent>,
    /// `mailboxSettings.timeZone`, `None` until set (served as `UTC`).
    time_zone: Option<String>,
}

#[derive(Clone)]
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
        }
    }
}

#[derive(Clone)]
struct Subscription {
    id: String,
    resource: String,
    user: String,
    calendar: Option<String>,
    change_types: Vec<String>,
    notification_url: String,
    lifecycle_url: Option<String>,
    client_state: Option<String>,
    expires: DateTime<Utc>,
    tenant: String,
}

impl Subscription {
    fn to_json(&self) -> Value {
        json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "changeType": self.change_types.join(","),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": graph_instant(self.expires),
            "applicationId": "voyage-graph-simulator",
            "creatorId": "voyage-graph-simulator",
            "latestSupportedTlsVersion": "v1_2",
        })
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

/// Reads Graph's `{"dateTime", "timeZone"}` (UTC or an IANA zone).
fn parse_date_time_tz(v: &Value) -> Option<(DateTime<Utc>, String)> {
    let dt = v.get("dateTime")?.as_str()?;
    let zone = v.get("timeZone").and_then(Value::as_str).unwrap_or("UTC");
    let naive = NaiveDateTime::parse_from_str(dt, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    let utc = if zone.eq_ignore_ascii_case("UTC") {
        Utc.from_utc_datetime(&naive)
    } else {
        let tz: chrono_tz::Tz = zone.parse().ok()?;
        tz.from_local_datetime(&naive)
            .earliest()?
            .with_timezone(&Utc)
    };
    Some((utc, zone.to_string()))
}

fn time_json(t: DateTime<Utc>) -> Value {
    json!({"dateTime": graph_local(t), "timeZone": "UTC"})
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

/// The delta round state carried in `$skiptoken` / `$deltatoken`.
#[derive(serde::Serialize, serde::Deserialize)]
struct DeltaState {
    epoch: u64,
    user: String,
    calendar: String,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    since: u64,
    upto: u64,
    offset: usize,
    /// The round started without a delta token (a full listing). Not inferred from
    /// `since == 0`: a mailbox may have had no change at all when its first round ran.
    #[serde(default)]
    initial: bool,
}

fn encode_token(s: &DeltaState) -> String {
    let raw = serde_json::to_vec(s).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_token(t: &str) -> Option<DeltaState> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()?;
    serde_json::from_slice(&raw).ok()
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
    /// Times (`createdDateTime`, `lastModifiedDateTime`, token expiry) stay on the real clock.
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
            .with_state(self.clone())
    }

    /// Creates an event (the shared path of `POST .../events` and [`Self::staff_create`]) and
    /// notifies. Graph's idempotent create: a live event with the same `transactionId` is
    /// given back unchanged, without a notification.
    fn create_event(
        &self,
        user: &str,
        calendar: &str,
        body: &Map<String, Value>,
    ) -> Result<SimEvent, Response> {
        if body.get("start").is_none() || body.get("end").is_none() {
            return Err(bad_request("start and end are required."));
        }
        let event = {
            let mut state = self.state();
            if let Some(txn) = body.get("transactionId").and_then(Value::as_str) {
                if let Some(existing) = state.users.get(&user_key(user)).and_then(|m| {
                    m.events
                        .values()
                        .find(|e| !e.deleted && e.transaction_id.as_deref() == Some(txn))
                }) {
                    return Ok(existing.clone());
                }
            }
            let now = Utc::now();
            let mut json = Map::new();
            json.insert("createdDateTime".into(), json!(graph_instant(now)));
            json.insert("isCancelled".into(), json!(false));
            json.insert("showAs".into(), json!("busy"));
            json.insert("isAllDay".into(), json!(false));
            json.insert("type".into(), json!("singleInstance"));
            json.insert(
                "responseStatus".into(),
                json!({"response": "organizer", "time": "0001-01-01T00:00:00Z"}),
            );
            let mut event = SimEvent {
                calendar: calendar.to_string(),
                json,
                extended: Vec::new(),
                transaction_id: None,
                start: now,
                end: now,
                seq: 0,
                deleted: false,
            };
            apply_fields(&mut event, body)?;
            // Ids are drawn only once the body is known to be good, so that a refused create
            // does not move the seeded stream.
            let id = format!("AAMkAGI2{}", self.token(30));
            event.json.insert("id".into(), json!(id));
            event.json.insert(
                "iCalUId".into(),
                json!(format!("040000008200E0{}", self.token(16))),
            );
            stamp(&mut event.json, &self.new_change_key());
            state.seq += 1;
            event.seq = state.seq;
            state
                .users
                .entry(user_key(user))
                .or_default()
                .events
                .insert(id, event.clone());
            event
        };
        self.notify(user, calendar, event.id(), event.etag(), "created");
        Ok(event)
    }

    /// Applies `change` to a live event, bumps its change key and sequence, and notifies.
    fn mutate(
        &self,
        user: &str,
        calendar: Option<&str>,
        id: &str,
        if_match: Option<&str>,
        change_type: &str,
        change: impl FnOnce(&mut SimEvent) -> Result<(), Response>,
    ) -> Result<SimEvent, Response> {
        let updated = {
            let mut state = self.state();
            let SimState { users, seq, .. } = &mut *state;
            let event = live_event_mut(users, user, calendar, id).ok_or_else(not_found)?;
            if if_match_fails(if_match, event) {
                return Err(conflict());
            }
            let mut next = event.clone();
            change(&mut next)?;
            stamp(&mut next.json, &self.new_change_key());
            *seq += 1;
            next.seq = *seq;
            *event = next.clone();
            next
        };
        self.notify(user, &updated.calendar, id, updated.etag(), change_type);
        Ok(updated)
    }

    /// Declines a live event (the shared path of the decline route and
    /// [`Self::staff_decline`]).
    fn decline_live(
        &self,
        user: &str,
        calendar: Option<&str>,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<SimEvent, Response> {
        self.mutate(user, calendar, id, if_match, "updated", |e| {
            e.json.insert(
                "responseStatus".into(),
                json!({"response": "declined", "time": graph_instant(Utc::now())}),
            );
            Ok(())
        })
    }

    /// Moves a live event to Deleted Items: gone from every Graph route, restorable. The
    /// shared path of `DELETE .../events/{id}` and [`Self::staff_delete`].
    fn trash(
        &self,
        user: &str,
        calendar: Option<&str>,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<SimEvent, Response> {
        let removed = {
            let mut state = self.state();
            let SimState { users, seq, .. } = &mut *state;
            let event = live_event_mut(users, user, calendar, id).ok_or_else(not_found)?;
            if if_match_fails(if_match, event) {
                return Err(conflict());
            }
            *seq += 1;
            event.deleted = true;
            event.seq = *seq;
            event.clone()
        };
        self.notify(user, &removed.calendar, id, removed.etag(), "deleted");
        Ok(removed)
    }

    /// Brings an event back from Deleted Items with a new change key (the shared path of the
    /// restore control route and [`Self::staff_restore`]); `None` when no such event is
    /// deleted.
    fn untrash(&self, user: &str, id: &str) -> Option<SimEvent> {
        let restored = {
            let mut state = self.state();
            let SimState { users, seq, .. } = &mut *state;
            let event = users
                .get_mut(&user_key(user))?
                .events
                .get_mut(id)
                .filter(|e| e.deleted)?;
            *seq += 1;
            event.deleted = false;
            event.seq = *seq;
            stamp(&mut event.json, &self.new_change_key());
            event.clone()
        };
        self.notify(user, &restored.calendar, id, restored.etag(), "created");
        Some(restored)
    }

    /// Posts (or, in capture mode, keeps) every change notification the change to `event` in
    /// `user`'s mailbox triggers.
    fn notify(&self, user: &str, calendar: &str, event_id: &str, etag: &str, change: &str) {
        let targets: Vec<CapturedNotification> = {
            let mut state = self.state();
            let targets: Vec<CapturedNotification> = state
                .subscriptions
                .values()
                .filter(|s| s.user == user_key(user))
                .filter(|s| s.calendar.as_deref().is_none_or(|c| c == calendar))
                .filter(|s| s.change_types.iter().any(|c| c == change))
                .map(|s| {
                    let resource = format!("Users/{user}/Events/{event_id}");
                    let body = json!({"value": [{
                        "subscriptionId": s.id,
                        "subscriptionExpirationDateTime": graph_instant(s.expires),
                        "changeType": change,
                        "resource": resource,
                        "resourceData": {
                            "@odata.type": "#Microsoft.Graph.Event",
                            "@odata.id": resource,
                            "@odata.etag": etag,
                            "id": event_id,
                        },
                        "clientState": s.client_state,
                        "tenantId": s.tenant,
                    }]});
                    CapturedNotification {
                        url: s.notification_url.clone(),
                        body,
                    }
                })
                .collect();
            if state.capture {
                state.captured.extend(targets);
                return;
            }
            targets
        };
        for CapturedNotification { url, body } in targets {
            // A Rust-side staff action may run outside any runtime: without one there is
            // nothing to send with (capture mode is the way for such tests).
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                tracing::warn!(%url, "graph simulator: no Tokio runtime, notification dropped");
                continue;
            };
            let http = self.inner.http.clone();
            runtime.spawn(async move {
                if let Err(e) = http.post(&url).json(&body).send().await {
                    tracing::debug!(error = %e, "graph simulator: notification not delivered");
                }
            });
        }
    }
}

/// `{"start", "end"}` in Graph's shape, for the Rust-side helpers.
fn times_body(start: DateTime<Utc>, end: DateTime<Utc>) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("start".into(), time_json(start));
    body.insert("end".into(), time_json(end));
    body
}

/// A live (not deleted) event of `user`, in `calendar` when given.
fn live_event_mut<'a>(
    users: &'a mut HashMap<String, Mailbox>,
    user: &str,
    calendar: Option<&str>,
    id: &str,
) -> Option<&'a mut SimEvent> {
    users
        .get_mut(&user_key(user))?
        .events
        .get_mut(id)
        .filter(|e| !e.deleted && calendar.is_none_or(|c| c == e.calendar))
}

/// Runs every request (Graph and control routes) with its simulator in [`SERVING`], for the
/// `request-id` of error bodies.
async fn serving(State(sim): State<GraphSimulator>, req: Request, next: Next) -> Response {
    SERVING.scope(sim, next.run(req)).await
}

/// Fault injection, request log and bearer-token check for every Graph route.
async fn graph_edge(State(sim): State<GraphSimulator>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let fault = take_fault(&mut sim.state().faults, &method, &path);
    let mut delay = None;
    let response = match fault {
        Some(FaultAction::Fail {
            status,
            retry_after,
        }) => {
            let code = match status.as_u16() {
                429 => "TooManyRequests",
                503 => "ServiceUnavailable",
                410 => "syncStateNotFound",
                _ => "InternalServerError",
            };
            let mut resp = graph_error(status, code, "injected fault");
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
            let authorised = path.ends_with("/oauth2/v2.0/token") || {
                let bearer = req
                    .headers()
                    .get("authorization")
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .map(str::to_string);
                let state = sim.state();
                bearer
                    .and_then(|b| state.tokens.get(&b).cloned())
                    .is_some_and(|(_, exp)| exp > Utc::now())
            };
            if authorised {
                next.run(req).await
            } else {
                graph_error(
                    StatusCode::UNAUTHORIZED,
                    "InvalidAuthenticationToken",
                    "Access token is empty or invalid.",
                )
            }
        }
    };
    sim.state().served.push(Served {
        method: method.to_string(),
        path,
        status: response.status().as_u16(),
    });
    // Latency is added after the work is done, like a slow network on the way back: the
    // caller may time out although the change was made (what idempotent retries are for).
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    response
}

async fn token(
    State(sim): State<GraphSimulator>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let oauth_error = |status: StatusCode, error: &str, description: &str| {
        (
            status,
            Json(json!({"error": error, "error_description": description})),
        )
            .into_response()
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
        );
    }
    if form.get("scope").map(String::as_str) != Some("https://graph.microsoft.com/.default") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS70011: The provided value for the input parameter 'scope' is not valid.",
        );
    }
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let secret = form.get("client_secret").cloned().unwrap_or_default();
    let mut state = sim.state();
    match state.apps.get(&(tenant.clone(), client_id.clone())) {
        None => oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            &format!(
                "AADSTS700016: Application with identifier '{client_id}' was not found in the directory '{tenant}'."
            ),
        ),
        Some(expected) if *expected != secret => oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        ),
        Some(_) => {
            let token = format!("simgraph.{}", sim.token(24));
            let expires = Utc::now() + chrono::Duration::seconds(TOKEN_LIFETIME_SECS);
            state.tokens.insert(token.clone(), (tenant, expires));
            Json(json!({
                "token_type": "Bearer",
                "expires_in": TOKEN_LIFETIME_SECS,
                "ext_expires_in": TOKEN_LIFETIME_SECS,
                "access_token": token,
            }))
            .into_response()
        }
    }
}

fn wants_extended(query: &HashMap<String, String>) -> bool {
    query
        .get("$expand")
        .is_some_and(|e| e.contains("singleValueExtendedProperties"))
}

fn render(e: &SimEvent, extended: bool) -> Value {
    let mut out = e.json.clone();
    if extended && !e.extended.is_empty() {
        out.insert(
            "singleValueExtendedProperties".into(),
            Value::Array(e.extended.clone()),
        );
    }
    Value::Object(out)
}

fn stamp(json: &mut Map<String, Value>, change_key: &str) {
    json.insert("changeKey".into(), json!(change_key));
    json.insert("@odata.etag".into(), json!(format!("W/\"{change_key}\"")));
    json.insert(
        "lastModifiedDateTime".into(),
        json!(graph_instant(Utc::now())),
    );
}

/// Applies the writable fields of a create or update body to an event.
fn apply_fields(event: &mut SimEvent, body: &Map<String, Value>) -> Result<(), Response> {
    for (k, v) in body {
        match k.as_str() {
            "start" | "end" => {
                let (t, zone) = parse_date_time_tz(v).ok_or_else(|| {
                    bad_request(&format!(
                        "{k}: a dateTime and a known timeZone are required"
                    ))
                })?;
                if k == "start" {
                    event.start = t;
                    event
                        .json
                        .insert("originalStartTimeZone".into(), json!(zone));
                } else {
                    event.end = t;
                    event.json.insert("originalEndTimeZone".into(), json!(zone));
                }
                event.json.insert(k.clone(), time_json(t));
            }
            "singleValueExtendedProperties" => {
                let Some(props) = v.as_array() else {
                    return Err(bad_request(
                        "singleValueExtendedProperties must be an array",
                    ));
                };
                for p in props {
                    let id = p.get("id").and_then(Value::as_str).unwrap_or_default();
                    event
                        .extended
                        .retain(|e| e.get("id").and_then(Value::as_str) != Some(id));
                    event.extended.push(p.clone());
                }
            }
            "transactionId" => {
                event.transaction_id = v.as_str().map(str::to_string);
                event.json.insert(k.clone(), v.clone());
            }
            "id"
            | "changeKey"
            | "@odata.etag"
            | "createdDateTime"
            | "lastModifiedDateTime"
            | "iCalUId" => {}
            _ => {
                event.json.insert(k.clone(), v.clone());
            }
        }
    }
    if event.end < event.start {
        return Err(bad_request("The end of the event is before its start."));
    }
    Ok(())
}

async fn create_default(
    State(sim): State<GraphSimulator>,
    Path(user): Path<String>,
    body: Bytes,
) -> Response {
    create(sim, user, DEFAULT_CALENDAR.into(), body)
}

async fn create_in_calendar(
    State(sim): State<GraphSimulator>,
    Path((user, calendar)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    create(sim, user, calendar, body)
}

fn create(sim: GraphSimulator, user: String, calendar: String, body: Bytes) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("The body must be a JSON event object.");
    };
    match sim.create_event(&user, &calendar, &body) {
        Ok(event) => (StatusCode::CREATED, Json(render(&event, false))).into_response(),
        Err(resp) => resp,
    }
}

async fn list_default(
    State(sim): State<GraphSimulator>,
    Path(user): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list(sim, user, DEFAULT_CALENDAR.into(), q)
}

async fn list_in_calendar(
    State(sim): State<GraphSimulator>,
    Path((user, calendar)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list(sim, user, calendar, q)
}

fn list(
    sim: GraphSimulator,
    user: String,
    calendar: String,
    q: HashMap<String, String>,
) -> Response {
    let state = sim.state();
    let value: Vec<Value> = state
        .users
        .get(&user_key(&user))
        .map(|m| {
            m.events
                .values()
                .filter(|e| !e.deleted && e.calendar == calendar)
                .map(|e| render(e, wants_extended(&q)))
                .collect()
        })
        .unwrap_or_default();
    Json(json!({ "value": value })).into_response()
}

async fn get_event(
    State(sim): State<GraphSimulator>,
    Path((user, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    fetch(sim, user, None, id, q)
}

async fn get_event_in(
    State(sim): State<GraphSimulator>,
    Path((user, calendar, id)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    fetch(sim, user, Some(calendar), id, q)
}

fn fetch(
    sim: GraphSimulator,
    user: String,
    calendar: Option<String>,
    id: String,
    q: HashMap<String, String>,
) -> Response {
    let state = sim.state();
    match find(&state, &user, calendar.as_deref(), &id) {
        Some(e) => Json(render(e, wants_extended(&q))).into_response(),
        None => not_found(),
    }
}

fn find<'a>(
    state: &'a SimState,
    user: &str,
    calendar: Option<&str>,
    id: &str,
) -> Option<&'a SimEvent> {
    state
        .users
        .get(&user_key(user))?
        .events
        .get(id)
        .filter(|e| !e.deleted && calendar.is_none_or(|c| c == e.calendar))
}

fn if_match(headers: &HeaderMap) -> Option<&str> {
    headers.get("if-match").and_then(|h| h.to_str().ok())
}

fn if_match_fails(if_match: Option<&str>, event: &SimEvent) -> bool {
    match if_match {
        None | Some("*") => false,
        Some(tag) => event.json.get("@odata.etag").and_then(Value::as_str) != Some(tag),
    }
}

fn conflict() -> Response {
    graph_error(
        StatusCode::PRECONDITION_FAILED,
        "ErrorIrresolvableConflict",
        "The send or update operation could not be performed because the change key passed in the request does not match the current change key for the item.",
    )
}

async fn patch_event(
    State(sim): State<GraphSimulator>,
    Path((user, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    patch(sim, user, None, id, headers, body)
}

async fn patch_event_in(
    State(sim): State<GraphSimulator>,
    Path((user, calendar, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    patch(sim, user, Some(calendar), id, headers, body)
}

fn patch(
    sim: GraphSimulator,
    user: String,
    calendar: Option<String>,
    id: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("The body must be a JSON object.");
    };
    match sim.mutate(
        &user,
        calendar.as_deref(),
        &id,
        if_match(&headers),
        "updated",
        |e| apply_fields(e, &body),
    ) {
        Ok(e) => Json(render(&e, false)).into_response(),
        Err(resp) => resp,
    }
}

async fn decline_event(
    State(sim): State<GraphSimulator>,
    Path((user, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    decline(sim, user, None, id, headers)
}

async fn decline_event_in(
    State(sim): State<GraphSimulator>,
    Path((user, calendar, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    decline(sim, user, Some(calendar), id, headers)
}

fn decline(
    sim: GraphSimulator,
    user: String,
    calendar: Option<String>,
    id: String,
    headers: HeaderMap,
) -> Response {
    match sim.decline_live(&user, calendar.as_deref(), &id, if_match(&headers)) {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(resp) => resp,
    }
}

async fn delete_event(
    State(sim): State<GraphSimulator>,
    Path((user, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    remove(sim, user, None, id, headers)
}

async fn delete_event_in(
    State(sim): State<GraphSimulator>,
    Path((user, calendar, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    remove(sim, user, Some(calendar), id, headers)
}

/// Deleting moves the event to Deleted Items: gone from every Graph route, restorable
/// through the control route.
fn remove(
    sim: GraphSimulator,
    user: String,
    calendar: Option<String>,
    id: String,
    headers: HeaderMap,
) -> Response {
    match sim.trash(&user, calendar.as_deref(), &id, if_match(&headers)) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(resp) => resp,
    }
}

async fn delta_default(
    State(sim): State<GraphSimulator>,
    Path(user): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    OriginalUri(original): OriginalUri,
    headers: HeaderMap,
) -> Response {
    let inner = format!("/v1.0/users/{user}/calendarView/delta");
    delta(
        sim,
        user,
        DEFAULT_CALENDAR.into(),
        q,
        &original,
        &inner,
        &headers,
    )
}

async fn delta_in_calendar(
    State(sim): State<GraphSimulator>,
    Path((user, calendar)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    OriginalUri(original): OriginalUri,
    headers: HeaderMap,
) -> Response {
    let inner = format!("/v1.0/users/{user}/calendars/{calendar}/calendarView/delta");
    delta(sim, user, calendar, q, &original, &inner, &headers)
}

fn page_size(headers: &HeaderMap, cap: Option<usize>) -> usize {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(','))
        .filter_map(|p| p.trim().strip_prefix("odata.maxpagesize="))
        .filter_map(|n| n.trim().parse::<usize>().ok())
        .next()
        .unwrap_or(DEFAULT_PAGE_SIZE)
        .clamp(1, cap.unwrap_or(1000))
}

/// What a delta page lists for one changed event of a round, `None` to leave it out.
///
/// A deleted event is `@removed` with reason `deleted`. So is, on purpose, an event changed
/// (moved, created, edited) outside the round's window in an incremental round: Graph's
/// documented false removal (microsoftgraph/microsoft-graph-docs #6599, #10687, #4659), which
/// a client must not take for a real deletion. In the initial round such an event is simply
/// not listed.
fn delta_entry(
    e: &SimEvent,
    window_start: DateTime<Utc>,
    window_end: DateTime<Utc>,
    initial: bool,
) -> Option<Value> {
    let id = e.json.get("id")?.clone();
    let in_window = e.start < window_end && e.end > window_start;
    if e.deleted || !in_window {
        if initial && !e.deleted {
            return None;
        }
        return Some(json!({
            "@odata.type": "#microsoft.graph.event",
            "id": id,
            "@removed": {"reason": "deleted"},
        }));
    }
    Some(render(e, false))
}

/// One page of a `calendarView` delta round. A round's changes are those with a sequence in
/// `(since, upto]`, fixed when the round starts; later changes belong to the next round.
fn delta(
    sim: GraphSimulator,
    user: String,
    calendar: String,
    q: HashMap<String, String>,
    original: &axum::http::Uri,
    inner: &str,
    headers: &HeaderMap,
) -> Response {
    let state_guard = sim.state();
    let state = &*state_guard;
    let token = q.get("$skiptoken").or_else(|| q.get("$deltatoken"));
    let round = match token {
        Some(t) => match decode_token(t) {
            Some(s) if s.epoch == state.delta_epoch && s.user == user_key(&user) => {
                if q.contains_key("$deltatoken") {
                    DeltaState {
                        since: s.upto,
                        initial: false,
                        upto: state.seq,
                        offset: 0,
                        ..s
                    }
                } else {
                    s
                }
            }
            Some(_) => {
                return graph_error(
                    StatusCode::GONE,
                    "syncStateNotFound",
                    "The sync state generation is not found.",
                )
            }
            None => return bad_request("The delta token is malformed."),
        },
        None => {
            let (Some(start), Some(end)) = (
                q.get("startDateTime").and_then(|s| parse_instant(s)),
                q.get("endDateTime").and_then(|s| parse_instant(s)),
            ) else {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "ErrorInvalidParameter",
                    "This request requires a time window specified by the query string parameters StartDateTime and EndDateTime.",
                );
            };
            DeltaState {
                epoch: state.delta_epoch,
                user: user_key(&user),
                calendar: calendar.clone(),
                start,
                end,
                since: 0,
                upto: state.seq,
                offset: 0,
                initial: true,
            }
        }
    };
    let initial = round.initial;
    let mut changed: Vec<&SimEvent> = state
        .users
        .get(&round.user)
        .map(|m| {
            m.events
                .values()
                .filter(|e| e.calendar == round.calendar)
                .filter(|e| e.seq > round.since && e.seq <= round.upto)
                .filter(|e| !(initial && e.deleted))
                .collect()
        })
        .unwrap_or_default();
    changed.sort_by_key(|e| e.seq);
    let size = page_size(headers, state.max_page_size);
    let page: Vec<Value> = changed
        .iter()
        .skip(round.offset)
        .take(size)
        .filter_map(|e| delta_entry(e, round.start, round.end, initial))
        .map(|mut entry| {
            if entry.get("@removed").is_none() {
                if let Some(fields) = entry.as_object_mut() {
                    for k in &state.partial_omit {
                        if k != "id" {
                            fields.remove(k);
                        }
                    }
                }
            }
            entry
        })
        .collect();
    let root = external_root(headers, original.path(), inner);
    let base = format!("{root}{inner}");
    let more = round.offset + size < changed.len();
    let mut body = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(event)",
        "value": page,
    });
    if more {
        let next = DeltaState {
            offset: round.offset + size,
            ..round
        };
        body["@odata.nextLink"] = json!(format!("{base}?$skiptoken={}", encode_token(&next)));
    } else {
        let done = DeltaState { offset: 0, ..round };
        body["@odata.deltaLink"] = json!(format!("{base}?$deltatoken={}", encode_token(&done)));
    }
    Json(body).into_response()
}

async fn create_subscription(
    State(sim): State<GraphSimulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("The body must be a JSON subscription object.");
    };
    let field = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(change), Some(url), Some(resource), Some(expiry)) = (
        field("changeType"),
        field("notificationUrl"),
        field("resource"),
        field("expirationDateTime"),
    ) else {
        return bad_request(
            "changeType, notificationUrl, resource and expirationDateTime are required.",
        );
    };
    let Some(expires) = parse_instant(&expiry) else {
        return bad_request("expirationDateTime is not a valid instant.");
    };
    if let Err(resp) = check_expiry(expires) {
        return resp;
    }
    let client_state = field("clientState");
    if client_state.as_ref().is_some_and(|c| c.len() > 128) {
        return bad_request("clientState must be at most 128 characters.");
    }
    let change_types: Vec<String> = change.split(',').map(|c| c.trim().to_string()).collect();
    if change_types
        .iter()
        .any(|c| !["created", "updated", "deleted"].contains(&c.as_str()))
    {
        return bad_request("changeType must list created, updated or deleted.");
    }
    let parts: Vec<&str> = resource.trim_matches('/').split('/').collect();
    let (user, calendar) = match parts.as_slice() {
        [u, user, e] if u.eq_ignore_ascii_case("users") && e.eq_ignore_ascii_case("events") => {
            (user.to_string(), None)
        }
        [u, user, c, cal, e]
            if u.eq_ignore_ascii_case("users")
                && c.eq_ignore_ascii_case("calendars")
                && e.eq_ignore_ascii_case("events") =>
        {
            (user.to_string(), Some(cal.to_string()))
        }
        _ => {
            return bad_request(
                "resource must be users/{id}/events or users/{id}/calendars/{id}/events.",
            )
        }
    };
    let lifecycle = field("lifecycleNotificationUrl");
    // In capture mode the test delivers Graph's pushes itself, so the handshake (a call to
    // the notification URLs) is taken as passed.
    let capture = sim.state().capture;
    for target in std::iter::once(&url).chain(lifecycle.iter()) {
        if capture {
            break;
        }
        if let Err(message) = handshake(&sim, target).await {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                &format!("Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request. {message}"),
            );
        }
    }
    let bearer = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let mut state = sim.state();
    let tenant = state
        .tokens
        .get(&bearer)
        .map(|(t, _)| t.clone())
        .unwrap_or_default();
    let sub = Subscription {
        id: format!("{}-{}", sim.token(6), sim.token(9)),
        resource,
        user: user_key(&user),
        calendar,
        change_types,
        notification_url: url,
        lifecycle_url: lifecycle,
        client_state,
        expires,
        tenant,
    };
    let out = sub.to_json();
    state.subscriptions.insert(sub.id.clone(), sub);
    (StatusCode::CREATED, Json(out)).into_response()
}

fn check_expiry(expires: DateTime<Utc>) -> Result<(), Response> {
    let now = Utc::now();
    if expires <= now {
        return Err(bad_request("expirationDateTime must be in the future."));
    }
    if expires > now + chrono::Duration::minutes(MAX_SUBSCRIPTION_MINUTES) {
        return Err(graph_error(
            StatusCode::BAD_REQUEST,
            "ExtensionError",
            "Subscription expiration can only be 10080 minutes in the future.",
        ));
    }
    Ok(())
}

/// Graph's validation handshake: POST `?validationToken=`; the endpoint must answer 200,
/// `text/plain`, with the decoded token as the whole body. Skipped in capture mode.
async fn handshake(sim: &GraphSimulator, url: &str) -> Result<(), String> {
    let http = &sim.inner.http;
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        sim.token(12)
    );
    let mut target = url::Url::parse(url).map_err(|e| format!("bad URL: {e}"))?;
    target
        .query_pairs_mut()
        .append_pair("validationToken", &token);
    let resp = http
        .post(target)
        .header("content-type", "text/plain; charset=utf-8")
        .send()
        .await
        .map_err(|e| format!("could not reach the endpoint: {e}"))?;
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = resp.text().await.unwrap_or_default();
    if status != reqwest::StatusCode::OK {
        return Err(format!("the endpoint answered {status}"));
    }
    if !content_type.starts_with("text/plain") {
        return Err(format!(
            "the endpoint answered content type `{content_type}`"
        ));
    }
    if text != token {
        return Err("the endpoint did not echo the validation token".into());
    }
    Ok(())
}

async fn get_subscription(State(sim): State<GraphSimulator>, Path(id): Path<String>) -> Response {
    match sim.state().subscriptions.get(&id) {
        Some(s) => Json(s.to_json()).into_response(),
        None => subscription_not_found(),
    }
}

fn subscription_not_found() -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        "The object was not found.",
    )
}

async fn renew_subscription(
    State(sim): State<GraphSimulator>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Some(expires) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b.get("expirationDateTime")?.as_str().map(str::to_string))
        .and_then(|s| parse_instant(&s))
    else {
        return bad_request("expirationDateTime is required.");
    };
    if let Err(resp) = check_expiry(expires) {
        return resp;
    }
    let mut state = sim.state();
    match state.subscriptions.get_mut(&id) {
        Some(s) => {
            s.expires = expires;
            Json(s.to_json()).into_response()
        }
        None => subscription_not_found(),
    }
}

async fn delete_subscription(
    State(sim): State<GraphSimulator>,
    Path(id): Path<String>,
) -> Response {
    match sim.state().subscriptions.remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => subscription_not_found(),
    }
}

#[derive(serde::Deserialize)]
struct AppRegistration {
    tenant_id: String,
    client_id: String,
    client_secret: String,
}

async fn control_register_app(
    State(sim): State<GraphSimulator>,
    Json(app): Json<AppRegistration>,
) -> StatusCode {
    sim.register_app(&app.tenant_id, &app.client_id, &app.client_secret);
    StatusCode::NO_CONTENT
}

async fn control_add_fault(State(sim): State<GraphSimulator>, Json(f): Json<Fault>) -> StatusCode {
    sim.add_fault(f);
    StatusCode::NO_CONTENT
}

async fn control_clear_faults(State(sim): State<GraphSimulator>) -> StatusCode {
    sim.state().faults.clear();
    StatusCode::NO_CONTENT
}

async fn control_requests(State(sim): State<GraphSimulator>) -> Json<Value> {
    Json(json!({ "value": sim.served() }))
}

async fn control_clear_requests(State(sim): State<GraphSimulator>) -> StatusCode {
    sim.clear_served();
    StatusCode::NO_CONTENT
}

async fn control_events(
    State(sim): State<GraphSimulator>,
    Path(user): Path<String>,
) -> Json<Value> {
    let state = sim.state();
    let value: Vec<Value> = state
        .users
        .get(&user_key(&user))
        .map(|m| {
            m.events
                .values()
                .map(|e| {
                    let mut v = render(e, true);
                    v["deleted"] = json!(e.deleted);
                    v["calendar"] = json!(e.calendar);
                    v
                })
                .collect()
        })
        .unwrap_or_default();
    Json(json!({ "value": value }))
}

async fn control_restore(
    State(sim): State<GraphSimulator>,
    Path((user, id)): Path<(String, String)>,
) -> Response {
    match sim.untrash(&user, &id) {
        Some(restored) => Json(render(&restored, false)).into_response(),
        None => not_found(),
    }
}

async fn control_expire_delta(State(sim): State<GraphSimulator>) -> StatusCode {
    sim.state().delta_epoch += 1;
    StatusCode::NO_CONTENT
}

async fn get_mailbox_settings(
    State(sim): State<GraphSimulator>,
    Path(user): Path<String>,
) -> Response {
    let zone = sim
        .state()
        .users
        .get(&user_key(&user))
        .and_then(|m| m.time_zone.clone())
        .unwrap_or_else(|| "UTC".into());
    Json(json!({
        "@odata.context": format!("https://graph.microsoft.com/v1.0/$metadata#users('{user}')/mailboxSettings"),
        "timeZone": zone,
        "language": {"locale": "en-US", "displayName": "English (United States)"},
        "workingHours": {"timeZone": {"name": zone}},
    }))
    .into_response()
}

async fn patch_mailbox_settings(
    State(sim): State<GraphSimulator>,
    Path(user): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(body) = serde_json::from_slice::<Map<String, Value>>(&body) else {
        return bad_request("The body is not a JSON object.");
    };
    if let Some(zone) = body.get("timeZone") {
        let Some(zone) = zone.as_str().filter(|z| !z.trim().is_empty()) else {
            return bad_request("timeZone must be a time zone name.");
        };
        sim.state()
            .users
            .entry(user_key(&user))
            .or_default()
            .time_zone = Some(zone.to_string());
    }
    get_mailbox_settings(State(sim), Path(user)).await
}

/// Most requests one `$batch` may carry (Graph's limit).
const MAX_BATCH: usize = 20;

/// `POST /v1.0/$batch`: each request is served by the simulator's own routes with the
/// batch's token, so faults, the request log and every rule apply to it as to a direct call.
async fn batch(State(sim): State<GraphSimulator>, headers: HeaderMap, body: Bytes) -> Response {
    use tower::ServiceExt;
    let Some(requests) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("requests").and_then(Value::as_array).cloned())
    else {
        return bad_request("A batch body is {\"requests\": [...]}.");
    };
    if requests.is_empty() || requests.len() > MAX_BATCH {
        return bad_request("A batch carries between 1 and 20 requests.");
    }
    let auth = headers.get("authorization").cloned();
    let mut responses = Vec::with_capacity(requests.len());
    for r in requests {
        let id = r
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let method = r.get("method").and_then(Value::as_str).unwrap_or("GET");
        let url = r.get("url").and_then(Value::as_str).unwrap_or_default();
        let Ok(method) = axum::http::Method::from_bytes(method.as_bytes()) else {
            return bad_request("A batch request has an unknown method.");
        };
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(format!("/v1.0/{}", url.trim_start_matches('/')));
        if let Some(a) = &auth {
            req = req.header("authorization", a.clone());
        }
        if let Some(h) = r.get("headers").and_then(Value::as_object) {
            for (k, v) in h {
                if let Some(v) = v.as_str() {
                    req = req.header(k.as_str(), v);
                }
            }
        }
        let body = match r.get("body") {
            Some(b) => {
                req = req.header("content-type", "application/json");
                axum::body::Body::from(b.to_string())
            }
            None => axum::body::Body::empty(),
        };
        let Ok(req) = req.body(body) else {
            return bad_request("A batch request could not be read.");
        };
        let Ok(resp) = sim.router().oneshot(req).await;
        let status = resp.status().as_u16();
        let mut out_headers = Map::new();
        if let Some(v) = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
        {
            out_headers.insert("Retry-After".into(), json!(v));
        }
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        responses.push(json!({"id": id, "status": status, "headers": out_headers, "body": body}));
    }
    Json(json!({ "responses": responses })).into_response()
}

async fn control_partial(State(sim): State<GraphSimulator>, Json(body): Json<Value>) -> StatusCode {
    let omit: Vec<String> = body
        .get("omit")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    sim.state().partial_omit = omit;
    StatusCode::NO_CONTENT
}

async fn control_page_size(
    State(sim): State<GraphSimulator>,
    Json(body): Json<Value>,
) -> StatusCode {
    sim.state().max_page_size = body
        .get("max")
        .and_then(Value::as_u64)
        .map(|n| n.max(1) as usize);
    StatusCode::NO_CONTENT
}

async fn control_subscriptions(State(sim): State<GraphSimulator>) -> Json<Value> {
    let value: Vec<Value> = sim
        .state()
        .subscriptions
        .values()
        .map(Subscription::to_json)
        .collect();
    Json(json!({ "value": value }))
}

async fn control_lifecycle(
    State(sim): State<GraphSimulator>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let event = body
        .get("lifecycleEvent")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !["reauthorizationRequired", "subscriptionRemoved", "missed"].contains(&event.as_str()) {
        return bad_request(
            "lifecycleEvent must be reauthorizationRequired, subscriptionRemoved or missed.",
        );
    }
    let sub = {
        let mut state = sim.state();
        let found = state.subscriptions.get(&id).cloned();
        if event == "subscriptionRemoved" {
            state.subscriptions.remove(&id);
        }
        found
    };
    let Some(sub) = sub else {
        return subscription_not_found();
    };
    let Some(url) = sub.lifecycle_url.clone() else {
        return bad_request("The subscription has no lifecycleNotificationUrl.");
    };
    let payload = json!({"value": [{
        "subscriptionId": sub.id,
        "subscriptionExpirationDateTime": graph_instant(sub.expires),
        "tenantId": sub.tenant,
        "clientState": sub.client_state,
        "lifecycleEvent": event,
    }]});
    {
        let mut state = sim.state();
        if state.capture {
            state
                .captured
                .push(CapturedNotification { url, body: payload });
            return (StatusCode::ACCEPTED, Json(json!({"captured": true}))).into_response();
        }
    }
    match sim.inner.http.post(&url).json(&payload).send().await {
        Ok(resp) => Json(json!({"delivered_status": resp.status().as_u16()})).into_response(),
        Err(e) => graph_error(StatusCode::BAD_GATEWAY, "DeliveryFailed", &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_times_have_seven_fractional_digits() {
        let t = Utc.with_ymd_and_hms(2026, 12, 1, 9, 30, 0).unwrap();
        assert_eq!(graph_local(t), "2026-12-01T09:30:00.0000000");
        let (back, zone) = parse_date_time_tz(
            &json!({"dateTime": "2026-12-01T10:30:00.0000000", "timeZone": "Europe/Berlin"}),
        )
        .unwrap();
        assert_eq!(back, t);
        assert_eq!(zone, "Europe/Berlin");
    }

    #[test]
    fn delta_tokens_round_trip() {
        let s = DeltaState {
            epoch: 2,
            user: "a@b.c".into(),
            calendar: "calendar".into(),
            start: Utc::now(),
            end: Utc::now(),
            since: 3,
            upto: 9,
            offset: 20,
            initial: false,
        };
        let back = decode_token(&encode_token(&s)).unwrap();
        assert_eq!(
            (back.epoch, back.since, back.upto, back.offset),
            (2, 3, 9, 20)
        );
        assert!(decode_token("not-a-token").is_none());
    }

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, h, m, 0).unwrap()
    }

    fn sim_event(start: DateTime<Utc>, end: DateTime<Utc>, deleted: bool) -> SimEvent {
        let mut json = Map::new();
        json.insert("id".into(), json!("AAMkAGI2x"));
        SimEvent {
            calendar: DEFAULT_CALENDAR.into(),
            json,
            extended: Vec::new(),
            transaction_id: None,
            start,
            end,
            seq: 1,
            deleted,
        }
    }

    #[test]
    fn out_of_window_changes_are_false_removals_in_incremental_rounds() {
        let (from, to) = (at(8, 0), at(18, 0));
        let removed = json!({
            "@odata.type": "#microsoft.graph.event",
            "id": "AAMkAGI2x",
            "@removed": {"reason": "deleted"},
        });
        let outside = sim_event(at(19, 0), at(20, 0), false);
        assert_eq!(
            delta_entry(&outside, from, to, false),
            Some(removed.clone())
        );
        assert_eq!(delta_entry(&outside, from, to, true), None);
        let deleted = sim_event(at(9, 0), at(10, 0), true);
        assert_eq!(delta_entry(&deleted, from, to, false), Some(removed));
        let inside = sim_event(at(9, 0), at(10, 0), false);
        let listed = delta_entry(&inside, from, to, false).unwrap();
        assert_eq!(listed["id"], "AAMkAGI2x");
        assert!(listed.get("@removed").is_none());
    }

    /// Serves `sim` on a local port; returns a client, the base URL and a bearer token.
    async fn serve(sim: &GraphSimulator) -> (reqwest::Client, String, String) {
        sim.register_app("tenant", "client", "secret");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = sim.router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let token: Value = http
            .post(format!("{base}/tenant/oauth2/v2.0/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                "grant_type=client_credentials&client_id=client&client_secret=secret\
                 &scope=https%3A%2F%2Fgraph.microsoft.com%2F.default",
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let bearer = token["access_token"].as_str().unwrap().to_string();
        (http, base, bearer)
    }

    async fn get_json(http: &reqwest::Client, url: &str, bearer: &str) -> Value {
        let resp = http.get(url).bearer_auth(bearer).send().await.unwrap();
        assert_eq!(resp.status(), 200, "GET {url}");
        resp.json().await.unwrap()
    }

    fn ids(page: &Value) -> Vec<String> {
        page["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    }

    #[tokio::test]
    async fn delta_reports_an_event_moved_out_of_the_window_as_deleted() {
        let sim = GraphSimulator::seeded(7);
        let (http, base, bearer) = serve(&sim).await;
        let user = "staff@example.com";
        let inside = sim.staff_create(user, "Inside", at(9, 0), at(10, 0), "busy");
        let outside = sim.staff_create(user, "Outside", at(20, 0), at(21, 0), "busy");
        let initial = get_json(
            &http,
            &format!(
                "{base}/v1.0/users/{user}/calendarView/delta\
                 ?startDateTime=2026-12-01T08:00:00Z&endDateTime=2026-12-01T18:00:00Z"
            ),
            &bearer,
        )
        .await;
        // Initial round: the out-of-window event is simply not listed.
        assert_eq!(ids(&initial), vec![inside.clone()]);
        assert!(initial["value"][0].get("@removed").is_none());

        assert!(sim.staff_move(user, &inside, at(19, 0), at(20, 0)));
        let next = initial["@odata.deltaLink"].as_str().unwrap();
        let round = get_json(&http, next, &bearer).await;
        assert_eq!(
            round["value"],
            json!([{
                "@odata.type": "#microsoft.graph.event",
                "id": inside,
                "@removed": {"reason": "deleted"},
            }])
        );
        // The event is not deleted for all that.
        let view = sim.events_of(user);
        assert!(view.iter().all(|e| !e.deleted));
        assert!(view.iter().any(|e| e.id == outside));
    }

    /// The same requests against two simulators seeded alike.
    async fn scripted_run(seed: u64) -> (Vec<Value>, String, Vec<String>) {
        let sim = GraphSimulator::seeded(seed);
        sim.capture_notifications(true);
        let (http, base, bearer) = serve(&sim).await;
        let user = "staff@example.com";
        let sub: Value = http
            .post(format!("{base}/v1.0/subscriptions"))
            .bearer_auth(&bearer)
            .json(&json!({
                "changeType": "created,updated,deleted",
                "notificationUrl": "https://unreachable.invalid/notify",
                "resource": format!("users/{user}/events"),
                "expirationDateTime": graph_instant(Utc::now() + chrono::Duration::days(1)),
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut created = Vec::new();
        for h in 9..14 {
            created.push(sim.staff_create(user, "Meeting", at(h, 0), at(h, 30), "busy"));
        }
        let resp = http
            .post(format!("{base}/v1.0/users/{user}/events"))
            .bearer_auth(&bearer)
            .json(&json!({
                "subject": "Booked",
                "start": {"dateTime": "2026-12-01T15:00:00", "timeZone": "UTC"},
                "end": {"dateTime": "2026-12-01T16:00:00", "timeZone": "UTC"},
            }))
            .send()
            .await
            .unwrap();
        let booked: Value = resp.json().await.unwrap();
        assert!(sim.staff_move(user, &created[0], at(16, 0), at(17, 0)));
        assert!(sim.staff_delete(user, &created[1]));
        let mut pages = Vec::new();
        let mut url = format!(
            "{base}/v1.0/users/{user}/calendarView/delta\
             ?startDateTime=2026-12-01T00:00:00Z&endDateTime=2026-12-02T00:00:00Z"
        );
        sim.state().max_page_size = Some(2);
        loop {
            let mut page = get_json(&http, &url, &bearer).await;
            // Times are on the real clock; everything else must repeat.
            for e in page["value"].as_array_mut().unwrap() {
                if let Some(e) = e.as_object_mut() {
                    e.remove("createdDateTime");
                    e.remove("lastModifiedDateTime");
                }
            }
            let next = page["@odata.nextLink"].as_str().map(str::to_string);
            pages.push(page["value"].clone());
            match next {
                Some(n) => url = n,
                None => break,
            }
        }
        pages.push(json!([
            booked["id"],
            booked["changeKey"],
            booked["iCalUId"]
        ]));
        let missing: Value = http
            .get(format!("{base}/v1.0/users/{user}/events/AAMkAGI2missing"))
            .bearer_auth(&bearer)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pages.push(missing["error"]["innerError"]["request-id"].clone());
        let sub_id = sub["id"].as_str().unwrap().to_string();
        let pushes: Vec<String> = sim
            .take_notifications()
            .iter()
            .map(|n| n.body["value"][0]["resourceData"]["id"].to_string())
            .collect();
        (pages, format!("{sub_id} {bearer}"), pushes)
    }

    #[tokio::test]
    async fn seeded_simulators_repeat_ids_tokens_and_delta_pages() {
        let (pages_a, tokens_a, pushes_a) = scripted_run(42).await;
        let (pages_b, tokens_b, pushes_b) = scripted_run(42).await;
        assert_eq!(pages_a, pages_b);
        assert_eq!(tokens_a, tokens_b);
        assert_eq!(pushes_a, pushes_b);
        assert_eq!(pushes_a.len(), 8);
        assert!(pages_a.len() > 2, "several delta pages: {pages_a:?}");
        let (pages_c, tokens_c, _) = scripted_run(43).await;
        assert_ne!(pages_a, pages_c);
        assert_ne!(tokens_a, tokens_c);
        // Unseeded simulators stay random.
        let (a, b) = (GraphSimulator::new(), GraphSimulator::new());
        let at9 = at(9, 0);
        assert_ne!(
            a.staff_create("u", "s", at9, at9, "busy"),
            b.staff_create("u", "s", at9, at9, "busy")
        );
    }

    #[tokio::test]
    async fn capture_keeps_pushes_and_skips_the_handshake() {
        let sim = GraphSimulator::new();
        sim.capture_notifications(true);
        let (http, base, bearer) = serve(&sim).await;
        let user = "Staff@Example.com";
        let resp = http
            .post(format!("{base}/v1.0/subscriptions"))
            .bearer_auth(&bearer)
            .json(&json!({
                "changeType": "created,updated,deleted",
                "notificationUrl": "https://unreachable.invalid/notify",
                "lifecycleNotificationUrl": "https://unreachable.invalid/lifecycle",
                "resource": format!("users/{user}/events"),
                "expirationDateTime": graph_instant(Utc::now() + chrono::Duration::days(1)),
                "clientState": "secret-state",
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let sub: Value = resp.json().await.unwrap();

        let id = sim.staff_create(user, "Dentist", at(9, 0), at(10, 0), "oof");
        assert!(sim.staff_move(user, &id, at(11, 0), at(12, 0)));
        assert!(sim.staff_decline(user, &id));
        assert!(sim.staff_delete(user, &id));
        assert!(!sim.staff_delete(user, &id));
        assert!(!sim.staff_move(user, &id, at(11, 0), at(12, 0)));
        assert!(!sim.staff_decline(user, &id));
        assert!(sim.staff_restore(user, &id));
        assert!(!sim.staff_restore(user, &id));
        assert!(!sim.staff_move(user, &id, at(12, 0), at(11, 0)));

        let pushes = sim.take_notifications();
        let kinds: Vec<&str> = pushes
            .iter()
            .map(|n| n.body["value"][0]["changeType"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["created", "updated", "updated", "deleted", "created"]
        );
        for n in &pushes {
            assert_eq!(n.url, "https://unreachable.invalid/notify");
            let item = &n.body["value"][0];
            assert_eq!(item["subscriptionId"], sub["id"]);
            assert_eq!(item["clientState"], "secret-state");
            assert_eq!(item["tenantId"], "tenant");
            assert_eq!(item["resourceData"]["id"], id.as_str());
        }
        assert!(sim.take_notifications().is_empty());

        let resp = http
            .post(format!(
                "{base}/_control/subscriptions/{}/lifecycle",
                sub["id"].as_str().unwrap()
            ))
            .json(&json!({"lifecycleEvent": "reauthorizationRequired"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let lifecycle = sim.take_notifications();
        assert_eq!(lifecycle.len(), 1);
        assert_eq!(lifecycle[0].url, "https://unreachable.invalid/lifecycle");
        assert_eq!(
            lifecycle[0].body["value"][0]["lifecycleEvent"],
            "reauthorizationRequired"
        );

        let view = sim.events_of(user);
        assert_eq!(view.len(), 1);
        let e = &view[0];
        assert_eq!((e.start, e.end), (at(11, 0), at(12, 0)));
        assert!(e.declined && !e.deleted && !e.is_cancelled);
        assert_eq!(e.show_as, "oof");
        assert_eq!(
            (e.session_tag.as_deref(), e.transaction_id.as_deref()),
            (None, None)
        );
    }

    #[tokio::test]
    async fn events_of_reads_the_session_tag_and_transaction_id() {
        let sim = GraphSimulator::seeded(1);
        let (http, base, bearer) = serve(&sim).await;
        let user = "staff@example.com";
        let body = json!({
            "subject": "Session",
            "showAs": "busy",
            "transactionId": "txn-1",
            "start": {"dateTime": "2026-12-01T10:30:00", "timeZone": "Europe/Berlin"},
            "end": {"dateTime": "2026-12-01T11:30:00", "timeZone": "Europe/Berlin"},
            "singleValueExtendedProperties": [
                {"id": SESSION_TAG_ID, "value": "acme/s-1"},
            ],
        });
        let resp = http
            .post(format!("{base}/v1.0/users/{user}/events"))
            .bearer_auth(&bearer)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let created: Value = resp.json().await.unwrap();
        let view = sim.events_of(user);
        assert_eq!(
            view,
            vec![SimEventView {
                id: created["id"].as_str().unwrap().to_string(),
                start: at(9, 30),
                end: at(10, 30),
                deleted: false,
                declined: false,
                is_cancelled: false,
                session_tag: Some("acme/s-1".into()),
                transaction_id: Some("txn-1".into()),
                show_as: "busy".into(),
            }]
        );
        // A staff delete goes through the route's code path: gone from Graph, restorable.
        assert!(sim.staff_delete(user, &view[0].id));
        let resp = http
            .get(format!("{base}/v1.0/users/{user}/events/{}", view[0].id))
            .bearer_auth(&bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        let error: Value = resp.json().await.unwrap();
        assert!(error["error"]["innerError"]["request-id"].is_string());
        assert!(sim.events_of(user)[0].deleted);
    }
}
