//! A stateful Microsoft Graph simulator: the token endpoint, mailbox events, `calendarView`
//! delta and change-notification subscriptions, with Graph's shapes and error codes.
//!
//! Graph routes (all need a bearer token from the token endpoint):
//! - `POST /{tenant}/oauth2/v2.0/token` (client credentials, form-encoded);
//! - `GET|POST /v1.0/users/{user}/events`, `GET|PATCH|DELETE /v1.0/users/{user}/events/{id}`,
//!   `POST /v1.0/users/{user}/events/{id}/decline`, and the same under
//!   `/v1.0/users/{user}/calendars/{calendar}/events`;
//! - `GET /v1.0/users/{user}/calendarView/delta` (and `/calendars/{calendar}/calendarView/delta`);
//! - `POST /v1.0/subscriptions`, `GET|PATCH|DELETE /v1.0/subscriptions/{id}`.
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
//! - `GET /_control/subscriptions`; `POST /_control/subscriptions/{id}/lifecycle`
//!   `{"lifecycleEvent": "reauthorizationRequired"|"subscriptionRemoved"|"missed"}`.
//!
//! Simplifications, on purpose: one default calendar per user named `calendar`; times are
//! stored and returned in UTC (`dateTime` with seven fractional digits, `timeZone: "UTC"`)
//! with the caller's zone kept in `originalStartTimeZone`; any registered app may act on any
//! mailbox (application permissions).

// Handlers return a ready Graph error response as their `Err`: the natural shape here, and
// the size of `Response` does not matter for a test simulator.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
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

#[derive(Clone)]
pub struct GraphSimulator {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<SimState>,
    http: reqwest::Client,
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
}

