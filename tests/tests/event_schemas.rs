//! Webhook payloads against their JSON Schemas (`schemas/events/`, served by
//! `GET /v1/webhooks/event-types`): every payload real flows send (Outlook changes through the
//! Graph simulator, committed cancellations, platform dispatches, test events, a failing, a
//! recovered and a disabled endpoint) captured by a loopback receiver, and every payload the
//! booking engine builds, must validate and declare no field its schema does not name. The
//! schemas must also reject a payload missing a required field.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use voyage_tests::dates::date;

use serde_json::{json, Value};
use voyage_core::model::SessionStatus;
use voyage_tests::graph::{change, GraphWorld, CLIENT_SECRET};
use voyage_tests::receiver::{Answer, Receiver};

const WITHIN: Duration = Duration::from_secs(10);

/// The schema files as the repository holds them.
fn repository_schemas() -> BTreeMap<String, Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/events");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        out.insert(name, serde_json::from_str(&text).unwrap());
    }
    out
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("invalid schema {}: {e}", schema["title"]))
}

/// The errors of `payload` against `schema`, plus any field the schema does not declare
/// (the schemas stay open for receivers, but the system must not send undocumented fields).
fn problems(schema: &Value, payload: &Value) -> Vec<String> {
    let v = validator(schema);
    let mut out: Vec<String> = v.iter_errors(payload).map(|e| e.to_string()).collect();
    if let (Some(fields), Some(declared)) = (payload.as_object(), schema["properties"].as_object())
    {
        for k in fields.keys().filter(|k| !declared.contains_key(*k)) {
            out.push(format!("undeclared field `{k}`"));
        }
    }
    out
}

fn assert_conforms(schemas: &BTreeMap<String, Value>, event_type: &str, payload: &Value) {
    let schema = schemas
        .get(event_type)
        .unwrap_or_else(|| panic!("no schema for {event_type}"));
    let found = problems(schema, payload);
    assert!(found.is_empty(), "{event_type} {payload}: {found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_types_route_serves_the_repository_schemas() {
    let app = voyage_tests::app::TestApp::start_idle(&[]);
    let key = app.key("acme", false).await;
    let (status, body) = app
        .call("GET", "/v1/webhooks/event-types", &key, None)
        .await;
    assert_eq!(status, 200, "{body}");
    let files = repository_schemas();
    let served: Vec<&Value> = body["data"].as_array().unwrap().iter().collect();
    let names: Vec<&str> = served.iter().map(|t| t["type"].as_str().unwrap()).collect();
    assert_eq!(names, voyage_core::webhooks::EVENT_TYPES);
    assert_eq!(served.len(), files.len(), "a schema file without its type");
    for t in served {
        let name = t["type"].as_str().unwrap();
        assert_eq!(&t["schema"], &files[name], "{name} differs from its file");
        assert_eq!(t["description"], files[name]["description"]);
        assert!(
            jsonschema::meta::validate(&t["schema"]).is_ok(),
            "{name} is not a valid JSON Schema"
        );
    }
    // Without a key: 401.
    let (status, _) = app
        .call("GET", "/v1/webhooks/event-types", "nope", None)
        .await;
    assert_eq!(status, 401);
}

fn session(status: SessionStatus) -> voyage_core::model::Session {
    let mut s: voyage_core::model::Session = serde_json::from_value(json!({
        "id": "s1", "company_id": "acme", "staff_id": "ann",
        "start": format!("{d0}T09:00:00Z", d0 = date(0)), "end": format!("{d0}T10:00:00Z", d0 = date(0)),
        "time_zone": "Europe/Berlin", "title": "Consultation",
        "status": "confirmed", "updated_at": "2026-11-30T09:00:00Z"
    }))
    .unwrap();
    s.status = status;
    s.version = 3;
    s
}

/// What the booking engine emits for each of its commands.
fn engine_payloads() -> Vec<(String, Value)> {
    use voyage_core::booking::{decide, Command};
    let t = |h: i64| {
        chrono::DateTime::parse_from_rfc3339(&format!("{d0}T00:00:00Z", d0 = date(0)))
            .unwrap()
            .with_timezone(&chrono::Utc)
            + chrono::Duration::hours(h)
    };
    let confirmed = session(SessionStatus::Confirmed);
    let pending = decide(
        &confirmed,
        &Command::PendingCancellation {
            grace: chrono::Duration::minutes(10),
        },
        "exchange-inbound",
        t(1),
    )
    .unwrap();
    let mut out = vec![
        pending.clone(),
        decide(&pending, &Command::Restore, "exchange-inbound", t(2)).unwrap(),
        decide(
            &pending,
            &Command::CommitCancellation { now: t(3) },
            "exchange-inbound",
            t(3),
        )
        .unwrap(),
        decide(
            &confirmed,
            &Command::Reschedule {
                start: t(11),
                end: t(12),
            },
            "exchange-inbound",
            t(2),
        )
        .unwrap(),
        decide(&confirmed, &Command::FlagDecline, "exchange-inbound", t(2)).unwrap(),
        decide(
            &confirmed,
            &Command::RejectReschedule {
                start: t(14),
                end: t(15),
                reason: "overlaps session s2".into(),
            },
            "exchange-inbound",
            t(2),
        )
        .unwrap(),
    ]
    .into_iter()
    .map(|s| {
        let e = s.outbox.last().unwrap().clone();
        (e.event_type, Value::Object(e.payload))
    })
    .collect::<Vec<_>>();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

#[test]
fn every_payload_the_booking_engine_builds_matches_its_schema() {
    let schemas = repository_schemas();
    let built = engine_payloads();
    let types: Vec<&str> = built.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "session.cancellation_pending",
            "session.restored",
            "session.cancelled",
            "session.rescheduled",
            "session.declined",
            "session.reschedule_rejected"
        ]
    );
    for (event_type, payload) in &built {
        assert_conforms(&schemas, event_type, payload);
    }
}

