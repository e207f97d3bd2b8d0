//! Google sync benchmark (a bench binary; figures go to docs/PERFORMANCE.md).
//!
//! A first (full) sync of a calendar of N busy events (default 50,000) against the Google
//! simulator on loopback, on the SQLite store wrapped in a round-trip counter, with the sync
//! budget of the deployment (`BENCH_SYNC_BUDGET`, default `10s`, as template.yaml sets
//! `VOYAGE_SYNC_BUDGET`): the sync checkpoints after every page and stops when its budget is
//! spent, queueing a follow-up on the google-sync queue; the bench drives that queue until it
//! is empty, each message one invocation, as the worker Lambda would. Measured: invocations
//! and the longest one, store round trips (per page; goal: batched, not one per event), wall
//! time, and the process's peak resident memory during the sync (reset just before it
//! through `/proc/self/clear_refs`; the simulator holding the events and serving the pages
//! runs in the same process and is included). Baseline in the same run: the same pages
//! fetched by a bare reqwest loop, with no store.
//!
//! Run: `cargo bench -p voyage-tests --bench google` (BENCH_EVENTS, default 50000;
//! BENCH_SYNC_BUDGET, default 10s). Under `cargo test` (a debug build) a smoke version with
//! 600 events and a 1 ms budget (one page per invocation) runs and still asserts the round
//! trips are batched and every event is an override once.

use std::sync::Arc;
use std::time::{Duration, Instant};
use voyage_tests::dates::date;

