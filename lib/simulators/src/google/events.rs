//! Google's event routes (insert, get, patch, update, delete): event ids, field
//! application, etags and `If-Match`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde_json::{json, Map, Value};

use super::schema::check_request;
use super::{google_error, invalid, not_found, GoogleSimulator, SimEvent};
use crate::util::random_token;

/// Whether Google accepts `id` as a client-chosen event id: 5-1024 characters of base32hex.
pub(super) fn valid_event_id(id: &str) -> bool {
    (5..=1024).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b))
}

/// A new server-chosen event id: 26 base32hex characters, as Google's.
pub(super) fn new_event_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuv";
    let mut rng = rand::thread_rng();
    (0..26)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

/// An etag without its weak marker and quotes, for comparing.
fn bare_etag(etag: &str) -> &str {
    let etag = etag.trim();
    etag.strip_prefix("W/").unwrap_or(etag).trim_matches('"')
}

/// `If-Match`: 412 `conditionNotMet` when it names another version than `event`'s.
fn check_if_match(headers: &HeaderMap, event: &SimEvent) -> Result<(), Response> {
    let Some(wanted) = headers.get("if-match") else {
        return Ok(());
    };
    let current = event
        .json
        .get("etag")
        .and_then(Value::as_str)
        .map(bare_etag)
        .unwrap_or_default();
    let matched = wanted.to_str().is_ok_and(|w| {
        w.split(',')
            .map(str::trim)
            .any(|w| w == "*" || bare_etag(w) == current)
    });
    if matched {
        Ok(())
    } else {
        Err(google_error(
            StatusCode::PRECONDITION_FAILED,
            "conditionNotMet",
            "Precondition Failed",
        ))
    }
}

