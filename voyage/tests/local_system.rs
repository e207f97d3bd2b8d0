//! The local system as a user runs it: the real `voyage` binary on a data directory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_voyage");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
    base: String,
    banner: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `voyage serve` and waits for its banner (printed once it is listening); returns
/// the server and how long that took.
fn serve(dir: &Path) -> (Server, Duration) {
    let started = Instant::now();
    let server = serve_with(dir, &[]);
    (server, started.elapsed())
}

fn create_key(dir: &Path, company: &str) -> String {
    keys_create(&[
        "--company",
        company,
        "--data-dir",
        &dir.display().to_string(),
    ])
}

/// An internal key (company `platform`) made by `voyage keys create` in `dir`.
fn internal_key(dir: &Path) -> String {
    keys_create(&[
        "--company",
        "platform",
        "--internal",
        "--data-dir",
        &dir.display().to_string(),
    ])
}

/// Runs `voyage keys create ARGS...` and returns the key it printed.
fn keys_create(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["keys", "create"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn me(base: &str, key: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{base}/v1/me"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn serve_starts_fast_says_where_data_lives_and_accepts_keys_made_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ready) = serve(dir.path());
    // Startup: a guard against a hang only (about 100 ms here; the figure, measured, is in
    // docs/PERFORMANCE.md), generous for a loaded machine and a debug build.
    assert!(ready < Duration::from_secs(20), "took {ready:?}");
    let text = server.banner.join("\n");
    assert!(text.contains("voyage.db"), "{text}");
    assert!(text.contains("voyage keys create --company"), "{text}");
    let health: serde_json::Value = reqwest::get(format!("{}/health", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, serde_json::json!({"status": "ok"}));
    // A key made by another process while serve holds the data works at once.
    let key = create_key(dir.path(), "acme");
    assert!(key.starts_with("vk_"));
    let resp = me(&server.base, &key).await;
    assert_eq!(resp.status(), 200);
    // And a job run by hand beside it.
    let out = Command::new(BIN)
        .args(["jobs", "run", "purge-expired", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"job\":\"purge-expired\""));
}

#[tokio::test]
async fn data_survives_kill_9_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key;
    let connection_id;
    {
        let (mut server, _) = serve(dir.path());
        key = create_key(dir.path(), "acme");
        let created: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/v1/connections", server.base))
            .bearer_auth(&key)
            .json(&serde_json::json!({"provider": "exchange", "staff_id": "s1", "staff_email": "ann@example.com"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        connection_id = created["id"].as_str().unwrap().to_string();
        // SIGKILL: no shutdown hook runs.
        server.child.kill().unwrap();
        server.child.wait().unwrap();
    }
    let (server, _) = serve(dir.path());
    assert_eq!(me(&server.base, &key).await.status(), 200);
    let got = reqwest::Client::new()
        .get(format!("{}/v1/connections/{connection_id}", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
}

#[test]
fn unknown_jobs_and_bad_configuration_fail_with_a_named_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["jobs", "run", "make-coffee", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("purge-expired"));
    let out = Command::new(BIN)
        .args(["jobs", "list"])
        .env("VOYAGE_WEBHOOK_RETRY_DELAYS", "30s,often")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("VOYAGE_WEBHOOK_RETRY_DELAYS"));
}

/// `keys create --table` writes the key into a deployed DynamoDB table (here moto's, through
/// `AWS_ENDPOINT_URL`, as scripts/test sets it), where the authorizer finds it.
#[tokio::test]
async fn keys_can_be_created_in_a_deployed_table() {
    assert!(
        std::env::var("AWS_ENDPOINT_URL").is_ok(),
        "needs moto: run ./scripts/test"
    );
    let sdk = voyage_aws::sdk_config().await;
    let client = voyage_aws::dynamodb_client(&sdk);
    let table = format!("keys-{}", std::process::id());
    voyage_aws::create_table(&client, &table).await.unwrap();
    let key = keys_create(&["--company", "acme", "--internal", "--table", &table]);
    let store = voyage_core::store::Store::new(
        std::sync::Arc::new(voyage_aws::DynamoTable::new(client, table)),
        std::sync::Arc::new(voyage_core::ports::SystemClock),
    );
    let p = voyage_core::auth::authenticate(&store, Some(&format!("Bearer {key}")))
        .await
        .unwrap();
    assert_eq!((p.company_id.as_str(), p.internal), ("acme", true));
}

/// A receiver that fails its first request and records every one.
async fn flaky_receiver() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let c = c.clone();
            async move {
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), count)
}

fn serve_with(dir: &Path, env: &[(&str, &str)]) -> Server {
    serve_args(dir, env, &[])
}

/// Starts `voyage serve` with extra flags; the banner ends with the key-making hint.
fn serve_args(dir: &Path, env: &[(&str, &str)], flags: &[&str]) -> Server {
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--allow-private-webhook-targets",
        "--addr",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(dir)
    .args(flags)
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut banner = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let last = line.contains("voyage keys create");
        banner.push(line);
        if last {
            break;
        }
    }
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        banner,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_a_retry_schedule_loses_no_delivery() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let (url, count) = flaky_receiver().await;
    let env = [
        ("VOYAGE_WEBHOOK_RETRY_DELAYS", "3s"),
        ("VOYAGE_ALLOW_HTTP_WEBHOOKS", "true"),
    ];
    let mut server = serve_with(dir.path(), &env);
    let tenant = create_key(dir.path(), "acme");
    let internal = internal_key(dir.path());
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{}/v1/webhooks", server.base))
        .bearer_auth(&tenant)
        .json(&serde_json::json!({"url": url, "events": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let dispatched = client
        .post(format!("{}/v1/webhooks/dispatch", server.base))
        .bearer_auth(&internal)
        .json(&serde_json::json!({"company_id": "acme", "event": "session.created", "payload": {"session_id": "s1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(dispatched.status(), 202);
    // The first attempt fails...
    let deadline = Instant::now() + Duration::from_secs(10);
    while count.load(Ordering::SeqCst) < 1 {
        assert!(Instant::now() < deadline, "first attempt never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and the process dies (SIGKILL) while the retry waits.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // After a restart the retry is made.
    let _server = serve_with(dir.path(), &env);
    let deadline = Instant::now() + Duration::from_secs(15);
    while count.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "the retry was lost across the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sandbox as the README tells a new user to run it: `serve --simulate-providers`, the
/// printed sandbox app's credentials, an Exchange connection, a session -> a Graph event in
/// the simulated mailbox; `jobs run renew-subscriptions` on the same data runs cleanly beside
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_turns_a_session_into_a_simulated_outlook_event() {
    use serde_json::{json, Value};
    let dir = tempfile::tempdir().unwrap();
    let server = serve_args(dir.path(), &[], &["--simulate-providers"]);
    let banner = server.banner.join("\n");
    assert!(banner.contains("/sim/graph"), "{banner}");
    let data_dir = dir.path().display().to_string();
    let tenant = create_key(dir.path(), "acme");
    let internal = internal_key(dir.path());
    let http = reqwest::Client::new();
    let base = &server.base;
    let resp = http
        .put(format!("{base}/v1/credentials/exchange"))
        .bearer_auth(&tenant)
        .json(&json!({"tenant_id": "sandbox-tenant", "client_id": "sandbox-client", "client_secret": "sandbox-secret"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let conn: Value = http
        .post(format!("{base}/v1/connections"))
        .bearer_auth(&tenant)
        .json(
            &json!({"provider": "exchange", "staff_id": "ann", "staff_email": "ann@acme.example"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(conn["status"], "active", "{conn}");
    let d0 = date(0);
    let out: Value = http
        .post(format!("{base}/v1/exchange/outbound"))
        .bearer_auth(&internal)
        .json(&json!({"action": "created", "session": {
            "id": "s1", "company_id": "acme", "staff_id": "ann",
            "start": format!("{d0}T09:00:00Z"), "end": format!("{d0}T10:00:00Z"),
            "time_zone": "Europe/Berlin", "title": "Intro call"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(out["outcome"], "created", "{out}");
    let events: Value = http
        .get(format!(
            "{base}/sim/graph/_control/users/ann@acme.example/events"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(events["value"][0]["id"], out["event_id"]);
    assert_eq!(events["value"][0]["subject"], "Intro call");
    // Google in the same sandbox: the printed service account, a connection with a channel.
    assert!(banner.contains("/sim/google"), "{banner}");
    let key = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../lib/simulators/sandbox-service-account.pem"
    ))
    .unwrap();
    let resp = http
        .put(format!("{base}/v1/credentials/google"))
        .bearer_auth(&tenant)
        .json(
            &json!({"client_email": "sandbox@voyage-sandbox.iam.gserviceaccount.com",
            "private_key": key, "token_uri": "https://oauth2.googleapis.com/token"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let google: Value = http
        .post(format!("{base}/v1/connections"))
        .bearer_auth(&tenant)
        .json(&json!({"provider": "google", "staff_id": "bob", "staff_email": "bob@acme.example", "calendar_id": "bob@acme.example"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(google["status"], "active", "{google}");
    assert!(google["channel_id"].is_string());
    // Its first (full) sync was queued with it and runs unasked; one asked for after it
    // reads on from its token.
    let mut first = Value::Null;
    for _ in 0..100 {
        first = http
            .get(format!(
                "{base}/v1/connections/{}",
                google["id"].as_str().unwrap()
            ))
            .bearer_auth(&tenant)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if first["last_sync_at"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(first["last_sync_at"].is_string(), "never synced: {first}");
    let synced: Value = http
        .post(format!("{base}/v1/google-sync"))
        .bearer_auth(&internal)
        .json(&json!({"company_id": "acme", "connection_id": google["id"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(synced["status"], "active", "{synced}");
    assert_eq!(synced["report"]["full"], false, "{synced}");
    // A job run from another process opens the same data and sandbox settings.
    let run = Command::new(BIN)
        .args([
            "jobs",
            "run",
            "renew-subscriptions",
            "--data-dir",
            &data_dir,
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        (report["processed"].as_u64(), report["failed"].as_u64()),
        (Some(0), Some(0))
    );
}

/// `voyage keys create` holds the API's rule for a description (at most 200 characters).
#[test]
fn keys_create_refuses_a_description_the_api_would_refuse() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let long = "d".repeat(500);

    // Act
    let out = Command::new(BIN)
        .args([
            "keys",
            "create",
            "--company",
            "acme",
            "--description",
            &long,
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();

    // Assert: refused, naming the field; no key printed.
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("description"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A restart of the sandbox (SIGKILL, then `serve --simulate-providers` on the same data)
/// keeps the simulated mailbox: the booking's event is still there, and the next change of
/// the booking updates it (before, the simulators started empty, and the change read the
/// event as deleted by its staff member: the booking went into cancellation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_keeps_its_simulated_calendars_across_a_restart() {
    use serde_json::{json, Value};
    // Arrange: the sandbox, an Exchange connection and a booking with its event.
    let dir = tempfile::tempdir().unwrap();
    let server = serve_args(dir.path(), &[], &["--simulate-providers"]);
    let tenant = create_key(dir.path(), "acme");
    let internal = internal_key(dir.path());
    let http = reqwest::Client::new();
    let resp = http
        .put(format!("{}/v1/credentials/exchange", server.base))
        .bearer_auth(&tenant)
        .json(&json!({"tenant_id": "sandbox-tenant", "client_id": "sandbox-client", "client_secret": "sandbox-secret"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = http
        .post(format!("{}/v1/connections", server.base))
        .bearer_auth(&tenant)
        .json(
            &json!({"provider": "exchange", "staff_id": "ann", "staff_email": "ann@acme.example"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let d0 = date(0);
    let change = |action: &str, location: &str| {
        json!({"action": action, "session": {
            "id": "s1", "company_id": "acme", "staff_id": "ann",
            "start": format!("{d0}T09:00:00Z"), "end": format!("{d0}T10:00:00Z"),
            "time_zone": "Europe/Berlin", "title": "Intro call", "location": location}})
    };
    let created: Value = http
        .post(format!("{}/v1/exchange/outbound", server.base))
        .bearer_auth(&internal)
        .json(&change("created", "Room 1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["outcome"], "created", "{created}");

    // Act: SIGKILL, a new serve on the same data; the platform moves the booking's room.
    drop(server);
    let server = serve_args(dir.path(), &[], &["--simulate-providers"]);
    let updated: Value = http
        .post(format!("{}/v1/exchange/outbound", server.base))
        .bearer_auth(&internal)
        .json(&change("updated", "Room 9"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    // Assert: the same event, updated; the booking confirmed.
    assert_eq!(
        (&updated["outcome"], &updated["session_status"]),
        (&json!("updated"), &json!("confirmed")),
        "{updated}"
    );
    let events: Value = http
        .get(format!(
            "{}/sim/graph/_control/users/ann@acme.example/events",
            server.base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(events["value"][0]["id"], created["event_id"], "{events}");
}

/// Every event answered 202 reaches its receiver although `serve` is killed (SIGKILL) right
/// after the last answer, with attempts in flight and deliveries not yet attempted: the
/// delivery records are the durable wake-ups, found by the next start's sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_event_is_delivered_across_a_kill_9() {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};
    const EVENTS: usize = 200;
    // A receiver that notes each event id and answers after a while, so attempts are in
    // flight when the process dies.
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/{*path}",
        axum::routing::post(move |body: axum::body::Bytes| {
            let s = s.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                    if let Some(id) = v["id"].as_str() {
                        s.lock().unwrap().insert(id.to_string());
                    }
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let dir = tempfile::tempdir().unwrap();
    let env = [("VOYAGE_ALLOW_HTTP_WEBHOOKS", "true")];
    let mut server = serve_with(dir.path(), &env);
    let tenant = create_key(dir.path(), "acme");
    let internal = internal_key(dir.path());
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{}/v1/webhooks", server.base))
        .bearer_auth(&tenant)
        .json(&serde_json::json!({"url": url, "events": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let base = server.base.clone();
    // 16 requests at a time.
    let gate = Arc::new(tokio::sync::Semaphore::new(16));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..EVENTS {
        let (client, base, internal) = (client.clone(), base.clone(), internal.clone());
        let permit = gate.clone().acquire_owned().await.unwrap();
        calls.spawn(async move {
            let answer = client
                .post(format!("{base}/v1/webhooks/dispatch"))
                .bearer_auth(&internal)
                .json(&serde_json::json!({"company_id": "acme", "event": "connection.active", "payload": {"connection_id": format!("c{i}"), "n": i}}))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 202);
            let body: serde_json::Value = answer.json().await.unwrap();
            drop(permit);
            body["event_id"].as_str().unwrap().to_string()
        });
    }
    let accepted: Vec<String> = calls.join_all().await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let before = seen.lock().unwrap().len();
    assert!(
        before < EVENTS,
        "all arrived before the kill: nothing was tested"
    );
    let _server = serve_with(dir.path(), &env);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing = accepted
            .iter()
            .filter(|id| !seen.lock().unwrap().contains(*id))
            .count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {EVENTS} accepted events never arrived ({before} before the kill)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Tomorrow (UTC) as `YYYY-MM-DD`, moved by `days`: sessions sit inside the sync window
/// whatever day the tests run on.
fn date(days: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::days(1 + days))
        .format("%Y-%m-%d")
        .to_string()
}
