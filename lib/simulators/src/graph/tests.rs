//! Unit tests of the Graph simulator: time formats, delta tokens and entries, and whole
//! request sequences through its router.

use super::events::parse_date_time_tz;
use super::sync::{decode_token, delta_entry, encode_token, DeltaState};
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
        initial: false,
    };
    let back = decode_token(&encode_token(&s)).unwrap();
    assert_eq!(
        (back.epoch, back.since, back.upto, back.offset),
        (2, 3, 9, 20)
    );
    assert!(decode_token("not-a-token").is_none());
}

fn at(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, h, m, 0).unwrap()
}

fn sim_event(start: DateTime<Utc>, end: DateTime<Utc>, deleted: bool) -> SimEvent {
    let mut json = Map::new();
    json.insert("id".into(), json!("AAMkAGI2x"));
    SimEvent {
        calendar: DEFAULT_CALENDAR.into(),
        json,
        extended: Vec::new(),
        transaction_id: None,
        start,
        end,
        seq: 1,
        deleted,
    }
}

#[test]
fn out_of_window_changes_are_false_removals_in_incremental_rounds() {
    let (from, to) = (at(8, 0), at(18, 0));
    let removed = json!({
        "@odata.type": "#microsoft.graph.event",
        "id": "AAMkAGI2x",
        "@removed": {"reason": "deleted"},
    });
    let outside = sim_event(at(19, 0), at(20, 0), false);
    assert_eq!(
        delta_entry(&outside, from, to, false),
        Some(removed.clone())
    );
    assert_eq!(delta_entry(&outside, from, to, true), None);
    let deleted = sim_event(at(9, 0), at(10, 0), true);
    assert_eq!(delta_entry(&deleted, from, to, false), Some(removed));
    let inside = sim_event(at(9, 0), at(10, 0), false);
    let listed = delta_entry(&inside, from, to, false).unwrap();
    assert_eq!(listed["id"], "AAMkAGI2x");
    assert!(listed.get("@removed").is_none());
}

