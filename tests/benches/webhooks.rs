//! Webhook delivery benchmarks (a bench binary; figures go to docs/PERFORMANCE.md):
//!
//! 1. Throughput: deliveries per second through the local system (internal dispatch route,
//!    SQLite store and queue, worker, signing, HTTP) to a loopback receiver, as a ratio to a
//!    bare reqwest loop posting the same bodies to the same receiver with the same
//!    concurrency, in the same run: rounds of each (three by default), taken in turn (bare,
//!    system, bare, ...), so the machine's drift during the run weighs on both; the ratio
//!    is of the totals.
//! 2. Latency: events dispatched at a paced 200 per second; for each, the time from sending
//!    the dispatch request (accept) to the receiver getting the first attempt: p50, p99, max.
//! 3. Memory: the peak resident set (`VmHWM`) of this process, which holds the whole local
//!    system, the receiver and the bare client: an upper bound of the system's own.
//! 4. Fan-out: one event to 100 endpoints of which one answers after 5 s: the wall time until
//!    the 99 fast ones have it, and until all 100 deliveries are recorded.
//!
//! Run: `cargo bench -p voyage-tests --bench webhooks` (env BENCH_EVENTS, events per
//! throughput round, default 2000; BENCH_ROUNDS, default 3; BENCH_DISPATCH_CONCURRENCY,
//! dispatch requests at once, default 16; BENCH_PACED_EVENTS, default 2000; each at least
//! 1). Under `cargo test` (a debug build) it runs a small smoke version instead, so the
//! benchmark keeps working without slowing the test suite.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use futures_util::StreamExt;
use serde_json::json;
use tower::ServiceExt;
use voyage_core::model::DeliveryStatus;
use voyage_tests::app::TestApp;

async fn receiver(slow: Duration) -> (String, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let app = axum::Router::new().route(
        "/{*path}",
        axum::routing::post(move |uri: axum::http::Uri, _body: axum::body::Bytes| {
            let c = c.clone();
            async move {
                if uri.path().starts_with("/slow") {
                    tokio::time::sleep(slow).await;
                }
                c.fetch_add(1, Ordering::SeqCst);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), count)
}

async fn wait_count(count: &AtomicUsize, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while count.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n}",
            count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn dispatch(app: &TestApp, key: &str, i: usize) {
    let body = json!({"company_id": "acme", "event": "session.created", "payload": {"session_id": format!("s{i}"), "note": "x".repeat(200)}});
    let req = http::Request::post("/v1/webhooks/dispatch")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 202);
}

/// Dispatches one event; answers its id.
async fn dispatch_answer(app: &TestApp, key: &str, i: usize) -> String {
    let body = json!({"company_id": "acme", "event": "connection.active", "payload": {"connection_id": format!("c{i}"), "note": "x".repeat(200)}});
    let req = http::Request::post("/v1/webhooks/dispatch")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 202);
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["event_id"].as_str().unwrap().to_string()
}

/// Baseline: bare reqwest posting `events` bodies of the same size, with the same concurrency
/// as the local worker; answers the time it took.
async fn bare_loop(client: &reqwest::Client, base: &str, events: usize) -> Duration {
    let body = json!({"id": "evt_x", "type": "session.created", "created_at": "2026-11-29T18:00:00Z", "company_id": "acme", "data": {"session_id": "s1", "note": "x".repeat(200)}}).to_string();
    let start = Instant::now();
    futures_util::stream::iter(0..events)
        .map(|_| {
            let client = client.clone();
            let body = body.clone();
            let url = format!("{base}/bare");
            async move {
                client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(voyage::CONSUMER_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    start.elapsed()
}

/// `rounds` rounds of `events` each: the bare loop, then the same number of events through
/// the local system (dispatched `concurrency` at a time, until the receiver has every
/// delivery). Taken in turn, so a drift of the machine's speed during the run weighs on
/// both alike.
async fn throughput(events: usize, rounds: usize, concurrency: usize) {
    let (base, count) = receiver(Duration::ZERO).await;
    let client = reqwest::Client::new();
    let app = TestApp::start(&[
        ("VOYAGE_ALLOW_PRIVATE_WEBHOOK_TARGETS", "true"),
        ("VOYAGE_ALLOW_HTTP_WEBHOOKS", "true"),
    ]);
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    let req = http::Request::post("/v1/webhooks")
        .header("authorization", format!("Bearer {tenant}"))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"url": format!("{base}/hook"), "events": ["*"]}).to_string(),
        ))
        .unwrap();
    assert_eq!(app.router.clone().oneshot(req).await.unwrap().status(), 201);
    println!("throughput: {rounds} rounds of {events} posts, then {events} deliveries dispatched {concurrency} at a time");
    let (mut bare_total, mut system_total) = (Duration::ZERO, Duration::ZERO);
    for round in 0..rounds {
        let bare = bare_loop(&client, &base, events).await;
        count.store(0, Ordering::SeqCst);
        let start = Instant::now();
        futures_util::stream::iter(0..events)
            .map(|i| dispatch(&app, &internal, round * events + i))
            .buffer_unordered(concurrency)
            .collect::<Vec<_>>()
            .await;
        let dispatched = start.elapsed();
        wait_count(&count, events, Duration::from_secs(600)).await;
        let system = start.elapsed();
        count.store(0, Ordering::SeqCst);
        let rate = |d: Duration| events as f64 / d.as_secs_f64();
        println!(
            "  round {}: bare {:>6.0} posts/s, local system {:>6.0} deliveries/s (dispatching took {:.0} ms), ratio {:.2}",
            round + 1,
            rate(bare),
            rate(system),
            dispatched.as_secs_f64() * 1000.0,
            bare.as_secs_f64() / system.as_secs_f64()
        );
        bare_total += bare;
        system_total += system;
    }
    let total = (events * rounds) as f64;
    let bare = total / bare_total.as_secs_f64();
    let system = total / system_total.as_secs_f64();
    println!("  bare reqwest loop:  {bare:>8.0} posts/s");
    println!("  local system:       {system:>8.0} deliveries/s (dispatch route -> store -> queue -> worker -> signed POST)");
    println!("  ratio:              {:>8.2} (goal >= 0.5)", system / bare);
}

