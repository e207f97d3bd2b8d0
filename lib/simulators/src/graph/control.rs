//! The Graph simulator's `/_control` routes: what Graph has no route for (app
//! registrations, faults, the request log, restores, delta settings, lifecycle pushes).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::events::render;
use super::push::{subscription_not_found, Subscription};
use super::{
    bad_request, graph_error, graph_instant, not_found, user_key, CapturedNotification,
    GraphSimulator,
};
use crate::util::Fault;

#[derive(serde::Deserialize)]
pub(super) struct AppRegistration {
    tenant_id: String,
    client_id: String,
    client_secret: String,
}

pub(super) async fn control_register_app(
    State(sim): State<GraphSimulator>,
    Json(app): Json<AppRegistration>,
) -> StatusCode {
    sim.register_app(&app.tenant_id, &app.client_id, &app.client_secret);
    StatusCode::NO_CONTENT
}

/// `POST /_control/faults` `{"method"?, "path_contains"?, "status"?, "retry_after"?,
/// "latency_ms"?, "count"?, "after"?, "lose_answer"?}` (see [`Fault`]): the next `count`
/// matching requests answer `status`, or are slowed by `latency_ms`; with `lose_answer`
/// they are served first and then answered `status` (503 by default).
pub(super) async fn control_add_fault(
    State(sim): State<GraphSimulator>,
    Json(f): Json<Fault>,
) -> StatusCode {
    sim.add_fault(f);
    StatusCode::NO_CONTENT
}

pub(super) async fn control_clear_faults(State(sim): State<GraphSimulator>) -> StatusCode {
    sim.state().faults.clear();
    StatusCode::NO_CONTENT
}

pub(super) async fn control_requests(State(sim): State<GraphSimulator>) -> Json<Value> {
    Json(json!({ "value": sim.served() }))
}

pub(super) async fn control_clear_requests(State(sim): State<GraphSimulator>) -> StatusCode {
    sim.clear_served();
    StatusCode::NO_CONTENT
}

pub(super) async fn control_events(
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

pub(super) async fn control_restore(
    State(sim): State<GraphSimulator>,
    Path((user, id)): Path<(String, String)>,
) -> Response {
    match sim.untrash(&user, &id) {
        Some(restored) => Json(render(&restored, false)).into_response(),
        None => not_found(),
    }
}

pub(super) async fn control_expire_delta(State(sim): State<GraphSimulator>) -> StatusCode {
    sim.state().delta_epoch += 1;
    StatusCode::NO_CONTENT
}

pub(super) async fn control_partial(
    State(sim): State<GraphSimulator>,
    Json(body): Json<Value>,
) -> StatusCode {
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

pub(super) async fn control_page_size(
    State(sim): State<GraphSimulator>,
    Json(body): Json<Value>,
) -> StatusCode {
    sim.state().max_page_size = body
        .get("max")
        .and_then(Value::as_u64)
        .map(|n| n.max(1) as usize);
    StatusCode::NO_CONTENT
}

pub(super) async fn control_subscriptions(State(sim): State<GraphSimulator>) -> Json<Value> {
    let value: Vec<Value> = sim
        .state()
        .subscriptions
        .values()
        .map(Subscription::to_json)
        .collect();
    Json(json!({ "value": value }))
}

pub(super) async fn control_lifecycle(
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