use serde_json::{json, Value};
use voyage_core::calendar::changes;
use voyage_core::config::Config;
use voyage_core::deps::{Deps, QueueName};
use voyage_core::exchange::outbound::SessionChangeInput;
use voyage_core::google::credentials::{self, GoogleCredentialsInput};
use voyage_core::google::sync;
use voyage_core::model::{Connection, ConnectionStatus, Provider};
use voyage_core::ports::{Queue, SystemClock};
use voyage_core::store::Store;
use voyage_simulators::google::{SANDBOX_CLIENT_EMAIL, SANDBOX_PRIVATE_KEY};
use voyage_store_sqlite::{SqliteQueue, SqliteTable};
use voyage_tests::counting::CountingTable;
use voyage_tests::google::day;
use voyage_tests::graph::serve;

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[tokio::main]
async fn main() {
    let (n, budget): (usize, String) = if cfg!(debug_assertions) {
        (600, "1ms".into())
    } else {
        (
            std::env::var("BENCH_EVENTS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(50_000),
            std::env::var("BENCH_SYNC_BUDGET").unwrap_or_else(|_| "10s".into()),
        )
    };
    let sim = voyage_simulators::GoogleSimulator::new();
    sim.register_account(SANDBOX_CLIENT_EMAIL, SANDBOX_PRIVATE_KEY)
        .unwrap();
    let sim_url = serve(sim.router()).await;
    let token_url = format!("{sim_url}/token");
    let (db, _dir) = voyage_tests::fixtures::sqlite_db();
    let counting = Arc::new(CountingTable::new(Arc::new(SqliteTable::new(db.clone()))));
    let key = voyage_core::sealing::generate_key().unwrap();
    let config = Config::from_lookup(|k| match k {
        "VOYAGE_GOOGLE_CALENDAR_BASE_URL" => Some(sim_url.clone()),
        "VOYAGE_GOOGLE_TOKEN_URL" => Some(token_url.clone()),
        "VOYAGE_CREDENTIALS_KEY" => Some(key.clone()),
        "VOYAGE_SYNC_BUDGET" => Some(budget.clone()),
        // The outbound part writes thousands of sessions of one staff member in a minute:
        // more than Google's per-user quota allows (a real deployment spreads them).
        "VOYAGE_GOOGLE_USER_BUDGET" => Some("1000000".into()),
        _ => None,
    })
    .unwrap();
    let store = Store::new(counting.clone(), Arc::new(SystemClock));
    let queue: Arc<dyn Queue> = Arc::new(SqliteQueue::new(
        db.clone(),
        "google-sync",
        Duration::from_secs(180),
        5,
    ));
    let deps = voyage_providers::attach(
        Deps::new(store.clone(), config).with_queue(QueueName::GoogleSync, queue.clone()),
    )
    .unwrap();
    credentials::store(
        &deps,
        "acme",
        GoogleCredentialsInput {
            client_email: SANDBOX_CLIENT_EMAIL.into(),
            private_key: SANDBOX_PRIVATE_KEY.into(),
            token_uri: token_url.clone(),
            kind: None,
            project_id: None,
            private_key_id: None,
            client_id: None,
            auth_uri: None,
            auth_provider_x509_cert_url: None,
            client_x509_cert_url: None,
            universe_domain: None,
        },
    )
    .await
    .unwrap();
    let now = store.now();
    let calendar = "ann@contoso.example";
    let mut conn = Connection {
        id: "conn1".into(),
        company_id: "acme".into(),
        provider: Provider::Google,
        staff_id: "ann".into(),
        staff_email: calendar.into(),
        calendar_id: Some(calendar.into()),
        status: ConnectionStatus::Active,
        last_sync_at: None,
        last_error: None,
        channel: None,
        created_at: now,
        updated_at: now,
        version: 0,
    };
    conn = store.create_connection(&conn).await.unwrap();

    // The calendar: N busy events over the next 150 days, seeded into the simulator as
    // `events.insert` would add them (without pushes).
    let pair = voyage_core::google::jwt::key_pair(SANDBOX_PRIVATE_KEY).unwrap();
    let assertion = voyage_core::google::jwt::assertion(
        &pair,
        SANDBOX_CLIENT_EMAIL,
        calendar,
        &token_url,
        chrono::Utc::now().timestamp(),
    )
    .unwrap();
    let http = reqwest::Client::new();
    let token: Value = http
        .post(&token_url)
        .form(&[
            ("grant_type", voyage_core::google::jwt::GRANT_TYPE),
            ("assertion", &assertion),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_string();
    let events_url = format!("{sim_url}/calendar/v3/calendars/{calendar}/events");
    let events = (0..n)
        .map(|i| {
            let d = day(1 + (i % 150) as i64);
            let (h, m) = ((i / 150) % 24, (i / 3600) % 60);
            json!({"summary": "Busy", "start": {"dateTime": format!("{d}T{h:02}:{m:02}:00Z")}, "end": {"dateTime": format!("{d}T{h:02}:{m:02}:30Z")}})
        })
        .collect();
    sim.seed_events(calendar, events).unwrap();

    // Baseline: the same pages fetched by a bare loop, no store.
    let started = Instant::now();
    let mut page_token: Option<String> = None;
    let mut fetched = 0;
    loop {
        let mut url = format!(
            "{events_url}?singleEvents=true&maxResults={}",
            sync::PAGE_SIZE
        );
        if let Some(p) = &page_token {
            url.push_str(&format!("&pageToken={p}"));
        }
        let page: Value = http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        fetched += page["items"].as_array().map_or(0, Vec::len);
        match page["nextPageToken"].as_str() {
            Some(p) => page_token = Some(p.to_string()),
            None => break,
        }
    }
    let bare = started.elapsed();
    assert_eq!(fetched, n);

    reset_peak();
    let rss_before = peak_rss_kib();
    let before = counting.round_trips();
    let started = Instant::now();
    let mut report = sync::sync_connection(&deps, &mut conn).await.unwrap();
    let mut longest = started.elapsed();
    let (mut invocations, mut pages, mut upserted) = (1, report.pages, report.overrides_upserted);
    // Each queued follow-up is one more invocation (the worker Lambda's), until none is left.
    loop {
        let messages = queue.receive(10, Duration::from_millis(50)).await.unwrap();
        if messages.is_empty() {
            break;
        }
        for m in messages {
            let one = Instant::now();
            let request: voyage_core::ports::queue::Envelope =
                serde_json::from_str(&m.body).unwrap();
            assert_eq!(request.kind, voyage_core::google::push::SYNC_KIND);
            report = sync::sync_connection(&deps, &mut conn).await.unwrap();
            longest = longest.max(one.elapsed());
            invocations += 1;
            pages += report.pages;
            upserted += report.overrides_upserted;
            queue.ack(&m.receipt).await.unwrap();
        }
    }
    let elapsed = started.elapsed();
    let trips = counting.round_trips() - before;
    let peak = peak_rss_kib();
    assert!(!report.continues, "{report:?}");
    assert_eq!(upserted, n, "every event upserted once: {report:?}");
    let overrides = store
        .overrides_for_connection("acme", "ann", "conn1")
        .await
        .unwrap();
    assert_eq!(overrides.len(), n);
    let per_event = trips as f64 / n as f64;
    println!(
        "google first sync: {n} busy events, {pages} pages of {}, budget {budget}",
        sync::PAGE_SIZE
    );
    println!(
        "  invocations: {invocations} (longest {:.0} ms)",
        longest.as_secs_f64() * 1e3
    );
    println!(
        "  store round trips: {trips} ({per_event:.3} per event; {:.1} per page)",
        trips as f64 / pages as f64
    );
    println!(
        "  wall time: {:.0} ms (bare page fetch loop, no store: {:.0} ms; ratio {:.2})",
        elapsed.as_secs_f64() * 1e3,
        bare.as_secs_f64() * 1e3,
        bare.as_secs_f64() / elapsed.as_secs_f64()
    );
    if let (Some(b), Some(p)) = (rss_before, peak) {
        println!(
            "  peak RSS during the sync: {:.1} MiB (at its start: {:.1} MiB)",
            p as f64 / 1024.0,
            b as f64 / 1024.0
        );
    }
    // Batched: a page of 250 costs ~10 batch writes (25 items each), never one per event.
    assert!(per_event < 0.1, "{per_event} round trips per event");

    outbound(&deps, &store, &counting, &sim, &sim_url, &token_url).await;
}

/// Google outbound per session through the calendar seam (`calendar::changes::apply`, as
/// `POST /v1/sessions/changes` runs it) for a staff member whose only calendar is Google:
/// Google calls and store round trips per `created` and `updated`, and the time as a ratio to
/// a bare reqwest loop making the same insert (same simulator, same token) in the same run.
async fn outbound(
    deps: &Deps,
    store: &Store,
    counting: &CountingTable,
    sim: &voyage_simulators::GoogleSimulator,
    sim_url: &str,
    token_url: &str,
) {
    let n: usize = if cfg!(debug_assertions) {
        20
    } else {
        std::env::var("BENCH_SESSIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000)
    };
    let calendar = "bea@contoso.example";
    let now = store.now();
    store
        .create_connection(&Connection {
            id: "conn2".into(),
            company_id: "acme".into(),
            provider: Provider::Google,
            staff_id: "bea".into(),
            staff_email: calendar.into(),
            calendar_id: Some(calendar.into()),
            status: ConnectionStatus::Active,
            last_sync_at: None,
            last_error: None,
            channel: None,
            created_at: now,
            updated_at: now,
            version: 0,
        })
        .await
        .unwrap();
    let change = |action: &str, i: usize, hour: u32| {
        let v = voyage_tests::calendars::change_body(action, &format!("g{i}"), "bea", hour);
        serde_json::from_value::<SessionChangeInput>(v)
            .unwrap()
            .validate()
            .unwrap()
    };
    // Warm-up: the token is fetched once and cached.
    changes::apply(deps, &change("created", 0, 8))
        .await
        .unwrap();
    let mut report = Vec::new();
    for (action, hour) in [("created", 9), ("updated", 12)] {
        sim.clear_served();
        let before = counting.round_trips();
        let started = Instant::now();
        for i in 1..=n {
            let out = changes::apply(deps, &change(action, i, hour))
                .await
                .unwrap();
            assert_eq!(out.calendars.len(), 1, "{out:?}");
            assert_eq!(out.calendars[0].outcome, action, "{out:?}");
        }
        let elapsed = started.elapsed();
        let trips = (counting.round_trips() - before) as f64 / n as f64;
        let calls = sim.requests().len() as f64 / n as f64;
        // One batch read of every calendar's context, the session recorded before the
        // Google call, one closing transaction: as for Exchange. (Plus, now and then, the
        // per-user quota's reservation of its next chunk of requests: under 0.1 a session.)
        assert!(
            (3.0..3.1).contains(&trips),
            "{action}: {trips} store round trips per session"
        );
        assert_eq!(calls, 1.0, "{action}: Google calls per session");
        report.push((action, trips, calls, elapsed));
    }

    // Baseline: the same insert by a bare reqwest loop with the same token.
    let http = reqwest::Client::new();
    let pair = voyage_core::google::jwt::key_pair(SANDBOX_PRIVATE_KEY).unwrap();
    let assertion = voyage_core::google::jwt::assertion(
        &pair,
        SANDBOX_CLIENT_EMAIL,
        calendar,
        token_url,
        chrono::Utc::now().timestamp(),
    )
    .unwrap();
    let token: Value = http
        .post(token_url)
        .form(&[
            ("grant_type", voyage_core::google::jwt::GRANT_TYPE),
            ("assertion", &assertion),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_string();
    let started = Instant::now();
    for i in 1..=n {
        let body = json!({
            "id": format!("bare{i:05}"), "summary": "Consultation", "description": "Voyage session.",
            "start": {"dateTime": format!("{d0}T09:00:00Z", d0 = date(0)), "timeZone": "UTC"},
            "end": {"dateTime": format!("{d0}T10:00:00Z", d0 = date(0)), "timeZone": "UTC"},
            "transparency": "opaque",
            "extendedProperties": {"private": {"voyageSessionId": format!("acme/bare{i}")}},
        });
        let resp = http
            .post(format!(
                "{sim_url}/calendar/v3/calendars/{calendar}/events?sendUpdates=none"
            ))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            200,
            "{}",
            resp.text().await.unwrap_or_default()
        );
    }
    let bare = started.elapsed();
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!("google outbound: {n} sessions per action through the calendar seam, SQLite store");
    println!(
        "  bare Google insert (reqwest loop): {:>8.0} us/session",
        per(bare)
    );
    for (action, trips, calls, elapsed) in report {
        println!(
            "  {action:<8} {trips} store round trips, {calls} Google call: {:>8.0} us/session (ratio to bare {:.2})",
            per(elapsed),
            per(bare) / per(elapsed)
        );
    }
}
