//! Graph's `calendarView/delta`: delta rounds over a time window, paged with `$skiptoken`
//! and resumed with `$deltatoken`, including Graph's false removals.

use std::collections::HashMap;

use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::events::render;
use super::{
    bad_request, graph_error, parse_instant, user_key, GraphSimulator, SimEvent, DEFAULT_CALENDAR,
};
use crate::util::external_root;

const DEFAULT_PAGE_SIZE: usize = 10;

/// The delta round state carried in `$skiptoken` / `$deltatoken`.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct DeltaState {
    pub(super) epoch: u64,
    pub(super) user: String,
    pub(super) calendar: String,
    pub(super) start: DateTime<Utc>,
    pub(super) end: DateTime<Utc>,
    pub(super) since: u64,
    pub(super) upto: u64,
    pub(super) offset: usize,
    /// The round started without a delta token (a full listing). Not inferred from
    /// `since == 0`: a mailbox may have had no change at all when its first round ran.
    #[serde(default)]
    pub(super) initial: bool,
}

pub(super) fn encode_token(s: &DeltaState) -> String {
    let raw = serde_json::to_vec(s).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

pub(super) fn decode_token(t: &str) -> Option<DeltaState> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()?;
    serde_json::from_slice(&raw).ok()
}

pub(super) async fn delta_default(
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

pub(super) async fn delta_in_calendar(
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
pub(super) fn delta_entry(
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
