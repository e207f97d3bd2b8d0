//! Google sync benchmark (a bench binary; figures go to docs/PERFORMANCE.md).
//!
//! A full sync of a calendar of N busy events (default 10,000) against the Google simulator
//! on loopback, on the SQLite store wrapped in a round-trip counter: store round trips (goal:
//! batched, not one per event), wall time, and the process's peak resident memory during the
//! sync (reset just before it through `/proc/self/clear_refs`; the simulator serving the pages
//! runs in the same process and is included). Baseline in the same run: the same pages
//! fetched by a bare reqwest loop, with no store.
//!
//! Run: `cargo bench -p voyage-tests --bench google` (BENCH_EVENTS, default 10000). Under
//! `cargo test` (a debug build) a smoke version with 600 events runs and still asserts the
//! round trips are batched.

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use serde_json::{json, Value};
use voyage_core::config::Config;
use voyage_core::deps::Deps;
use voyage_core::google::credentials::{self, GoogleCredentialsInput};
use voyage_core::google::sync;
use voyage_core::model::{Connection, ConnectionStatus, Provider};
use voyage_core::ports::SystemClock;
use voyage_core::store::Store;
use voyage_simulators::google::{SANDBOX_CLIENT_EMAIL, SANDBOX_PRIVATE_KEY};
use voyage_store_sqlite::SqliteTable;
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
    let n: usize = if cfg!(debug_assertions) {
        600
    } else {
        std::env::var("BENCH_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000)
    };
    let sim = voyage_simulators::GoogleSimulator::new();
    sim.register_account(SANDBOX_CLIENT_EMAIL, SANDBOX_PRIVATE_KEY)
        .unwrap();
    let sim_url = serve(sim.router()).await;
    let token_url = format!("{sim_url}/token");
    let (db, _dir) = voyage_tests::fixtures::sqlite_db();
    let counting = Arc::new(CountingTable::new(Arc::new(SqliteTable::new(db))));
    let key = voyage_core::sealing::generate_key().unwrap();
    let config = Config::from_lookup(|k| match k {
        "VOYAGE_GOOGLE_CALENDAR_BASE_URL" => Some(sim_url.clone()),
        "VOYAGE_GOOGLE_TOKEN_URL" => Some(token_url.clone()),
        "VOYAGE_CREDENTIALS_KEY" => Some(key.clone()),
        _ => None,
    })
    .unwrap();
    let store = Store::new(counting.clone(), Arc::new(SystemClock));
    let deps = voyage_providers::attach(Deps::new(store.clone(), config)).unwrap();
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

    // The calendar: N busy events over the next 100 days, inserted through Google's routes.
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
    futures_util::stream::iter(0..n)
        .map(|i| {
            let (http, token, url) = (&http, &token, &events_url);
            async move {
                let d = day(1 + (i % 100) as i64);
                let h = (i / 100) % 24;
                let body = json!({"summary": "Busy", "start": {"dateTime": format!("{d}T{h:02}:00:00Z")}, "end": {"dateTime": format!("{d}T{h:02}:30:00Z")}});
                let resp = http.post(url.as_str()).bearer_auth(token).json(&body).send().await.unwrap();
                assert_eq!(resp.status(), 200);
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;

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
    let report = sync::sync_connection(&deps, &mut conn).await.unwrap();
    let elapsed = started.elapsed();
    let trips = counting.round_trips() - before;
    let peak = peak_rss_kib();
    assert_eq!(report.overrides_upserted, n, "{report:?}");
    let per_event = trips as f64 / n as f64;
    println!(
        "google full sync: {n} busy events, {} pages of {}",
        report.pages,
        sync::PAGE_SIZE
    );
    println!(
        "  store round trips: {trips} ({per_event:.3} per event; {:.1} per page)",
        trips as f64 / report.pages as f64
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
}