#[test]
fn a_schema_rejects_a_payload_missing_a_required_field() {
    let schemas = repository_schemas();
    let mut checked = 0;
    for (event_type, payload) in engine_payloads() {
        let schema = &schemas[&event_type];
        assert!(problems(schema, &payload).is_empty());
        for field in schema["required"].as_array().unwrap() {
            let mut broken = payload.clone();
            broken
                .as_object_mut()
                .unwrap()
                .remove(field.as_str().unwrap());
            assert!(
                !validator(schema).is_valid(&broken),
                "{event_type} accepted a payload without `{field}`"
            );
            checked += 1;
        }
        // A wrong type is refused too.
        let mut broken = payload.clone();
        broken["sequence"] = json!("7");
        assert!(!validator(schema).is_valid(&broken), "{event_type}");
        // And an undeclared field is reported by this test's stricter check.
        let mut extra = payload.clone();
        extra["surprise"] = json!(1);
        assert_eq!(
            problems(schema, &extra),
            ["undeclared field `surprise`"],
            "{event_type}"
        );
    }
    assert!(checked > 30, "{checked}");
    // The health events' schemas, against the payloads the issue specifies.
    let failing = json!({"endpoint_id": "whk_1", "url": "https://example.com/h", "delivery_id": "dlv_1",
        "event_type": "session.created", "failed_at": "2026-11-29T18:00:00Z", "last_error": null});
    assert_conforms(&schemas, "webhook.endpoint.failing", &failing);
    let mut no_time = failing.clone();
    no_time.as_object_mut().unwrap().remove("failed_at");
    assert!(!validator(&schemas["webhook.endpoint.failing"]).is_valid(&no_time));
    let mut bad_time = failing.clone();
    bad_time["failed_at"] = json!("yesterday");
    assert!(!validator(&schemas["webhook.endpoint.failing"]).is_valid(&bad_time));
}

