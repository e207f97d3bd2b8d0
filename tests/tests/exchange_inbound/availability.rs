//! Busy time that matches what the staff member sees (issue 12), against the Graph
//! simulator with idle consumers (rounds run by hand): partial delta entries read in batches,
//! all-day events in the mailbox's zone, the company's settings, first syncs that complete
//! across invocations, and reads bounded by the range they need.

use std::collections::HashSet;
use std::sync::Arc;
use voyage_tests::dates::date;

use chrono::{Duration, NaiveDate, Utc};
use serde_json::json;
use voyage_core::exchange::push::SyncRequest;
use voyage_core::exchange::sync::{self, RoundReport};
use voyage_core::model::AvailabilityOverride;
use voyage_tests::graph::{email, GraphWorld, CLIENT_SECRET};

async fn idle_world(extra: &[(&str, &str)]) -> (GraphWorld, String, String) {
    let w = GraphWorld::start(extra).await;
    let (key, conn) = w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
    let id = conn["id"].as_str().unwrap().to_string();
    (w, key, id)
}

async fn round(w: &GraphWorld, connection: &str) -> RoundReport {
    let req = SyncRequest {
        company_id: "acme".into(),
        connection_id: connection.into(),
        subscription_id: String::new(),
        reason: "notification".into(),
    };
    sync::handle(&w.app.local.deps, &req).await.unwrap()
}

async fn overrides(w: &GraphWorld, connection: &str) -> Vec<AvailabilityOverride> {
    w.app
        .local
        .deps
        .store
        .overrides_for_connection("acme", "ann", connection)
        .await
        .unwrap()
}

fn ids(of: &[AvailabilityOverride]) -> HashSet<String> {
    of.iter().map(|o| o.external_event_id.clone()).collect()
}

