//! Google Calendar sync against the Google simulator over loopback HTTP.

use std::time::Duration;

use serde_json::{json, Value};
use voyage_core::deps::QueueName;
use voyage_core::model::{ConnectionStatus, Provider};
use voyage_simulators::google::SANDBOX_PRIVATE_KEY;
use voyage_tests::google::{day, email, timed, GoogleWorld, UNREGISTERED_KEY};

fn ids(overrides: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = overrides
        .iter()
        .map(|o| o["external_event_id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

async fn sync_now(w: &GoogleWorld, company: &str, conn: &Value) -> Value {
    let platform = w.app.key("platform", true).await;
    let (status, body) = w
        .app
        .call(
            "POST",
            "/v1/google-sync",
            &platform,
            Some(json!({"company_id": company, "connection_id": conn["id"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_then_incremental_sync_keeps_overrides_true() {
    let w = GoogleWorld::start(&[]).await;
    let (tenant, conn) = w
        .tenant_with_connection("acme", "ann", SANDBOX_PRIVATE_KEY)
        .await;
    assert_eq!(conn["status"], "active", "{conn}");
    w.control(
        "POST",
        &format!("calendars/{}", email("ann")),
        json!({"time_zone": "Europe/Berlin"}),
    )
    .await;
    let token = w.staff_token("ann").await;
    let d = day(5);
    let busy = w
        .insert(
            &token,
            "ann",
            timed(
                "Dentist",
                &format!("{d}T09:00:00Z"),
                &format!("{d}T10:00:00Z"),
            ),
        )
        .await;
    let free = w
        .insert(&token, "ann", json!({"summary": "Focus", "transparency": "transparent",
            "start": {"dateTime": format!("{d}T11:00:00Z")}, "end": {"dateTime": format!("{d}T12:00:00Z")}}))
        .await;
    let ours = w
        .insert(&token, "ann", json!({"summary": "Voyage session",
            "extendedProperties": {"private": {"voyageSessionId": "acme/s1"}},
            "start": {"dateTime": format!("{d}T13:00:00Z")}, "end": {"dateTime": format!("{d}T14:00:00Z")}}))
        .await;
    let holiday = w
        .insert(
            &token,
            "ann",
            json!({"summary": "Day off",
            "start": {"date": day(6)}, "end": {"date": day(7)}}),
        )
        .await;

    // Full sync: busy time only; the platform's own event and free time are not.
    let out = sync_now(&w, "acme", &conn).await;
    assert_eq!(out["report"]["full"], true, "{out}");
    let overrides = w.overrides(&tenant, "ann").await;
    let mut want = vec![busy.clone(), holiday.clone()];
    want.sort();
    assert_eq!(ids(&overrides), want);
    assert!(!ids(&overrides).contains(&free) && !ids(&overrides).contains(&ours));
    let all_day = overrides
        .iter()
        .find(|o| o["external_event_id"] == holiday.as_str())
        .unwrap();
    assert_eq!(all_day["all_day"], true);
    // Midnight in Berlin is 23:00 UTC the day before.
    assert!(
        all_day["start"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}T23:00:00", day(5))),
        "{all_day}"
    );
    assert!(overrides.iter().all(|o| o["source"] == "google"));

    // Incremental: a new busy event, the old one made free, the holiday deleted.
    let new = w
        .insert(
            &token,
            "ann",
            timed("Call", &format!("{d}T15:00:00Z"), &format!("{d}T16:00:00Z")),
        )
        .await;
    assert_eq!(
        w.edit(
            &token,
            "ann",
            "PATCH",
            &busy,
            Some(json!({"transparency": "transparent"}))
        )
        .await,
        200
    );
    assert_eq!(w.edit(&token, "ann", "DELETE", &holiday, None).await, 204);
    let out = sync_now(&w, "acme", &conn).await;
    assert_eq!(out["report"]["full"], false, "{out}");
    assert_eq!(out["report"]["events"], 3, "only the changes: {out}");
    assert_eq!(ids(&w.overrides(&tenant, "ann").await), [new]);
    let (_, shown) = w
        .app
        .call(
            "GET",
            &format!("/v1/connections/{}", conn["id"].as_str().unwrap()),
            &tenant,
            None,
        )
        .await;
    assert!(shown["last_sync_at"].is_string());
    // Deleting an already deleted event answers 410 `deleted` (what the client counts as done).
    assert_eq!(w.edit(&token, "ann", "DELETE", &holiday, None).await, 410);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_events_page_through_and_a_410_recovers() {
    let w = GoogleWorld::start(&[]).await;
    let (tenant, conn) = w
        .tenant_with_connection("acme", "ann", SANDBOX_PRIVATE_KEY)
        .await;
    let token = w.staff_token("ann").await;
    let d = day(10);
    let inserts = (0..1000).map(|i| {
        let (w, token) = (&w, &token);
        let d = d.clone();
        async move {
            let minute = i % 60;
            let hour = (i / 60) % 24;
            w.insert(
                token,
                "ann",
                timed(
                    "Busy",
                    &format!("{d}T{hour:02}:{minute:02}:00Z"),
                    &format!("{d}T{hour:02}:{minute:02}:30Z"),
                ),
            )
            .await
        }
    });
    let ids_made: Vec<String> = futures_util::future::join_all(inserts).await;
    let out = sync_now(&w, "acme", &conn).await;
    assert_eq!(out["report"]["pages"], 4, "250 per page: {out}");
    assert_eq!(out["report"]["overrides_upserted"], 1000);
    assert_eq!(w.overrides(&tenant, "ann").await.len(), 1000);
    // GIVEN an event deleted and every sync token expired
    assert_eq!(
        w.edit(&token, "ann", "DELETE", &ids_made[0], None).await,
        204
    );
    w.control("POST", "sync-tokens/expire", json!({})).await;
    // WHEN the next sync runs THEN it starts over and drops the deleted event's override
    let out = sync_now(&w, "acme", &conn).await;
    assert_eq!(
        (
            out["report"]["resynced"].as_bool(),
            out["report"]["full"].as_bool()
        ),
        (Some(true), Some(true)),
        "{out}"
    );
    let after = w.overrides(&tenant, "ann").await;
    assert_eq!(after.len(), 999);
    assert!(!ids(&after).contains(&ids_made[0]));
    assert_eq!(out["status"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_credentials_fail_one_connection_while_the_others_sync() {
    let w = GoogleWorld::start(&[]).await;
    let (good_tenant, good) = w
        .tenant_with_connection("acme", "ann", SANDBOX_PRIVATE_KEY)
        .await;
    let (_, bad) = w
        .tenant_with_connection("globex", "bob", UNREGISTERED_KEY)
        .await;
    // The broken key already failed to create a channel, readably.
    assert_eq!(bad["status"], "error");
    let reason = bad["last_error"].as_str().unwrap();
    assert!(
        reason.contains("Google refused the service account") && reason.contains("invalid_grant"),
        "{reason}"
    );
    assert!(!reason.contains("PRIVATE KEY"));
    // A connection lacking its calendar is skipped without an error status.
    let store = &w.app.local.deps.store;
    let mut odd = store
        .connection_for_staff("acme", "ann", Provider::Google)
        .await
        .unwrap()
        .unwrap();
    odd.id = "conn_nocal".into();
    odd.staff_id = "cara".into();
    odd.calendar_id = None;
    odd.channel = None;
    odd.version = 0;
    store.create_connection(&odd).await.unwrap();
    let token = w.staff_token("ann").await;
    let d = day(3);
    let ev = w
        .insert(
            &token,
            "ann",
            timed("Busy", &format!("{d}T09:00:00Z"), &format!("{d}T10:00:00Z")),
        )
        .await;
    let report = voyage_fn_scheduled::run(voyage_fn_scheduled::Job::GoogleSync, &w.app.local.deps)
        .await
        .unwrap();
    assert_eq!(report.failed, 1, "{report:?}");
    assert_eq!(ids(&w.overrides(&good_tenant, "ann").await), [ev]);
    let bad_now = store
        .get_connection("globex", bad["id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(bad_now.status, ConnectionStatus::Error);
    let good_now = store
        .get_connection("acme", good["id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(good_now.status, ConnectionStatus::Active);
    let odd_now = store.get_connection("acme", "conn_nocal").await.unwrap();
    assert_eq!(odd_now.last_error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_created_renewed_before_expiry_and_the_old_one_stopped() {
    let w = GoogleWorld::start(&[]).await;
    let (_, conn) = w
        .tenant_with_connection("acme", "ann", SANDBOX_PRIVATE_KEY)
        .await;
    let channels = w.control("GET", "channels", json!({})).await;
    let list = channels["value"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], conn["channel_id"]);
    assert_eq!(
        list[0]["address"],
        format!("{}/v1/google-sync/notifications", w.app_url)
    );
    let store = &w.app.local.deps.store;
    let deps = &w.app.local.deps;
    // Not due: nothing.
    let r = voyage_fn_scheduled::run(voyage_fn_scheduled::Job::RenewSubscriptions, deps)
        .await
        .unwrap();
    assert_eq!(r.processed, 0);
    // Due within the window: a new channel first, then the old one stopped.
    let mut c = store
        .connection_for_staff("acme", "ann", Provider::Google)
        .await
        .unwrap()
        .unwrap();
    c.channel.as_mut().unwrap().expires_at = chrono::Utc::now() + chrono::Duration::hours(3);
    store.update_connection(&mut c).await.unwrap();
    let r = voyage_fn_scheduled::run(voyage_fn_scheduled::Job::RenewSubscriptions, deps)
        .await
        .unwrap();
    assert_eq!(r.processed, 1);
    let fresh = store
        .connection_for_staff("acme", "ann", Provider::Google)
        .await
        .unwrap()
        .unwrap();
    let channel = fresh.channel.unwrap();
    assert_ne!(Some(channel.id.as_str()), conn["channel_id"].as_str());
    assert!(channel.expires_at > chrono::Utc::now() + chrono::Duration::days(6));
    let list = w.control("GET", "channels", json!({})).await["value"]
        .as_array()
        .cloned()
        .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], channel.id.as_str());
}

async fn push(
    w: &GoogleWorld,
    channel: &str,
    token: &str,
    state: &str,
    number: u64,
) -> (u16, Value) {
    let resp = w
        .http
        .post(format!("{}/v1/google-sync/notifications", w.app_url))
        // Header names in any case.
        .header("x-goog-channel-id", channel)
        .header("X-GOOG-CHANNEL-TOKEN", token)
        .header("X-Goog-Resource-State", state)
        .header("X-Goog-Message-Number", number.to_string())
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_are_authenticated_deduplicated_and_coalesced() {
    let w = GoogleWorld::start(&[]).await;
    let (_, conn) = w
        .tenant_with_connection("acme", "ann", SANDBOX_PRIVATE_KEY)
        .await;
    let channel = conn["channel_id"].as_str().unwrap().to_string();
    let secret = w
        .app
        .local
        .deps
        .store
        .connection_for_staff("acme", "ann", Provider::Google)
        .await
        .unwrap()
        .unwrap()
        .channel
        .unwrap()
        .secret;
    assert!(
        !conn.to_string().contains(&secret),
        "the channel token is never shown"
    );
    // Wrong token, unknown channel: refused, nothing queued.
    assert_eq!(push(&w, &channel, "guess", "exists", 2).await.0, 401);
    assert_eq!(push(&w, "nope", &secret, "exists", 2).await.0, 404);
    // The channel's first message.
    assert_eq!(
        push(&w, &channel, &secret, "sync", 1).await.1["outcome"],
        "acknowledged"
    );
    // A burst of 20 pushes (and one repeated message number) gives at most 2 syncs.
    let mut outcomes = Vec::new();
    for n in 2..22 {
        let (status, body) = push(&w, &channel, &secret, "exists", n).await;
        assert_eq!(status, 200);
        outcomes.push(body["outcome"].as_str().unwrap().to_string());
    }
    assert_eq!(
        push(&w, &channel, &secret, "exists", 5).await.1["outcome"],
        "duplicate"
    );
    let queued = outcomes.iter().filter(|o| *o == "queued").count();
    assert!((1..=2).contains(&queued), "{outcomes:?}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let queue = w.app.local.deps.queue(QueueName::GoogleSync).unwrap();
    let messages = queue.receive(10, Duration::from_millis(300)).await.unwrap();
    assert_eq!(messages.len(), queued);
    // The queued sync runs through the worker, like the Lambda's batch.
    let batch = messages
        .iter()
        .map(|m| (m.id.clone(), m.body.clone()))
        .collect();
    let failed = voyage_fn_google_sync::worker::handle_batch(&w.app.local.deps, batch).await;
    assert!(failed.is_empty());
    let c = w
        .app
        .local
        .deps
        .store
        .connection_for_staff("acme", "ann", Provider::Google)
        .await
        .unwrap()
        .unwrap();
    assert!(c.last_sync_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_backed_off_and_credentials_are_validated_and_never_shown() {
    let w = GoogleWorld::start(&[]).await;
    let (tenant, conn) = w
        .tenant_with_connection("acme", "ann", SANDBOX_PRIVATE_KEY)
        .await;
    w.sim.add_fault(
        serde_json::from_value(
            json!({"method": "GET", "path_contains": "/events", "status": 403, "count": 2}),
        )
        .unwrap(),
    );
    let out = sync_now(&w, "acme", &conn).await;
    assert_eq!(out["status"], "active", "{out}");
    let statuses: Vec<u16> = w
        .sim
        .served()
        .iter()
        .filter(|s| s.method == "GET")
        .map(|s| s.status)
        .collect();
    assert_eq!(statuses, [403, 403, 200]);
    let (status, shown) = w
        .app
        .call("GET", "/v1/credentials/google", &tenant, None)
        .await;
    assert_eq!(status, 200);
    assert!(!shown.to_string().contains("PRIVATE KEY"), "{shown}");
    let (status, body) = w
        .app
        .call("PUT", "/v1/credentials/google", &tenant, Some(json!({"client_email": "a@b.c", "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", "token_uri": "https://oauth2.googleapis.com/token"})))
        .await;
    assert_eq!(
        (status.as_u16(), body["error"]["field"].as_str()),
        (422, Some("private_key")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_requested_while_another_runs_joins_it_instead_of_running_twice() {
    // GIVEN a connection whose sync is running (it holds the connection's lease)
    let w = GoogleWorld::start(&[]).await;
    let (_tenant, conn) = w
        .tenant_with_connection("acme", "ann", SANDBOX_PRIVATE_KEY)
        .await;
    let id = conn["id"].as_str().unwrap();
    let store = &w.app.local.deps.store;
    let held = match store.claim_lease("acme", id).await.unwrap() {
        voyage_core::store::LeaseClaim::Acquired(l) => l,
        other => panic!("{other:?}"),
    };
    // WHEN another sync of it is requested
    let mut c = store.get_connection("acme", id).await.unwrap();
    let report = voyage_core::google::sync::sync_connection(&w.app.local.deps, &mut c)
        .await
        .unwrap();
    // THEN it reads nothing itself, and the running one is told to go once more
    assert!(report.coalesced && report.pages == 0, "{report:?}");
    assert!(matches!(
        store.release_lease(held).await.unwrap(),
        voyage_core::store::Released::RunAgain(_)
    ));
}
