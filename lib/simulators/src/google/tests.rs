//! Unit tests of the Google simulator: ids, etags, soft deletes, full updates, the request
//! log, pushes and the discovery-document checks, mostly through its router.

use axum::http::HeaderMap;
use chrono::TimeZone;

use super::events::valid_event_id;
use super::*;
use tower::ServiceExt;

const ANN: &str = "ann@contoso.example";

/// A simulator with a token acting as Ann (no JWT needed in-process).
fn sim_as_ann() -> GoogleSimulator {
    let sim = GoogleSimulator::new();
    sim.state().tokens.insert(
        "t-ann".into(),
        (ANN.into(), Utc::now() + chrono::Duration::hours(1)),
    );
    sim
}

/// One Google request as Ann: the status and the JSON body (`Null` when none).
async fn call(
    sim: &GoogleSimulator,
    method: &str,
    path_and_query: &str,
    if_match: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = axum::http::Request::builder()
        .method(method)
        .uri(format!(
            "/calendar/v3/calendars/{ANN}/events{path_and_query}"
        ))
        .header("authorization", "Bearer t-ann")
        .header("content-type", "application/json");
    if let Some(etag) = if_match {
        req = req.header("if-match", etag);
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = req.body(axum::body::Body::from(body)).unwrap();
    let Ok(resp) = sim.router().oneshot(req).await;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn session(id: &str) -> Value {
    json!({"id": id, "summary": "Session", "description": "With Bea",
        "start": {"dateTime": "2030-01-01T09:00:00Z", "timeZone": "UTC"},
        "end": {"dateTime": "2030-01-01T10:00:00Z", "timeZone": "UTC"},
        "transparency": "opaque",
        "extendedProperties": {"private": {"voyageSessionId": "acme/s1"}}})
}

fn reason(body: &Value) -> &str {
    body["error"]["errors"][0]["reason"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test]
async fn client_chosen_ids_must_be_base32hex_and_a_reused_id_is_a_duplicate_even_when_cancelled() {
    let sim = sim_as_ann();
    for bad in ["abcd", "ABCDEF12", "session-1", "wxyz0123"] {
        let (status, body) = call(&sim, "POST", "", None, Some(session(bad))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(reason(&body), "invalid");
    }
    let id = "0123456789abcdefghijklmnopqrstuv";
    let (status, created) = call(&sim, "POST", "?sendUpdates=none", None, Some(session(id))).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(created["id"], id);
    let (status, body) = call(&sim, "POST", "?sendUpdates=none", None, Some(session(id))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(reason(&body), "duplicate");
    assert_eq!(
        call(&sim, "DELETE", &format!("/{id}"), None, None).await.0,
        StatusCode::NO_CONTENT
    );
    let (status, body) = call(&sim, "POST", "", None, Some(session(id))).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a cancelled event keeps its id"
    );
    assert_eq!(reason(&body), "duplicate");
    let (status, own) = call(&sim, "POST", "", None, Some(json!({"start": {"dateTime": "2030-01-02T09:00:00Z"}, "end": {"dateTime": "2030-01-02T10:00:00Z"}}))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(valid_event_id(own["id"].as_str().unwrap()), "{own}");
}

#[tokio::test]
async fn writes_honour_if_match_and_every_change_gets_a_new_etag() {
    let sim = sim_as_ann();
    let (_, created) = call(&sim, "POST", "", None, Some(session("sessionaaaa1"))).await;
    let first = created["etag"].as_str().unwrap().to_string();
    let (status, patched) = call(
        &sim,
        "PATCH",
        "/sessionaaaa1?sendUpdates=none",
        Some(&first),
        Some(json!({"summary": "Moved"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    let second = patched["etag"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    let (status, body) = call(
        &sim,
        "PUT",
        "/sessionaaaa1?sendUpdates=none",
        Some(&first),
        Some(session("sessionaaaa1")),
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(reason(&body), "conditionNotMet");
    let (status, _) = call(
        &sim,
        "PATCH",
        "/sessionaaaa1",
        Some(&first),
        Some(json!({"summary": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    let (status, _) = call(&sim, "DELETE", "/sessionaaaa1", Some(&first), None).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        sim.events_of(ANN)[0].status,
        "confirmed",
        "refused writes change nothing"
    );
    assert_eq!(sim.events_of(ANN)[0].summary.as_deref(), Some("Moved"));
    let (status, put) = call(
        &sim,
        "PUT",
        "/sessionaaaa1",
        Some(&second),
        Some(session("sessionaaaa1")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    let third = put["etag"].as_str().unwrap().to_string();
    assert_ne!(third, second);
    assert_eq!(
        call(
            &sim,
            "PATCH",
            "/sessionaaaa1",
            Some("*"),
            Some(json!({"location": "Room 1"}))
        )
        .await
        .0,
        StatusCode::OK
    );
    let (status, _) = call(&sim, "DELETE", "/sessionaaaa1", Some(&third), None).await;
    assert_eq!(
        status,
        StatusCode::PRECONDITION_FAILED,
        "the wildcard patch made a new version"
    );
    let current = sim.events_of(ANN)[0].etag.clone();
    assert_eq!(
        call(
            &sim,
            "DELETE",
            "/sessionaaaa1?sendUpdates=none",
            Some(&current),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn a_delete_is_soft_and_a_put_or_patch_with_status_confirmed_restores_it() {
    let sim = sim_as_ann();
    call(&sim, "POST", "", None, Some(session("sessionbbbb1"))).await;
    let (_, listed) = call(&sim, "GET", "?maxResults=10", None, None).await;
    let sync_token = listed["nextSyncToken"].as_str().unwrap().to_string();
    assert_eq!(
        call(&sim, "DELETE", "/sessionbbbb1?sendUpdates=none", None, None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let (status, got) = call(&sim, "GET", "/sessionbbbb1", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["status"], "cancelled");
    assert_eq!(got["summary"], "Session", "details are kept");
    let (status, body) = call(&sim, "DELETE", "/sessionbbbb1", None, None).await;
    assert_eq!((status, reason(&body)), (StatusCode::GONE, "deleted"));
    let (_, changes) = call(&sim, "GET", &format!("?syncToken={sync_token}"), None, None).await;
    assert_eq!(changes["items"][0]["status"], "cancelled", "{changes}");
    let sync_token = changes["nextSyncToken"].as_str().unwrap().to_string();

    // A full update without status leaves it cancelled; with `confirmed` it restores.
    let (status, put) = call(
        &sim,
        "PUT",
        "/sessionbbbb1",
        None,
        Some(session("sessionbbbb1")),
    )
    .await;
    assert_eq!(
        (status, put["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    let mut restore = session("sessionbbbb1");
    restore["status"] = json!("confirmed");
    let (status, put) = call(
        &sim,
        "PUT",
        "/sessionbbbb1?sendUpdates=none",
        None,
        Some(restore),
    )
    .await;
    assert_eq!(
        (status, put["status"].as_str()),
        (StatusCode::OK, Some("confirmed"))
    );
    let (_, changes) = call(&sim, "GET", &format!("?syncToken={sync_token}"), None, None).await;
    assert_eq!(changes["items"][0]["status"], "confirmed", "{changes}");

    call(&sim, "DELETE", "/sessionbbbb1", None, None).await;
    let (status, patched) = call(
        &sim,
        "PATCH",
        "/sessionbbbb1",
        None,
        Some(json!({"status": "confirmed"})),
    )
    .await;
    assert_eq!(
        (status, patched["status"].as_str()),
        (StatusCode::OK, Some("confirmed"))
    );
}

#[tokio::test]
async fn a_full_update_clears_what_it_does_not_carry_and_keeps_what_nobody_writes() {
    let sim = sim_as_ann();
    let mut invited = session("sessioncccc1");
    invited["attendees"] = json!([{"email": "bea@fabrikam.example"}]);
    invited["location"] = json!("Room 1");
    let (_, created) = call(&sim, "POST", "", None, Some(invited)).await;
    let (status, put) = call(
        &sim,
        "PUT",
        "/sessioncccc1",
        None,
        Some(session("sessioncccc1")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert!(
        put.get("attendees").is_none() && put.get("location").is_none(),
        "{put}"
    );
    assert_eq!(put["created"], created["created"]);
    assert_eq!(put["eventType"], "default");
    let mut no_end = session("sessioncccc1");
    no_end.as_object_mut().unwrap().remove("end");
    assert_eq!(
        call(&sim, "PUT", "/sessioncccc1", None, Some(no_end))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        call(
            &sim,
            "PUT",
            "/nosuchevent1",
            None,
            Some(session("nosuchevent1"))
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(
            &sim,
            "PUT",
            "/sessioncccc1?sendUpdates=never",
            None,
            Some(session("sessioncccc1"))
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn the_request_log_keeps_query_if_match_and_json_body() {
    let sim = sim_as_ann();
    call(
        &sim,
        "POST",
        "?sendUpdates=none",
        None,
        Some(session("sessiondddd1")),
    )
    .await;
    call(
        &sim,
        "DELETE",
        "/sessiondddd1?sendUpdates=none",
        Some("\"nope\""),
        None,
    )
    .await;
    let log = sim.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].param("sendUpdates").as_deref(), Some("none"));
    assert_eq!(log[0].body.as_ref().unwrap()["id"], "sessiondddd1");
    assert_eq!((log[1].method.as_str(), log[1].status), ("DELETE", 412));
    assert_eq!(log[1].if_match.as_deref(), Some("\"nope\""));
    assert_eq!(log[1].body, None);
    assert_eq!(sim.served().len(), 2);
    sim.clear_served();
    assert!(sim.requests().is_empty());
}

/// A push receiver: the `X-Goog-Resource-State` of every push, in order.
async fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let app = Router::new().route(
        "/push",
        post(move |headers: HeaderMap| {
            let kept = kept.clone();
            async move {
                let state = headers
                    .get("x-goog-resource-state")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                kept.lock().unwrap().push(state);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

async fn pushes_reach(seen: &Arc<Mutex<Vec<String>>>, n: usize) -> Vec<String> {
    for _ in 0..200 {
        if seen.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen.lock().unwrap().clone()
}

#[tokio::test]
async fn staff_changes_read_back_in_the_view_and_every_change_is_pushed_to_every_channel() {
    let sim = sim_as_ann();
    let (url, seen) = receiver().await;
    for channel in ["ch-1", "ch-2"] {
        let (status, _) = call(
            &sim,
            "POST",
            "/watch",
            None,
            Some(json!({"id": channel, "type": "web_hook", "address": url, "token": "t"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(pushes_reach(&seen, 2).await, ["sync", "sync"]);
    call(
        &sim,
        "POST",
        "?sendUpdates=none",
        None,
        Some(session("sessioneeee1")),
    )
    .await;
    let view = sim.events_of(ANN);
    assert_eq!(view.len(), 1);
    assert_eq!(view[0].session_tag.as_deref(), Some("acme/s1"));
    assert!(!view[0].declined && view[0].attendees.is_empty());
    let mut etags = vec![view[0].etag.clone()];

    assert!(sim.staff_delete(ANN, "sessioneeee1"));
    assert!(!sim.staff_delete(ANN, "sessioneeee1"), "already deleted");
    assert!(
        !sim.staff_move(ANN, "sessioneeee1", Utc::now(), Utc::now()),
        "deleted events do not move"
    );
    assert_eq!(sim.events_of(ANN)[0].status, "cancelled");
    etags.push(sim.events_of(ANN)[0].etag.clone());
    assert!(sim.staff_restore(ANN, "sessioneeee1"));
    assert!(!sim.staff_restore(ANN, "sessioneeee1"), "not deleted");
    assert_eq!(sim.events_of(ANN)[0].status, "confirmed");
    etags.push(sim.events_of(ANN)[0].etag.clone());
    let start = Utc.with_ymd_and_hms(2030, 1, 3, 14, 0, 0).unwrap();
    let end = start + chrono::Duration::hours(1);
    assert!(
        !sim.staff_move(ANN, "sessioneeee1", end, start),
        "end before start"
    );
    assert!(sim.staff_move(ANN, "sessioneeee1", start, end));
    let moved = &sim.events_of(ANN)[0];
    assert_eq!((moved.start, moved.end), (Some(start), Some(end)));
    etags.push(moved.etag.clone());
    assert!(sim.staff_decline(ANN, "sessioneeee1"));
    let declined = &sim.events_of(ANN)[0];
    assert!(declined.declined);
    assert_eq!(declined.attendees, [ANN]);
    etags.push(declined.etag.clone());
    assert!(!sim.staff_decline(ANN, "nosuchevent1"));
    let mut unique = etags.clone();
    unique.dedup();
    assert_eq!(unique, etags, "a new etag on every change");

    // One insert and four staff changes, each pushed to both channels.
    let pushes = pushes_reach(&seen, 2 + 5 * 2).await;
    assert_eq!(pushes.len(), 12, "{pushes:?}");
    assert!(pushes[2..].iter().all(|s| s == "exists"), "{pushes:?}");
}

#[test]
fn staff_decline_marks_an_existing_own_attendee_entry() {
    let sim = GoogleSimulator::new();
    let ids = sim
        .seed_events(ANN, vec![json!({"start": {"dateTime": "2030-01-01T09:00:00Z"}, "end": {"dateTime": "2030-01-01T10:00:00Z"},
            "attendees": [{"email": "org@fabrikam.example", "responseStatus": "accepted"}, {"email": ANN, "responseStatus": "accepted"}]})])
        .unwrap();
    assert!(valid_event_id(&ids[0]));
    assert!(!sim.events_of(ANN)[0].declined);
    assert!(
        sim.staff_decline(ANN, &ids[0]),
        "works outside a runtime too"
    );
    let view = &sim.events_of(ANN)[0];
    assert!(view.declined);
    assert_eq!(view.attendees.len(), 2, "no second entry for the owner");
}

#[test]
fn requests_are_checked_against_the_discovery_document() {
    let q = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>()
    };
    assert!(check_request(
        "events",
        "list",
        &q(&[("maxResults", "250"), ("singleEvents", "true")]),
        None
    )
    .is_ok());
    assert!(check_request("events", "list", &q(&[("maxResult", "250")]), None).is_err());
    assert!(check_request("events", "list", &q(&[("maxResults", "0")]), None).is_err());
    assert!(check_request("events", "list", &q(&[("singleEvents", "yes")]), None).is_err());
    assert!(check_request("events", "list", &q(&[("orderBy", "random")]), None).is_err());
    let mut body = Map::new();
    body.insert("summary".into(), json!("x"));
    assert!(check_request("events", "insert", &HashMap::new(), Some(&body)).is_ok());
    body.insert("colour".into(), json!("red"));
    assert!(check_request("events", "insert", &HashMap::new(), Some(&body)).is_err());
}

#[test]
fn event_types_and_attendees_are_checked_against_the_discovery_document() {
    let insert = |v: Value| {
        let body = v.as_object().cloned().unwrap_or_default();
        check_request("events", "insert", &HashMap::new(), Some(&body))
    };
    assert!(insert(json!({"eventType": "outOfOffice"})).is_ok());
    assert!(insert(json!({"eventType": "workingLocation"})).is_ok());
    assert!(insert(json!({"eventType": "holiday"})).is_err());
    assert!(insert(
        json!({"attendees": [{"email": "a@b.c", "responseStatus": "declined", "self": true}]})
    )
    .is_ok());
    assert!(insert(json!({"attendees": [{"email": "a@b.c", "responseStatus": "maybe"}]})).is_err());
    assert!(insert(json!({"attendees": [{"email": "a@b.c", "rsvp": "yes"}]})).is_err());
    assert!(insert(json!({"attendees": [{"email": "a@b.c", "optional": "yes"}]})).is_err());
    assert!(insert(json!({"attendees": {"email": "a@b.c"}})).is_err());
    assert!(insert(json!({"transparency": "see-through"})).is_err());
}

#[test]
fn the_calendar_owner_is_the_attendee_marked_self_and_event_types_never_change() {
    let sim = GoogleSimulator::new();
    let start = json!({"dateTime": "2030-01-01T09:00:00Z"});
    let end = json!({"dateTime": "2030-01-01T10:00:00Z"});
    let ids = sim
        .seed_events(
            "Ann@contoso.example",
            vec![json!({"start": start, "end": end, "eventType": "outOfOffice",
                "attendees": [{"email": "ann@contoso.example"}, {"email": "bob@contoso.example", "self": true}]})],
        )
        .unwrap();
    let event = sim.state().calendars["ann@contoso.example"].events[&ids[0]].clone();
    let attendees = event.json["attendees"].as_array().unwrap();
    assert_eq!(attendees[0]["self"], true);
    assert_eq!(attendees[0]["responseStatus"], "needsAction");
    assert!(attendees[1].get("self").is_none(), "self is read-only");
    let mut changed = event;
    let patch = json!({"eventType": "default"});
    let refused = apply_fields(
        &mut changed,
        patch.as_object().unwrap(),
        None,
        "ann@contoso.example",
    );
    assert_eq!(
        refused.map_err(|r| r.status()).err(),
        Some(StatusCode::BAD_REQUEST)
    );
    assert!(sim
        .seed_events(
            "ann@contoso.example",
            vec![json!({"start": start, "end": end, "eventType": "fromGmail"})]
        )
        .is_err());
}

#[tokio::test]
async fn a_simulator_persisted_to_a_file_gives_its_calendars_to_the_next_one_on_that_file() {
    // Arrange: a persisted simulator with an event, saved by a request that writes.
    let path =
        std::env::temp_dir().join(format!("sim-google-{}.json", crate::util::random_token(8)));
    let first = GoogleSimulator::new();
    first.persist_at(path.clone()).unwrap();
    first
        .seed_events(ANN, vec![json!({"start": {"dateTime": "2030-01-01T09:00:00Z"}, "end": {"dateTime": "2030-01-01T10:00:00Z"}})])
        .unwrap();
    let req = axum::http::Request::delete("/_control/faults")
        .body(axum::body::Body::empty())
        .unwrap();
    let Ok(resp) = first.router().oneshot(req).await;
    assert!(resp.status().is_success(), "{}", resp.status());

    // Act: a new simulator on the same file (a restart).
    let next = GoogleSimulator::new();
    next.persist_at(path.clone()).unwrap();

    // Assert: the same calendar, the same event.
    let events = next.events_of(ANN);
    let _ = std::fs::remove_file(&path);
    assert_eq!(events, first.events_of(ANN));
    assert_eq!(events.len(), 1);
}