/// A time `days` from now at `hour` UTC, as the simulator's staff helpers take it.
fn day_at(days: i64, hour: u32) -> chrono::DateTime<Utc> {
    (Utc::now() + Duration::days(days))
        .date_naive()
        .and_hms_opt(hour, 0, 0)
        .unwrap()
        .and_utc()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_entries_missing_show_as_are_read_in_batches_not_guessed() {
    let (w, _key, conn) = idle_world(&[]).await;
    let ann = email("ann");
    w.sim
        .partial_delta(&["showAs", "isCancelled", "isAllDay", "responseStatus"]);
    let busy = w
        .sim
        .staff_create(&ann, "Dentist", day_at(2, 9), day_at(2, 10), "busy");
    let free = w
        .sim
        .staff_create(&ann, "Focus", day_at(2, 11), day_at(2, 12), "free");
    let unknown = w
        .sim
        .staff_create(&ann, "?", day_at(2, 13), day_at(2, 14), "unknown");
    w.sim.clear_served();

    let report = round(&w, &conn).await;

    assert_eq!(ids(&overrides(&w, &conn).await), HashSet::from([busy]));
    assert!(!ids(&overrides(&w, &conn).await).contains(&free));
    assert!(!ids(&overrides(&w, &conn).await).contains(&unknown));
    assert_eq!(report.confirmations, 3, "{report:?}");
    let served = w.sim.served();
    assert_eq!(
        served
            .iter()
            .filter(|s| s.path.ends_with("/$batch"))
            .count(),
        1,
        "one batch read the three entries: {served:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_delta_entries_are_not_read_again() {
    let (w, _key, conn) = idle_world(&[]).await;
    let ann = email("ann");
    w.sim
        .staff_create(&ann, "Dentist", day_at(2, 9), day_at(2, 10), "busy");
    w.sim
        .staff_create(&ann, "Focus", day_at(2, 11), day_at(2, 12), "free");

    let report = round(&w, &conn).await;

    assert_eq!(report.confirmations, 0, "{report:?}");
    assert_eq!(overrides(&w, &conn).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_day_events_are_busy_on_the_mailbox_days_not_utc_midnight() {
    let (w, _key, conn) = idle_world(&[]).await;
    let ann = email("ann");
    w.sim.set_mailbox_time_zone(&ann, "Pacific Standard Time");
    let first: NaiveDate = (Utc::now() + Duration::days(10)).date_naive();
    let away = w.sim.staff_create_all_day(
        &ann,
        "Conference",
        first,
        2,
        chrono_tz::America::Los_Angeles,
        "busy",
    );

    round(&w, &conn).await;

    let got = overrides(&w, &conn).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let o = &got[0];
    assert_eq!(o.external_event_id, away);
    assert!(o.all_day);
    let midnight_la = |d: NaiveDate| {
        use chrono::TimeZone;
        chrono_tz::America::Los_Angeles
            .from_local_datetime(&d.and_hms_opt(0, 0, 0).unwrap())
            .earliest()
            .unwrap()
            .with_timezone(&Utc)
    };
    assert_eq!(o.start, midnight_la(first));
    assert_eq!(o.end, midnight_la(first + Duration::days(2)));
    assert_ne!(o.start, first.and_hms_opt(0, 0, 0).unwrap().and_utc());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mailbox_zone_is_read_once_per_full_sync_and_kept_with_the_cursor() {
    let (w, _key, conn) = idle_world(&[]).await;
    let ann = email("ann");
    w.sim.set_mailbox_time_zone(&ann, "Tokyo Standard Time");
    round(&w, &conn).await;
    w.sim
        .staff_create(&ann, "Dentist", day_at(2, 9), day_at(2, 10), "busy");
    w.sim.clear_served();

    round(&w, &conn).await;

    let cursor = w
        .app
        .local
        .deps
        .store
        .get_cursor("acme", &conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        cursor.calendar_time_zone.as_deref(),
        Some("Tokyo Standard Time")
    );
    assert!(
        !w.graph_calls()
            .iter()
            .any(|c| c.contains("mailboxSettings")),
        "an incremental round uses the cached zone: {:?}",
        w.graph_calls()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tentative_and_out_of_office_follow_the_company_settings_from_then_on() {
    let (w, key, conn) = idle_world(&[]).await;
    let ann = email("ann");
    let (status, body) = w
        .app
        .call(
            "PUT",
            "/v1/settings/availability",
            &key,
            Some(json!({"tentative": "free", "out_of_office": "free"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let tentative = w
        .sim
        .staff_create(&ann, "Maybe", day_at(3, 9), day_at(3, 10), "tentative");
    let away = w
        .sim
        .staff_create(&ann, "Away", day_at(4, 0), day_at(5, 0), "oof");
    round(&w, &conn).await;
    assert!(overrides(&w, &conn).await.is_empty());

    // Back to the defaults: the events read from then on are busy.
    let (status, body) = w
        .app
        .call("PUT", "/v1/settings/availability", &key, Some(json!({})))
        .await;
    assert_eq!(
        (status.as_u16(), body.clone()),
        (200, json!({"tentative": "busy", "out_of_office": "busy"}))
    );
    w.sim
        .staff_move(&ann, &tentative, day_at(3, 10), day_at(3, 11));
    w.sim.staff_move(&ann, &away, day_at(4, 0), day_at(6, 0));
    round(&w, &conn).await;

    assert_eq!(
        ids(&overrides(&w, &conn).await),
        HashSet::from([tentative, away])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_settings_are_read_back_and_bad_values_name_their_field() {
    let (w, key, _conn) = idle_world(&[]).await;
    let (status, body) = w
        .app
        .call("GET", "/v1/settings/availability", &key, None)
        .await;
    assert_eq!(
        (status.as_u16(), body),
        (200, json!({"tentative": "busy", "out_of_office": "busy"}))
    );
    let (status, body) = w
        .app
        .call(
            "PUT",
            "/v1/settings/availability",
            &key,
            Some(json!({"tentative": "maybe"})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["error"]["field"].as_str()),
        (422, Some("tentative")),
        "{body}"
    );
    let (status, body) = w
        .app
        .call(
            "PUT",
            "/v1/settings/availability",
            &key,
            Some(json!({"oof": "free"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = w
        .app
        .call("GET", "/v1/settings/availability", &key, None)
        .await;
    assert_eq!(
        (status.as_u16(), body["tentative"].as_str()),
        (200, Some("busy"))
    );
}

/// Runs continuations of a checkpointed round until one completes; answers the number of
/// invocations.
async fn until_complete(w: &GraphWorld, conn: &str, most: usize) -> usize {
    let mut invocations = 0;
    loop {
        invocations += 1;
        let report = round(w, conn).await;
        assert!(report.skipped.is_none(), "{report:?}");
        if report.checkpoints == 0 {
            return invocations;
        }
        assert!(invocations < most, "no end after {invocations} invocations");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sync_of_five_thousand_events_completes_across_invocations_with_each_override_once()
{
    let (w, _key, conn) = idle_world(&[("VOYAGE_SYNC_BUDGET", "1ms")]).await;
    let ann = email("ann");
    let mut made = HashSet::new();
    for i in 0..5_000i64 {
        let start = day_at(1 + i % 150, 0) + Duration::minutes(15 * (i / 150));
        made.insert(
            w.sim
                .staff_create(&ann, "Busy", start, start + Duration::minutes(10), "busy"),
        );
    }

    let invocations = until_complete(&w, &conn, 1_000).await;

    assert!(invocations > 10, "the budget split the sync: {invocations}");
    let got = overrides(&w, &conn).await;
    assert_eq!(got.len(), 5_000);
    assert_eq!(ids(&got), made);
    // (The simulator also notified each created event: the continuations are among them.)
    let queue = w
        .app
        .local
        .deps
        .queue(voyage_core::deps::QueueName::ExchangeInbound)
        .unwrap();
    let mut continuations = 0;
    loop {
        let got = queue.receive(100, std::time::Duration::ZERO).await.unwrap();
        if got.is_empty() {
            break;
        }
        continuations += got
            .iter()
            .filter(|m| {
                m.body
                    .contains(&format!("\"reason\":\"{}\"", sync::CONTINUE_REASON))
            })
            .count();
    }
    assert_eq!(
        continuations,
        invocations - 1,
        "each checkpoint queued its continuation"
    );
    assert!(w
        .app
        .local
        .deps
        .store
        .get_round_progress("acme", &conn)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sync_split_across_invocations_still_drops_the_busy_time_of_events_gone_meanwhile() {
    let (w, _key, conn) = idle_world(&[("VOYAGE_SYNC_BUDGET", "1ms")]).await;
    let ann = email("ann");
    let gone = w
        .sim
        .staff_create(&ann, "Dentist", day_at(2, 9), day_at(2, 10), "busy");
    for h in 0..30 {
        w.sim.staff_create(
            &ann,
            "Busy",
            day_at(3, 0) + Duration::minutes(20 * h),
            day_at(3, 0) + Duration::minutes(20 * h + 10),
            "busy",
        );
    }
    until_complete(&w, &conn, 100).await;
    assert!(ids(&overrides(&w, &conn).await).contains(&gone));
    // Deleted without Graph ever reporting it, then the token expires: the full sync that
    // follows runs in several invocations.
    assert!(w.sim.staff_delete_unreported(&ann, &gone));
    assert_eq!(w.control("delta/expire", json!({})).await, 204);
    assert_eq!(w.control("delta/page-size", json!({"max": 5})).await, 204);
    let invocations = until_complete(&w, &conn, 100).await;

    assert!(invocations > 2, "{invocations}");
    let left = ids(&overrides(&w, &conn).await);
    assert!(!left.contains(&gone));
    assert_eq!(left.len(), 30);
}

#[tokio::test]
async fn range_reads_cost_the_same_whatever_came_before_the_range() {
    use voyage_core::store::Store;
    use voyage_tests::counting::CountingTable;
    async fn reads_with_history(past: i64) -> (u64, u64) {
        let table = Arc::new(CountingTable::new(Arc::new(
            voyage_core::ports::memory::MemoryTable::new(),
        )));
        let store = Store::new(table.clone(), Arc::new(voyage_core::ports::SystemClock));
        let now = Utc::now();
        for i in 0..past {
            let s = voyage_tests::contract::store::session(
                "acme",
                &format!("past{i}"),
                "ann",
                now - Duration::days(60) - Duration::hours(i),
            );
            store.create_session(&s).await.unwrap();
        }
        let busy: Vec<AvailabilityOverride> = (0..past)
            .map(|i| AvailabilityOverride {
                company_id: "acme".into(),
                staff_id: "ann".into(),
                connection_id: "c1".into(),
                source: voyage_core::model::Provider::Exchange,
                external_event_id: format!("old{i}"),
                start: now - Duration::days(60) - Duration::hours(i),
                end: now - Duration::days(60) - Duration::hours(i) + Duration::minutes(30),
                all_day: false,
                updated_at: now,
                listing: None,
            })
            .collect();
        store.apply_overrides(&busy, &[]).await.unwrap();
        let s =
            voyage_tests::contract::store::session("acme", "now", "ann", now + Duration::days(1));
        store.create_session(&s).await.unwrap();
        let before = table.items_read();
        let found = store
            .sessions_for_staff(
                "acme",
                "ann",
                now - Duration::days(31),
                now + Duration::days(2),
            )
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
        let sessions = table.items_read() - before;
        let before = table.items_read();
        let found = store
            .overrides_for_staff("acme", "ann", now, now + Duration::days(2))
            .await
            .unwrap();
        assert!(found.is_empty());
        (sessions, table.items_read() - before)
    }
    assert_eq!(reads_with_history(0).await, reads_with_history(500).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_mailbox_budget_stops_the_round_as_a_throttle_and_the_message_is_retried() {
    let (w, key, conn) = idle_world(&[("VOYAGE_GRAPH_MAILBOX_BUDGET", "1")]).await;
    let ann = email("ann");
    w.sim
        .staff_create(&ann, "Dentist", day_at(2, 9), day_at(2, 10), "busy");
    w.sim.clear_served();
    let req = SyncRequest {
        company_id: "acme".into(),
        connection_id: conn.clone(),
        subscription_id: String::new(),
        reason: "notification".into(),
    };

    let outcome = sync::handle(&w.app.local.deps, &req).await;

    // The mailbox settings took the budget; the round stops before the first page (Graph
    // is never asked beyond it), and the queue offers the message again later.
    assert!(outcome.is_err(), "{outcome:?}");
    let mailbox_calls = w
        .sim
        .served()
        .into_iter()
        .filter(|s| s.path.contains("/users/"))
        .count();
    assert_eq!(mailbox_calls, 1, "{:?}", w.sim.served());
    let (_, shown) = w
        .app
        .call("GET", &format!("/v1/connections/{conn}"), &key, None)
        .await;
    assert!(
        shown["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("throttl")),
        "{shown}"
    );
}

/// (Not availability: the `sequence` stamp of platform dispatches, found by the webhook
/// rate-limit test firing a burst for one session.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_dispatches_for_one_session_all_get_distinct_sequences() {
    let w = GraphWorld::start(&[]).await;
    let platform = w.app.key("acme", true).await;
    let calls = (0..30).map(|_| {
        w.app.call(
            "POST",
            "/v1/webhooks/dispatch",
            &platform,
            Some(json!({"company_id": "acme", "event": "session.updated", "payload": {"session_id": "s1"}})),
        )
    });
    let answers = futures_util::future::join_all(calls).await;
    assert!(
        answers.iter().all(|(status, _)| *status == 202),
        "{:?}",
        answers
            .iter()
            .map(|(s, b)| (s.as_u16(), b.to_string()))
            .collect::<Vec<_>>()
    );
    let mut sequences = HashSet::new();
    for _ in 0..30 {
        sequences.insert(
            w.app
                .local
                .deps
                .store
                .next_session_sequence("acme", "s1")
                .await
                .unwrap(),
        );
    }
    assert_eq!(sequences.len(), 30);
    assert!(
        sequences.iter().all(|s| *s > 30),
        "after the burst's 30 values"
    );
}

#[tokio::test]
async fn a_range_ending_within_a_second_finds_busy_time_and_sessions_starting_in_that_second() {
    use voyage_core::store::Store;
    let store = Store::new(
        Arc::new(voyage_core::ports::memory::MemoryTable::new()),
        Arc::new(voyage_core::ports::SystemClock),
    );
    let t = format!("{d0}T10:00:00Z", d0 = date(0))
        .parse::<chrono::DateTime<Utc>>()
        .unwrap();
    let busy = AvailabilityOverride {
        company_id: "acme".into(),
        staff_id: "ann".into(),
        connection_id: "c1".into(),
        source: voyage_core::model::Provider::Exchange,
        external_event_id: "e1".into(),
        start: t + Duration::milliseconds(300),
        end: t + Duration::hours(1),
        all_day: false,
        updated_at: t,
        listing: None,
    };
    store.apply_overrides(&[busy], &[]).await.unwrap();
    store
        .create_connection(&voyage_core::model::Connection {
            id: "c1".into(),
            company_id: "acme".into(),
            provider: voyage_core::model::Provider::Exchange,
            staff_id: "ann".into(),
            staff_email: "ann@contoso.example".into(),
            calendar_id: None,
            status: voyage_core::model::ConnectionStatus::Active,
            last_sync_at: None,
            last_error: None,
            channel: None,
            created_at: t,
            updated_at: t,
            version: 0,
        })
        .await
        .unwrap();
    let mut s = voyage_tests::contract::store::session("acme", "s1", "ann", t);
    s.start = t + Duration::milliseconds(300);
    store.create_session(&s).await.unwrap();
    let to = t + Duration::milliseconds(500);

    let found = store
        .overrides_for_staff("acme", "ann", t - Duration::hours(1), to)
        .await
        .unwrap();
    let sessions = store
        .sessions_for_staff("acme", "ann", t - Duration::hours(1), to)
        .await
        .unwrap();

    assert_eq!(found.len(), 1);
    assert_eq!(sessions.len(), 1);
}
