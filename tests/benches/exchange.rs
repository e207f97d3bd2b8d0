//! Exchange outbound benchmark (a bench binary; figures go to docs/PERFORMANCE.md).
//!
//! Per outbound session on the hot path (active connection, token cached), against the
//! Graph simulator on loopback and the SQLite store wrapped in a round-trip counter:
//! - Graph calls and store round trips per `created` and per `updated` session;
//! - time per session, as a ratio to a bare reqwest loop making the same Graph write
//!   (same simulator, same token, same body) in the same run.
//!
//! Run: `cargo bench -p voyage-tests --bench exchange` (env BENCH_SESSIONS, default 1000).
//! Under `cargo test` (a debug build) it runs a small smoke version that still asserts the
//! counts, so a hot path that grows a round trip fails the test suite.

use std::sync::Arc;
use std::time::{Duration, Instant};
use voyage_tests::dates::date;

use serde_json::{json, Value};
use voyage_core::config::Config;
use voyage_core::deps::Deps;
use voyage_core::exchange::credentials::{self, ExchangeCredentialsInput};
use voyage_core::exchange::outbound::{self, SessionChangeInput};
use voyage_core::model::{Connection, ConnectionStatus, Provider};
use voyage_core::ports::SystemClock;
use voyage_core::store::Store;
use voyage_store_sqlite::SqliteTable;
use voyage_tests::counting::CountingTable;
use voyage_tests::graph::{change, serve, CLIENT_ID, CLIENT_SECRET, TENANT};

fn session_change(action: &str, i: usize, hour: u32) -> outbound::SessionChange {
    let v = change(action, "acme", &format!("s{i}"), "ann", hour);
    serde_json::from_value::<SessionChangeInput>(v)
        .unwrap()
        .validate()
        .unwrap()
}

#[tokio::main]
async fn main() {
    let smoke = cfg!(debug_assertions);
    let n: usize = if smoke {
        20
    } else {
        std::env::var("BENCH_SESSIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000)
    };
    let sim = voyage_simulators::GraphSimulator::new();
    sim.register_app(TENANT, CLIENT_ID, CLIENT_SECRET);
    let sim_url = serve(sim.router()).await;
    let (db, _dir) = voyage_tests::fixtures::sqlite_db();
    let counting = Arc::new(CountingTable::new(Arc::new(SqliteTable::new(db))));
    let key = voyage_core::sealing::generate_key().unwrap();
    let config = Config::from_lookup(|k| match k {
        "VOYAGE_GRAPH_BASE_URL" | "VOYAGE_MS_LOGIN_BASE_URL" => Some(sim_url.clone()),
        "VOYAGE_CREDENTIALS_KEY" => Some(key.clone()),
        _ => None,
    })
    .unwrap();
    let store = Store::new(counting.clone(), Arc::new(SystemClock));
    let deps = voyage_providers::attach(Deps::new(store.clone(), config)).unwrap();
    credentials::store(
        &deps,
        "acme",
        ExchangeCredentialsInput {
            tenant_id: TENANT.into(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
        },
    )
    .await
    .unwrap();
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
    // Warm-up: the token is fetched once and cached.
    outbound::apply(&deps, &session_change("created", 0, 8))
        .await
        .unwrap();

    let mut report = Vec::new();
    for (action, hour) in [("created", 9), ("updated", 12)] {
        sim.clear_served();
        let before = counting.round_trips();
        let started = Instant::now();
        for i in 1..=n {
            outbound::apply(&deps, &session_change(action, i, hour))
                .await
                .unwrap();
        }
        let elapsed = started.elapsed();
        let trips = (counting.round_trips() - before) as f64 / n as f64;
        let graph = sim.served().len() as f64 / n as f64;
        // One batch read, the session recorded before the Graph call (so the echo of the
        // write is known even if what follows is lost), one closing transaction.
        assert_eq!(trips, 3.0, "{action}: store round trips per session");
        assert_eq!(graph, 1.0, "{action}: Graph calls per session");
        report.push((action, trips, graph, elapsed));
    }

    // Baseline: the same Graph write made by a bare reqwest loop with the same token.
    let http = reqwest::Client::new();
    let token: Value = http
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
    let started = Instant::now();
    for i in 1..=n {
        let body = json!({
            "subject": "Consultation", "showAs": "busy", "transactionId": format!("bare-{i}"),
            "start": {"dateTime": format!("{d0}T09:00:00.0000000", d0 = date(0)), "timeZone": "UTC"},
            "end": {"dateTime": format!("{d0}T10:00:00.0000000", d0 = date(0)), "timeZone": "UTC"},
            "body": {"contentType": "text", "content": "Voyage session."},
            "singleValueExtendedProperties": [{"id": "String {x} Name y", "value": "v"}],
        });
        let resp = http
            .post(format!("{sim_url}/v1.0/users/bob@contoso.example/events"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    let bare = started.elapsed();

    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!(
        "exchange outbound: {n} sessions per action, SQLite store, Graph simulator on loopback"
    );
    println!(
        "  bare Graph write (reqwest loop):   {:>8.0} us/session",
        per(bare)
    );
    for (action, trips, graph, elapsed) in report {
        println!(
            "  {action:<8} {trips} store round trips, {graph} Graph call: {:>8.0} us/session (ratio to bare {:.2})",
            per(elapsed),
            per(bare) / per(elapsed)
        );
    }
}
