//! Google's `events.list`: full listings over a time window and incremental ones from a
//! sync token, paged with page tokens.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::auth::b64url;
use super::schema::check_request;
use super::{google_error, invalid, GoogleSimulator, SimEvent};

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

pub(super) async fn list_events(
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
