//! Exchange inbound benchmark (a bench binary; figures go to docs/PERFORMANCE.md).
//!
//! 1. Store round trips per delta page: rounds over 1 and 4 full pages (100 events each:
//!    half the platform's own mapped events, half the staff member's busy events), on the
//!    SQLite store wrapped in a round-trip counter. The goal is a constant per page.
//! 2. Reconciliation plans per second on one core (`reconcile::plan`, a mix of cases).
//! 3. Latency in the local system: the staff member deletes (then restores) a booked event
//!    in the simulated Outlook; from the simulator's DELETE answering (its notification goes
//!    out at once) to the session being `pending_cancellation` in the store: p50/p99.
//!
//! 4. A first sync of BENCH_FIRST_SYNC (default 50,000) staff events: wall time, invocations
//!    (each inside the default 20 s budget), store round trips per page, peak memory.
//! 5. The conflict check's reads (a staff member's sessions and busy time around a move)
//!    with 10,000 past sessions and overrides, against 10 in the same run.
//!
//! Run: `cargo bench -p voyage-tests --bench exchange_inbound` (BENCH_ROUNDS, default 200).
//! Under `cargo test` (a debug build) a smoke version runs and still asserts the per-page
//! round trips are constant.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeZone;
use serde_json::json;
use voyage_core::config::Config;
use voyage_core::deps::Deps;
use voyage_core::exchange::credentials::{self, ExchangeCredentialsInput};
use voyage_core::exchange::outbound::{self, SessionChangeInput};
use voyage_core::exchange::push::SyncRequest;
use voyage_core::exchange::sync;
use voyage_core::model::{Connection, ConnectionStatus, EventMapping, Provider, SessionStatus};
use voyage_core::ports::SystemClock;
use voyage_core::reconcile::{self, EventSnapshot, SnapshotState};
use voyage_core::store::Store;
use voyage_store_sqlite::SqliteTable;
use voyage_tests::counting::CountingTable;
use voyage_tests::graph::{change, serve, GraphWorld, CLIENT_ID, CLIENT_SECRET, TENANT};

/// A Graph simulator on loopback, and the core on a round-trip-counting SQLite store pointed
/// at it, with the tenant's credentials, an active Exchange connection `conn1` of ann's and
/// the inbound queue; `budget` sets `VOYAGE_SYNC_BUDGET`.
struct Bench {
    sim: voyage_simulators::GraphSimulator,
    sim_url: String,
    counting: Arc<CountingTable>,
    store: Store,
    deps: Deps,
    _dir: tempfile::TempDir,
}

