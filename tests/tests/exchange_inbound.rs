//! Exchange inbound end to end in the local system: the staff member changes booked
//! sessions in (simulated) Outlook through Graph's routes; Graph notifies the system over
//! loopback HTTP; the system's delta rounds reconcile the bookings and send signed webhooks.

use std::time::{Duration, Instant};
use voyage_tests::dates::date;

use serde_json::{json, Value};
use voyage_core::model::{Provider, Session, SessionStatus};
use voyage_tests::graph::{change, GraphWorld, CLIENT_SECRET};
use voyage_tests::receiver::Receiver;

#[path = "exchange_inbound/availability.rs"]
mod availability;
#[path = "exchange_inbound/review.rs"]
mod review;

/// How long a poll waits for a multi-hop chain (push, queue, round, dispatch, receiver) to
/// settle: polls return as soon as it has, so only a failing run waits this long; a loaded
/// machine and one retried handler error (2 s of back-off) must fit in it.
const WITHIN: Duration = Duration::from_secs(30);

async fn world() -> (GraphWorld, Receiver, String, String) {
    world_with_grace("1s").await
}

/// [`world`] with a pending cancellation's grace of `grace`.
async fn world_with_grace(grace: &str) -> (GraphWorld, Receiver, String, String) {
    let w = GraphWorld::start_running(&[
        ("VOYAGE_PENDING_CANCELLATION_GRACE", grace),
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
    json!({"dateTime": format!("{d0}T{hour:02}:00:00.0000000", d0 = date(0)), "timeZone": "UTC"})
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
    assert_eq!(
        back["start"]["dateTime"],
        format!("{d0}T14:00:00.0000000", d0 = date(0))
    );
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
            &format!("{d0}T11:00:00", d0 = date(0)),
            &format!("{d0}T12:00:00", d0 = date(0)),
            "busy",
        )
        .await;
    let free = w
        .staff_creates(
            "ann",
            "Lunch (free)",
            &format!("{d0}T12:00:00", d0 = date(0)),
            &format!("{d0}T13:00:00", d0 = date(0)),
            "free",
        )
        .await;
    let oof = w
        .staff_creates(
            "ann",
            "Away",
            &format!("{d1}T00:00:00", d1 = date(1)),
            &format!("{d2}T00:00:00", d2 = date(2)),
            "oof",
        )
        .await;
    let path = format!(
        "/v1/staff/ann/overrides?from={d0}T00:00:00Z&to={d3}T00:00:00Z",
        d0 = date(0),
        d3 = date(3)
    );
    let deadline = Instant::now() + WITHIN;
    let ids = loop {
        let (status, body) = w.app.call("GET", &path, &key, None).await;
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
        let (_, body) = w.app.call("GET", &path, &key, None).await;
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
            &format!(
                "/v1/staff/ann/overrides?from={d1}T00:00:00Z&to={d0}T00:00:00Z",
                d1 = date(1),
                d0 = date(0)
            ),
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
            &format!(
                "/v1/staff/ann/overrides?from=soon&to={d0}T00:00:00Z",
                d0 = date(0)
            ),
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
                &format!("{d0}T{:02}:00:00", 8 + h, d0 = date(0)),
                &format!("{d0}T{:02}:30:00", 8 + h, d0 = date(0)),
                "busy",
            )
            .await,
        );
    }
    let request = voyage_core::exchange::push::SyncRequest {
        company_id: "acme".into(),
        connection_id: conn["id"].as_str().unwrap().into(),
        subscription_id: conn["channel_id"].as_str().unwrap().into(),
        reason: "notification".into(),
    };
    let deps = &w.app.local.deps;
    let first = voyage_core::exchange::sync::handle(deps, &request)
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
            &format!("{d0}T15:00:00", d0 = date(0)),
            &format!("{d0}T16:00:00", d0 = date(0)),
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
    let second = voyage_core::exchange::sync::handle(deps, &request)
        .await
        .unwrap();
    // THEN it started over with a full sync and the overrides match the calendar exactly
    assert!(second.resynced, "{second:?}");
    let (_, body) = w
        .app
        .call(
            "GET",
            &format!(
                "/v1/staff/ann/overrides?from={d0}T00:00:00Z&to={d1}T00:00:00Z",
                d0 = date(0),
                d1 = date(1)
            ),
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
    let third = voyage_core::exchange::sync::handle(deps, &request)
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

// ---------------------------------------------------------------------------------------
// Convergence under realistic orderings (issue #10): each scenario below once ended wrong.

mod convergence {
    use super::*;
    use voyage_core::exchange::push::SyncRequest;
    use voyage_core::exchange::sync;
    use voyage_core::model::Provider;

    /// A change with the platform's `version`.
    fn versioned(action: &str, session: &str, hour: u32, version: u64) -> Value {
        let mut c = change(action, "acme", session, "ann", hour);
        c["session"]["version"] = json!(version);
        c
    }

    /// A change on another day (`date` like `2027-08-01`).
    fn on_date(action: &str, session: &str, date: &str, version: u64) -> Value {
        let mut c = versioned(action, session, 9, version);
        c["session"]["start"] = json!(format!("{date}T09:00:00Z"));
        c["session"]["end"] = json!(format!("{date}T10:00:00Z"));
        c
    }

    async fn send(w: &GraphWorld, platform: &str, body: Value) -> Value {
        let (status, out) = w
            .app
            .call("POST", "/v1/exchange/outbound", platform, Some(body))
            .await;
        assert_eq!(status, 200, "{out}");
        out
    }

    /// The staff member creates a busy event and we wait for its override: proof that a
    /// round ran after everything that happened before.
    async fn round_ran(w: &GraphWorld, key: &str, hour: u32) {
        let id = w
            .staff_creates(
                "ann",
                "Proof",
                &format!("{d2}T{hour:02}:00:00", d2 = date(2)),
                &format!("{d2}T{:02}:00:00", hour + 1, d2 = date(2)),
                "busy",
            )
            .await;
        let deadline = Instant::now() + WITHIN;
        loop {
            let (_, body) = w
                .app
                .call(
                    "GET",
                    &format!(
                        "/v1/staff/ann/overrides?from={d2}T00:00:00Z&to={d3}T00:00:00Z",
                        d2 = date(2),
                        d3 = date(3)
                    ),
                    key,
                    None,
                )
                .await;
            let seen = body["data"]
                .as_array()
                .is_some_and(|o| o.iter().any(|o| o["external_event_id"] == id.as_str()));
            if seen {
                return;
            }
            assert!(Instant::now() < deadline, "no round ran: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn live_of(events: &[Value], session: &str) -> Vec<Value> {
        let tag = format!("acme/{session}");
        events
            .iter()
            .filter(|e| {
                e["singleValueExtendedProperties"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p["value"] == tag.as_str()))
            })
            .cloned()
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_dragged_beyond_the_sync_window_reschedules_the_booking_instead_of_cancelling_it(
    ) {
        let (w, receiver, _key, platform) = world().await;
        let event = book(&w, &platform, "s1", 9).await;
        // Graph reports an event moved out of the window as removed (reason "deleted").
        let far = json!({"dateTime": format!("{d244}T09:00:00.0000000", d244 = date(244)), "timeZone": "UTC"});
        let far_end = json!({"dateTime": format!("{d244}T10:00:00.0000000", d244 = date(244)), "timeZone": "UTC"});
        assert_eq!(
            w.staff(
                "PATCH",
                "ann",
                &event,
                "",
                Some(json!({"start": far, "end": far_end}))
            )
            .await,
            200
        );
        let s = until(&w, "s1", "rescheduled beyond the window", |s| {
            s.start.format("%Y-%m-%d").to_string() == date(244)
        })
        .await;
        assert_eq!(s.status, SessionStatus::Confirmed);
        wait_event(&receiver, "session.rescheduled").await;
        assert!(!events(&receiver)
            .iter()
            .any(|e| e == "session.cancellation_pending"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_platform_move_beyond_the_sync_window_keeps_the_booking_and_its_event() {
        let (w, _receiver, key, platform) = world().await;
        book(&w, &platform, "s1", 9).await;
        let out = send(&w, &platform, on_date("updated", "s1", &date(244), 2)).await;
        assert_eq!(out["outcome"], "updated", "{out}");
        round_ran(&w, &key, 8).await;
        let s = session(&w, "s1").await;
        assert_eq!(s.status, SessionStatus::Confirmed);
        let live = live_of(&w.live_events("ann").await, "s1");
        assert_eq!(live.len(), 1);
        assert_eq!(
            live[0]["start"]["dateTime"],
            format!("{d244}T09:00:00.0000000", d244 = date(244))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_platform_edit_during_a_pending_cancellation_makes_no_second_event_and_a_restore_takes_the_new_time(
    ) {
        let (w, receiver, _key, platform) = world().await;
        let out = send(&w, &platform, versioned("created", "s1", 9, 1)).await;
        let event = out["event_id"].as_str().unwrap().to_string();
        assert_eq!(w.staff("DELETE", "ann", &event, "", None).await, 204);
        until(&w, "s1", "pending", |s| {
            s.status == SessionStatus::PendingCancellation
        })
        .await;
        // The platform moves the booking while its cancellation is pending.
        let out = send(&w, &platform, versioned("updated", "s1", 11, 2)).await;
        assert_eq!(out["outcome"], "skipped", "{out}");
        assert_eq!(out["session_status"], "pending_cancellation");
        assert!(live_of(&w.live_events("ann").await, "s1").is_empty());
        // The staff member restores the event: the booking is back, at the platform's time.
        assert_eq!(w.restore("ann", &event).await, 200);
        until(&w, "s1", "restored", |s| {
            s.status == SessionStatus::Confirmed
        })
        .await;
        wait_event(&receiver, "session.restored").await;
        let deadline = Instant::now() + WITHIN;
        loop {
            let live = live_of(&w.live_events("ann").await, "s1");
            if live.len() == 1
                && live[0]["start"]["dateTime"] == format!("{d0}T11:00:00.0000000", d0 = date(0))
            {
                break;
            }
            assert!(Instant::now() < deadline, "event not moved: {live:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let s = session(&w, "s1").await;
        assert_eq!(s.start.format("%H").to_string(), "11");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_platform_edit_during_the_grace_leaves_no_event_once_the_cancellation_is_committed() {
        let (w, receiver, _key, platform) = world().await;
        let out = send(&w, &platform, versioned("created", "s1", 9, 1)).await;
        let event = out["event_id"].as_str().unwrap().to_string();
        assert_eq!(w.staff("DELETE", "ann", &event, "", None).await, 204);
        until(&w, "s1", "pending", |s| {
            s.status == SessionStatus::PendingCancellation
        })
        .await;
        send(&w, &platform, versioned("updated", "s1", 11, 2)).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        voyage_fn_scheduled::run(
            voyage_fn_scheduled::Job::CommitPendingCancellations,
            &w.app.local.deps,
        )
        .await
        .unwrap();
        let s = session(&w, "s1").await;
        assert_eq!(s.status, SessionStatus::Cancelled);
        wait_event(&receiver, "session.cancelled").await;
        assert!(live_of(&w.live_events("ann").await, "s1").is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_update_retried_after_its_cancellation_is_stale_and_writes_nothing() {
        let (w, _receiver, key, platform) = world().await;
        send(&w, &platform, versioned("created", "s1", 9, 1)).await;
        send(&w, &platform, versioned("cancelled", "s1", 9, 3)).await;
        // A round started by the creation's push may still hold a page read before the
        // cancellation, and delete the event again after it (a write, rightly: the session is
        // cancelled). Wait until a later round ran: only what `updated` v2 causes is measured.
        round_ran(&w, &key, 8).await;
        w.sim.clear_served();
        // The platform's `updated` v2, throttled and retried, arrives after `cancelled` v3.
        let out = send(&w, &platform, versioned("updated", "s1", 10, 2)).await;
        assert_eq!(out["outcome"], "stale", "{out}");
        assert_eq!(out["session_status"], "cancelled");
        // (Delta rounds run by the consumers may read meanwhile, batched reads included;
        // nothing is written.)
        let writes: Vec<String> = w
            .graph_calls()
            .into_iter()
            .filter(|c| {
                !c.starts_with("GET") && !c.contains("token") && !c.contains(" batch-read ")
            })
            .collect();
        assert!(writes.is_empty(), "{writes:?}");
        let s = session(&w, "s1").await;
        assert_eq!(
            (s.status, s.start.format("%H").to_string()),
            (SessionStatus::Cancelled, "09".into())
        );
        assert!(live_of(&w.live_events("ann").await, "s1").is_empty());
        // The same version again once it was applied is stale too.
        let again = send(&w, &platform, versioned("cancelled", "s1", 9, 3)).await;
        assert_eq!(again["outcome"], "stale");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_versions_an_update_after_a_cancellation_does_not_book_it_again() {
        let (w, _receiver, _key, platform) = world().await;
        book(&w, &platform, "s1", 9).await;
        send(&w, &platform, change("cancelled", "acme", "s1", "ann", 9)).await;
        let out = send(&w, &platform, change("updated", "acme", "s1", "ann", 10)).await;
        assert_eq!(out["session_status"], "cancelled", "{out}");
        assert!(live_of(&w.live_events("ann").await, "s1").is_empty());
        // `created` books it again (arrival order).
        let out = send(&w, &platform, change("created", "acme", "s1", "ann", 10)).await;
        assert_eq!(
            (out["outcome"].as_str(), out["session_status"].as_str()),
            (Some("created"), Some("confirmed")),
            "{out}"
        );
        assert_eq!(live_of(&w.live_events("ann").await, "s1").len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_version_that_is_not_a_positive_integer_is_refused_naming_the_field() {
        let (w, _receiver, _key, platform) = world().await;
        for bad in [json!(0), json!(-1), json!("2"), json!(1.5)] {
            let mut body = change("created", "acme", "s1", "ann", 9);
            body["session"]["version"] = bad.clone();
            let (status, out) = w
                .app
                .call("POST", "/v1/exchange/outbound", &platform, Some(body))
                .await;
            assert_eq!(status, 422, "{bad}: {out}");
            assert_eq!(out["error"]["field"], "session.version", "{bad}: {out}");
        }
        assert!(w.live_events("ann").await.is_empty());
    }

    /// A world whose queue consumers are idle: rounds run only when the test says.
    async fn idle_world() -> (GraphWorld, String, String, String) {
        let w = GraphWorld::start(&[("VOYAGE_PENDING_CANCELLATION_GRACE", "1s")]).await;
        let (key, conn) = w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
        let platform = w.app.key("platform", true).await;
        let id = conn["id"].as_str().unwrap().to_string();
        (w, key, platform, id)
    }

    async fn round(w: &GraphWorld, connection: &str) -> sync::RoundReport {
        let req = SyncRequest {
            company_id: "acme".into(),
            connection_id: connection.into(),
            subscription_id: String::new(),
            reason: "notification".into(),
        };
        sync::handle(&w.app.local.deps, &req).await.unwrap()
    }

    /// `s1` booked, its event deleted in Outlook (a round starts the pending cancellation),
    /// restored with no round seeing it, and the grace over: the event's id.
    async fn restored_past_the_grace(w: &GraphWorld, platform: &str, conn: &str) -> String {
        round(w, conn).await;
        let event = book(w, platform, "s1", 9).await;
        assert_eq!(w.staff("DELETE", "ann", &event, "", None).await, 204);
        round(w, conn).await;
        assert_eq!(
            session(w, "s1").await.status,
            SessionStatus::PendingCancellation
        );
        assert_eq!(w.restore("ann", &event).await, 200);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        event
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_commit_sweep_never_cancels_a_booking_whose_event_came_back() {
        let (w, _key, platform, conn) = idle_world().await;
        // Restored, but its notification has not been handled when the grace ends.
        restored_past_the_grace(&w, &platform, &conn).await;
        voyage_fn_scheduled::run(
            voyage_fn_scheduled::Job::CommitPendingCancellations,
            &w.app.local.deps,
        )
        .await
        .unwrap();
        let s = session(&w, "s1").await;
        assert_eq!(s.status, SessionStatus::Confirmed, "{:?}", s.history);
        assert_eq!(s.history.last().unwrap().command, "restore");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sweep_past_its_time_budget_leaves_the_rest_to_the_next_sweep() {
        let (w, _key, platform, conn) = idle_world().await;
        round(&w, &conn).await;
        for (session, hour) in [("s1", 9), ("s2", 11), ("s3", 13)] {
            let event = book(&w, &platform, session, hour).await;
            assert_eq!(w.staff("DELETE", "ann", &event, "", None).await, 204);
        }
        round(&w, &conn).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // Each confirming read of a deleted event takes 300 ms; the budget is 100 ms.
        w.sim.add_fault(voyage_simulators::Fault {
            method: Some("GET".into()),
            path_contains: Some("/events/".into()),
            status: None,
            retry_after: None,
            latency_ms: Some(300),
            count: 10,
            after: 0,
            lose_answer: false,
        });

        let first = sync::commit_pending_cancellations_within(
            &w.app.local.deps,
            Duration::from_millis(100),
        )
        .await
        .unwrap();

        assert_eq!(first.processed, 1, "{first:?}");
        w.sim.clear_faults();
        let next = sync::commit_pending_cancellations(&w.app.local.deps)
            .await
            .unwrap();
        assert_eq!(next.processed, 2, "{next:?}");
        for session_id in ["s1", "s2", "s3"] {
            assert_eq!(
                session(&w, session_id).await.status,
                SessionStatus::Cancelled
            );
        }
    }

    /// A restored event whose times Graph serves in a zone this build cannot read is not
    /// taken for gone: the sweep leaves the cancellation pending, and the next sweep that can
    /// read the event sees it back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_commit_sweep_waits_while_a_restored_events_times_cannot_be_read() {
        let (w, _key, platform, conn) = idle_world().await;
        let event = restored_past_the_grace(&w, &platform, &conn).await;
        let odd = voyage_tests::quirks::unreadable_times(&w.app.local.deps, &event);

        sync::commit_pending_cancellations(&odd).await.unwrap();

        assert_eq!(
            session(&w, "s1").await.status,
            SessionStatus::PendingCancellation
        );
        sync::commit_pending_cancellations(&w.app.local.deps)
            .await
            .unwrap();
        let s = session(&w, "s1").await;
        assert_eq!(s.status, SessionStatus::Confirmed, "{:?}", s.history);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_platform_edit_that_finds_the_event_deleted_starts_the_cancellation_instead_of_a_second_event(
    ) {
        let (w, _key, platform, conn) = idle_world().await;
        round(&w, &conn).await;
        let event = book(&w, &platform, "s1", 9).await;
        // Deleted in Outlook; no round has seen it yet when the platform moves the booking.
        assert_eq!(w.staff("DELETE", "ann", &event, "", None).await, 204);
        let out = send(&w, &platform, change("updated", "acme", "s1", "ann", 11)).await;
        assert_eq!(
            (out["outcome"].as_str(), out["session_status"].as_str()),
            (Some("skipped"), Some("pending_cancellation")),
            "{out}"
        );
        assert!(live_of(&w.live_events("ann").await, "s1").is_empty());
        // The round that then sees the deletion changes nothing more.
        round(&w, &conn).await;
        let s = session(&w, "s1").await;
        assert_eq!(s.status, SessionStatus::PendingCancellation);
        assert_eq!(
            s.history
                .iter()
                .filter(|h| h.command == "pending_cancellation")
                .count(),
            1
        );
    }

    /// The CI failure of stop 16, made deterministic: the round reads the old event's
    /// removal while the re-booking's create is in flight (its intent recorded, the session
    /// confirmed again, the old event still mapped).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_removal_of_a_cancelled_bookings_old_event_does_not_cancel_its_re_booking() {
        let (w, _key, platform, conn) = idle_world().await;
        round(&w, &conn).await;
        book(&w, &platform, "s1", 9).await;
        send(&w, &platform, change("cancelled", "acme", "s1", "ann", 9)).await;
        // The re-booking's create is slow; the round runs while it is held.
        w.sim.add_fault(voyage_simulators::Fault {
            method: Some("POST".into()),
            path_contains: Some("/events".into()),
            status: None,
            retry_after: None,
            latency_ms: Some(1500),
            count: 1,
            after: 0,
            lose_answer: false,
        });
        let rebook = send(&w, &platform, change("created", "acme", "s1", "ann", 10));
        let meanwhile = async {
            until(&w, "s1", "re-booking intent", |s| {
                s.status == SessionStatus::Confirmed
            })
            .await;
            round(&w, &conn).await
        };
        let (out, report) = tokio::join!(rebook, meanwhile);
        assert_eq!(report.commands, 0, "{report:?}");
        assert_eq!(
            (out["outcome"].as_str(), out["session_status"].as_str()),
            (Some("created"), Some("confirmed")),
            "{out}"
        );
        assert_eq!(session(&w, "s1").await.status, SessionStatus::Confirmed);
        assert_eq!(live_of(&w.live_events("ann").await, "s1").len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restored_event_of_a_cancelled_booking_is_deleted_again_with_a_history_entry() {
        let (w, _key, platform, conn) = idle_world().await;
        round(&w, &conn).await;
        let event = book(&w, &platform, "s1", 9).await;
        send(&w, &platform, change("cancelled", "acme", "s1", "ann", 9)).await;
        assert!(live_of(&w.live_events("ann").await, "s1").is_empty());
        assert_eq!(w.restore("ann", &event).await, 200);
        let report = round(&w, &conn).await;
        assert_eq!(report.calendar_writes, 1, "{report:?}");
        assert!(live_of(&w.live_events("ann").await, "s1").is_empty());
        let s = session(&w, "s1").await;
        assert_eq!(s.status, SessionStatus::Cancelled);
        assert_eq!(s.history.last().unwrap().command, "delete_restored_event");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_cursor_is_rebased_by_a_full_sync_that_replaces_it_at_the_end() {
        let (w, _key, _platform, conn) = idle_world().await;
        let first = round(&w, &conn).await;
        assert!(first.resynced);
        let store = &w.app.local.deps.store;
        let mut cursor = store.get_cursor("acme", &conn).await.unwrap().unwrap();
        // A cursor based two days ago, as if nothing had happened since.
        cursor.based_at = Some(store.now() - chrono::Duration::days(2));
        store.save_cursor(&mut cursor).await.unwrap();
        let version = cursor.version;
        let report = round(&w, &conn).await;
        assert!(report.resynced, "{report:?}");
        let rebased = store.get_cursor("acme", &conn).await.unwrap().unwrap();
        assert_eq!(rebased.version, version + 1);
        assert!(rebased.based_at.unwrap() > store.now() - chrono::Duration::minutes(1));
        // And the next round is incremental again.
        assert!(!round(&w, &conn).await.resynced);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_for_one_connection_run_one_round_at_a_time() {
        let (w, _key, _platform, conn) = idle_world().await;
        let store = &w.app.local.deps.store;
        // A round holds the lease.
        let held = match store.claim_lease("acme", &conn).await.unwrap() {
            voyage_core::store::LeaseClaim::Acquired(l) => l,
            other => panic!("{other:?}"),
        };
        // A notification meanwhile coalesces instead of running a second round.
        let report = round(&w, &conn).await;
        assert!(report.coalesced && report.pages == 0, "{report:?}");
        // The holder is told to run once more, then the lease is free.
        let again = store.release_lease(held).await.unwrap();
        let voyage_core::store::Released::RunAgain(held) = again else {
            panic!("{again:?}")
        };
        assert_eq!(
            store.release_lease(held).await.unwrap(),
            voyage_core::store::Released::Done
        );
        assert!(!round(&w, &conn).await.coalesced);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deleting_a_connection_deletes_its_overrides_mappings_and_cursor() {
        let (w, key, platform, conn) = idle_world().await;
        w.staff_creates(
            "ann",
            "Dentist",
            &format!("{d1}T09:00:00", d1 = date(1)),
            &format!("{d1}T10:00:00", d1 = date(1)),
            "busy",
        )
        .await;
        book(&w, &platform, "s1", 9).await;
        round(&w, &conn).await;
        let store = &w.app.local.deps.store;
        let overrides = |store: &voyage_core::store::Store| {
            let store = store.clone();
            async move {
                store
                    .overrides_for_staff(
                        "acme",
                        "ann",
                        chrono::Utc::now() - chrono::Duration::days(1),
                        chrono::Utc::now() + chrono::Duration::days(30),
                    )
                    .await
                    .unwrap()
            }
        };
        assert_eq!(overrides(store).await.len(), 1);
        let (status, _) = w
            .app
            .call("DELETE", &format!("/v1/connections/{conn}"), &key, None)
            .await;
        assert_eq!(status, 204);
        assert!(overrides(store).await.is_empty());
        assert!(store
            .mapping_for_session("acme", Provider::Exchange, "s1")
            .await
            .unwrap()
            .is_none());
        assert!(store.get_cursor("acme", &conn).await.unwrap().is_none());
        // A new connection for the same staff member starts clean: one override, not two.
        let (status, created) = w
            .app
            .call(
                "POST",
                "/v1/connections",
                &key,
                Some(json!({"provider": "exchange", "staff_id": "ann", "staff_email": voyage_tests::graph::email("ann")})),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        round(&w, created["id"].as_str().unwrap()).await;
        assert_eq!(overrides(store).await.len(), 1);
    }

    /// A bus that refuses publishes while `refuse` is above zero.
    #[derive(Default)]
    struct FlakyBus {
        refuse: std::sync::atomic::AtomicU32,
        published: std::sync::Mutex<Vec<voyage_core::ports::BusEvent>>,
    }

    #[async_trait::async_trait]
    impl voyage_core::ports::EventBus for FlakyBus {
        async fn publish(
            &self,
            events: &[voyage_core::ports::BusEvent],
        ) -> Result<(), voyage_core::ports::BusError> {
            use std::sync::atomic::Ordering;
            if self.refuse.load(Ordering::SeqCst) > 0 {
                self.refuse.fetch_sub(1, Ordering::SeqCst);
                return Err(voyage_core::ports::BusError::Unavailable("refused".into()));
            }
            self.published.lock().unwrap().extend_from_slice(events);
            Ok(())
        }
    }

    /// The core on the memory store and `clock`, with a bus refusing its next `refusals`
    /// publishes.
    fn memory_deps(
        clock: &std::sync::Arc<voyage_core::ports::ManualClock>,
        refusals: u32,
    ) -> (
        voyage_core::store::Store,
        std::sync::Arc<FlakyBus>,
        voyage_core::deps::Deps,
    ) {
        use std::sync::Arc;
        let store = voyage_core::store::Store::new(
            Arc::new(voyage_core::ports::memory::MemoryTable::new()),
            clock.clone(),
        );
        let bus = Arc::new(FlakyBus::default());
        bus.refuse
            .store(refusals, std::sync::atomic::Ordering::SeqCst);
        let config = voyage_core::config::Config::from_lookup(|_| None).unwrap();
        let deps = voyage_core::deps::Deps::new(store.clone(), config).with_bus(bus.clone());
        (store, bus, deps)
    }

    /// A confirmed session `s1` of ann's, tomorrow.
    fn session_tomorrow(now: chrono::DateTime<chrono::Utc>) -> Session {
        voyage_tests::contract::store::session("acme", "s1", "ann", now + chrono::Duration::days(1))
    }

    #[tokio::test]
    async fn a_webhook_event_whose_publish_failed_reaches_the_bus_through_the_relay_once() {
        use std::sync::Arc;
        use voyage_core::booking::{self, Command};
        // GIVEN a bus that refuses every publish for now
        let clock = Arc::new(voyage_core::ports::ManualClock::new(chrono::Utc::now()));
        let (store, bus, deps) = memory_deps(&clock, 100);
        let now = clock_now(&clock);
        let mut s = store.create_session(&session_tomorrow(now)).await.unwrap();
        // WHEN a booking command is written and its publish fails
        let command = Command::PendingCancellation {
            grace: chrono::Duration::minutes(10),
        };
        assert!(
            booking::execute(&deps, &mut s, &command, "exchange-inbound")
                .await
                .unwrap()
        );
        // THEN the event waits in the stored outbox...
        let stored = store.get_session("acme", "s1").await.unwrap();
        assert_eq!(stored.outbox.len(), 1);
        assert!(bus.published.lock().unwrap().is_empty());
        // ...and the relay publishes it once the bus is back, once.
        bus.refuse.store(0, std::sync::atomic::Ordering::SeqCst);
        let report = booking::relay_outboxes(&deps).await.unwrap();
        assert_eq!((report.processed, report.failed), (1, 0));
        let again = booking::relay_outboxes(&deps).await.unwrap();
        assert_eq!(again.processed, 0);
        let published = bus.published.lock().unwrap().clone();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].detail_type, "session.cancellation_pending");
        assert_eq!(
            published[0].detail["idempotency_key"],
            stored.outbox[0].idempotency_key.as_str()
        );
        assert!(store
            .get_session("acme", "s1")
            .await
            .unwrap()
            .outbox
            .is_empty());
    }

    #[tokio::test]
    async fn a_round_owed_by_a_holder_that_died_is_found_once_its_lease_expires() {
        use std::sync::Arc;
        use voyage_core::store::{LeaseClaim, LEASE_TTL_SECONDS};
        let clock = Arc::new(voyage_core::ports::ManualClock::new(chrono::Utc::now()));
        let store = voyage_core::store::Store::new(
            Arc::new(voyage_core::ports::memory::MemoryTable::new()),
            clock.clone(),
        );
        // GIVEN a round holds the lease and a request coalesces into it
        assert!(matches!(
            store.claim_lease("acme", "c1").await.unwrap(),
            LeaseClaim::Acquired(_)
        ));
        assert_eq!(
            store.claim_lease("acme", "c1").await.unwrap(),
            LeaseClaim::Coalesced
        );
        assert!(store
            .abandoned_leases(clock_now(&clock), 10)
            .await
            .unwrap()
            .is_empty());
        // WHEN the holder dies and its lease expires
        clock.advance(chrono::Duration::seconds(LEASE_TTL_SECONDS + 1));
        // THEN the sweep finds the round it owed...
        assert_eq!(
            store.abandoned_leases(clock_now(&clock), 10).await.unwrap(),
            vec![("acme".to_string(), "c1".to_string())]
        );
        // ...and once a new round takes the lease, nothing is owed any more.
        assert!(matches!(
            store.claim_lease("acme", "c1").await.unwrap(),
            LeaseClaim::Acquired(_)
        ));
        clock.advance(chrono::Duration::seconds(LEASE_TTL_SECONDS + 1));
        assert!(store
            .abandoned_leases(clock_now(&clock), 10)
            .await
            .unwrap()
            .is_empty());
    }

    fn clock_now(clock: &voyage_core::ports::ManualClock) -> chrono::DateTime<chrono::Utc> {
        use voyage_core::ports::Clock;
        clock.now()
    }

    #[tokio::test]
    async fn a_bus_outage_does_not_hold_back_a_cancellation_that_is_due() {
        use std::sync::Arc;
        use voyage_core::booking::{self, Command};
        // GIVEN a pending cancellation whose webhook the bus refused, and the bus still down
        let clock = Arc::new(voyage_core::ports::ManualClock::new(chrono::Utc::now()));
        let (store, _bus, deps) = memory_deps(&clock, 1000);
        let now = clock_now(&clock);
        let mut s = store.create_session(&session_tomorrow(now)).await.unwrap();
        let grace = chrono::Duration::minutes(10);
        booking::execute(
            &deps,
            &mut s,
            &Command::PendingCancellation { grace },
            "exchange-inbound",
        )
        .await
        .unwrap();
        // WHEN the grace passes and the sweep runs
        clock.advance(grace + chrono::Duration::minutes(1));
        voyage_core::exchange::sync::commit_pending_cancellations(&deps)
            .await
            .unwrap();
        // THEN the booking is cancelled, both events waiting for the bus
        let after = store.get_session("acme", "s1").await.unwrap();
        assert_eq!(after.status, SessionStatus::Cancelled);
        let waiting: Vec<&str> = after.outbox.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            waiting,
            ["session.cancellation_pending", "session.cancelled"]
        );
    }
}

/// `sequence` on `session.*` webhooks: increasing per session across the booking engine's
/// events and the platform's own dispatches, so a receiver can drop a stale one.
mod sequence {
    use super::*;

    /// `(type, sequence)` of every received event of session `id`, in arrival order.
    fn sequences(r: &Receiver, id: &str) -> Vec<(String, u64)> {
        r.received()
            .iter()
            .filter_map(|m| serde_json::from_str::<Value>(&m.body).ok())
            .filter(|b| b["data"]["session_id"] == id)
            .map(|b| {
                let seq = b["data"]["sequence"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no sequence in {b}"));
                (b["type"].as_str().unwrap().to_string(), seq)
            })
            .collect()
    }

    fn of(got: &[(String, u64)], event: &str) -> u64 {
        got.iter()
            .find(|(t, _)| t == event)
            .map(|(_, s)| *s)
            .unwrap_or_else(|| panic!("no {event} in {got:?}"))
    }

    async fn platform_dispatch(w: &GraphWorld, platform: &str, event: &str) -> u16 {
        let (status, out) = w
            .app
            .call(
                "POST",
                "/v1/webhooks/dispatch",
                platform,
                Some(
                    json!({"company_id": "acme", "event": event, "payload": {"session_id": "s1"}}),
                ),
            )
            .await;
        assert_eq!(status, 202, "{out}");
        status.as_u16()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sequence_increases_across_a_reschedule_and_a_cancellation() {
        let (w, receiver, _key, platform) = world().await;
        let event = book(&w, &platform, "s1", 9).await;
        // The platform announces the booking itself.
        platform_dispatch(&w, &platform, "session.created").await;
        wait_event(&receiver, "session.created").await;

        // Moved in Outlook -> rescheduled.
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
        wait_event(&receiver, "session.rescheduled").await;
        // The platform sends an update of its own after it.
        platform_dispatch(&w, &platform, "session.updated").await;
        wait_event(&receiver, "session.updated").await;

        // Deleted in Outlook -> pending, then committed -> cancelled.
        assert_eq!(w.staff("DELETE", "ann", &event, "", None).await, 204);
        until(&w, "s1", "pending", |s| {
            s.status == SessionStatus::PendingCancellation
        })
        .await;
        wait_event(&receiver, "session.cancellation_pending").await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        voyage_fn_scheduled::run(
            voyage_fn_scheduled::Job::CommitPendingCancellations,
            &w.app.local.deps,
        )
        .await
        .unwrap();
        wait_event(&receiver, "session.cancelled").await;

        let got = sequences(&receiver, "s1");
        let order = [
            "session.created",
            "session.rescheduled",
            "session.updated",
            "session.cancellation_pending",
            "session.cancelled",
        ];
        let seqs: Vec<u64> = order.iter().map(|e| of(&got, e)).collect();
        assert!(
            seqs.windows(2).all(|p| p[0] < p[1]),
            "not increasing in the order of the changes: {:?}",
            order.iter().zip(&seqs).collect::<Vec<_>>()
        );
        // Each event once, each with its own value.
        let mut all: Vec<u64> = got.iter().map(|(_, s)| *s).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), got.len(), "{got:?}");

        // A receiver following docs/WEBHOOKS.md keeps the highest sequence per session and
        // drops anything not above it: replaying the log in reverse applies only the newest.
        let mut highest: std::collections::HashMap<String, u64> = Default::default();
        let mut applied = Vec::new();
        for (event, seq) in got.iter().rev() {
            let last = highest.entry("s1".into()).or_insert(0);
            if *seq > *last {
                *last = *seq;
                applied.push(event.clone());
            }
        }
        assert_eq!(applied, ["session.cancelled"]);

        // A sequence the platform sends is kept; a bad one is refused naming the field.
        let (status, out) = w
            .app
            .call(
                "POST",
                "/v1/webhooks/dispatch",
                &platform,
                Some(json!({"company_id": "acme", "event": "session.updated", "payload": {"session_id": "s1", "sequence": "x"}})),
            )
            .await;
        assert_eq!(status, 422, "{out}");
        assert_eq!(out["error"]["field"], "payload.sequence");
        let (status, out) = w
            .app
            .call(
                "POST",
                "/v1/webhooks/dispatch",
                &platform,
                Some(json!({"company_id": "acme", "event": "session.updated", "payload": {"staff_id": "ann"}})),
            )
            .await;
        assert_eq!(status, 422, "{out}");
        assert_eq!(out["error"]["field"], "payload.session_id");
    }
}

/// A booking whose cancellation is pending, given by the platform to another staff member.
mod reassigned {
    use super::*;

    /// Left out at an earlier stop: the booking was confirmed again without a word to the
    /// tenant, who had been told (`session.cancellation_pending`) that it was about to be
    /// cancelled.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pending_cancellation_ended_by_giving_the_booking_to_another_staff_member_is_a_restored_webhook(
    ) {
        // Arrange: booked with ann, who deletes the event; the grace is long enough not to
        // end first.
        let (w, receiver, _key, platform) = world_with_grace("10m").await;
        let event = book(&w, &platform, "s1", 9).await;
        assert_eq!(w.staff("DELETE", "ann", &event, "", None).await, 204);
        until(&w, "s1", "pending after delete", |s| {
            s.status == SessionStatus::PendingCancellation
        })
        .await;
        wait_event(&receiver, "session.cancellation_pending").await;

        // Act: the platform gives the booking to bob.
        let (status, out) = w
            .app
            .call(
                "POST",
                "/v1/sessions/changes",
                &platform,
                Some(change("updated", "acme", "s1", "bob", 9)),
            )
            .await;
        assert_eq!(status, 200, "{out}");

        // Assert: confirmed with bob, and the tenant is told, after the pending event.
        wait_event(&receiver, "session.restored").await;
        let bodies: Vec<Value> = receiver
            .received()
            .iter()
            .filter_map(|m| serde_json::from_str::<Value>(&m.body).ok())
            .collect();
        let of = |t: &str| {
            bodies
                .iter()
                .find(|b| b["type"] == t)
                .map(|b| b["data"].clone())
                .unwrap()
        };
        let (pending, restored) = (of("session.cancellation_pending"), of("session.restored"));
        assert_eq!(
            (
                &restored["status"],
                &restored["staff_id"],
                &restored["origin"],
                &restored["reason"]
            ),
            (
                &json!("confirmed"),
                &json!("bob"),
                &json!("platform"),
                &json!("reassigned")
            ),
            "{restored}"
        );
        assert!(
            restored["sequence"].as_u64() > pending["sequence"].as_u64(),
            "{pending} then {restored}"
        );
        assert_eq!(session(&w, "s1").await.status, SessionStatus::Confirmed);
    }
}

/// A Graph subscription dropped without its lifecycle notification reaching the system.
mod lost_subscription {
    use super::*;
    use voyage_core::exchange::channels::SUBSCRIPTION_MINUTES;

    /// The day-old subscription of ann's connection, as the store holds it: its expiry set
    /// to what a renewal `age` ago gave it.
    async fn age_subscription(w: &GraphWorld, age: chrono::Duration) -> String {
        let store = &w.app.local.deps.store;
        let renewed = chrono::Utc::now() - age;
        // The connection's first round (queued when it was made) may record its sync at
        // the same moment: a lost race is read again.
        loop {
            let mut c = store
                .connection_for_staff("acme", "ann", Provider::Exchange)
                .await
                .unwrap()
                .unwrap();
            let channel = c.channel.as_mut().unwrap();
            channel.expires_at = renewed + chrono::Duration::minutes(SUBSCRIPTION_MINUTES);
            channel.renewed_at = Some(renewed);
            let id = channel.id.clone();
            match store.update_connection(&mut c).await {
                Ok(()) => return id,
                Err(voyage_core::Error::Conflict { .. }) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    }

    async fn renew(w: &GraphWorld) -> voyage_core::jobs::JobReport {
        voyage_fn_scheduled::run(
            voyage_fn_scheduled::Job::RenewSubscriptions,
            &w.app.local.deps,
        )
        .await
        .unwrap()
    }

    /// Left out at an earlier stop: such a subscription was made again only when it fell due
    /// for renewal, up to a week later, and what the staff member did meanwhile waited for
    /// the daily re-base round.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscription_lost_without_a_word_is_made_again_within_a_day_and_its_gap_caught_up() {
        // Arrange: booked with ann. Graph drops the subscription; its lifecycle
        // notification, and every notification from now on, is lost (captured).
        let (w, _receiver, _key, platform) = world_with_grace("10m").await;
        let event = book(&w, &platform, "s1", 9).await;
        let lost = age_subscription(&w, chrono::Duration::hours(25)).await;
        w.sim.capture_notifications(true);
        assert_eq!(
            w.control(
                &format!("subscriptions/{lost}/lifecycle"),
                json!({"lifecycleEvent": "subscriptionRemoved"})
            )
            .await,
            202
        );
        // ann deletes the event meanwhile: nobody is told.
        assert_eq!(w.staff("DELETE", "ann", &event, "", None).await, 204);

        // Act: the hourly renewal job runs.
        let report = renew(&w).await;

        // Assert: a new subscription, and the deletion found without any notification.
        assert_eq!(report.processed, 1, "{report:?}");
        let subs = w.subscriptions().await;
        assert_eq!(subs.len(), 1, "{subs:?}");
        assert_ne!(subs[0]["id"], lost.as_str());
        until(&w, "s1", "pending after the catch-up round", |s| {
            s.status == SessionStatus::PendingCancellation
        })
        .await;
    }

    /// Arrange of the findings below: booked with ann; her day-old subscription is dropped
    /// by Graph without a word reaching us (every notification captured from now on), and
    /// she deletes the event meanwhile.
    async fn lost_with_a_deletion_meanwhile() -> GraphWorld {
        let (w, _receiver, _key, platform) = world_with_grace("10m").await;
        let event = book(&w, &platform, "s1", 9).await;
        let lost = age_subscription(&w, chrono::Duration::hours(25)).await;
        w.sim.capture_notifications(true);
        assert_eq!(
            w.control(
                &format!("subscriptions/{lost}/lifecycle"),
                json!({"lifecycleEvent": "subscriptionRemoved"})
            )
            .await,
            202
        );
        assert_eq!(w.staff("DELETE", "ann", &event, "", None).await, 204);
        w
    }

    async fn stored_subscription(w: &GraphWorld) -> Option<String> {
        w.app
            .local
            .deps
            .store
            .connection_for_staff("acme", "ann", Provider::Exchange)
            .await
            .unwrap()
            .and_then(|c| c.channel)
            .map(|c| c.id)
    }

    /// `renew_all` through the world's dependencies, with `meanwhile` run to its end just
    /// as Graph makes the new subscription.
    async fn renew_with_meanwhile(
        w: &GraphWorld,
        meanwhile: voyage_tests::races::Meanwhile,
    ) -> voyage_core::jobs::JobReport {
        let racing = voyage_tests::hooked::hooked(
            &w.app.local.deps,
            Provider::Exchange,
            voyage_tests::hooked::Write::Subscribe,
            voyage_tests::hooked::once(meanwhile),
        );
        voyage_core::exchange::channels::renew_all(&racing)
            .await
            .unwrap()
    }

    /// Review 10, finding 2: the connection changed (a round recorded its sync) while Graph
    /// made the new subscription, so recording it lost its race, and the subscription was
    /// left an orphan Graph notifies for a week (and the lost one stayed recorded). A lost
    /// race with a write that left the subscription alone is now read again and recorded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_renewal_that_loses_its_race_to_another_write_of_the_connection_is_recorded_all_the_same(
    ) {
        // Arrange: the connection is written meanwhile, as Graph makes the new subscription.
        let w = lost_with_a_deletion_meanwhile().await;
        let elsewhere = w.app.local.deps.clone();
        let meanwhile: voyage_tests::races::Meanwhile = Box::pin(async move {
            loop {
                let mut c = elsewhere
                    .store
                    .connection_for_staff("acme", "ann", Provider::Exchange)
                    .await
                    .unwrap()
                    .unwrap();
                match elsewhere.store.update_connection(&mut c).await {
                    Ok(()) => break,
                    Err(voyage_core::Error::Conflict { .. }) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        });

        // Act
        let report = renew_with_meanwhile(&w, meanwhile).await;

        // Assert: one subscription, the stored one, and the catch-up round finds the
        // deletion.
        assert_eq!(report.processed, 1, "{report:?}");
        let subs = w.subscriptions().await;
        assert_eq!(subs.len(), 1, "{subs:?}");
        assert_eq!(
            subs[0]["id"].as_str().map(str::to_string),
            stored_subscription(&w).await
        );
        until(&w, "s1", "pending after the catch-up round", |s| {
            s.status == SessionStatus::PendingCancellation
        })
        .await;
    }

    /// Review 10, finding 2, the other race: another writer replaced the subscription while
    /// the renewal made its own. Theirs stands; the renewal's is removed, not left an orphan.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_renewal_overtaken_by_another_new_subscription_leaves_no_orphan() {
        // Arrange: the lifecycle handling's own new subscription lands meanwhile.
        let w = lost_with_a_deletion_meanwhile().await;
        let elsewhere = w.app.local.deps.clone();
        let meanwhile: voyage_tests::races::Meanwhile = Box::pin(async move {
            let mut c = elsewhere
                .store
                .connection_for_staff("acme", "ann", Provider::Exchange)
                .await
                .unwrap()
                .unwrap();
            voyage_core::exchange::channels::subscribe(&elsewhere, &mut c)
                .await
                .unwrap();
        });

        // Act
        let report = renew_with_meanwhile(&w, meanwhile).await;

        // Assert: exactly one subscription, the one recorded.
        assert_eq!(report.failed, 0, "{report:?}");
        let subs = w.subscriptions().await;
        assert_eq!(subs.len(), 1, "{subs:?}");
        assert_eq!(
            subs[0]["id"].as_str().map(str::to_string),
            stored_subscription(&w).await
        );
    }

    /// Review 10, finding 3: Graph refused the new subscription at the run that found the
    /// old one gone; the next run made it but queued no round, so the deletion waited for
    /// the daily re-base round.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_subscription_made_again_at_the_second_run_still_catches_up() {
        // Arrange: Graph refuses the next subscription.
        let w = lost_with_a_deletion_meanwhile().await;
        w.sim.add_fault(voyage_tests::calendars::fault(
            "POST",
            "subscriptions",
            400,
            1,
        ));

        // Act: two runs.
        let first = renew(&w).await;
        let second = renew(&w).await;

        // Assert
        assert_eq!(
            (first.failed, second.processed),
            (1, 1),
            "{first:?} {second:?}"
        );
        until(&w, "s1", "pending after the catch-up round", |s| {
            s.status == SessionStatus::PendingCancellation
        })
        .await;
    }

    /// Review 10, finding 5: renewals come daily now; one refused by a passing outage turned
    /// a healthy connection to `error` although its subscription had days to live.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_daily_renewal_graph_refuses_for_a_while_keeps_the_connection_active() {
        // Arrange: a day-old subscription; Graph answers its renewal 500 for a while.
        let (w, _receiver, _key, _platform) = world_with_grace("10m").await;
        let id = age_subscription(&w, chrono::Duration::hours(25)).await;
        w.sim.add_fault(voyage_tests::calendars::fault(
            "PATCH",
            "subscriptions",
            500,
            10,
        ));

        // Act
        let report = renew(&w).await;

        // Assert: not renewed, but nothing the tenant sees changed.
        assert_eq!(report.failed, 1, "{report:?}");
        let c = w
            .app
            .local
            .deps
            .store
            .connection_for_staff("acme", "ann", Provider::Exchange)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.status, c.last_error),
            (voyage_core::model::ConnectionStatus::Active, None)
        );
        assert_eq!(c.channel.map(|c| c.id), Some(id));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscription_renewed_less_than_a_day_ago_is_not_renewed_again() {
        // Arrange: renewed 23 hours ago.
        let (w, _receiver, _key, _platform) = world_with_grace("10m").await;
        let id = age_subscription(&w, chrono::Duration::hours(23)).await;

        // Act
        let report = renew(&w).await;

        // Assert: no call made, the subscription kept.
        assert_eq!(report.processed, 0, "{report:?}");
        let subs = w.subscriptions().await;
        assert_eq!(subs[0]["id"], id.as_str());
    }
}
