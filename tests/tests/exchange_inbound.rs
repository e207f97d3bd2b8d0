//! Exchange inbound end to end in the local system: the staff member changes booked
//! sessions in (simulated) Outlook through Graph's routes; Graph notifies the system over
//! loopback HTTP; the system's delta rounds reconcile the bookings and send signed webhooks.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use voyage_core::model::{Provider, Session, SessionStatus};
use voyage_tests::graph::{change, GraphWorld, CLIENT_SECRET};
use voyage_tests::receiver::Receiver;

const WITHIN: Duration = Duration::from_secs(5);

async fn world() -> (GraphWorld, Receiver, String, String) {
    let w = GraphWorld::start_running(&[
        ("VOYAGE_PENDING_CANCELLATION_GRACE", "1s"),
        ("VOYAGE_ALLOW_PRIVATE_WEBHOOK_TARGETS", "true"),
        ("VOYAGE_ALLOW_HTTP_WEBHOOKS", "true"),
    ])
    .await;
    let (key, conn) = w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
    assert_eq!(conn["status"], "active");
    let receiver = Receiver::start().await;
    let (status, _) = w
        .app
        .call(
            "POST",
            "/v1/webhooks",
            &key,
            Some(json!({"url": receiver.url("/hook"), "events": ["session.*"]})),
        )
        .await;
    assert_eq!(status, 201);
    let platform = w.app.key("platform", true).await;
    (w, receiver, key, platform)
}

async fn session(w: &GraphWorld, id: &str) -> Session {
    w.app
        .local
        .deps
        .store
        .get_session("acme", id)
        .await
        .unwrap()
}

