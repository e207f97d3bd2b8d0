//! The Google simulator's `/_control` routes: what Google has no route for (service
//! accounts, faults, the request log, sync-token expiry, calendar zones, channel pushes).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{invalid, not_found, GoogleSimulator};
use crate::util::Fault;

#[derive(serde::Deserialize)]
pub(super) struct Account {
    client_email: String,
    private_key: String,
}

pub(super) async fn control_account(
    State(sim): State<GoogleSimulator>,
    Json(a): Json<Account>,
) -> Response {
    match sim.register_account(&a.client_email, &a.private_key) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => invalid(&e),
    }
}

/// `POST /_control/faults` `{"method"?, "path_contains"?, "status"?, "retry_after"?,
/// "latency_ms"?, "count"?, "after"?, "lose_answer"?}` (see [`Fault`]): the next `count`
/// matching requests answer `status`, or are slowed by `latency_ms`; with `lose_answer`
/// they are served first and then answered `status` (503 by default).
pub(super) async fn control_fault(
    State(sim): State<GoogleSimulator>,
    Json(f): Json<Fault>,
) -> StatusCode {
    sim.add_fault(f);
    StatusCode::NO_CONTENT
}

pub(super) async fn control_clear_faults(State(sim): State<GoogleSimulator>) -> StatusCode {
    sim.state().faults.clear();
    StatusCode::NO_CONTENT
}

pub(super) async fn control_requests(State(sim): State<GoogleSimulator>) -> Json<Value> {
    Json(json!({"value": sim.requests()}))
}

pub(super) async fn control_clear_requests(State(sim): State<GoogleSimulator>) -> StatusCode {
    sim.clear_served();
    StatusCode::NO_CONTENT
}

pub(super) async fn control_expire(State(sim): State<GoogleSimulator>) -> StatusCode {
    sim.expire_sync_tokens();
    StatusCode::NO_CONTENT
}

pub(super) async fn control_calendar(
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

pub(super) async fn control_events(
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

pub(super) async fn control_channels(State(sim): State<GoogleSimulator>) -> Json<Value> {
    let value: Vec<Value> = sim
        .state()
        .channels
        .values()
        .map(|c| json!({"id": c.id, "calendar": c.calendar, "address": c.address, "resourceId": c.resource_id, "expiration": c.expiration_ms.to_string()}))
        .collect();
    Json(json!({"value": value}))
}

pub(super) async fn control_push(
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
