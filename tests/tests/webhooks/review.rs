//! Adversarial review of the webhook work of issue 14: each test names the finding it shows.
//! They fail while the finding stands.

use super::*;
use std::sync::Arc;

/// An endpoint with no retries (a 5xx fails the delivery at once); answers its id.
async fn no_retry_endpoint(app: &TestApp, key: &str, url: &str, events: Value) -> String {
    let (status, ep) = app
        .call(
            "POST",
            "/v1/webhooks",
            key,
            Some(json!({"url": url, "events": events, "retry_schedule": ""})),
        )
        .await;
    assert_eq!(status, 201, "{ep}");
    ep["id"].as_str().unwrap().to_string()
}

/// Waits until the endpoint has no pending delivery.
async fn quiet(app: &TestApp, key: &str, endpoint: &str) {
    for _ in 0..400 {
        let (_, page) = app
            .call(
                "GET",
                &format!("/v1/webhooks/{endpoint}/deliveries?status=pending"),
                key,
                None,
            )
            .await;
        if page["data"].as_array().is_some_and(|d| d.is_empty()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("endpoint {endpoint} still has pending deliveries");
}

async fn recover(app: &TestApp, key: &str, endpoint: &str, window: Value) -> Value {
    let (status, answer) = app
        .call(
            "POST",
            &format!("/v1/webhooks/{endpoint}/recover"),
            key,
            Some(window),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    answer
}

fn body_of(r: &voyage_tests::receiver::Received) -> Value {
    serde_json::from_str(&r.body).unwrap()
}

// FINDING (recover not idempotent / re-sends delivered events): a recovery re-reads every
// original that is still `failed`, even when an earlier recovery already delivered a copy of
// it. A tenant repeating a recover call (a client retry after a timeout, or "recover since
// yesterday" twice) gets every already-recovered event again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_second_recovery_resends_events_the_first_one_delivered() {
    let receiver = Receiver::start().await;
    let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    let id = no_retry_endpoint(&app, &tenant, &receiver.url("/hook"), json!(["*"])).await;
    let since = rfc3339_now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    receiver.script([Answer::status(500)]);
    dispatch(&app, &internal, "session.created", json!({})).await;
    quiet(&app, &tenant, &id).await;
    receiver.answer_always(Answer::status(200));
    let first = recover(&app, &tenant, &id, json!({ "since": since })).await;
    assert_eq!(first["count"], 1, "{first}");
    receiver.wait_for(2, Duration::from_secs(10)).await;
    quiet(&app, &tenant, &id).await;
    // The event was delivered by the first recovery: nothing is left to recover.
    let second = recover(&app, &tenant, &id, json!({ "since": since })).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        (second["count"].clone(), receiver.received().len()),
        (json!(0), 2),
        "the already-delivered event was sent again: {second}"
    );
}

// FINDING (recovery duplicates grow exponentially): a recovered copy that fails again is
// itself in the failed index, so the next recovery over the same window re-sends both the
// original and the copy: 1, 2, 4, ... deliveries of the same event per recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_recovering_a_failed_copy_sends_the_event_twice() {
    let receiver = Receiver::start().await;
    receiver.answer_always(Answer::status(500));
    let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    let id = no_retry_endpoint(&app, &tenant, &receiver.url("/hook"), json!(["*"])).await;
    let since = rfc3339_now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    dispatch(&app, &internal, "session.created", json!({})).await;
    quiet(&app, &tenant, &id).await;
    let mut counts = vec![];
    for _ in 0..3 {
        let answer = recover(&app, &tenant, &id, json!({ "since": since })).await;
        counts.push(answer["count"].as_u64().unwrap());
        quiet(&app, &tenant, &id).await;
    }
    // One event failed: each recovery should send it once.
    assert_eq!(counts, [1, 1, 1], "copies per recovery of one event");
}

// FINDING (sequence: a platform-sent value does not advance the counter): after the platform
// dispatches a `session.*` event with its own `sequence`, the next event of that session
// dispatched without one gets the counter's next value, below the platform's: a receiver
// following docs/WEBHOOKS.md drops the newer event as stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_platform_sequence_does_not_make_later_events_look_stale() {
    let receiver = Receiver::start().await;
    let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    endpoint(&app, &tenant, &receiver.url("/hook"), json!(["session.*"])).await;
    dispatch(
        &app,
        &internal,
        "session.updated",
        json!({"payload": {"session_id": "s7", "sequence": 1000}}),
    )
    .await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    dispatch(
        &app,
        &internal,
        "session.updated",
        json!({"payload": {"session_id": "s7"}}),
    )
    .await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    let first = body_of(&got[0])["data"]["sequence"].as_u64().unwrap();
    let second = body_of(&got[1])["data"]["sequence"].as_u64().unwrap();
    assert!(
        second > first,
        "the later event carries {second}, below the earlier {first}: dropped as stale"
    );
}