/// Reads `start`/`end`: `dateTime` (RFC 3339) or an all-day `date` (midnight in `zone`).
fn event_time(v: &Value, zone: Option<&str>) -> Option<DateTime<Utc>> {
    if let Some(dt) = v.get("dateTime").and_then(Value::as_str) {
        return DateTime::parse_from_rfc3339(dt)
            .ok()
            .map(|t| t.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(v.get("date")?.as_str()?, "%Y-%m-%d").ok()?;
    let naive = day.and_hms_opt(0, 0, 0)?;
    match zone.and_then(|z| z.parse::<chrono_tz::Tz>().ok()) {
        Some(tz) => tz
            .from_local_datetime(&naive)
            .earliest()
            .map(|t| t.with_timezone(&Utc)),
        None => Some(Utc.from_utc_datetime(&naive)),
    }
}

impl SimEvent {
    /// What a full update (`PUT`) keeps of the event: the fields nobody writes.
    fn replaced(&self) -> SimEvent {
        let json = self
            .json
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k.as_str(),
                    "kind"
                        | "id"
                        | "status"
                        | "created"
                        | "eventType"
                        | "iCalUID"
                        | "etag"
                        | "updated"
                        | "creator"
                        | "organizer"
                        | "htmlLink"
                )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        SimEvent {
            json,
            seq: self.seq,
            start: None,
            end: None,
        }
    }
}

/// Applies an insert's or a patch's fields to `event` on `calendar` (whose owner is the
/// attendee marked `self`).
pub(super) fn apply_fields(
    event: &mut SimEvent,
    body: &Map<String, Value>,
    zone: Option<&str>,
    calendar: &str,
) -> Result<(), Response> {
    for (k, v) in body {
        match k.as_str() {
            "id" | "etag" | "updated" | "created" | "kind" | "htmlLink" | "iCalUID" => {}
            "eventType" => {
                let current = event.json.get("eventType").cloned();
                if current.is_some_and(|c| &c != v) {
                    return Err(google_error(
                        StatusCode::BAD_REQUEST,
                        "eventTypeRestriction",
                        "The event type cannot be changed.",
                    ));
                }
                if v.as_str() == Some("fromGmail") {
                    return Err(google_error(
                        StatusCode::BAD_REQUEST,
                        "eventTypeRestriction",
                        "Events of type fromGmail cannot be created.",
                    ));
                }
                event.json.insert(k.clone(), v.clone());
            }
            "attendees" => {
                // `self` is read-only: Google marks the calendar's own entry.
                let attendees: Vec<Value> = v
                    .as_array()
                    .map(|list| {
                        list.iter()
                            .map(|a| {
                                let mut a = a.as_object().cloned().unwrap_or_default();
                                a.remove("self");
                                let own = a
                                    .get("email")
                                    .and_then(Value::as_str)
                                    .is_some_and(|e| e.eq_ignore_ascii_case(calendar));
                                if own {
                                    a.insert("self".into(), json!(true));
                                }
                                if !a.contains_key("responseStatus") {
                                    a.insert("responseStatus".into(), json!("needsAction"));
                                }
                                Value::Object(a)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                event.json.insert(k.clone(), Value::Array(attendees));
            }
            "start" | "end" => {
                let t = event_time(v, zone)
                    .ok_or_else(|| invalid(&format!("{k}: a date or dateTime is required")))?;
                if k == "start" {
                    event.start = Some(t);
                } else {
                    event.end = Some(t);
                }
                event.json.insert(k.clone(), v.clone());
            }
            _ => {
                event.json.insert(k.clone(), v.clone());
            }
        }
    }
    if let (Some(s), Some(e)) = (event.start, event.end) {
        if e < s {
            return Err(google_error(
                StatusCode::BAD_REQUEST,
                "timeRangeEmpty",
                "The specified time range is empty.",
            ));
        }
    }
    Ok(())
}

pub(super) fn stamp(event: &mut SimEvent, seq: u64, updated: DateTime<Utc>) {
    event.seq = seq;
    event.json.insert(
        "etag".into(),
        json!(format!("\"{seq}{}\"", random_token(4))),
    );
    event
        .json
        .insert("updated".into(), json!(updated.to_rfc3339()));
}

pub(super) async fn insert_event(
    State(sim): State<GoogleSimulator>,
    Path(calendar): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return invalid("The body must be a JSON Event.");
    };
    if let Err(r) = check_request("events", "insert", &q, Some(&body)) {
        return r;
    }
    if body.get("start").is_none() || body.get("end").is_none() {
        return google_error(StatusCode::BAD_REQUEST, "required", "Missing end time.");
    }
    let key = sim.calendar_key(&calendar, &headers);
    let out = {
        let mut state = sim.state();
        state.seq += 1;
        let seq = state.seq;
        let updated = state.next_updated();
        let cal = state.calendars.entry(key.clone()).or_default();
        let id = match body.get("id") {
            None | Some(Value::Null) => new_event_id(),
            Some(Value::String(id)) if valid_event_id(id) => id.clone(),
            Some(_) => return invalid("Invalid resource id value."),
        };
        if cal.events.contains_key(&id) {
            return google_error(
                StatusCode::CONFLICT,
                "duplicate",
                "The requested identifier already exists.",
            );
        }
        let mut json = Map::new();
        json.insert("kind".into(), json!("calendar#event"));
        json.insert("id".into(), json!(id));
        json.insert("status".into(), json!("confirmed"));
        json.insert("created".into(), json!(Utc::now().to_rfc3339()));
        let mut event = SimEvent {
            json,
            seq,
            start: None,
            end: None,
        };
        if !body.contains_key("eventType") {
            event.json.insert("eventType".into(), json!("default"));
        }
        if let Err(r) = apply_fields(&mut event, &body, cal.time_zone.as_deref(), &key) {
            return r;
        }
        stamp(&mut event, seq, updated);
        let out = Value::Object(event.json.clone());
        cal.events.insert(id, event);
        out
    };
    sim.push_all(&key, "exists");
    Json(out).into_response()
}

pub(super) async fn get_event(
    State(sim): State<GoogleSimulator>,
    Path((calendar, event)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = check_request("events", "get", &q, None) {
        return r;
    }
    let key = sim.calendar_key(&calendar, &headers);
    let state = sim.state();
    match state.calendars.get(&key).and_then(|c| c.events.get(&event)) {
        Some(e) => Json(Value::Object(e.json.clone())).into_response(),
        None => not_found(),
    }
}

/// How a write changes an event: `PATCH` keeps the fields the body leaves out, `PUT`
/// replaces them (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    Patch,
    Update,
}

pub(super) async fn patch_event(
    State(sim): State<GoogleSimulator>,
    Path((calendar, event)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write_event(sim, calendar, event, q, headers, body, Write::Patch)
}

/// `PUT`: a full update (see the module docs).
pub(super) async fn update_event(
    State(sim): State<GoogleSimulator>,
    Path((calendar, event)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write_event(sim, calendar, event, q, headers, body, Write::Update)
}

/// `PATCH` or `PUT` of one event: `If-Match`, the fields, a new etag, a push.
fn write_event(
    sim: GoogleSimulator,
    calendar: String,
    event: String,
    q: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
    write: Write,
) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return invalid("The body must be a JSON Event.");
    };
    let method = match write {
        Write::Patch => "patch",
        Write::Update => "update",
    };
    if let Err(r) = check_request("events", method, &q, Some(&body)) {
        return r;
    }
    if write == Write::Update && (body.get("start").is_none() || body.get("end").is_none()) {
        return google_error(StatusCode::BAD_REQUEST, "required", "Missing end time.");
    }
    let key = sim.calendar_key(&calendar, &headers);
    let out = {
        let mut state = sim.state();
        state.seq += 1;
        let seq = state.seq;
        let updated = state.next_updated();
        let Some(cal) = state.calendars.get_mut(&key) else {
            return not_found();
        };
        let zone = cal.time_zone.clone();
        let Some(e) = cal.events.get_mut(&event) else {
            return not_found();
        };
        if let Err(r) = check_if_match(&headers, e) {
            return r;
        }
        let mut next = match write {
            Write::Patch => e.clone(),
            Write::Update => e.replaced(),
        };
        if let Err(r) = apply_fields(&mut next, &body, zone.as_deref(), &key) {
            return r;
        }
        stamp(&mut next, seq, updated);
        *e = next.clone();
        Value::Object(next.json)
    };
    sim.push_all(&key, "exists");
    Json(out).into_response()
}

pub(super) async fn delete_event(
    State(sim): State<GoogleSimulator>,
    Path((calendar, event)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = check_request("events", "delete", &q, None) {
        return r;
    }
    let key = sim.calendar_key(&calendar, &headers);
    {
        let mut state = sim.state();
        state.seq += 1;
        let seq = state.seq;
        let updated = state.next_updated();
        let Some(e) = state
            .calendars
            .get_mut(&key)
            .and_then(|c| c.events.get_mut(&event))
        else {
            return not_found();
        };
        if e.cancelled() {
            return google_error(StatusCode::GONE, "deleted", "Resource has been deleted");
        }
        if let Err(r) = check_if_match(&headers, e) {
            return r;
        }
        e.json.insert("status".into(), json!("cancelled"));
        stamp(e, seq, updated);
    }
    sim.push_all(&key, "exists");
    StatusCode::NO_CONTENT.into_response()
}