/// A receiver that notes when each event id first arrived.
async fn timing_receiver() -> (String, Arc<Mutex<HashMap<String, Instant>>>) {
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/{*path}",
        axum::routing::post(move |body: axum::body::Bytes| {
            let s = s.clone();
            async move {
                let at = Instant::now();
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                    if let Some(id) = v["id"].as_str() {
                        s.lock().unwrap().entry(id.to_string()).or_insert(at);
                    }
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), seen)
}

/// Accept -> first attempt at a paced `per_second`, `events` events.
async fn latency(events: usize, per_second: u64) {
    let (base, seen) = timing_receiver().await;
    let app = Arc::new(TestApp::start(&[
        ("VOYAGE_ALLOW_PRIVATE_WEBHOOK_TARGETS", "true"),
        ("VOYAGE_ALLOW_HTTP_WEBHOOKS", "true"),
    ]));
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    let req = http::Request::post("/v1/webhooks")
        .header("authorization", format!("Bearer {tenant}"))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"url": format!("{base}/hook"), "events": ["*"]}).to_string(),
        ))
        .unwrap();
    assert_eq!(app.router.clone().oneshot(req).await.unwrap().status(), 201);
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / per_second));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(events);
    for i in 0..events {
        tick.tick().await;
        let (app, internal, sent) = (app.clone(), internal.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let event_id = dispatch_answer(&app, &internal, i).await;
            sent.lock().unwrap().insert(event_id, started);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().len() < events {
        assert!(Instant::now() < deadline, "not every event arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = sent.lock().unwrap();
    let seen = seen.lock().unwrap();
    let mut ms: Vec<f64> = sent
        .iter()
        .map(|(id, at)| seen[id].saturating_duration_since(*at).as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| ms[((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1];
    println!("latency: {events} events paced at {per_second}/s, dispatch request sent -> first attempt received");
    println!(
        "  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (goal: p99 < 5 ms)",
        pct(0.50),
        pct(0.99),
        ms[ms.len() - 1]
    );
}

/// This process's peak resident set so far, in MiB (`VmHWM`), and resets the mark.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    // "5" resets the peak to the current resident set (Linux >= 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    Some(kib / 1024.0)
}

async fn fan_out(endpoints: usize, slow: Duration) {
    let (base, count) = receiver(slow).await;
    let app = TestApp::start(&[
        ("VOYAGE_ALLOW_PRIVATE_WEBHOOK_TARGETS", "true"),
        ("VOYAGE_ALLOW_HTTP_WEBHOOKS", "true"),
    ]);
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    for i in 0..endpoints {
        let path = if i == 0 {
            "/slow".to_string()
        } else {
            format!("/fast/{i}")
        };
        let req = http::Request::post("/v1/webhooks")
            .header("authorization", format!("Bearer {tenant}"))
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"url": format!("{base}{path}"), "events": ["*"]}).to_string(),
            ))
            .unwrap();
        assert_eq!(app.router.clone().oneshot(req).await.unwrap().status(), 201);
    }
    let start = Instant::now();
    dispatch(&app, &internal, 0).await;
    wait_count(&count, endpoints - 1, Duration::from_secs(30)).await;
    let fast = start.elapsed();
    // All recorded as succeeded (the slow one included).
    loop {
        let mut done = 0;
        for e in &app.local.deps.store.all_endpoints("acme").await.unwrap() {
            let page = app
                .local
                .deps
                .store
                .list_deliveries("acme", &e.id, Some(DeliveryStatus::Succeeded), None, None)
                .await
                .unwrap();
            done += page.items.len();
        }
        if done == endpoints {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "only {done} of {endpoints} succeeded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = start.elapsed();
    println!("fan-out: 1 event -> {endpoints} endpoints, one answering after {slow:?}");
    println!(
        "  {} fast endpoints received it after: {:>6.0} ms",
        endpoints - 1,
        fast.as_secs_f64() * 1000.0
    );
    println!(
        "  all {endpoints} deliveries recorded after: {:>6.0} ms (goal: about {} ms)",
        all.as_secs_f64() * 1000.0,
        slow.as_millis()
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // Built by `cargo test` (debug assertions on): a quick smoke run. `cargo bench`: the real one.
    if cfg!(debug_assertions) {
        throughput(50, 2, 16).await;
        latency(50, 200).await;
        fan_out(5, Duration::from_millis(300)).await;
        return;
    }
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
            .max(1)
    };
    let _ = peak_rss_mib();
    throughput(
        env("BENCH_EVENTS", 2000),
        env("BENCH_ROUNDS", 3),
        env("BENCH_DISPATCH_CONCURRENCY", 16),
    )
    .await;
    if let Some(mib) = peak_rss_mib() {
        println!(
            "  peak RSS during throughput (whole bench process): {mib:.1} MiB (goal < 60 MiB)"
        );
    }
    latency(env("BENCH_PACED_EVENTS", 2000), 200).await;
    if let Some(mib) = peak_rss_mib() {
        println!("  peak RSS during latency (whole bench process): {mib:.1} MiB (goal < 60 MiB)");
    }
    fan_out(100, Duration::from_secs(5)).await;
}