/// Serves `sim` on a local port; returns a client, the base URL and a bearer token.
async fn serve(sim: &GraphSimulator) -> (reqwest::Client, String, String) {
    sim.register_app("tenant", "client", "secret");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = sim.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let token: Value = http
        .post(format!("{base}/tenant/oauth2/v2.0/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            "grant_type=client_credentials&client_id=client&client_secret=secret\
             &scope=https%3A%2F%2Fgraph.microsoft.com%2F.default",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bearer = token["access_token"].as_str().unwrap().to_string();
    (http, base, bearer)
}

async fn get_json(http: &reqwest::Client, url: &str, bearer: &str) -> Value {
    let resp = http.get(url).bearer_auth(bearer).send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET {url}");
    resp.json().await.unwrap()
}

fn ids(page: &Value) -> Vec<String> {
    page["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn delta_reports_an_event_moved_out_of_the_window_as_deleted() {
    let sim = GraphSimulator::seeded(7);
    let (http, base, bearer) = serve(&sim).await;
    let user = "staff@example.com";
    let inside = sim.staff_create(user, "Inside", at(9, 0), at(10, 0), "busy");
    let outside = sim.staff_create(user, "Outside", at(20, 0), at(21, 0), "busy");
    let initial = get_json(
        &http,
        &format!(
            "{base}/v1.0/users/{user}/calendarView/delta\
             ?startDateTime=2026-12-01T08:00:00Z&endDateTime=2026-12-01T18:00:00Z"
        ),
        &bearer,
    )
    .await;
    // Initial round: the out-of-window event is simply not listed.
    assert_eq!(ids(&initial), vec![inside.clone()]);
    assert!(initial["value"][0].get("@removed").is_none());

    assert!(sim.staff_move(user, &inside, at(19, 0), at(20, 0)));
    let next = initial["@odata.deltaLink"].as_str().unwrap();
    let round = get_json(&http, next, &bearer).await;
    assert_eq!(
        round["value"],
        json!([{
            "@odata.type": "#microsoft.graph.event",
            "id": inside,
            "@removed": {"reason": "deleted"},
        }])
    );
    // The event is not deleted for all that.
    let view = sim.events_of(user);
    assert!(view.iter().all(|e| !e.deleted));
    assert!(view.iter().any(|e| e.id == outside));
}

/// The same requests against two simulators seeded alike.
async fn scripted_run(seed: u64) -> (Vec<Value>, String, Vec<String>) {
    let sim = GraphSimulator::seeded(seed);
    sim.capture_notifications(true);
    let (http, base, bearer) = serve(&sim).await;
    let user = "staff@example.com";
    let sub: Value = http
        .post(format!("{base}/v1.0/subscriptions"))
        .bearer_auth(&bearer)
        .json(&json!({
            "changeType": "created,updated,deleted",
            "notificationUrl": "https://unreachable.invalid/notify",
            "resource": format!("users/{user}/events"),
            "expirationDateTime": graph_instant(Utc::now() + chrono::Duration::days(1)),
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut created = Vec::new();
    for h in 9..14 {
        created.push(sim.staff_create(user, "Meeting", at(h, 0), at(h, 30), "busy"));
    }
    let resp = http
        .post(format!("{base}/v1.0/users/{user}/events"))
        .bearer_auth(&bearer)
        .json(&json!({
            "subject": "Booked",
            "start": {"dateTime": "2026-12-01T15:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-12-01T16:00:00", "timeZone": "UTC"},
        }))
        .send()
        .await
        .unwrap();
    let booked: Value = resp.json().await.unwrap();
    assert!(sim.staff_move(user, &created[0], at(16, 0), at(17, 0)));
    assert!(sim.staff_delete(user, &created[1]));
    let mut pages = Vec::new();
    let mut url = format!(
        "{base}/v1.0/users/{user}/calendarView/delta\
         ?startDateTime=2026-12-01T00:00:00Z&endDateTime=2026-12-02T00:00:00Z"
    );
    sim.state().max_page_size = Some(2);
    loop {
        let mut page = get_json(&http, &url, &bearer).await;
        // Times are on the real clock; everything else must repeat.
        for e in page["value"].as_array_mut().unwrap() {
            if let Some(e) = e.as_object_mut() {
                e.remove("createdDateTime");
                e.remove("lastModifiedDateTime");
            }
        }
        let next = page["@odata.nextLink"].as_str().map(str::to_string);
        pages.push(page["value"].clone());
        match next {
            Some(n) => url = n,
            None => break,
        }
    }
    pages.push(json!([
        booked["id"],
        booked["changeKey"],
        booked["iCalUId"]
    ]));
    let missing: Value = http
        .get(format!("{base}/v1.0/users/{user}/events/AAMkAGI2missing"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    pages.push(missing["error"]["innerError"]["request-id"].clone());
    let sub_id = sub["id"].as_str().unwrap().to_string();
    let pushes: Vec<String> = sim
        .take_notifications()
        .iter()
        .map(|n| n.body["value"][0]["resourceData"]["id"].to_string())
        .collect();
    (pages, format!("{sub_id} {bearer}"), pushes)
}

#[tokio::test]
async fn seeded_simulators_repeat_ids_tokens_and_delta_pages() {
    let (pages_a, tokens_a, pushes_a) = scripted_run(42).await;
    let (pages_b, tokens_b, pushes_b) = scripted_run(42).await;
    assert_eq!(pages_a, pages_b);
    assert_eq!(tokens_a, tokens_b);
    assert_eq!(pushes_a, pushes_b);
    assert_eq!(pushes_a.len(), 8);
    assert!(pages_a.len() > 2, "several delta pages: {pages_a:?}");
    let (pages_c, tokens_c, _) = scripted_run(43).await;
    assert_ne!(pages_a, pages_c);
    assert_ne!(tokens_a, tokens_c);
    // Unseeded simulators stay random.
    let (a, b) = (GraphSimulator::new(), GraphSimulator::new());
    let at9 = at(9, 0);
    assert_ne!(
        a.staff_create("u", "s", at9, at9, "busy"),
        b.staff_create("u", "s", at9, at9, "busy")
    );
}

#[tokio::test]
async fn capture_keeps_pushes_and_skips_the_handshake() {
    let sim = GraphSimulator::new();
    sim.capture_notifications(true);
    let (http, base, bearer) = serve(&sim).await;
    let user = "Staff@Example.com";
    let resp = http
        .post(format!("{base}/v1.0/subscriptions"))
        .bearer_auth(&bearer)
        .json(&json!({
            "changeType": "created,updated,deleted",
            "notificationUrl": "https://unreachable.invalid/notify",
            "lifecycleNotificationUrl": "https://unreachable.invalid/lifecycle",
            "resource": format!("users/{user}/events"),
            "expirationDateTime": graph_instant(Utc::now() + chrono::Duration::days(1)),
            "clientState": "secret-state",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let sub: Value = resp.json().await.unwrap();

    let id = sim.staff_create(user, "Dentist", at(9, 0), at(10, 0), "oof");
    assert!(sim.staff_move(user, &id, at(11, 0), at(12, 0)));
    assert!(sim.staff_decline(user, &id));
    assert!(sim.staff_delete(user, &id));
    assert!(!sim.staff_delete(user, &id));
    assert!(!sim.staff_move(user, &id, at(11, 0), at(12, 0)));
    assert!(!sim.staff_decline(user, &id));
    assert!(sim.staff_restore(user, &id));
    assert!(!sim.staff_restore(user, &id));
    assert!(!sim.staff_move(user, &id, at(12, 0), at(11, 0)));

    let pushes = sim.take_notifications();
    let kinds: Vec<&str> = pushes
        .iter()
        .map(|n| n.body["value"][0]["changeType"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["created", "updated", "updated", "deleted", "created"]
    );
    for n in &pushes {
        assert_eq!(n.url, "https://unreachable.invalid/notify");
        let item = &n.body["value"][0];
        assert_eq!(item["subscriptionId"], sub["id"]);
        assert_eq!(item["clientState"], "secret-state");
        assert_eq!(item["tenantId"], "tenant");
        assert_eq!(item["resourceData"]["id"], id.as_str());
    }
    assert!(sim.take_notifications().is_empty());

    let resp = http
        .post(format!(
            "{base}/_control/subscriptions/{}/lifecycle",
            sub["id"].as_str().unwrap()
        ))
        .json(&json!({"lifecycleEvent": "reauthorizationRequired"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let lifecycle = sim.take_notifications();
    assert_eq!(lifecycle.len(), 1);
    assert_eq!(lifecycle[0].url, "https://unreachable.invalid/lifecycle");
    assert_eq!(
        lifecycle[0].body["value"][0]["lifecycleEvent"],
        "reauthorizationRequired"
    );

    let view = sim.events_of(user);
    assert_eq!(view.len(), 1);
    let e = &view[0];
    assert_eq!((e.start, e.end), (at(11, 0), at(12, 0)));
    assert!(e.declined && !e.deleted && !e.is_cancelled);
    assert_eq!(e.show_as, "oof");
    assert_eq!(
        (e.session_tag.as_deref(), e.transaction_id.as_deref()),
        (None, None)
    );
}

#[tokio::test]
async fn events_of_reads_the_session_tag_and_transaction_id() {
    let sim = GraphSimulator::seeded(1);
    let (http, base, bearer) = serve(&sim).await;
    let user = "staff@example.com";
    let body = json!({
        "subject": "Session",
        "showAs": "busy",
        "transactionId": "txn-1",
        "start": {"dateTime": "2026-12-01T10:30:00", "timeZone": "Europe/Berlin"},
        "end": {"dateTime": "2026-12-01T11:30:00", "timeZone": "Europe/Berlin"},
        "singleValueExtendedProperties": [
            {"id": SESSION_TAG_ID, "value": "acme/s-1"},
        ],
    });
    let resp = http
        .post(format!("{base}/v1.0/users/{user}/events"))
        .bearer_auth(&bearer)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    let view = sim.events_of(user);
    assert_eq!(
        view,
        vec![SimEventView {
            id: created["id"].as_str().unwrap().to_string(),
            start: at(9, 30),
            end: at(10, 30),
            deleted: false,
            declined: false,
            is_cancelled: false,
            session_tag: Some("acme/s-1".into()),
            transaction_id: Some("txn-1".into()),
            show_as: "busy".into(),
            body: created["body"]["content"].as_str().map(str::to_string),
        }]
    );
    // A staff delete goes through the route's code path: gone from Graph, restorable.
    assert!(sim.staff_delete(user, &view[0].id));
    let resp = http
        .get(format!("{base}/v1.0/users/{user}/events/{}", view[0].id))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let error: Value = resp.json().await.unwrap();
    assert!(error["error"]["innerError"]["request-id"].is_string());
    assert!(sim.events_of(user)[0].deleted);
}

#[tokio::test]
async fn a_simulator_persisted_to_a_file_gives_its_mailboxes_to_the_next_one_on_that_file() {
    use tower::ServiceExt;
    // Arrange: a persisted simulator with an event, saved by a request that writes.
    let path = std::env::temp_dir().join(format!("sim-graph-{}.json", random_token(8)));
    let first = GraphSimulator::new();
    first.persist_at(path.clone()).unwrap();
    let id = first.staff_create("ann@acme.example", "Dentist", at(9, 0), at(10, 0), "busy");
    let req = axum::http::Request::delete("/_control/faults")
        .body(axum::body::Body::empty())
        .unwrap();
    let Ok(resp) = first.router().oneshot(req).await;
    assert!(resp.status().is_success(), "{}", resp.status());

    // Act: a new simulator on the same file (a restart).
    let next = GraphSimulator::new();
    next.persist_at(path.clone()).unwrap();

    // Assert: the same mailbox, the same event.
    let events = next.events_of("ann@acme.example");
    let _ = std::fs::remove_file(&path);
    assert_eq!(events, first.events_of("ann@acme.example"));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id, id);
}
