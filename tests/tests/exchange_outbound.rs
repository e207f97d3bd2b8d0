//! Exchange outbound against the Graph simulator over loopback HTTP: sessions become
//! events exactly once, through faults, with the tenant's errors readable.

use std::time::Duration;
use voyage_tests::dates::date;

use serde_json::json;
use voyage_core::deps::QueueName;
use voyage_core::model::{ConnectionStatus, Provider, SessionStatus};
use voyage_simulators::graph::MAX_SUBSCRIPTION_MINUTES;
use voyage_tests::graph::{change, GraphWorld, CLIENT_SECRET};

const INTERNAL: &str = "platform";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_cancel_keep_exactly_one_tagged_event() {
    // GIVEN a tenant whose staff member ann has an active Exchange connection
    let w = GraphWorld::start(&[]).await;
    let (key, conn) = w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
    assert_eq!(conn["status"], "active", "{conn}");
    let platform = w.app.key(INTERNAL, true).await;
    w.sim.clear_served();

    // WHEN the platform creates a session
    let (status, out) = w
        .app
        .call(
            "POST",
            "/v1/exchange/outbound",
            &platform,
            Some(change("created", "acme", "s1", "ann", 9)),
        )
        .await;
    // THEN one event carries the session's tag, times and title, written with one Graph call
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["outcome"], "created");
    let events = w.live_events("ann").await;
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(out["event_id"], event["id"]);
    assert_eq!(event["subject"], "Consultation");
    assert_eq!(
        event["start"]["dateTime"],
        format!("{d0}T09:00:00.0000000", d0 = date(0))
    );
    assert_eq!(event["location"]["displayName"], "Room 4");
    assert_eq!(event["showAs"], "busy");
    assert!(event["transactionId"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    let tag = &event["singleValueExtendedProperties"][0];
    assert!(tag["id"]
        .as_str()
        .unwrap()
        .ends_with("Name VoyageSessionId"));
    assert_eq!(tag["value"], "acme/s1");
    assert_eq!(
        w.graph_calls(),
        ["POST events 201"],
        "token cached since the subscription"
    );

    // AND the mirror, the mapping and the connection's sync time are stored
    let store = &w.app.local.deps.store;
    let session = store.get_session("acme", "s1").await.unwrap();
    assert_eq!(session.status, SessionStatus::Confirmed);
    let mapping = store
        .mapping_for_session("acme", Provider::Exchange, "s1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(mapping.external_event_id, event["id"].as_str().unwrap());
    assert_eq!(mapping.change_key.as_deref(), event["changeKey"].as_str());
    let (_, shown) = w
        .app
        .call(
            "GET",
            &format!("/v1/connections/{}", conn["id"].as_str().unwrap()),
            &key,
            None,
        )
        .await;
    assert!(shown["last_sync_at"].is_string(), "{shown}");

    // WHEN it is moved
    w.sim.clear_served();
    let (status, out) = w
        .app
        .call(
            "POST",
            "/v1/exchange/outbound",
            &platform,
            Some(change("updated", "acme", "s1", "ann", 14)),
        )
        .await;
    // THEN the same event moved, by one conditional PATCH
    assert_eq!(
        (status.as_u16(), out["outcome"].as_str()),
        (200, Some("updated")),
        "{out}"
    );
    let events = w.live_events("ann").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], event["id"]);
    assert_eq!(
        events[0]["start"]["dateTime"],
        format!("{d0}T14:00:00.0000000", d0 = date(0))
    );
    assert_eq!(w.graph_calls(), ["PATCH event 200"]);

    // WHEN it is cancelled
    let (status, out) = w
        .app
        .call(
            "POST",
            "/v1/exchange/outbound",
            &platform,
            Some(change("cancelled", "acme", "s1", "ann", 14)),
        )
        .await;
    // THEN the event is gone and the session cancelled; the mapping stays, so an event
    // restored from Deleted Items is known as this session's and deleted again
    assert_eq!(
        (status.as_u16(), out["outcome"].as_str()),
        (200, Some("deleted")),
        "{out}"
    );
    assert!(w.live_events("ann").await.is_empty());
    let session = store.get_session("acme", "s1").await.unwrap();
    assert_eq!(session.status, SessionStatus::Cancelled);
    let commands: Vec<&str> = session.history.iter().map(|h| h.command.as_str()).collect();
    assert_eq!(
        commands,
        ["platform.created", "platform.updated", "platform.cancelled"]
    );
    assert_eq!(
        store
            .mapping_for_session("acme", Provider::Exchange, "s1")
            .await
            .unwrap()
            .map(|m| m.external_event_id),
        Some(event["id"].as_str().unwrap().to_string())
    );
    // AND a cancel redelivered deletes nothing more (Graph's 404 is the answer it wants)
    let (status, out) = w
        .app
        .call(
            "POST",
            "/v1/exchange/outbound",
            &platform,
            Some(change("cancelled", "acme", "s1", "ann", 14)),
        )
        .await;
    assert_eq!(
        (status.as_u16(), out["outcome"].as_str()),
        (200, Some("deleted")),
        "{out}"
    );
    assert!(w.live_events("ann").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_retried_after_a_timeout_makes_one_event() {
    // GIVEN Graph answers the first create after the client has given up
    // (a timeout every other Graph call of the test meets easily on a loaded machine, and a
    // delay well past it)
    let w = GraphWorld::start(&[("VOYAGE_GRAPH_TIMEOUT", "2s")]).await;
    let (_, _) = w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
    let platform = w.app.key(INTERNAL, true).await;
    w.sim.add_fault(
        serde_json::from_value(json!({
            "method": "POST", "path_contains": "/events", "latency_ms": 6000, "count": 1
        }))
        .unwrap(),
    );
    // WHEN the platform creates the session: the call times out
    let body = change("created", "acme", "s2", "ann", 9);
    let (status, out) = w
        .app
        .call(
            "POST",
            "/v1/exchange/outbound",
            &platform,
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 503, "{out}");
    assert_eq!(out["error"]["code"], "exchange_unavailable");
    let conn = w
        .app
        .local
        .deps
        .store
        .connection_for_staff("acme", "ann", Provider::Exchange)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.status, ConnectionStatus::Error);
    assert!(
        conn.last_error.as_deref().unwrap().contains("timed out"),
        "{:?}",
        conn.last_error
    );
    // (the slow create did happen on Graph's side: the simulator makes it before its delay)
    assert_eq!(w.live_events("ann").await.len(), 1);
    // AND the platform retries
    let (status, out) = w
        .app
        .call("POST", "/v1/exchange/outbound", &platform, Some(body))
        .await;
    // THEN Graph's transactionId dedup returns the same event: still one, now mapped
    assert_eq!(status, 200, "{out}");
    let events = w.live_events("ann").await;
    assert_eq!(events.len(), 1);
    assert_eq!(out["event_id"], events[0]["id"]);
    let conn = w
        .app
        .local
        .deps
        .store
        .connection_for_staff("acme", "ann", Provider::Exchange)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (conn.status, conn.last_error),
        (ConnectionStatus::Active, None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_waited_out_within_the_budget() {
    let w = GraphWorld::start(&[]).await;
    w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
    let platform = w.app.key(INTERNAL, true).await;
    w.sim.clear_served();
    // GIVEN Graph throttles the next create once, asking for one second
    w.sim.add_fault(serde_json::from_value(json!({
        "method": "POST", "path_contains": "/events", "status": 429, "retry_after": 1, "count": 1
    })).unwrap());
    let started = std::time::Instant::now();
    let (status, out) = w
        .app
        .call(
            "POST",
            "/v1/exchange/outbound",
            &platform,
            Some(change("created", "acme", "s3", "ann", 9)),
        )
        .await;
    // THEN the write waited as asked and succeeded: one event
    assert_eq!(status, 200, "{out}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(w.graph_calls(), ["POST events 429", "POST events 201"]);
    assert_eq!(w.live_events("ann").await.len(), 1);

    // GIVEN Graph keeps throttling past the budget
    w.sim.add_fault(
        serde_json::from_value(json!({
            "method": "PATCH", "status": 429, "retry_after": 1, "count": 10
        }))
        .unwrap(),
    );
    let (status, out) = w
        .app
        .call(
            "POST",
            "/v1/exchange/outbound",
            &platform,
            Some(change("updated", "acme", "s3", "ann", 11)),
        )
        .await;
    // THEN a clear 503, the connection in error, the session still updated in the mirror
    assert_eq!(status, 503, "{out}");
    assert_eq!(out["error"]["code"], "exchange_throttled");
    let store = &w.app.local.deps.store;
    let conn = store
        .connection_for_staff("acme", "ann", Provider::Exchange)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.status, ConnectionStatus::Error);
    assert!(conn.last_error.unwrap().contains("throttling"));
    let session = store.get_session("acme", "s3").await.unwrap();
    assert_eq!(
        session.start.to_rfc3339(),
        format!("{d0}T11:00:00+00:00", d0 = date(0))
    );
    assert_eq!(session.history.last().unwrap().command, "exchange.failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_put_the_connection_in_error_with_a_readable_reason() {
    // GIVEN credentials with a wrong secret
    let w = GraphWorld::start(&[]).await;
    let (key, conn) = w
        .tenant_with_connection("acme", "ann", "not-the-secret")
        .await;
    // THEN subscribing failed and the connection says why
    assert_eq!(conn["status"], "error");
    let reason = conn["last_error"].as_str().unwrap();
    assert!(
        reason.contains("invalid_client") && reason.contains("Invalid client secret"),
        "{reason}"
    );
    assert!(!reason.contains("not-the-secret"));
    // AND an outbound write answers a clear error and creates nothing
    let platform = w.app.key(INTERNAL, true).await;
    let (status, out) = w
        .app
        .call(
            "POST",
            "/v1/exchange/outbound",
            &platform,
            Some(change("created", "acme", "s4", "ann", 9)),
        )
        .await;
    assert_eq!(status, 502, "{out}");
    assert_eq!(out["error"]["code"], "exchange_auth_failed");
    assert!(out["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invalid_client"));
    assert!(w.events("ann").await.is_empty());
    // WHEN the tenant fixes the credentials and the renewal job runs
    let (status, _) = w
        .app
        .call(
            "PUT",
            "/v1/credentials/exchange",
            &key,
            Some(json!({"tenant_id": voyage_tests::graph::TENANT, "client_id": voyage_tests::graph::CLIENT_ID, "client_secret": CLIENT_SECRET})),
        )
        .await;
    assert_eq!(status, 200);
    let report = voyage_fn_scheduled::run(
        voyage_fn_scheduled::Job::RenewSubscriptions,
        &w.app.local.deps,
    )
    .await
    .unwrap();
    assert_eq!((report.processed, report.failed), (1, 0));
    // THEN the connection is active with a subscription
    let (_, shown) = w
        .app
        .call(
            "GET",
            &format!("/v1/connections/{}", conn["id"].as_str().unwrap()),
            &key,
            None,
        )
        .await;
    assert_eq!(shown["status"], "active", "{shown}");
    assert_eq!(w.subscriptions().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validation_failure_stores_nothing_and_calls_nobody() {
    let w = GraphWorld::start(&[]).await;
    w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
    let platform = w.app.key(INTERNAL, true).await;
    w.sim.clear_served();
    let cases = [
        (
            "/session/end",
            json!(format!("{d0}T08:00:00Z", d0 = date(0))),
            "session.end",
        ),
        ("/session/start", json!("tomorrow"), "session.start"),
        (
            "/session/time_zone",
            json!("Mars/Olympus"),
            "session.time_zone",
        ),
        ("/session/title", json!("x".repeat(300)), "session.title"),
        ("/session/staff_id", json!("ann#1"), "session.staff_id"),
        (
            "/session/client/email",
            json!("not-an-email"),
            "session.client.email",
        ),
        ("/action", json!("moved"), "action"),
    ];
    for (pointer, value, field) in cases {
        let mut body = change("created", "acme", "s5", "ann", 9);
        *body.pointer_mut(pointer).unwrap() = value;
        let (status, out) = w
            .app
            .call("POST", "/v1/exchange/outbound", &platform, Some(body))
            .await;
        assert_eq!(status, 422, "{pointer}: {out}");
        assert_eq!(out["error"]["field"], field, "{out}");
    }
    assert!(w
        .app
        .local
        .deps
        .store
        .find_session("acme", "s5")
        .await
        .unwrap()
        .is_none());
    assert!(w.graph_calls().is_empty());
    // A tenant key may not write sessions.
    let tenant = w.app.key("acme", false).await;
    let (status, _) = w
        .app
        .call(
            "POST",
            "/v1/exchange/outbound",
            &tenant,
            Some(change("created", "acme", "s5", "ann", 9)),
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staff_member_without_exchange_gets_a_clear_404_and_the_session_is_kept() {
    let w = GraphWorld::start(&[]).await;
    let platform = w.app.key(INTERNAL, true).await;
    let (status, out) = w
        .app
        .call(
            "POST",
            "/v1/exchange/outbound",
            &platform,
            Some(change("created", "acme", "s6", "bob", 9)),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(out["error"]["code"], "exchange_connection_not_found");
    assert!(out["error"]["message"].as_str().unwrap().contains("bob"));
    let session = w
        .app
        .local
        .deps
        .store
        .get_session("acme", "s6")
        .await
        .unwrap();
    assert_eq!(session.status, SessionStatus::Confirmed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_write_only_and_sealed_at_rest() {
    let w = GraphWorld::start(&[]).await;
    let (key, conn) = w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
    let (status, shown) = w
        .app
        .call("GET", "/v1/credentials/exchange", &key, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(shown["tenant_id"], voyage_tests::graph::TENANT);
    assert!(!shown.to_string().contains(CLIENT_SECRET));
    assert!(!conn.to_string().contains(&conn_secret(&w).await));
    // A dump of the stored record does not reveal the secret.
    let item = w
        .app
        .local
        .deps
        .store
        .table()
        .get(&voyage_core::ports::Key::new("CO#acme", "CRED#exchange"))
        .await
        .unwrap()
        .unwrap();
    assert!(!item.data.contains(CLIENT_SECRET));
    assert!(item.data.contains("\"sealed\":\"v1."));
    // Bad input names the field.
    let (status, out) = w
        .app
        .call(
            "PUT",
            "/v1/credentials/exchange",
            &key,
            Some(json!({"tenant_id": "t", "client_id": "c"})),
        )
        .await;
    assert_eq!(status, 422, "{out}");
    assert_eq!(out["error"]["field"], "client_secret");
}

async fn conn_secret(w: &GraphWorld) -> String {
    let conn = w
        .app
        .local
        .deps
        .store
        .connection_for_staff("acme", "ann", Provider::Exchange)
        .await
        .unwrap()
        .unwrap();
    conn.channel.unwrap().secret
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_subscribes_and_disconnecting_unsubscribes() {
    let w = GraphWorld::start(&[]).await;
    let (key, conn) = w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
    // The subscription Graph holds: our URLs, the staff calendar, a random clientState,
    // and an expiry within Graph's limit (it validated both URLs before answering).
    let subs = w.subscriptions().await;
    assert_eq!(subs.len(), 1);
    let sub = &subs[0];
    assert_eq!(
        sub["notificationUrl"],
        format!("{}/v1/exchange/notifications", w.app_url)
    );
    assert_eq!(
        sub["lifecycleNotificationUrl"],
        format!("{}/v1/exchange/lifecycle", w.app_url)
    );
    assert_eq!(sub["resource"], "users/ann@contoso.example/events");
    assert_eq!(sub["changeType"], "created,updated,deleted");
    assert_eq!(sub["id"], conn["channel_id"]);
    let secret = conn_secret(&w).await;
    assert_eq!(sub["clientState"], secret);
    assert!(secret.len() >= 32 && secret.len() <= 128);
    let expires =
        chrono::DateTime::parse_from_rfc3339(conn["channel_expires_at"].as_str().unwrap()).unwrap();
    let minutes = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_minutes();
    assert!(
        minutes > MAX_SUBSCRIPTION_MINUTES - 30 && minutes <= MAX_SUBSCRIPTION_MINUTES,
        "{minutes}"
    );
    // WHEN the connection is deleted THEN so is the subscription
    let (status, _) = w
        .app
        .call(
            "DELETE",
            &format!("/v1/connections/{}", conn["id"].as_str().unwrap()),
            &key,
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert!(w.subscriptions().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_validation_handshake_echoes_the_decoded_token_as_plain_text() {
    let w = GraphWorld::start(&[]).await;
    for path in ["/v1/exchange/notifications", "/v1/exchange/lifecycle"] {
        let resp = w
            .http
            .post(format!(
                "{}{path}?validationToken=Validation%3A%20Testing%20client%2Bapp%26x",
                w.app_url
            ))
            .header("content-type", "text/plain")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        assert_eq!(
            resp.text().await.unwrap(),
            "Validation: Testing client+app&x"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_queued_only_with_the_right_client_state() {
    let w = GraphWorld::start(&[]).await;
    let (_, conn) = w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
    let secret = conn_secret(&w).await;
    // The connection's first sync was queued when it was made.
    let queue = w.app.local.deps.queue(QueueName::ExchangeInbound).unwrap();
    let first = queue.receive(10, Duration::from_millis(200)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(first[0].body.contains("\"connected\""), "{}", first[0].body);
    queue.ack(&first[0].receipt).await.unwrap();
    let note = |client_state: &str, change: &str| {
        json!({
            "subscriptionId": conn["channel_id"], "changeType": change, "clientState": client_state,
            "resource": "Users('ann')/Events('AAMk1')", "tenantId": "t",
            "resourceData": {"@odata.type": "#Microsoft.Graph.Event", "id": "AAMk1"}
        })
    };
    let body = json!({"value": [note(&secret, "Updated"), note(&secret, "deleted"), note("forged", "deleted"),
        {"subscriptionId": "unknown", "clientState": secret}]});
    let resp = w
        .http
        .post(format!("{}/v1/exchange/notifications", w.app_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let accepted: serde_json::Value = resp.json().await.unwrap();
    // Two genuine notifications of one subscription: one wake-up. Two dropped.
    assert_eq!(accepted, json!({"queued": 1, "dropped": 2}));
    let messages = queue.receive(10, Duration::from_millis(200)).await.unwrap();
    assert_eq!(messages.len(), 1);
    assert!(messages[0].body.contains(conn["id"].as_str().unwrap()));
    // A body that is not a notification list is a 422 naming the field, not a 500.
    let resp = w
        .http
        .post(format!("{}/v1/exchange/notifications", w.app_url))
        .json(&json!({"value": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_body_that_is_not_json_is_a_400_malformed_json() {
    // Arrange
    let w = GraphWorld::start(&[]).await;

    // Act
    let resp = w
        .http
        .post(format!("{}/v1/exchange/notifications", w.app_url))
        .header("content-type", "application/json")
        .body("garbage")
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "malformed_json", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_extends_due_subscriptions_and_recreates_lost_ones() {
    let w = GraphWorld::start(&[]).await;
    let (_, conn) = w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
    let store = &w.app.local.deps.store;
    let deps = &w.app.local.deps;
    let job = voyage_fn_scheduled::Job::RenewSubscriptions;
    // Not due: nothing happens.
    let report = voyage_fn_scheduled::run(job, deps).await.unwrap();
    assert_eq!(report.processed, 0);
    // GIVEN the subscription expires within the renewal window
    let mut c = store
        .connection_for_staff("acme", "ann", Provider::Exchange)
        .await
        .unwrap()
        .unwrap();
    let first_id = c.channel.as_ref().unwrap().id.clone();
    c.channel.as_mut().unwrap().expires_at = chrono::Utc::now() + chrono::Duration::hours(2);
    store.update_connection(&mut c).await.unwrap();
    // THEN the job renews it in place
    let report = voyage_fn_scheduled::run(job, deps).await.unwrap();
    assert_eq!(report.processed, 1);
    let c = store
        .connection_for_staff("acme", "ann", Provider::Exchange)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.channel.as_ref().unwrap().id, first_id);
    assert!(
        c.channel.as_ref().unwrap().expires_at > chrono::Utc::now() + chrono::Duration::days(6)
    );
    // GIVEN Graph lost the subscription and it is due
    w.http
        .post(format!(
            "{}/_control/subscriptions/{first_id}/lifecycle",
            w.sim_url
        ))
        .json(&json!({"lifecycleEvent": "subscriptionRemoved"}))
        .send()
        .await
        .unwrap();
    let mut c = c;
    c.channel.as_mut().unwrap().expires_at = chrono::Utc::now() + chrono::Duration::hours(1);
    store.update_connection(&mut c).await.unwrap();
    // THEN the job makes a new one, with a new clientState
    let report = voyage_fn_scheduled::run(job, deps).await.unwrap();
    assert_eq!(report.processed, 1);
    let fresh = store
        .connection_for_staff("acme", "ann", Provider::Exchange)
        .await
        .unwrap()
        .unwrap();
    let channel = fresh.channel.unwrap();
    assert_ne!(channel.id, first_id);
    assert_ne!(Some(channel.secret), c.channel.map(|c| c.secret));
    let subs = w.subscriptions().await;
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0]["id"], channel.id.as_str());
    assert_eq!(conn["status"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_session_changes_are_written_like_the_route() {
    let w = GraphWorld::start(&[]).await;
    w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
    let deps = &w.app.local.deps;
    // As EventBridge's rule target delivers it, and bare; a poison message fails alone; a
    // staff member without Exchange is not a failure.
    let wrapped = json!({"version": "0", "id": "e1", "source": "voyage.platform",
        "detail-type": "session.changed", "detail": change("created", "acme", "q1", "ann", 9)});
    let batch = vec![
        ("m1".to_string(), wrapped.to_string()),
        (
            "m2".to_string(),
            change("created", "acme", "q2", "ann", 11).to_string(),
        ),
        ("m3".to_string(), "{\"action\": \"created\"".to_string()),
        (
            "m4".to_string(),
            change("created", "acme", "q3", "nobody", 9).to_string(),
        ),
    ];
    let failed = voyage_fn_exchange_outbound::worker::handle_batch(deps, batch).await;
    assert_eq!(failed, ["m3"]);
    assert_eq!(w.live_events("ann").await.len(), 2);
    assert!(deps
        .store
        .find_session("acme", "q3")
        .await
        .unwrap()
        .is_some());
}

/// The Lambda path: the gateway, exchange-inbound and exchange-outbound routers exactly as
/// their Lambdas serve them, on DynamoDB (moto), with the Graph simulator calling back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_routers_run_on_dynamodb() {
    use std::sync::Arc;
    use voyage_core::deps::Deps;
    use voyage_core::ports::SystemClock;
    use voyage_core::store::Store;
    let sim = voyage_simulators::GraphSimulator::new();
    sim.register_app(
        voyage_tests::graph::TENANT,
        voyage_tests::graph::CLIENT_ID,
        CLIENT_SECRET,
    );
    let sim_url = voyage_tests::graph::serve(sim.router()).await;
    let table = voyage_tests::fixtures::dynamo_table().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_url = format!("http://{}", listener.local_addr().unwrap());
    let key = voyage_core::sealing::generate_key().unwrap();
    let config = voyage_core::config::Config::from_lookup(|k| match k {
        "VOYAGE_GRAPH_BASE_URL" | "VOYAGE_MS_LOGIN_BASE_URL" => Some(sim_url.clone()),
        "VOYAGE_PUBLIC_BASE_URL" => Some(app_url.clone()),
        "VOYAGE_CREDENTIALS_KEY" => Some(key.clone()),
        _ => None,
    })
    .unwrap();
    let store = Store::new(table.it.clone(), Arc::new(SystemClock));
    let deps = Arc::new(voyage_providers::attach(Deps::new(store.clone(), config)).unwrap());
    let routes = voyage_fn_gateway::api::router(deps.clone())
        .merge(voyage_fn_exchange_inbound::router(deps.clone()))
        .merge(voyage_fn_exchange_outbound::router(deps.clone()));
    let router = voyage_http::finish(routes, voyage_http::Auth::Keys(store.clone()));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let tenant = voyage_core::auth::create_key(&store, "acme", false, None)
        .await
        .unwrap()
        .plaintext;
    let platform = voyage_core::auth::create_key(&store, INTERNAL, true, None)
        .await
        .unwrap()
        .plaintext;
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, key: &str, body: serde_json::Value| {
        http.request(method, format!("{app_url}{path}"))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    let resp = call(
        reqwest::Method::PUT,
        "/v1/credentials/exchange",
        &tenant,
        json!({"tenant_id": voyage_tests::graph::TENANT, "client_id": voyage_tests::graph::CLIENT_ID, "client_secret": CLIENT_SECRET}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = call(
        reqwest::Method::POST,
        "/v1/connections",
        &tenant,
        json!({"provider": "exchange", "staff_id": "ann", "staff_email": "ann@contoso.example"}),
    )
    .await
    .unwrap();
    let conn: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(conn["status"], "active", "{conn}");
    let resp = call(
        reqwest::Method::POST,
        "/v1/exchange/outbound",
        &platform,
        change("created", "acme", "l1", "ann", 9),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let out: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(out["outcome"], "created");
    let mapping = store
        .mapping_for_session("acme", Provider::Exchange, "l1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        Some(mapping.external_event_id.as_str()),
        out["event_id"].as_str()
    );
    let served: Vec<String> = sim
        .served()
        .iter()
        .map(|s| format!("{} {}", s.method, s.status))
        .collect();
    assert_eq!(
        served,
        ["POST 200", "POST 201", "POST 201"],
        "token, subscription, event"
    );
}

// ---------------------------------------------------------------------------------------
// Lost races. A delta round writing the same session (its mapping's change key, a pending
// cancellation) makes the outbound write's conditional commit fail; under load that can
// happen several times in a row. The write re-reads and tries again after a short random
// pause; only a race lost on every try is an error, and then a 503 (retry), not a 409.

fn session_change(body: serde_json::Value) -> voyage_core::exchange::outbound::SessionChange {
    serde_json::from_value::<voyage_core::exchange::outbound::SessionChangeInput>(body)
        .unwrap()
        .validate()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_loses_several_races_in_a_row_still_makes_its_one_event() {
    let w = GraphWorld::start(&[]).await;
    w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
    let deps = voyage_tests::races::losing_races(&w.app.local.deps, 5);
    let change = session_change(change("created", "acme", "s1", "ann", 9));

    let outcome = voyage_core::exchange::outbound::apply(&deps, &change)
        .await
        .unwrap();

    assert_eq!(outcome.outcome, "created");
    assert_eq!(w.live_events("ann").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_loses_every_race_is_unavailable_not_a_conflict() {
    let w = GraphWorld::start(&[]).await;
    w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
    let deps = voyage_tests::races::losing_races(&w.app.local.deps, usize::MAX);
    let change = session_change(change("created", "acme", "s1", "ann", 9));

    let error = voyage_core::exchange::outbound::apply(&deps, &change)
        .await
        .unwrap_err();

    assert_eq!(error.status(), 503, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_different_sessions_within_a_minute_leave_the_connection_record_alone() {
    let w = GraphWorld::start(&[]).await;
    let (_key, conn) = w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
    let id = conn["id"].as_str().unwrap().to_string();
    let store = &w.app.local.deps.store;
    let deps = &w.app.local.deps;
    voyage_core::exchange::outbound::apply(
        deps,
        &session_change(change("created", "acme", "s1", "ann", 9)),
    )
    .await
    .unwrap();
    let before = store.get_connection("acme", &id).await.unwrap();

    voyage_core::exchange::outbound::apply(
        deps,
        &session_change(change("created", "acme", "s2", "ann", 11)),
    )
    .await
    .unwrap();

    let after = store.get_connection("acme", &id).await.unwrap();
    assert_eq!(after.version, before.version);
    assert!(after.last_sync_at.is_some());
}
