//! Graph's event routes (create, list, get, patch, decline, delete, with or without a
//! calendar in the path), the shared write paths behind them and the Rust-side staff
//! helpers, field application, change keys and `If-Match`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::{json, Map, Value};

use super::{
    bad_request, graph_error, graph_instant, graph_local, not_found, user_key, GraphSimulator,
    Mailbox, SimEvent, SimState, DEFAULT_CALENDAR,
};

/// Reads Graph's `{"dateTime", "timeZone"}` (UTC or an IANA zone).
pub(super) fn parse_date_time_tz(v: &Value) -> Option<(DateTime<Utc>, String)> {
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

pub(super) fn time_json(t: DateTime<Utc>) -> Value {
    json!({"dateTime": graph_local(t), "timeZone": "UTC"})
}

impl GraphSimulator {
    /// Creates an event (the shared path of `POST .../events` and [`Self::staff_create`]) and
    /// notifies. Graph's idempotent create: a live event with the same `transactionId` is
    /// given back unchanged, without a notification.
    pub(super) fn create_event(
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
            let at = state.next_modified();
            stamp(&mut event.json, &self.new_change_key(), at);
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
    pub(super) fn mutate(
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
            let at = state.next_modified();
            let SimState { users, seq, .. } = &mut *state;
            let event = live_event_mut(users, user, calendar, id).ok_or_else(not_found)?;
            if if_match_fails(if_match, event) {
                return Err(conflict());
            }
            let mut next = event.clone();
            change(&mut next)?;
            stamp(&mut next.json, &self.new_change_key(), at);
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
    pub(super) fn decline_live(
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
    pub(super) fn trash(
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
    pub(super) fn untrash(&self, user: &str, id: &str) -> Option<SimEvent> {
        let restored = {
            let mut state = self.state();
            let at = state.next_modified();
            let SimState { users, seq, .. } = &mut *state;
            let event = users
                .get_mut(&user_key(user))?
                .events
                .get_mut(id)
                .filter(|e| e.deleted)?;
            *seq += 1;
            event.deleted = false;
            event.seq = *seq;
            stamp(&mut event.json, &self.new_change_key(), at);
            event.clone()
        };
        self.notify(user, &restored.calendar, id, restored.etag(), "created");
        Some(restored)
    }
}

/// A live (not deleted) event of `user`, in `calendar` when given.
pub(super) fn live_event_mut<'a>(
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

fn wants_extended(query: &HashMap<String, String>) -> bool {
    query
        .get("$expand")
        .is_some_and(|e| e.contains("singleValueExtendedProperties"))
}

pub(super) fn render(e: &SimEvent, extended: bool) -> Value {
    let mut out = e.json.clone();
    if extended && !e.extended.is_empty() {
        out.insert(
            "singleValueExtendedProperties".into(),
            Value::Array(e.extended.clone()),
        );
    }
    Value::Object(out)
}

fn stamp(json: &mut Map<String, Value>, change_key: &str, at: DateTime<Utc>) {
    json.insert("changeKey".into(), json!(change_key));
    json.insert("@odata.etag".into(), json!(format!("W/\"{change_key}\"")));
    json.insert("lastModifiedDateTime".into(), json!(graph_instant(at)));
}

/// Applies the writable fields of a create or update body to an event.
pub(super) fn apply_fields(
    event: &mut SimEvent,
    body: &Map<String, Value>,
) -> Result<(), Response> {
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

pub(super) async fn create_default(
    State(sim): State<GraphSimulator>,
    Path(user): Path<String>,
    body: Bytes,
) -> Response {
    create(sim, user, DEFAULT_CALENDAR.into(), body)
}

pub(super) async fn create_in_calendar(
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

pub(super) async fn list_default(
    State(sim): State<GraphSimulator>,
    Path(user): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list(sim, user, DEFAULT_CALENDAR.into(), q)
}

pub(super) async fn list_in_calendar(
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

pub(super) async fn get_event(
    State(sim): State<GraphSimulator>,
    Path((user, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    fetch(sim, user, None, id, q)
}

pub(super) async fn get_event_in(
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

pub(super) async fn patch_event(
    State(sim): State<GraphSimulator>,
    Path((user, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    patch(sim, user, None, id, headers, body)
}

pub(super) async fn patch_event_in(
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

pub(super) async fn decline_event(
    State(sim): State<GraphSimulator>,
    Path((user, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    decline(sim, user, None, id, headers)
}

pub(super) async fn decline_event_in(
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

pub(super) async fn delete_event(
    State(sim): State<GraphSimulator>,
    Path((user, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    remove(sim, user, None, id, headers)
}

pub(super) async fn delete_event_in(
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