// FINDING (recovered event lost to a stale endpoint read): the success path skips the health
// update when the endpoint *as read before the send* (or as the dispatch's wake-up hint
// carried it) was clean. A success whose send started before another delivery's failure
// was recorded, and finished after it, sends no `webhook.endpoint.recovered` and does not
// reset the failing run, though it is the first success after the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_slow_success_after_a_failure_sends_recovered() {
    let bad = Receiver::start().await;
    // The first send's answer waits until the second delivery has failed.
    let gate = Arc::new(tokio::sync::Notify::new());
    bad.script([Answer::held(200, &gate), Answer::status(500)]);
    let ops = Receiver::start().await;
    let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    let bad_id = no_retry_endpoint(&app, &tenant, &bad.url("/bad"), json!(["session.*"])).await;
    endpoint(
        &app,
        &tenant,
        &ops.url("/ops"),
        json!(["webhook.endpoint.*"]),
    )
    .await;
    let slow = dispatch(&app, &internal, "session.created", json!({})).await;
    bad.wait_for(1, Duration::from_secs(10)).await;
    let failing = dispatch(&app, &internal, "session.created", json!({})).await;
    let d = failing["deliveries"][0]["id"].as_str().unwrap();
    assert_eq!(settled(&app, &tenant, d).await["status"], "failed");
    // Then the slow one succeeds: the first success after the failure.
    gate.notify_one();
    let d = slow["deliveries"][0]["id"].as_str().unwrap();
    assert_eq!(settled(&app, &tenant, d).await["status"], "succeeded");
    let got = ops.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(body_of(&got[0])["type"], "webhook.endpoint.failing");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while ops.received().len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let types: Vec<Value> = ops
        .received()
        .iter()
        .map(|r| body_of(r)["type"].clone())
        .collect();
    assert_eq!(
        types,
        [
            json!("webhook.endpoint.failing"),
            json!("webhook.endpoint.recovered")
        ],
        "endpoint {bad_id}: a success after the failure sent no recovered event"
    );
}

// FINDING (payloads sent that do not match their published schema): `POST
// /v1/webhooks/dispatch` checks only `session_id`/`sequence`; a `connection.active` without
// the `connection_id` its schema requires is accepted and delivered as is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_dispatch_refuses_a_payload_its_schema_rejects() {
    let receiver = Receiver::start().await;
    let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    endpoint(&app, &tenant, &receiver.url("/hook"), json!(["*"])).await;
    let (status, answer) = app
        .call(
            "POST",
            "/v1/webhooks/dispatch",
            &internal,
            Some(json!({"company_id": "acme", "event": "connection.active", "payload": {}})),
        )
        .await;
    if status == 422 {
        return;
    }
    assert_eq!(status, 202, "{answer}");
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let data = body_of(&got[0])["data"].clone();
    let schema = voyage_core::webhooks::schemas::schema("connection.active").unwrap();
    let valid = jsonschema::validator_for(&schema).unwrap().is_valid(&data);
    assert!(valid, "sent {data}, which its published schema rejects");
}

// FINDING (rate limit burst after a restart): slots reserved under a rate limit are absolute
// times; deliveries deferred to them that are still pending when the process stops are all
// re-driven at once by the next process's start-up sweep, each with its (now past) slot,
// so they go out together, far above the endpoint's limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_deferred_deliveries_keep_the_rate_limit_after_a_restart() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        voyage_core::config::Config::from_lookup(|k| match k {
            "VOYAGE_ALLOW_PRIVATE_WEBHOOK_TARGETS" | "VOYAGE_ALLOW_HTTP_WEBHOOKS" => {
                Some("true".into())
            }
            _ => None,
        })
        .unwrap()
    };
    let url = receiver.url("/hook");
    let path = dir.path().to_path_buf();
    // The first process, on its own runtime, stopped abruptly (its runtime dropped) while
    // deliveries wait for their slots.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let first = voyage::Local::open(&path, config()).unwrap();
            first.spawn_consumers().unwrap();
            let key = voyage_core::auth::create_key(&first.deps.store, "acme", false, None)
                .await
                .unwrap()
                .plaintext;
            use tower::ServiceExt;
            let req = http::Request::builder()
                .method("POST")
                .uri("/v1/webhooks")
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/json")
                .body(axum::body::Body::from(
                    json!({"url": url, "events": ["*"], "rate_limit": 1}).to_string(),
                ))
                .unwrap();
            let created = first.router().oneshot(req).await.unwrap();
            assert_eq!(created.status(), 201);
            for n in 0..6 {
                let mut payload = serde_json::Map::new();
                payload.insert("connection_id".into(), json!(format!("c{n}")));
                first
                    .webhooks
                    .dispatch(voyage_core::webhooks::Dispatch {
                        company_id: "acme".into(),
                        event_type: "connection.active".into(),
                        payload,
                        idempotency_key: None,
                        only_endpoint: None,
                    })
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        });
        rt.shutdown_background();
    })
    .join()
    .unwrap();
    let before = receiver.received().len();
    assert!(before < 6, "the first process sent everything ({before})");
    // Down past every reserved slot.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let second = voyage::Local::open(dir.path(), config()).unwrap();
    second.spawn_consumers().unwrap();
    let got = receiver.wait_for(6, Duration::from_secs(30)).await;
    let after = &got[before..];
    for (i, r) in after.iter().enumerate() {
        let in_a_second = after[i..]
            .iter()
            .take_while(|x| x.at - r.at < Duration::from_millis(1000))
            .count();
        assert!(
            in_a_second <= 2,
            "{in_a_second} deliveries within one second to an endpoint limited to 1/s"
        );
    }
}