#[derive(Default)]
struct Mailbox {
    events: BTreeMap<String, SimEvent>,
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
    let body = json!({"error": {
        "code": code,
        "message": message,
        "innerError": {"date": graph_instant(Utc::now()), "request-id": random_token(12)},
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
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        GraphSimulator {
            inner: Arc::new(Inner {
                state: Mutex::new(SimState::default()),
                http,
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

    pub fn add_fault(&self, fault: Fault) {
        self.state().faults.push(fault);
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
            .route("/_control/subscriptions", get(control_subscriptions))
            .route(
                "/_control/subscriptions/{id}/lifecycle",
                post(control_lifecycle),
            );
        graph.merge(control).with_state(self.clone())
    }

    /// Posts every change notification the change to `event` in `user`'s mailbox triggers.
    fn notify(&self, user: &str, calendar: &str, event_id: &str, etag: &str, change: &str) {
        let targets: Vec<(String, Value)> = {
            let state = self.state();
            state
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
                    (s.notification_url.clone(), body)
                })
                .collect()
        };
        for (url, body) in targets {
            let http = self.inner.http.clone();
            tokio::spawn(async move {
                if let Err(e) = http.post(&url).json(&body).send().await {
                    tracing::debug!(error = %e, "graph simulator: notification not delivered");
                }
            });
        }
    }
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
            let token = format!("simgraph.{}", random_token(24));
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

fn new_change_key() -> String {
    random_token(12)
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
    if body.get("start").is_none() || body.get("end").is_none() {
        return bad_request("start and end are required.");
    }
    let (event, etag) = {
        let mut state = sim.state();
        let txn = body.get("transactionId").and_then(Value::as_str);
        let mailbox = state.users.entry(user_key(&user)).or_default();
        // Graph's idempotent create: the same transactionId gives back the same event.
        if let Some(txn) = txn {
            if let Some(existing) = mailbox
                .events
                .values()
                .find(|e| !e.deleted && e.transaction_id.as_deref() == Some(txn))
            {
                return (StatusCode::CREATED, Json(render(existing, false))).into_response();
            }
        }
        let id = format!("AAMkAGI2{}", random_token(30));
        let now = Utc::now();
        let mut json = Map::new();
        json.insert("id".into(), json!(id));
        json.insert("createdDateTime".into(), json!(graph_instant(now)));
        json.insert(
            "iCalUId".into(),
            json!(format!("040000008200E0{}", random_token(16))),
        );
        json.insert("isCancelled".into(), json!(false));
        json.insert("showAs".into(), json!("busy"));
        json.insert("type".into(), json!("singleInstance"));
        json.insert(
            "responseStatus".into(),
            json!({"response": "organizer", "time": "0001-01-01T00:00:00Z"}),
        );
        let mut event = SimEvent {
            calendar: calendar.clone(),
            json,
            extended: Vec::new(),
            transaction_id: None,
            start: now,
            end: now,
            seq: 0,
            deleted: false,
        };
        if let Err(resp) = apply_fields(&mut event, &body) {
            return resp;
        }
        let key = new_change_key();
        stamp(&mut event.json, &key);
        state.seq += 1;
        event.seq = state.seq;
        let etag = format!("W/\"{key}\"");
        let rendered = event.clone();
        state
            .users
            .entry(user_key(&user))
            .or_default()
            .events
            .insert(id, event);
        (rendered, etag)
    };
    let id = event.json["id"].as_str().unwrap_or_default().to_string();
    sim.notify(&user, &calendar, &id, &etag, "created");
    (StatusCode::CREATED, Json(render(&event, false))).into_response()
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

fn if_match_fails(headers: &HeaderMap, event: &SimEvent) -> bool {
    match headers.get("if-match").and_then(|h| h.to_str().ok()) {
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

/// Applies `change` to a live event, bumps its change key, and notifies.
fn mutate(
    sim: &GraphSimulator,
    user: &str,
    calendar: Option<&str>,
    id: &str,
    headers: &HeaderMap,
    change_type: &str,
    change: impl FnOnce(&mut SimEvent) -> Result<(), Response>,
) -> Result<SimEvent, Response> {
    let updated = {
        let mut state = sim.state();
        state.seq += 1;
        let seq = state.seq;
        let event = state
            .users
            .get_mut(&user_key(user))
            .and_then(|m| m.events.get_mut(id))
            .filter(|e| !e.deleted && calendar.is_none_or(|c| c == e.calendar))
            .ok_or_else(not_found)?;
        if if_match_fails(headers, event) {
            return Err(conflict());
        }
        let mut next = event.clone();
        change(&mut next)?;
        stamp(&mut next.json, &new_change_key());
        next.seq = seq;
        *event = next.clone();
        next
    };
    let etag = updated.json["@odata.etag"].as_str().unwrap_or_default();
    sim.notify(user, &updated.calendar, id, etag, change_type);
    Ok(updated)
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
    match mutate(
        &sim,
        &user,
        calendar.as_deref(),
        &id,
        &headers,
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
    match mutate(
        &sim,
        &user,
        calendar.as_deref(),
        &id,
        &headers,
        "updated",
        |e| {
            e.json.insert(
                "responseStatus".into(),
                json!({"response": "declined", "time": graph_instant(Utc::now())}),
            );
            Ok(())
        },
    ) {
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
    let removed = {
        let mut state = sim.state();
        state.seq += 1;
        let seq = state.seq;
        let Some(event) = state
            .users
            .get_mut(&user_key(&user))
            .and_then(|m| m.events.get_mut(&id))
            .filter(|e| !e.deleted && calendar.as_deref().is_none_or(|c| c == e.calendar))
        else {
            return not_found();
        };
        if if_match_fails(&headers, event) {
            return conflict();
        }
        event.deleted = true;
        event.seq = seq;
        event.clone()
    };
    let etag = removed.json["@odata.etag"].as_str().unwrap_or_default();
    sim.notify(&user, &removed.calendar, &id, etag, "deleted");
    StatusCode::NO_CONTENT.into_response()
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
            }
        }
    };
    let initial = round.since == 0;
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
        .filter_map(|e| {
            let id = e.json.get("id")?.clone();
            let in_window = e.start < round.end && e.end > round.start;
            Some(if e.deleted {
                json!({"@odata.type": "#microsoft.graph.event", "id": id, "@removed": {"reason": "deleted"}})
            } else if !in_window {
                if initial {
                    return None;
                }
                json!({"@odata.type": "#microsoft.graph.event", "id": id, "@removed": {"reason": "changed"}})
            } else {
                render(e, false)
            })
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
    for target in std::iter::once(&url).chain(lifecycle.iter()) {
        if let Err(message) = handshake(&sim.inner.http, target).await {
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
        id: format!("{}-{}", random_token(6), random_token(9)),
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
/// `text/plain`, with the decoded token as the whole body.
async fn handshake(http: &reqwest::Client, url: &str) -> Result<(), String> {
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        random_token(12)
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
    let restored = {
        let mut state = sim.state();
        state.seq += 1;
        let seq = state.seq;
        let Some(event) = state
            .users
            .get_mut(&user_key(&user))
            .and_then(|m| m.events.get_mut(&id))
            .filter(|e| e.deleted)
        else {
            return not_found();
        };
        event.deleted = false;
        event.seq = seq;
        stamp(&mut event.json, &new_change_key());
        event.clone()
    };
    let etag = restored.json["@odata.etag"].as_str().unwrap_or_default();
    sim.notify(&user, &restored.calendar, &id, etag, "created");
    Json(render(&restored, false)).into_response()
}

async fn control_expire_delta(State(sim): State<GraphSimulator>) -> StatusCode {
    sim.state().delta_epoch += 1;
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
        };
        let back = decode_token(&encode_token(&s)).unwrap();
        assert_eq!(
            (back.epoch, back.since, back.upto, back.offset),
            (2, 3, 9, 20)
        );
        assert!(decode_token("not-a-token").is_none());
    }
}
