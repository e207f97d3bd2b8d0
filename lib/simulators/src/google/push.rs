//! Google's push channels: `events.watch`, `channels.stop`, and the pushes sent to every
//! channel watching a changed calendar.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{TimeZone, Utc};
use serde_json::{json, Value};

use super::schema::check_request;
use super::{google_error, invalid, GoogleSimulator};
use crate::util::random_token;
use crate::util::Saves;

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct ChannelState {
    pub(super) id: String,
    pub(super) calendar: String,
    pub(super) address: String,
    pub(super) token: Option<String>,
    pub(super) resource_id: String,
    pub(super) expiration_ms: i64,
    pub(super) messages: u64,
}

impl GoogleSimulator {
    /// Pushes `state` to every channel watching `calendar` (in the background: none outside
    /// a Tokio runtime).
    pub(super) fn push_all(&self, calendar: &str, state: &str) {
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
    pub(super) async fn push(&self, channel_id: &str, resource_state: &str) -> Option<u16> {
        let channel = {
            let mut state = self.state();
            let c = state.channels.get_mut(channel_id)?;
            c.messages += 1;
            c.clone()
        };
        // The message number is state too: a restart must not number a push again.
        self.save();
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
}

pub(super) async fn watch(
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

pub(super) async fn stop_channel(State(sim): State<GoogleSimulator>, body: Bytes) -> Response {
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