/// Every envelope the receiver got, by event type.
fn received(r: &Receiver) -> Vec<(String, Value)> {
    r.received()
        .iter()
        .map(|m| {
            let body: Value = serde_json::from_str(&m.body).unwrap();
            (body["type"].as_str().unwrap().to_string(), body)
        })
        .collect()
}

async fn wait_types(r: &Receiver, types: &[&str]) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let got: Vec<String> = received(r).into_iter().map(|(t, _)| t).collect();
        if types.iter().all(|t| got.iter().any(|g| g == t)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waiting for {types:?}; got {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn until_status(w: &GraphWorld, status: SessionStatus) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let s = w
            .app
            .local
            .deps
            .store
            .get_session("acme", "s1")
            .await
            .unwrap();
        if s.status == status {
            return;
        }
        assert!(Instant::now() < deadline, "session stays {:?}", s.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn at(hour: u32) -> Value {
    json!({"dateTime": format!("{d0}T{hour:02}:00:00.0000000", d0 = date(0)), "timeZone": "UTC"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_payload_real_flows_send_matches_its_schema() {
    let w = GraphWorld::start_running(&[
        ("VOYAGE_PENDING_CANCELLATION_GRACE", "1s"),
        ("VOYAGE_ALLOW_PRIVATE_WEBHOOK_TARGETS", "true"),
        ("VOYAGE_ALLOW_HTTP_WEBHOOKS", "true"),
    ])
    .await;
    let (key, _) = w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
    let platform = w.app.key("platform", true).await;
    let all = Receiver::start().await;
    let make = |url: String, schedule: Option<&str>| {
        let mut body = json!({"url": url, "events": ["*"]});
        if let Some(s) = schedule {
            body["retry_schedule"] = json!(s);
        }
        body
    };
    let (status, all_ep) = w
        .app
        .call(
            "POST",
            "/v1/webhooks",
            &key,
            Some(make(all.url("/all"), None)),
        )
        .await;
    assert_eq!(status, 201);
    let all_id = all_ep["id"].as_str().unwrap().to_string();

    // Outlook: delete (pending), restore, move, move onto another booking (rejected),
    // decline; then delete again and let the grace end (cancelled).
    let book = |id: &'static str, hour: u32| {
        let w = &w;
        let platform = platform.clone();
        async move {
            let (status, out) = w
                .app
                .call(
                    "POST",
                    "/v1/exchange/outbound",
                    &platform,
                    Some(change("created", "acme", id, "ann", hour)),
                )
                .await;
            assert_eq!(status, 200, "{out}");
            out["event_id"].as_str().unwrap().to_string()
        }
    };
    let event = book("s1", 9).await;
    book("s2", 16).await;
    assert_eq!(w.staff("DELETE", "ann", &event, "", None).await, 204);
    wait_types(&all, &["session.cancellation_pending"]).await;
    assert_eq!(w.restore("ann", &event).await, 200);
    wait_types(&all, &["session.restored"]).await;
    let moved = json!({"start": at(14), "end": at(15)});
    assert_eq!(w.staff("PATCH", "ann", &event, "", Some(moved)).await, 200);
    wait_types(&all, &["session.rescheduled"]).await;
    let onto = json!({"start": at(16), "end": at(17)});
    assert_eq!(w.staff("PATCH", "ann", &event, "", Some(onto)).await, 200);
    wait_types(&all, &["session.reschedule_rejected"]).await;
    let decline = json!({"sendResponse": false});
    assert_eq!(
        w.staff("POST", "ann", &event, "/decline", Some(decline))
            .await,
        202
    );
    wait_types(&all, &["session.declined"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.staff("DELETE", "ann", &event, "", None).await, 204);
    until_status(&w, SessionStatus::PendingCancellation).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    voyage_fn_scheduled::run(
        voyage_fn_scheduled::Job::CommitPendingCancellations,
        &w.app.local.deps,
    )
    .await
    .unwrap();
    wait_types(&all, &["session.cancelled"]).await;

    // The platform's own events.
    for (event_type, payload) in [
        ("session.created", json!({"session_id": "s3"})),
        ("session.updated", json!({"session_id": "s3"})),
        ("session.cancelled", json!({"session_id": "s3"})),
        (
            "connection.error",
            json!({"connection_id": "conn_1", "provider": "exchange", "staff_id": "ann", "status": "error", "last_error": "consent revoked"}),
        ),
        (
            "connection.active",
            json!({"connection_id": "conn_1", "provider": "exchange", "staff_id": "ann", "status": "active"}),
        ),
    ] {
        let (status, out) = w
            .app
            .call(
                "POST",
                "/v1/webhooks/dispatch",
                &platform,
                Some(json!({"company_id": "acme", "event": event_type, "payload": payload})),
            )
            .await;
        assert_eq!(status, 202, "{out}");
    }

    // An endpoint that fails a delivery for good (failing), then accepts (recovered); one
    // that answers 410 (disabled); a test event.
    let flaky = Receiver::start().await;
    flaky.answer_always(Answer::status(500));
    let (status, flaky_ep) = w
        .app
        .call(
            "POST",
            "/v1/webhooks",
            &key,
            Some(make(flaky.url("/flaky"), Some("1s"))),
        )
        .await;
    assert_eq!(status, 201, "{flaky_ep}");
    let flaky_id = flaky_ep["id"].as_str().unwrap().to_string();
    let (status, out) = w
        .app
        .call("POST", &format!("/v1/webhooks/{flaky_id}/test"), &key, None)
        .await;
    assert_eq!(status, 202, "{out}");
    wait_types(&all, &["webhook.endpoint.failing"]).await;
    flaky.answer_always(Answer::status(200));
    let delivery = out["deliveries"][0]["id"].as_str().unwrap().to_string();
    let (status, out) = w
        .app
        .call(
            "POST",
            &format!("/v1/webhooks/deliveries/{delivery}/redeliver"),
            &key,
            None,
        )
        .await;
    assert_eq!(status, 202, "{out}");
    wait_types(&all, &["webhook.endpoint.recovered"]).await;
    let gone = Receiver::start().await;
    gone.answer_always(Answer::status(410));
    let (status, gone_ep) = w
        .app
        .call(
            "POST",
            "/v1/webhooks",
            &key,
            Some(make(gone.url("/gone"), None)),
        )
        .await;
    assert_eq!(status, 201);
    let gone_id = gone_ep["id"].as_str().unwrap();
    let (status, _) = w
        .app
        .call("POST", &format!("/v1/webhooks/{gone_id}/test"), &key, None)
        .await;
    assert_eq!(status, 202);
    wait_types(&all, &["webhook.endpoint.disabled"]).await;

    let (status, _) = w
        .app
        .call("POST", &format!("/v1/webhooks/{all_id}/test"), &key, None)
        .await;
    assert_eq!(status, 202);
    wait_types(&all, &["webhook.test"]).await;

    // Every envelope and payload conforms (whoever received it); every event type was seen.
    let schemas = repository_schemas();
    let mut got = received(&all);
    got.extend(received(&flaky));
    got.extend(received(&gone));
    for (event_type, body) in &got {
        let envelope: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            envelope,
            ["company_id", "created_at", "data", "id", "type"],
            "{body}"
        );
        assert!(chrono::DateTime::parse_from_rfc3339(body["created_at"].as_str().unwrap()).is_ok());
        assert_conforms(&schemas, event_type, &body["data"]);
    }
    let mut seen: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    seen.sort();
    seen.dedup();
    let mut every: Vec<&str> = voyage_core::webhooks::EVENT_TYPES.to_vec();
    every.sort();
    assert_eq!(seen, every, "an event type was never sent by these flows");
}