/// Polls until `check` holds for the session, or fails after [`WITHIN`].
async fn until(w: &GraphWorld, id: &str, what: &str, check: impl Fn(&Session) -> bool) -> Session {
    let deadline = Instant::now() + WITHIN;
    loop {
        let s = session(w, id).await;
        if check(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: session is {:?} at {}..{}, history {:?}",
            s.status,
            s.start,
            s.end,
            s.history
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The webhook events received so far, by type.
fn events(r: &Receiver) -> Vec<String> {
    r.received()
        .iter()
        .filter_map(|m| serde_json::from_str::<Value>(&m.body).ok())
        .filter_map(|b| b["type"].as_str().map(str::to_string))
        .collect()
}

async fn wait_event(r: &Receiver, event: &str) {
    let deadline = Instant::now() + WITHIN;
    while !events(r).iter().any(|e| e == event) {
        assert!(
            Instant::now() < deadline,
            "no {event} webhook; got {:?}",
            events(r)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn book(w: &GraphWorld, platform: &str, id: &str, hour: u32) -> String {
    let (status, out) = w
        .app
        .call(
            "POST",
            "/v1/exchange/outbound",
            platform,
            Some(change("created", "acme", id, "ann", hour)),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    out["event_id"].as_str().unwrap().to_string()
}

fn at(hour: u32) -> Value {
    json!({"dateTime": format!("2026-12-01T{hour:02}:00:00.0000000"), "timeZone": "UTC"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlook_changes_reconcile_the_booking_without_looping() {
    let (w, receiver, key, platform) = world().await;
    let event = book(&w, &platform, "s1", 9).await;

    // Deleted in Outlook -> pending cancellation, and a signed webhook says so.
    assert_eq!(w.staff("DELETE", "ann", &event, "", None).await, 204);
    let s = until(&w, "s1", "pending after delete", |s| {
        s.status == SessionStatus::PendingCancellation
    })
    .await;
    assert_eq!(s.history.last().unwrap().origin, "exchange-inbound");
    wait_event(&receiver, "session.cancellation_pending").await;
    let hook = receiver
        .received()
        .into_iter()
        .find(|m| m.body.contains("session.cancellation_pending"))
        .unwrap();
    assert!(hook
        .header("webhook-signature")
        .is_some_and(|s| s.starts_with("v1,")));
    let (status, shown) = w.app.call("GET", "/v1/sessions/s1", &key, None).await;
    assert_eq!(status, 200);
    assert_eq!(shown["status"], "pending_cancellation");
    assert!(shown["cancels_at"].is_string(), "{shown}");

    // Restored from Deleted Items -> confirmed.
    assert_eq!(w.restore("ann", &event).await, 200);
    until(&w, "s1", "confirmed after restore", |s| {
        s.status == SessionStatus::Confirmed
    })
    .await;
    wait_event(&receiver, "session.restored").await;

    // Moved -> rescheduled.
    assert_eq!(
        w.staff(
            "PATCH",
            "ann",
            &event,
            "",
            Some(json!({"start": at(14), "end": at(15)}))
        )
        .await,
        200
    );
    let s = until(&w, "s1", "moved to 14:00", |s| {
        s.start.format("%H").to_string() == "14"
    })
    .await;
    assert_eq!(s.end.format("%H").to_string(), "15");
    wait_event(&receiver, "session.rescheduled").await;

    // Moved onto another session -> rejected, and the event is back at the booked time.
    book(&w, &platform, "s2", 16).await;
    assert_eq!(
        w.staff(
            "PATCH",
            "ann",
            &event,
            "",
            Some(json!({"start": at(16), "end": at(17)}))
        )
        .await,
        200
    );
    until(&w, "s1", "move rejected", |s| {
        s.history.iter().any(|h| h.command == "reject_reschedule")
    })
    .await;
    wait_event(&receiver, "session.reschedule_rejected").await;
    let back = w
        .live_events("ann")
        .await
        .into_iter()
        .find(|e| e["id"] == event.as_str())
        .unwrap();
    assert_eq!(back["start"]["dateTime"], "2026-12-01T14:00:00.0000000");
    assert_eq!(session(&w, "s1").await.start.format("%H").to_string(), "14");

    // Declined -> flagged.
    assert_eq!(
        w.staff(
            "POST",
            "ann",
            &event,
            "/decline",
            Some(json!({"sendResponse": false}))
        )
        .await,
        202
    );
    until(&w, "s1", "declined", |s| s.declined).await;
    wait_event(&receiver, "session.declined").await;

    // No loop: our own writes (the move back) come back as echoes and change nothing.
    let settled = session(&w, "s1").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let later = session(&w, "s1").await;
    assert_eq!(
        later.history.len(),
        settled.history.len(),
        "{:?}",
        later.history
    );
    let commands: Vec<&str> = later.history.iter().map(|h| h.command.as_str()).collect();
    assert_eq!(
        commands,
        [
            "platform.created",
            "pending_cancellation",
            "restore",
            "reschedule",
            "reject_reschedule",
            "flag_decline"
        ]
    );

    // Deleted again; the grace period passes; the job commits the cancellation.
    assert_eq!(w.staff("DELETE", "ann", &event, "", None).await, 204);
    until(&w, "s1", "pending again", |s| {
        s.status == SessionStatus::PendingCancellation
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let report = voyage_fn_scheduled::run(
        voyage_fn_scheduled::Job::CommitPendingCancellations,
        &w.app.local.deps,
    )
    .await
    .unwrap();
    assert_eq!(report.processed, 1);
    assert_eq!(session(&w, "s1").await.status, SessionStatus::Cancelled);
    wait_event(&receiver, "session.cancelled").await;
    // Each event type arrived once per change (the outbox and the idempotency keys).
    let got = events(&receiver);
    assert_eq!(
        got.iter()
            .filter(|e| *e == "session.cancellation_pending")
            .count(),
        2
    );
    assert_eq!(got.iter().filter(|e| *e == "session.cancelled").count(), 1);
    // The other session was never touched.
    assert_eq!(session(&w, "s2").await.history.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_staff_members_own_busy_time_becomes_availability_overrides() {
    let (w, _receiver, key, platform) = world().await;
    book(&w, &platform, "s1", 9).await;
    let busy = w
        .staff_creates(
            "ann",
            "Dentist",
            "2026-12-01T11:00:00",
            "2026-12-01T12:00:00",
            "busy",
        )
        .await;
    let free = w
        .staff_creates(
            "ann",
            "Lunch (free)",
            "2026-12-01T12:00:00",
            "2026-12-01T13:00:00",
            "free",
        )
        .await;
    let oof = w
        .staff_creates(
            "ann",
            "Away",
            "2026-12-02T00:00:00",
            "2026-12-03T00:00:00",
            "oof",
        )
        .await;
    let path = "/v1/staff/ann/overrides?from=2026-12-01T00:00:00Z&to=2026-12-04T00:00:00Z";
    let deadline = Instant::now() + WITHIN;
    let ids = loop {
        let (status, body) = w.app.call("GET", path, &key, None).await;
        assert_eq!(status, 200, "{body}");
        let ids: Vec<String> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["external_event_id"].as_str().unwrap().to_string())
            .collect();
        if ids.len() == 2 || Instant::now() > deadline {
            assert!(body["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|o| o["source"] == "exchange"));
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The platform's own session and the free event are not busy time.
    assert_eq!(ids, [busy.clone(), oof.clone()]);
    assert!(!ids.contains(&free));
    // Made free, then deleted: the overrides go.
    assert_eq!(
        w.staff("PATCH", "ann", &busy, "", Some(json!({"showAs": "free"})))
            .await,
        200
    );
    assert_eq!(w.staff("DELETE", "ann", &oof, "", None).await, 204);
    let deadline = Instant::now() + WITHIN;
    loop {
        let (_, body) = w.app.call("GET", path, &key, None).await;
        if body["data"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Bad ranges name their field.
    let (status, body) = w
        .app
        .call(
            "GET",
            "/v1/staff/ann/overrides?from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z",
            &key,
            None,
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["error"]["field"].as_str()),
        (422, Some("to"))
    );
    let (status, body) = w
        .app
        .call(
            "GET",
            "/v1/staff/ann/overrides?from=soon&to=2026-12-01T00:00:00Z",
            &key,
            None,
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["error"]["field"].as_str()),
        (422, Some("from"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_mid_round_resyncs_and_drops_vanished_busy_time() {
    // Idle consumers: rounds are run by hand, so the 410 lands exactly mid-round.
    let w = GraphWorld::start(&[]).await;
    let (key, conn) = w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
    assert_eq!(w.control("delta/page-size", json!({"max": 2})).await, 204);
    let mut ids = Vec::new();
    for h in 0..5 {
        ids.push(
            w.staff_creates(
                "ann",
                "Busy",
                &format!("2026-12-01T{:02}:00:00", 8 + h),
                &format!("2026-12-01T{:02}:30:00", 8 + h),
                "busy",
            )
            .await,
        );
    }
    let request = voyage_core::exchange::notifications::SyncRequest {
        company_id: "acme".into(),
        connection_id: conn["id"].as_str().unwrap().into(),
        subscription_id: conn["channel_id"].as_str().unwrap().into(),
        reason: "notification".into(),
    };
    let deps = &w.app.local.deps;
    let first = voyage_core::exchange::inbound::handle(deps, &request)
        .await
        .unwrap();
    assert_eq!((first.pages, first.overrides_upserted), (3, 5));
    // GIVEN an event deleted and another added, and Graph forgetting the token on the
    // second page of the next round
    assert_eq!(w.staff("DELETE", "ann", &ids[0], "", None).await, 204);
    ids.push(
        w.staff_creates(
            "ann",
            "Busy",
            "2026-12-01T15:00:00",
            "2026-12-01T16:00:00",
            "busy",
        )
        .await,
    );
    assert_eq!(
        w.staff(
            "PATCH",
            "ann",
            &ids[1],
            "",
            Some(json!({"subject": "renamed"}))
        )
        .await,
        200
    );
    w.sim.add_fault(serde_json::from_value(json!({"method": "GET", "path_contains": "calendarView/delta", "status": 410, "after": 1})).unwrap());
    // WHEN the round runs
    let second = voyage_core::exchange::inbound::handle(deps, &request)
        .await
        .unwrap();
    // THEN it started over with a full sync and the overrides match the calendar exactly
    assert!(second.resynced, "{second:?}");
    let (_, body) = w
        .app
        .call(
            "GET",
            "/v1/staff/ann/overrides?from=2026-12-01T00:00:00Z&to=2026-12-02T00:00:00Z",
            &key,
            None,
        )
        .await;
    let mut got: Vec<String> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["external_event_id"].as_str().unwrap().to_string())
        .collect();
    let mut want: Vec<String> = ids[1..].to_vec();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // AND the next round continues from the stored cursor with nothing new
    let third = voyage_core::exchange::inbound::handle(deps, &request)
        .await
        .unwrap();
    assert_eq!(
        (third.resynced, third.events, third.overrides_upserted),
        (false, 0, 0),
        "{third:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_reordered_notifications_change_a_booking_once() {
    let w = GraphWorld::start(&[("VOYAGE_PENDING_CANCELLATION_GRACE", "10m")]).await;
    let (_, conn) = w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
    let platform = w.app.key("platform", true).await;
    let event = book(&w, &platform, "s1", 9).await;
    let secret = w
        .app
        .local
        .deps
        .store
        .connection_for_staff("acme", "ann", Provider::Exchange)
        .await
        .unwrap()
        .unwrap()
        .channel
        .unwrap()
        .secret;
    let note = |change: &str| {
        json!({"value": [{"subscriptionId": conn["channel_id"], "clientState": secret, "changeType": change,
            "resource": format!("Users/ann@contoso.example/Events/{event}"), "resourceData": {"id": event}}]})
    };
    assert_eq!(w.staff("DELETE", "ann", &event, "", None).await, 204);
    // The deletion notified twice, then an older "updated" arriving late; and a forgery.
    for body in [note("deleted"), note("deleted"), note("updated")] {
        let resp = w
            .http
            .post(format!("{}/v1/exchange/notifications", w.app_url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }
    let mut forged = note("deleted");
    forged["value"][0]["clientState"] = json!("guess");
    let resp = w
        .http
        .post(format!("{}/v1/exchange/notifications", w.app_url))
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"queued": 0, "dropped": 1})
    );
    // Every queued wake-up (the simulator's own notifications included) handled.
    let queue = w
        .app
        .local
        .deps
        .queue(voyage_core::deps::QueueName::ExchangeInbound)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let messages = queue.receive(10, Duration::from_millis(300)).await.unwrap();
    assert!(messages.len() >= 3, "{}", messages.len());
    let batch: Vec<(String, String)> = messages
        .iter()
        .map(|m| (m.id.clone(), m.body.clone()))
        .collect();
    let failed = voyage_fn_exchange_inbound::worker::handle_batch(&w.app.local.deps, batch).await;
    assert!(failed.is_empty(), "{failed:?}");
    let s = session(&w, "s1").await;
    assert_eq!(s.status, SessionStatus::PendingCancellation);
    let pending: Vec<_> = s
        .history
        .iter()
        .filter(|h| h.command == "pending_cancellation")
        .collect();
    assert_eq!(pending.len(), 1, "{:?}", s.history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_fails_alone() {
    let w = GraphWorld::start(&[]).await;
    let (_, conn) = w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
    let good = json!({"kind": "exchange.sync", "payload": {"company_id": "acme", "connection_id": conn["id"], "subscription_id": conn["channel_id"], "reason": "missed"}});
    let gone = json!({"kind": "exchange.sync", "payload": {"company_id": "acme", "connection_id": "conn_gone", "subscription_id": "x", "reason": "notification"}});
    let batch = vec![
        ("m1".to_string(), good.to_string()),
        ("m2".to_string(), "{\"kind\": 7}".to_string()),
        (
            "m3".to_string(),
            json!({"kind": "other", "payload": {}}).to_string(),
        ),
        ("m4".to_string(), gone.to_string()),
    ];
    let failed = voyage_fn_exchange_inbound::worker::handle_batch(&w.app.local.deps, batch).await;
    let mut failed = failed;
    failed.sort();
    assert_eq!(failed, ["m2", "m3"]);
    let c = w
        .app
        .local
        .deps
        .store
        .connection_for_staff("acme", "ann", Provider::Exchange)
        .await
        .unwrap()
        .unwrap();
    assert!(c.last_sync_at.is_some(), "the good message ran its round");
}
