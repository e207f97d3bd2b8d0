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

/// Runs the google-sync queue's messages through the worker (as the Lambda's batches) until
/// it is empty; returns how many were handled.
async fn drain(w: &GoogleWorld) -> usize {
    let deps = &w.app.local.deps;
    let queue = deps.queue(QueueName::GoogleSync).unwrap();
    let mut handled = 0;
    loop {
        let messages = queue.receive(10, Duration::from_millis(100)).await.unwrap();
        if messages.is_empty() {
            return handled;
        }
        handled += messages.len();
        let batch = messages
            .iter()
            .map(|m| (m.id.clone(), m.body.clone()))
            .collect();
        let failed = voyage_fn_google_sync::worker::handle_batch(deps, batch).await;
        assert!(failed.is_empty(), "{failed:?}");
        for m in &messages {
            queue.ack(&m.receipt).await.unwrap();
        }
        assert!(handled < 10_000, "the queue never empties");
    }
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
    // Midnight in Berlin, in UTC: 23:00 the day before in winter, 22:00 in summer.
    let midnight = {
        use chrono::TimeZone;
        let local = chrono::NaiveDate::parse_from_str(&day(6), "%Y-%m-%d")
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        chrono_tz::Europe::Berlin
            .from_local_datetime(&local)
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    assert_eq!(
        all_day["start"]
            .as_str()
            .map(|s| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap()),
        Some(midnight),
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
    // The five-minute job queues one sync per connection; the workers run them.
    let report = voyage_fn_scheduled::run(voyage_fn_scheduled::Job::GoogleSync, &w.app.local.deps)
        .await
        .unwrap();
    assert_eq!((report.processed, report.failed), (3, 0), "{report:?}");
    assert_eq!(drain(&w).await, 3);
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

/// The token of ann's Google channel (the secret Google sends back with each push).
async fn channel_token(w: &GoogleWorld) -> String {
    w.app
        .local
        .deps
        .store
        .connection_for_staff("acme", "ann", Provider::Google)
        .await
        .unwrap()
        .unwrap()
        .channel
        .unwrap()
        .secret
}

/// A queue whose every send fails.
struct Unreachable;

#[async_trait::async_trait]
impl voyage_core::ports::Queue for Unreachable {
    async fn send(&self, _: &str, _: Duration) -> Result<(), voyage_core::ports::QueueError> {
        Err(voyage_core::ports::QueueError::Unavailable("down".into()))
    }
    async fn receive(
        &self,
        _: usize,
        _: Duration,
    ) -> Result<Vec<voyage_core::ports::ReceivedMessage>, voyage_core::ports::QueueError> {
        Ok(Vec::new())
    }
    async fn ack(&self, _: &str) -> Result<(), voyage_core::ports::QueueError> {
        Ok(())
    }
    async fn release(&self, _: &str, _: Duration) -> Result<(), voyage_core::ports::QueueError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_sync_could_not_be_queued_is_queued_when_google_sends_it_again() {
    // Arrange: a connection with its channel; the google-sync queue unreachable.
    let w = GoogleWorld::start(&[]).await;
    let (_, conn) = w
        .tenant_with_connection("acme", "ann", SANDBOX_PRIVATE_KEY)
        .await;
    let deps = &w.app.local.deps;
    let token = channel_token(&w).await;
    let push = voyage_core::google::push::Push {
        channel_id: conn["channel_id"].as_str().map(str::to_string),
        token: Some(token),
        resource_state: Some("exists".into()),
        message_number: Some("7".into()),
    };
    let mut down = (**deps).clone();
    down.queues
        .insert(QueueName::GoogleSync, std::sync::Arc::new(Unreachable));
    assert!(voyage_core::google::push::accept(&down, &push)
        .await
        .is_err());

    // Act: Google sends the same push again, the queue back.
    let again = voyage_core::google::push::accept(deps, &push).await;

    // Assert: queued, not taken for a duplicate or a coalesced burst.
    assert_eq!(
        again.unwrap(),
        voyage_core::google::push::PushOutcome::Queued
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_are_authenticated_deduplicated_and_coalesced() {
    let w = GoogleWorld::start(&[]).await;
    let (_, conn) = w
        .tenant_with_connection("acme", "ann", SANDBOX_PRIVATE_KEY)
        .await;
    let channel = conn["channel_id"].as_str().unwrap().to_string();
    let secret = channel_token(&w).await;
    assert!(
        !conn.to_string().contains(&secret),
        "the channel token is never shown"
    );
    // Wrong token, unknown channel: refused, nothing queued.
    let (status, refused) = push(&w, &channel, "guess", "exists", 2).await;
    assert_eq!(status, 401);
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("X-Goog-Channel-Token")),
        "the message names the token, not an API key: {refused}"
    );
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

/// Which Google events are busy (the Google column of the busy table in
/// `voyage_core::availability` and the README), against the simulator's `attendees` and
/// `eventType`.
mod what_counts_as_busy {
    use super::*;
    use voyage_tests::google::{invitation, of_type};

    fn at(d: &str, hour: u32) -> Value {
        timed(
            "Busy",
            &format!("{d}T{hour:02}:00:00Z"),
            &format!("{d}T{hour:02}:30:00Z"),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_declined_invitation_is_free_and_answering_it_later_moves_the_override() {
        let w = GoogleWorld::start(&[]).await;
        let (tenant, conn) = w
            .tenant_with_connection("acme", "ann", SANDBOX_PRIVATE_KEY)
            .await;
        let token = w.staff_token("ann").await;
        let d = day(4);
        let declined = w
            .insert(&token, "ann", invitation("ann", "declined", at(&d, 9)))
            .await;
        let accepted = w
            .insert(&token, "ann", invitation("ann", "accepted", at(&d, 10)))
            .await;
        let unanswered = w
            .insert(&token, "ann", invitation("ann", "needsAction", at(&d, 11)))
            .await;
        // Someone else declining does not free Ann's own event.
        let others_declined = w
            .insert(
                &token,
                "ann",
                json!({"summary": "Review", "start": at(&d, 12)["start"], "end": at(&d, 12)["end"],
                    "attendees": [{"email": "bob@contoso.example", "responseStatus": "declined"}]}),
            )
            .await;
        sync_now(&w, "acme", &conn).await;
        let mut want = vec![accepted.clone(), unanswered.clone(), others_declined];
        want.sort();
        assert_eq!(ids(&w.overrides(&tenant, "ann").await), want);
        assert!(!want.contains(&declined));

        // Ann changes her mind both ways: the next sync follows.
        w.respond(&token, "ann", &accepted, "declined").await;
        w.respond(&token, "ann", &declined, "accepted").await;
        let out = sync_now(&w, "acme", &conn).await;
        assert_eq!(out["report"]["full"], false, "{out}");
        let after = ids(&w.overrides(&tenant, "ann").await);
        assert!(
            after.contains(&declined) && !after.contains(&accepted),
            "{after:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn working_locations_and_birthdays_are_never_busy_while_out_of_office_and_tentative_are_by_default(
    ) {
        let w = GoogleWorld::start(&[]).await;
        let (tenant, conn) = w
            .tenant_with_connection("acme", "ann", SANDBOX_PRIVATE_KEY)
            .await;
        let token = w.staff_token("ann").await;
        let d = day(6);
        let office = w
            .insert(&token, "ann", of_type("workingLocation", at(&d, 8)))
            .await;
        let birthday = w
            .insert(
                &token,
                "ann",
                of_type(
                    "birthday",
                    json!({"summary": "Bob's birthday", "start": {"date": day(7)}, "end": {"date": day(8)}}),
                ),
            )
            .await;
        let away = w
            .insert(&token, "ann", of_type("outOfOffice", at(&d, 9)))
            .await;
        let focus = w
            .insert(&token, "ann", of_type("focusTime", at(&d, 10)))
            .await;
        let maybe = w
            .insert(&token, "ann", invitation("ann", "tentative", at(&d, 11)))
            .await;
        sync_now(&w, "acme", &conn).await;
        let mut want = vec![away, focus, maybe];
        want.sort();
        let got = ids(&w.overrides(&tenant, "ann").await);
        assert_eq!(got, want);
        assert!(!got.contains(&office) && !got.contains(&birthday));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changed_settings_apply_to_every_event_read_after_the_change() {
        // GIVEN an out-of-office event and a tentative answer, synced as busy (the defaults)
        let w = GoogleWorld::start(&[]).await;
        let (tenant, conn) = w
            .tenant_with_connection("acme", "ann", SANDBOX_PRIVATE_KEY)
            .await;
        let token = w.staff_token("ann").await;
        let d = day(9);
        let away = w
            .insert(&token, "ann", of_type("outOfOffice", at(&d, 9)))
            .await;
        let maybe = w
            .insert(&token, "ann", invitation("ann", "tentative", at(&d, 10)))
            .await;
        sync_now(&w, "acme", &conn).await;
        let mut both = vec![away.clone(), maybe.clone()];
        both.sort();
        assert_eq!(ids(&w.overrides(&tenant, "ann").await), both);

        // WHEN the company counts both as free
        let (status, body) = w
            .app
            .call(
                "PUT",
                "/v1/settings/availability",
                &tenant,
                Some(json!({"tentative": "free", "out_of_office": "free"})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        // and new ones arrive, and the old out-of-office event changes
        let away_too = w
            .insert(&token, "ann", of_type("outOfOffice", at(&d, 11)))
            .await;
        let maybe_too = w
            .insert(&token, "ann", invitation("ann", "tentative", at(&d, 12)))
            .await;
        assert_eq!(
            w.edit(
                &token,
                "ann",
                "PATCH",
                &away,
                Some(json!({"summary": "Away (extended)"}))
            )
            .await,
            200
        );
        sync_now(&w, "acme", &conn).await;
        // THEN every event read since is free; the unchanged tentative answer was not re-read
        let got = ids(&w.overrides(&tenant, "ann").await);
        assert_eq!(
            got,
            std::slice::from_ref(&maybe),
            "new: {away_too}, {maybe_too}"
        );

        // AND a full sync re-reads everything under the new settings
        w.control("POST", "sync-tokens/expire", json!({})).await;
        let out = sync_now(&w, "acme", &conn).await;
        assert_eq!(out["report"]["resynced"], true, "{out}");
        assert!(w.overrides(&tenant, "ann").await.is_empty());

        // AND back to busy: the next reads count them again
        let (status, _) = w
            .app
            .call("PUT", "/v1/settings/availability", &tenant, Some(json!({})))
            .await;
        assert_eq!(status, 200);
        w.respond(&token, "ann", &maybe_too, "tentative").await;
        sync_now(&w, "acme", &conn).await;
        assert_eq!(ids(&w.overrides(&tenant, "ann").await), [maybe_too]);
    }
}

/// A full sync removes only what its window could have shown.
mod beyond_the_window {
    use super::*;

    /// Ann's overrides over the next 300 days (the route takes up to 366).
    async fn far_overrides(w: &GoogleWorld, tenant: &str) -> Vec<String> {
        let now = chrono::Utc::now();
        let path = format!(
            "/v1/staff/ann/overrides?from={}&to={}",
            now.format("%Y-%m-%dT00:00:00Z"),
            (now + chrono::Duration::days(300)).format("%Y-%m-%dT00:00:00Z")
        );
        let (status, body) = w.app.call("GET", &path, tenant, None).await;
        assert_eq!(status, 200, "{body}");
        ids(body["data"].as_array().unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_resync_keeps_busy_time_beyond_its_window_that_an_incremental_sync_found() {
        // Arrange: a busy event 250 days out, found by an incremental sync
        let w = GoogleWorld::start(&[]).await;
        let (tenant, conn) = w
            .tenant_with_connection("acme", "ann", SANDBOX_PRIVATE_KEY)
            .await;
        sync_now(&w, "acme", &conn).await;
        let far = day(250);
        let ev = w
            .sim
            .seed_events(
                &email("ann"),
                vec![timed(
                    "Busy",
                    &format!("{far}T09:00:00Z"),
                    &format!("{far}T10:00:00Z"),
                )],
            )
            .unwrap()
            .remove(0);
        let out = sync_now(&w, "acme", &conn).await;
        assert_eq!(out["report"]["full"], false, "{out}");
        assert_eq!(far_overrides(&w, &tenant).await, std::slice::from_ref(&ev));

        // Act: every sync token expires, and the next sync lists the window again
        w.control("POST", "sync-tokens/expire", json!({})).await;
        let out = sync_now(&w, "acme", &conn).await;

        // Assert: the event is still busy time
        assert_eq!(out["report"]["resynced"], true, "{out}");
        assert_eq!(far_overrides(&w, &tenant).await, [ev]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_resync_removes_busy_time_beyond_its_window_whose_event_is_gone() {
        // Arrange: a busy event 250 days out found by an incremental sync, then deleted while
        // the sync token was lost (no sync saw the deletion)
        let w = GoogleWorld::start(&[]).await;
        let (tenant, conn) = w
            .tenant_with_connection("acme", "ann", SANDBOX_PRIVATE_KEY)
            .await;
        sync_now(&w, "acme", &conn).await;
        let far = day(250);
        let ev = w
            .sim
            .seed_events(
                &email("ann"),
                vec![timed(
                    "Busy",
                    &format!("{far}T09:00:00Z"),
                    &format!("{far}T10:00:00Z"),
                )],
            )
            .unwrap()
            .remove(0);
        sync_now(&w, "acme", &conn).await;
        assert_eq!(far_overrides(&w, &tenant).await, std::slice::from_ref(&ev));
        let token = w.staff_token("ann").await;
        w.stop_channels(&token).await;
        assert_eq!(w.edit(&token, "ann", "DELETE", &ev, None).await, 204);
        w.control("POST", "sync-tokens/expire", json!({})).await;

        // Act
        let out = sync_now(&w, "acme", &conn).await;

        // Assert: read, found gone, removed
        assert_eq!(out["report"]["resynced"], true, "{out}");
        assert_eq!(far_overrides(&w, &tenant).await, Vec::<String>::new());
    }
}

/// Syncs that outlast their time budget checkpoint and finish across invocations.
mod resumable_syncs {
    use super::*;
    use voyage_core::google::sync;

    /// A budget so small that every invocation applies exactly one page.
    const TINY_BUDGET: (&str, &str) = ("VOYAGE_SYNC_BUDGET", "1ms");

    fn seed(w: &GoogleWorld, staff: &str, n: usize) -> Vec<String> {
        let events = (0..n)
            .map(|i| {
                let d = day(1 + (i % 150) as i64);
                let minute = (i / 150) % 60;
                let hour = (i / 9000) % 24;
                timed(
                    "Busy",
                    &format!("{d}T{hour:02}:{minute:02}:00Z"),
                    &format!("{d}T{hour:02}:{minute:02}:30Z"),
                )
            })
            .collect();
        w.sim.seed_events(&email(staff), events).unwrap()
    }

    async fn stored_ids(w: &GoogleWorld, conn: &Value) -> Vec<String> {
        let mut v: Vec<String> = w
            .app
            .local
            .deps
            .store
            .overrides_for_connection("acme", "ann", conn["id"].as_str().unwrap())
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.external_event_id)
            .collect();
        v.sort();
        v
    }

    fn list_requests(w: &GoogleWorld) -> Vec<u16> {
        w.sim
            .served()
            .iter()
            .filter(|s| s.method == "GET" && s.path.ends_with("/events"))
            .map(|s| s.status)
            .collect()
    }

    async fn progress(
        w: &GoogleWorld,
        conn: &Value,
    ) -> Option<voyage_core::store::GoogleSyncProgress> {
        w.app
            .local
            .deps
            .store
            .google_sync_progress("acme", conn["id"].as_str().unwrap())
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_five_thousand_event_first_sync_finishes_across_invocations_with_every_override_once()
    {
        // GIVEN a calendar of 5,000 busy events and a budget of one page per invocation
        let w = GoogleWorld::start(&[TINY_BUDGET]).await;
        let (_tenant, conn) = w
            .tenant_with_connection("acme", "ann", SANDBOX_PRIVATE_KEY)
            .await;
        let mut made = seed(&w, "ann", 5000);
        made.sort();
        let pages = 5000usize.div_ceil(sync::PAGE_SIZE as usize);
        // WHEN the first sync runs: one page, a checkpoint, and a follow-up queued
        let out = sync_now(&w, "acme", &conn).await;
        assert_eq!(
            (
                out["report"]["pages"].as_u64(),
                out["report"]["continues"].as_bool()
            ),
            (Some(1), Some(true)),
            "{out}"
        );
        let saved = progress(&w, &conn).await.expect("a checkpoint");
        assert!(saved.full && saved.pages == 1, "{saved:?}");
        let cursor = w
            .app
            .local
            .deps
            .store
            .get_cursor("acme", conn["id"].as_str().unwrap());
        assert!(
            cursor.await.unwrap().is_none(),
            "no sync token before every page is applied"
        );
        // AND the queue is driven until empty
        let invocations = 1 + drain(&w).await;
        // THEN every event is an override exactly once, each page was read once
        let stored = stored_ids(&w, &conn).await;
        assert_eq!(stored.len(), 5000);
        assert_eq!(stored, made);
        assert_eq!(list_requests(&w), vec![200; pages], "no page read twice");
        assert_eq!(invocations, pages);
        // AND the sync token is stored, the checkpoint gone, and the next sync is incremental
        assert!(progress(&w, &conn).await.is_none());
        let out = sync_now(&w, "acme", &conn).await;
        assert_eq!(
            (
                out["report"]["full"].as_bool(),
                out["report"]["events"].as_u64()
            ),
            (Some(false), Some(0)),
            "{out}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_sync_interrupted_by_its_budget_still_removes_overrides_of_deleted_events() {
        // GIVEN 1,000 events synced (across invocations)
        let w = GoogleWorld::start(&[TINY_BUDGET]).await;
        let (_tenant, conn) = w
            .tenant_with_connection("acme", "ann", SANDBOX_PRIVATE_KEY)
            .await;
        let made = seed(&w, "ann", 1000);
        sync_now(&w, "acme", &conn).await;
        drain(&w).await;
        assert_eq!(stored_ids(&w, &conn).await.len(), 1000);
        // AND two events deleted, then every sync token expired (the next sync is full)
        let token = w.staff_token("ann").await;
        w.stop_channels(&token).await;
        for gone in [&made[3], &made[998]] {
            assert_eq!(w.edit(&token, "ann", "DELETE", gone, None).await, 204);
        }
        w.control("POST", "sync-tokens/expire", json!({})).await;
        // WHEN the full sync stops after its first page
        let out = sync_now(&w, "acme", &conn).await;
        assert_eq!(
            (
                out["report"]["resynced"].as_bool(),
                out["report"]["continues"].as_bool()
            ),
            (Some(true), Some(true)),
            "{out}"
        );
        // the deleted events' overrides are still there: removal waits for the last page
        assert_eq!(stored_ids(&w, &conn).await.len(), 1000);
        // AND it is resumed until done
        w.sim.clear_served();
        drain(&w).await;
        // THEN exactly the deleted events' overrides are gone
        let stored = stored_ids(&w, &conn).await;
        assert_eq!(stored.len(), 998);
        assert!(!stored.contains(&made[3]) && !stored.contains(&made[998]));
        assert_eq!(list_requests(&w), vec![200; 3], "pages 2 to 4, once each");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_page_token_starts_the_full_sync_over() {
        // GIVEN a first sync stopped after one page, its page token saved
        let w = GoogleWorld::start(&[TINY_BUDGET]).await;
        let (_tenant, conn) = w
            .tenant_with_connection("acme", "ann", SANDBOX_PRIVATE_KEY)
            .await;
        seed(&w, "ann", 600);
        let out = sync_now(&w, "acme", &conn).await;
        assert_eq!(out["report"]["continues"], true, "{out}");
        // WHEN Google no longer knows the token, and the sync resumes
        w.control("POST", "sync-tokens/expire", json!({})).await;
        let out = sync_now(&w, "acme", &conn).await;
        // THEN it answers 410 once and starts over from the first page
        assert_eq!(
            (
                out["report"]["resumed"].as_bool(),
                out["report"]["resynced"].as_bool()
            ),
            (Some(true), Some(true)),
            "{out}"
        );
        assert_eq!(list_requests(&w), [200, 410, 200]);
        drain(&w).await;
        assert_eq!(stored_ids(&w, &conn).await.len(), 600);
        assert!(progress(&w, &conn).await.is_none());
        let cursor = w
            .app
            .local
            .deps
            .store
            .get_cursor("acme", conn["id"].as_str().unwrap());
        assert!(cursor.await.unwrap().is_some());
    }
}

/// Syncs of every connection are queued, never run on the request path.
mod off_the_request_path {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_connection_queues_its_first_sync() {
        // Arrange: a busy event already in ann's calendar
        let w = GoogleWorld::start(&[]).await;
        let d = day(2);
        let ev = w
            .sim
            .seed_events(
                &email("ann"),
                vec![timed(
                    "Busy",
                    &format!("{d}T09:00:00Z"),
                    &format!("{d}T10:00:00Z"),
                )],
            )
            .unwrap()
            .remove(0);
        let tenant = w.app.key("acme", false).await;
        let (status, body) = w
            .app
            .call(
                "PUT",
                "/v1/credentials/google",
                &tenant,
                Some(json!({"type": "service_account", "client_email": voyage_simulators::google::SANDBOX_CLIENT_EMAIL,
                    "private_key": SANDBOX_PRIVATE_KEY, "token_uri": "https://oauth2.googleapis.com/token"})),
            )
            .await;
        assert_eq!(status, 200, "{body}");

        // Act: the calendar is connected, and the queue's worker runs
        let (status, conn) = w
            .app
            .call(
                "POST",
                "/v1/connections",
                &tenant,
                Some(json!({"provider": "google", "staff_id": "ann",
                    "staff_email": email("ann"), "calendar_id": email("ann")})),
            )
            .await;
        assert_eq!(status, 201, "{conn}");
        let handled = drain(&w).await;

        // Assert: one sync was queued, and the event is ann's busy time
        assert_eq!(handled, 1);
        assert_eq!(ids(&w.overrides(&tenant, "ann").await), [ev]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sync_of_all_connections_answers_at_once_and_queues_one_per_connection() {
        let w = GoogleWorld::start(&[]).await;
        let (ann_tenant, _) = w
            .tenant_with_connection("acme", "ann", SANDBOX_PRIVATE_KEY)
            .await;
        w.tenant_with_connection("globex", "bob", SANDBOX_PRIVATE_KEY)
            .await;
        let d = day(2);
        let ev = w
            .sim
            .seed_events(
                &email("ann"),
                vec![timed(
                    "Busy",
                    &format!("{d}T09:00:00Z"),
                    &format!("{d}T10:00:00Z"),
                )],
            )
            .unwrap()
            .remove(0);
        w.sim.clear_served();
        let platform = w.app.key("platform", true).await;
        let (status, body) = w
            .app
            .call("POST", "/v1/google-sync", &platform, Some(json!({})))
            .await;
        assert_eq!(
            (status.as_u16(), &body["queued"]),
            (202, &json!(2)),
            "{body}"
        );
        // Nothing was read from Google on the request path.
        assert!(w.sim.served().iter().all(|s| s.method != "GET"));
        assert!(w.overrides(&ann_tenant, "ann").await.is_empty());
        assert_eq!(drain(&w).await, 2);
        assert_eq!(ids(&w.overrides(&ann_tenant, "ann").await), [ev]);
    }
}

/// The Google write path at the port: `GoogleHttp` against the simulator, as the outbound
/// writer will use it (client-chosen ids, `If-Match`, soft deletes, `sendUpdates=none`).
mod writes {
    use chrono::{TimeZone, Utc};
    use voyage_core::google::api::{
        event_id_for, ExtendedProperties, GoogleDateTime, GoogleEventWrite,
    };
    use voyage_core::google::{GoogleApi, GoogleError, ServiceAccount};
    use voyage_providers::google::{Backoff, GoogleHttp};
    use voyage_simulators::google::{SANDBOX_CLIENT_EMAIL, SANDBOX_PRIVATE_KEY};
    use voyage_simulators::GoogleSimulator;
    use voyage_tests::google::email;

    struct Writer {
        sim: GoogleSimulator,
        google: GoogleHttp,
        account: ServiceAccount,
        staff: String,
    }

    async fn writer() -> Writer {
        let sim = GoogleSimulator::new();
        sim.register_account(SANDBOX_CLIENT_EMAIL, SANDBOX_PRIVATE_KEY)
            .unwrap();
        let url = voyage_tests::graph::serve(sim.router()).await;
        let backoff = Backoff {
            attempts: 1,
            ..Backoff::default()
        };
        let google = GoogleHttp::with_backoff(&url, &format!("{url}/token"), backoff).unwrap();
        Writer {
            sim,
            google,
            account: ServiceAccount {
                client_email: SANDBOX_CLIENT_EMAIL.into(),
                private_key: SANDBOX_PRIVATE_KEY.into(),
            },
            staff: email("ann"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retry_after_beyond_the_waiting_budget_ends_the_call_at_once() {
        // Arrange: Google throttling with `Retry-After: 30`, a client allowed four attempts
        let sim = GoogleSimulator::new();
        sim.register_account(SANDBOX_CLIENT_EMAIL, SANDBOX_PRIVATE_KEY)
            .unwrap();
        let url = voyage_tests::graph::serve(sim.router()).await;
        let google =
            GoogleHttp::with_backoff(&url, &format!("{url}/token"), Backoff::default()).unwrap();
        sim.add_fault(voyage_simulators::Fault {
            method: Some("GET".into()),
            path_contains: Some("/events/".into()),
            status: Some(429),
            retry_after: Some(30),
            latency_ms: None,
            count: 10,
            after: 0,
            lose_answer: false,
        });
        let account = ServiceAccount {
            client_email: SANDBOX_CLIENT_EMAIL.into(),
            private_key: SANDBOX_PRIVATE_KEY.into(),
        };
        let staff = email("ann");

        // Act
        let began = std::time::Instant::now();
        let out = google.get_event(&account, &staff, &staff, "x").await;

        // Assert: throttled with Google's hint, after one request and no wait
        assert!(
            matches!(out, Err(GoogleError::RateLimited { retry_after: Some(d) }) if d.as_secs() == 30),
            "{out:?}"
        );
        assert!(began.elapsed() < std::time::Duration::from_secs(2));
        let asked = sim
            .served()
            .iter()
            .filter(|s| s.path.contains("/events/"))
            .count();
        assert_eq!(asked, 1);
    }

    /// The body the outbound writer sends for session `s1` of `acme`, starting `hour`.
    fn session(hour: u32) -> GoogleEventWrite {
        let start = Utc.with_ymd_and_hms(2030, 3, 4, hour, 0, 0).unwrap();
        GoogleEventWrite {
            id: event_id_for("acme", "s1"),
            summary: "Session with Bea".into(),
            description: "Booked through Voyage".into(),
            location: Some("Room 1".into()),
            start: GoogleDateTime::utc(start),
            end: GoogleDateTime::utc(start + chrono::Duration::hours(1)),
            transparency: "opaque".into(),
            status: None,
            extended_properties: ExtendedProperties::session("acme", "s1", "ann"),
            attendees: None,
        }
    }

    impl Writer {
        async fn insert(
            &self,
            event: &GoogleEventWrite,
        ) -> Result<voyage_core::google::api::GoogleEvent, GoogleError> {
            self.google
                .insert_event(&self.account, &self.staff, &self.staff, event)
                .await
        }

        async fn update(
            &self,
            id: &str,
            etag: Option<&str>,
            event: &GoogleEventWrite,
        ) -> Result<voyage_core::google::api::GoogleEvent, GoogleError> {
            self.google
                .update_event(&self.account, &self.staff, &self.staff, id, etag, event)
                .await
        }

        async fn get(
            &self,
            id: &str,
        ) -> Result<voyage_core::google::api::GoogleEvent, GoogleError> {
            self.google
                .get_event(&self.account, &self.staff, &self.staff, id)
                .await
        }

        async fn delete(&self, id: &str, etag: Option<&str>) -> Result<(), GoogleError> {
            self.google
                .delete_event(&self.account, &self.staff, &self.staff, id, etag)
                .await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_insert_takes_the_sessions_id_and_a_retried_insert_is_a_duplicate_not_a_second_event(
    ) {
        let w = writer().await;
        let event = session(9);
        let created = w.insert(&event).await.unwrap();
        assert_eq!(created.id, event_id_for("acme", "s1"));
        assert_eq!(created.session_tag(), Some("acme/s1"));
        assert_eq!(created.status.as_deref(), Some("confirmed"));
        assert!(created.etag.is_some() && created.updated_at().is_some());
        assert_eq!(
            created.start.as_ref().and_then(|s| s.to_utc(None)),
            event.start.to_utc()
        );
        assert_eq!(w.insert(&event).await, Err(GoogleError::Duplicate));
        let events = w.sim.events_of(&w.staff);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].session_tag.as_deref(), Some("acme/s1"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_update_with_a_stale_etag_is_refused_and_with_the_current_one_applies() {
        let w = writer().await;
        let created = w.insert(&session(9)).await.unwrap();
        let stale = created.etag.clone().unwrap();
        // The staff member moves it: a new version.
        let noon = Utc.with_ymd_and_hms(2030, 3, 4, 12, 0, 0).unwrap();
        assert!(w.sim.staff_move(
            &w.staff,
            &created.id,
            noon,
            noon + chrono::Duration::hours(1)
        ));
        assert_eq!(
            w.update(&created.id, Some(&stale), &session(10)).await,
            Err(GoogleError::PreconditionFailed)
        );
        assert_eq!(
            w.sim.events_of(&w.staff)[0].start,
            Some(noon),
            "nothing written"
        );
        let current = w.get(&created.id).await.unwrap();
        let updated = w
            .update(&created.id, current.etag.as_deref(), &session(10))
            .await
            .unwrap();
        assert_ne!(updated.etag, current.etag, "a new version");
        assert_eq!(
            updated.start.as_ref().and_then(|s| s.to_utc(None)),
            session(10).start.to_utc()
        );
        assert_eq!(
            w.update("nosuchevent1", None, &session(10)).await,
            Err(GoogleError::NotFound)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deleted_event_reads_as_cancelled_and_an_update_with_status_confirmed_restores_it() {
        let w = writer().await;
        let created = w.insert(&session(9)).await.unwrap();
        assert_eq!(
            w.delete(&created.id, Some("\"stale\"")).await,
            Err(GoogleError::PreconditionFailed)
        );
        w.delete(&created.id, created.etag.as_deref())
            .await
            .unwrap();
        let gone = w.get(&created.id).await.unwrap();
        assert_eq!(gone.status.as_deref(), Some("cancelled"));
        assert!(gone.is_cancelled());
        assert_eq!(gone.session_tag(), Some("acme/s1"), "details are kept");
        assert_eq!(
            w.delete(&created.id, None).await,
            Err(GoogleError::NotFound),
            "410 on a deleted event: the caller decides"
        );
        assert_eq!(w.get("nosuchevent1").await, Err(GoogleError::NotFound));
        assert_eq!(
            w.delete("nosuchevent1", None).await,
            Err(GoogleError::NotFound)
        );

        // Without a status a full update leaves it deleted; `confirmed` restores it.
        let still = w
            .update(&created.id, gone.etag.as_deref(), &session(9))
            .await
            .unwrap();
        assert!(still.is_cancelled());
        let restore = GoogleEventWrite {
            status: Some("confirmed".into()),
            ..session(9)
        };
        let back = w
            .update(&created.id, still.etag.as_deref(), &restore)
            .await
            .unwrap();
        assert_eq!(back.status.as_deref(), Some("confirmed"));
        assert_eq!(
            w.get(&created.id).await.unwrap().status.as_deref(),
            Some("confirmed")
        );

        // A staff member's delete is restored the same way.
        assert!(w.sim.staff_delete(&w.staff, &created.id));
        let deleted = w.get(&created.id).await.unwrap();
        assert!(deleted.is_cancelled());
        w.update(&created.id, deleted.etag.as_deref(), &restore)
            .await
            .unwrap();
        assert_eq!(w.sim.events_of(&w.staff)[0].status, "confirmed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_write_invites_anyone_and_every_write_asks_google_to_send_no_updates() {
        let w = writer().await;
        let created = w.insert(&session(9)).await.unwrap();
        let updated = w
            .update(&created.id, created.etag.as_deref(), &session(10))
            .await
            .unwrap();
        w.delete(&created.id, updated.etag.as_deref())
            .await
            .unwrap();
        let restore = GoogleEventWrite {
            status: Some("confirmed".into()),
            ..session(9)
        };
        w.update(&created.id, None, &restore).await.unwrap();
        w.get(&created.id).await.unwrap();

        let calendar: Vec<_> = w
            .sim
            .requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/calendar/"))
            .collect();
        let writes: Vec<_> = calendar.iter().filter(|r| r.method != "GET").collect();
        assert_eq!(
            writes.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(),
            ["POST", "PUT", "DELETE", "PUT"]
        );
        for r in &writes {
            assert_eq!(r.param("sendUpdates").as_deref(), Some("none"), "{r:?}");
        }
        for r in &calendar {
            assert!(
                r.body.as_ref().is_none_or(|b| b.get("attendees").is_none()),
                "{r:?}"
            );
        }
        assert!(w.sim.events_of(&w.staff)[0].attendees.is_empty());
        // Conditional writes carry the version they were based on; the path names the event.
        assert_eq!(writes[1].if_match, created.etag);
        assert_eq!(writes[2].if_match, updated.etag);
        assert_eq!(writes[3].if_match, None);
        assert_eq!(writes[0].body.as_ref().unwrap()["id"], created.id.as_str());
        assert!(writes[1].body.as_ref().unwrap().get("id").is_none());
        assert_eq!(
            writes[1].body.as_ref().unwrap()["extendedProperties"]["private"]["voyageSessionId"],
            "acme/s1"
        );
    }
}

/// Two-way booking sync over both providers (the calendar seam, issue #13).
#[path = "calendars/two_way.rs"]
mod two_way;

#[path = "calendars/review.rs"]
mod calendars_review;

#[path = "calendars/review2.rs"]
mod calendars_review2;

#[path = "calendars/review3.rs"]
mod calendars_review3;

#[path = "calendars/review4.rs"]
mod calendars_review4;

/// A booking command's follow-up that runs after a newer change of the session.
#[path = "calendars/review5.rs"]
mod calendars_review5;

/// A booking command's follow-up overtaken by a platform change while it is being written.
#[path = "calendars/review6.rs"]
mod calendars_review6;

/// Retired events that are not what they seem: an unrecorded create come back, a leftover
/// whose deletion failed.
#[path = "calendars/review7.rs"]
mod calendars_review7;

/// A cold review's findings: a retried re-booking, a follow-up's command on a session given
/// to another staff member, a write's echo after its commit failed, a decline of another
/// placement.
#[path = "calendars/review8.rs"]
mod calendars_review8;

#[path = "calendars/review10.rs"]
mod calendars_review10;
#[path = "calendars/review9.rs"]
mod calendars_review9;

/// All-day events in the calendar's zone on every path.
#[path = "calendars/zones.rs"]
mod calendars_zones;
