//! Graph's `mailboxSettings` routes: the mailbox's `timeZone`, `UTC` until set.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{bad_request, user_key, GraphSimulator};

pub(super) async fn get_mailbox_settings(
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

pub(super) async fn patch_mailbox_settings(
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