async fn bench(budget: Option<String>) -> Bench {
    let sim = voyage_simulators::GraphSimulator::new();
    sim.register_app(TENANT, CLIENT_ID, CLIENT_SECRET);
    let sim_url = serve(sim.router()).await;
    let (db, _dir) = voyage_tests::fixtures::sqlite_db();
    let counting = Arc::new(CountingTable::new(Arc::new(SqliteTable::new(db.clone()))));
    let key = voyage_core::sealing::generate_key().unwrap();
    let config = Config::from_lookup(|k| match k {
        "VOYAGE_GRAPH_BASE_URL" | "VOYAGE_MS_LOGIN_BASE_URL" => Some(sim_url.clone()),
        "VOYAGE_CREDENTIALS_KEY" => Some(key.clone()),
        "VOYAGE_SYNC_BUDGET" => budget.clone(),
        _ => None,
    })
    .unwrap();
    let store = Store::new(counting.clone(), Arc::new(SystemClock));
    let deps = voyage_providers::attach(Deps::new(store.clone(), config))
        .unwrap()
        .with_queue(
            voyage_core::deps::QueueName::ExchangeInbound,
            Arc::new(voyage_store_sqlite::SqliteQueue::new(
                db,
                "exchange-inbound",
                Duration::from_secs(180),
                5,
            )),
        );
    let creds = ExchangeCredentialsInput {
        tenant_id: TENANT.into(),
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
    };
    credentials::store(&deps, "acme", creds).await.unwrap();
    let now = store.now();
    store
        .create_connection(&Connection {
            id: "conn1".into(),
            company_id: "acme".into(),
            provider: Provider::Exchange,
            staff_id: "ann".into(),
            staff_email: "ann@contoso.example".into(),
            calendar_id: None,
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
    Bench {
        sim,
        sim_url,
        counting,
        store,
        deps,
        _dir,
    }
}

/// Store round trips of one full round over `pages` pages of 100 events.
async fn trips_per_round(pages: usize) -> (u64, usize) {
    let Bench {
        sim_url,
        counting,
        deps,
        _dir,
        ..
    } = bench(None).await;
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(format!("{sim_url}/{TENANT}/oauth2/v2.0/token"))
        .form(&[
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_string();
    // Sessions start tomorrow-ish so they are inside the round's window.
    let day = chrono::Utc::now().date_naive() + chrono::Days::new(2);
    for i in 0..pages * 50 {
        let mut v = change("created", "acme", &format!("s{i}"), "ann", 9);
        v["session"]["start"] = json!(format!("{day}T09:00:00Z"));
        v["session"]["end"] = json!(format!("{day}T10:00:00Z"));
        let c = serde_json::from_value::<SessionChangeInput>(v)
            .unwrap()
            .validate()
            .unwrap();
        outbound::apply(&deps, &c).await.unwrap();
        http.post(format!("{sim_url}/v1.0/users/ann@contoso.example/events"))
            .bearer_auth(&token)
            .json(&json!({"subject": "busy", "showAs": "busy",
                "start": {"dateTime": format!("{day}T12:00:00"), "timeZone": "UTC"},
                "end": {"dateTime": format!("{day}T13:00:00"), "timeZone": "UTC"}}))
            .send()
            .await
            .unwrap();
    }
    let request = SyncRequest {
        company_id: "acme".into(),
        connection_id: "conn1".into(),
        subscription_id: "none".into(),
        reason: "notification".into(),
    };
    let before = counting.round_trips();
    let report = sync::handle(&deps, &request).await.unwrap();
    assert_eq!(report.pages, pages);
    assert_eq!(report.overrides_upserted, pages * 50);
    (counting.round_trips() - before, report.pages)
}

fn plans_per_second() -> f64 {
    let t = |h: i64| {
        chrono::Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap() + chrono::Duration::hours(h)
    };
    let mapping = EventMapping {
        company_id: "acme".into(),
        session_id: "s1".into(),
        connection_id: "c1".into(),
        provider: Provider::Exchange,
        external_event_id: "e1".into(),
        change_key: Some("ours".into()),
        last_start: t(9),
        last_end: t(10),
        updated_at: t(0),
        version: 1,
        modified: None,
    };
    let c = serde_json::from_value::<SessionChangeInput>(change("created", "acme", "s1", "ann", 9))
        .unwrap()
        .validate()
        .unwrap();
    let mut confirmed = voyage_core::model::Session {
        id: c.id,
        company_id: c.company_id,
        staff_id: c.staff_id,
        start: c.start,
        end: c.end,
        time_zone: c.time_zone,
        title: c.title,
        location: c.location,
        client: c.client,
        status: SessionStatus::Confirmed,
        declined: false,
        history: vec![],
        pending: None,
        outbox: vec![],
        platform_version: None,
        calendar_version: None,
        event_txn: None,
        google_event: None,
        retired: vec![],
        unsettled_times: vec![],
        times_changed_at: None,
        updated_at: t(0),
        version: 1,
    };
    confirmed.start = t(9);
    confirmed.end = t(10);
    let mut pending = confirmed.clone();
    pending.status = SessionStatus::PendingCancellation;
    let snap = |key: &str, state| EventSnapshot {
        event_id: "e1".into(),
        change_key: Some(key.into()),
        state,
        modified: None,
    };
    let live = |s, e, d| SnapshotState::Live {
        start: t(s),
        end: t(e),
        cancelled: false,
        declined: d,
    };
    let cases = [
        (snap("ours", live(9, 10, false)), &confirmed),
        (snap("k", SnapshotState::Removed), &confirmed),
        (snap("k", live(9, 10, false)), &pending),
        (snap("k", live(11, 12, false)), &confirmed),
        (snap("k", live(9, 10, true)), &confirmed),
        (snap("k", live(9, 10, false)), &confirmed),
    ];
    let n = if cfg!(debug_assertions) {
        60_000
    } else {
        3_000_000
    };
    let started = Instant::now();
    let mut steps = 0usize;
    for i in 0..n {
        let (s, session) = &cases[i % cases.len()];
        steps += std::hint::black_box(reconcile::plan(s, &mapping, session)).len();
    }
    assert!(steps > 0);
    n as f64 / started.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

async fn latency(rounds: usize) -> Vec<Duration> {
    let w = GraphWorld::start_running(&[]).await;
    w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
    let platform = w.app.key("platform", true).await;
    let (status, out) = w
        .app
        .call(
            "POST",
            "/v1/exchange/outbound",
            &platform,
            Some(change("created", "acme", "s1", "ann", 9)),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    let event = out["event_id"].as_str().unwrap().to_string();
    let store = &w.app.local.deps.store;
    let wait = |want: SessionStatus| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if store.get_session("acme", "s1").await.unwrap().status == want {
                return;
            }
            assert!(Instant::now() < deadline, "session never became {want:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    // Let the create's own notification round settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        assert_eq!(w.staff("DELETE", "ann", &event, "", None).await, 204);
        let t0 = Instant::now();
        wait(SessionStatus::PendingCancellation).await;
        samples.push(t0.elapsed());
        assert_eq!(w.restore("ann", &event).await, 200);
        wait(SessionStatus::Confirmed).await;
    }
    samples.sort();
    samples
}

/// The process's peak resident set so far (`VmHWM`), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A first sync of `n` staff events (busy, 10 minutes each, spread over the window) on the
/// SQLite store: (wall time, invocations, pages, round trips, peak RSS growth in MiB).
async fn first_sync(n: usize) -> (Duration, usize, usize, u64, f64) {
    // BENCH_SYNC_BUDGET (e.g. `2s`) sets the invocation budget; the default is the system's.
    let Bench {
        sim,
        counting,
        store,
        deps,
        _dir,
        ..
    } = bench(std::env::var("BENCH_SYNC_BUDGET").ok()).await;
    let now = store.now();
    let first = now + chrono::Duration::hours(1);
    for i in 0..n as i64 {
        let start = first
            + chrono::Duration::minutes(15 * (i % 16_000))
            + chrono::Duration::seconds(i / 16_000);
        sim.staff_create(
            "ann@contoso.example",
            "busy",
            start,
            start + chrono::Duration::minutes(10),
            "busy",
        );
    }
    let request = SyncRequest {
        company_id: "acme".into(),
        connection_id: "conn1".into(),
        subscription_id: "none".into(),
        reason: "notification".into(),
    };
    let rss_before = peak_rss_mib();
    let trips_before = counting.round_trips();
    let started = Instant::now();
    let (mut invocations, mut pages) = (0, 0);
    loop {
        invocations += 1;
        let report = sync::handle(&deps, &request).await.unwrap();
        pages += report.pages;
        if report.checkpoints == 0 {
            break;
        }
    }
    let elapsed = started.elapsed();
    let got = store
        .overrides_for_connection("acme", "ann", "conn1")
        .await
        .unwrap()
        .len();
    assert_eq!(got, n, "every event became one override");
    (
        elapsed,
        invocations,
        pages,
        counting.round_trips() - trips_before,
        peak_rss_mib() - rss_before,
    )
}

/// The conflict check's reads for a move tomorrow, with `past` sessions and overrides in the
/// past: (store items read per check, mean time per check).
async fn conflict_check(past: usize) -> (u64, Duration) {
    let (db, _dir) = voyage_tests::fixtures::sqlite_db();
    let counting = Arc::new(CountingTable::new(Arc::new(SqliteTable::new(db))));
    let store = Store::new(counting.clone(), Arc::new(SystemClock));
    let now = store.now();
    let mut busy = Vec::new();
    for i in 0..past as i64 {
        let start = now - chrono::Duration::days(40) - chrono::Duration::hours(i);
        let s = voyage_tests::contract::store::session("acme", &format!("p{i}"), "ann", start);
        store.create_session(&s).await.unwrap();
        busy.push(voyage_core::model::AvailabilityOverride {
            company_id: "acme".into(),
            staff_id: "ann".into(),
            connection_id: "conn1".into(),
            source: Provider::Exchange,
            external_event_id: format!("o{i}"),
            start,
            end: start + chrono::Duration::minutes(30),
            all_day: false,
            updated_at: now,
            listing: None,
        });
    }
    store.apply_overrides(&busy, &[]).await.unwrap();
    let tomorrow = now + chrono::Duration::days(1);
    let s = voyage_tests::contract::store::session("acme", "next", "ann", tomorrow);
    store.create_session(&s).await.unwrap();
    let checks = 200;
    let items_before = counting.items_read();
    let started = Instant::now();
    for _ in 0..checks {
        let (from, to) = (
            tomorrow + chrono::Duration::hours(2),
            tomorrow + chrono::Duration::hours(3),
        );
        let sessions = store
            .sessions_for_staff("acme", "ann", from - chrono::Duration::days(31), to)
            .await
            .unwrap();
        let busy = store
            .overrides_for_staff("acme", "ann", from, to)
            .await
            .unwrap();
        std::hint::black_box((sessions, busy));
    }
    (
        (counting.items_read() - items_before) / checks,
        started.elapsed() / checks as u32,
    )
}

#[tokio::main]
async fn main() {
    let smoke = cfg!(debug_assertions);
    let (one, p1) = trips_per_round(1).await;
    let (four, p4) = trips_per_round(if smoke { 2 } else { 4 }).await;
    let per_page = (four - one) as f64 / (p4 - p1) as f64;
    println!("exchange inbound: store round trips per delta round (100 events per page: 50 mapped, 50 busy)");
    println!("  {p1} page:  {one} round trips");
    println!(
        "  {p4} pages: {four} round trips  -> {per_page:.1} per additional page, fixed cost {}",
        one as f64 - per_page
    );
    // Constant per page: every added page costs the same (a few batch calls), not 100.
    assert!(per_page <= 8.0, "{per_page} round trips per page");
    let rate = plans_per_second();
    println!(
        "  reconciliation plans: {:.2} million per second (one core)",
        rate / 1e6
    );
    let rounds = if smoke {
        5
    } else {
        std::env::var("BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200)
    };
    let samples = latency(rounds).await;
    println!(
        "  delete in Outlook -> session pending_cancellation, {rounds} samples: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3
    );
    let n = if smoke {
        500
    } else {
        std::env::var("BENCH_FIRST_SYNC")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50_000)
    };
    let (elapsed, invocations, pages, trips, rss) = first_sync(n).await;
    println!(
        "  first sync of {n} events: {:.1} s, {invocations} invocation(s), {pages} pages, {:.1} store round trips per page, peak RSS +{rss:.0} MiB (simulator included)",
        elapsed.as_secs_f64(),
        trips as f64 / pages as f64
    );
    let (few_items, few_time) = conflict_check(10).await;
    let (many_items, many_time) = conflict_check(if smoke { 500 } else { 10_000 }).await;
    println!(
        "  conflict check reads: 10 past sessions {few_items} items, {:.0} us; {} past: {many_items} items, {:.0} us; time ratio {:.2}",
        few_time.as_secs_f64() * 1e6,
        if smoke { 500 } else { 10_000 },
        many_time.as_secs_f64() * 1e6,
        many_time.as_secs_f64() / few_time.as_secs_f64()
    );
    assert_eq!(few_items, many_items, "the reads do not grow with history");
}
