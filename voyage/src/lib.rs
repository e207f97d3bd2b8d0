//! The local system: every function's routes in one axum server, every queue and schedule
//! in process, on a durable SQLite store in a data directory. The same handlers, auth and
//! core code as on Lambda; only the adapters differ.

pub mod dlq;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use voyage_core::config::Config;
use voyage_core::deps::{Deps, QueueName};
use voyage_core::ports::{Queue, SystemClock};
use voyage_core::store::Store;
use voyage_core::webhooks::WebhookEngine;
use voyage_fn_scheduled::Job;
use voyage_http::Auth;
use voyage_store_sqlite::{Db, SqliteBus, SqliteQueue, SqliteTable};

/// How long a received local queue message stays hidden before it is offered again.
pub const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(60);
/// Receives after which a local queue message is dead-lettered (SQS `maxReceiveCount`).
pub const MAX_RECEIVES: u32 = 5;

/// How many queue messages the local system handles at once, per queue.
pub const CONSUMER_CONCURRENCY: usize = 64;

/// The local system's dependencies on one data directory.
pub struct Local {
    pub deps: Arc<Deps>,
    pub db: Arc<Db>,
    pub webhooks: WebhookEngine,
}

impl Local {
    pub fn open(data_dir: &Path, mut config: Config) -> Result<Local, String> {
        let db =
            Db::open(data_dir).map_err(|e| format!("cannot open {}: {e}", data_dir.display()))?;
        if config.credentials_key.is_none() {
            config.credentials_key = Some(credentials_key(data_dir)?);
        }
        if let Some(sandbox) = Sandbox::read(data_dir) {
            sandbox.apply(&mut config);
        }
        // This process makes every change to API keys and endpoints (the other commands only
        // create keys): it may keep them in memory (`store::cache`).
        let store = Store::new(
            Arc::new(SqliteTable::new(db.clone())),
            Arc::new(SystemClock),
        )
        .with_read_cache();
        let mut deps = Deps::new(store, config);
        for name in QueueName::ALL {
            let queue =
                SqliteQueue::new(db.clone(), name.as_str(), VISIBILITY_TIMEOUT, MAX_RECEIVES);
            deps = deps.with_queue(name, Arc::new(queue));
        }
        let events = SqliteQueue::new(
            db.clone(),
            QueueName::PlatformEvents.as_str(),
            VISIBILITY_TIMEOUT,
            MAX_RECEIVES,
        );
        deps = deps.with_bus(Arc::new(SqliteBus::new(events)));
        let deps = Arc::new(voyage_providers::attach(deps)?);
        let transport =
            voyage_fn_webhooks::HttpTransport::new(deps.config.allow_private_webhook_targets)?;
        let webhooks = WebhookEngine::new(deps.clone(), Arc::new(transport));
        Ok(Local { deps, db, webhooks })
    }

    /// Every route of every function, authenticated against the store.
    pub fn router(&self) -> Router {
        let deps = &self.deps;
        let routes = Router::new()
            .merge(voyage_http::health_routes())
            .route("/metrics", axum::routing::get(metrics))
            .route("/openapi.json", axum::routing::get(openapi_document))
            .merge(voyage_fn_gateway::api::router(deps.clone()))
            .merge(voyage_fn_webhooks::router(self.webhooks.clone()))
            .merge(voyage_fn_google_sync::router(deps.clone()))
            .merge(voyage_fn_exchange_inbound::router(deps.clone()))
            .merge(voyage_fn_exchange_outbound::router(deps.clone()));
        voyage_http::finish(routes, Auth::Keys(deps.store.clone()))
    }

    /// Runs each scheduled job on its own timer until the process ends. A failing run is
    /// logged and tried again at the next tick.
    pub fn spawn_timers(&self) {
        for job in Job::ALL {
            let deps = self.deps.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(job.every());
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if let Err(e) = voyage_fn_scheduled::run(job, &deps).await {
                        tracing::warn!(job = job.name(), error = %e, "scheduled job failed");
                    }
                }
            });
        }
    }

    /// Consumes the in-process queues with the same worker code as the Lambdas': delivery
    /// attempts, platform events (session changes go to Exchange, the rest to webhooks, as
    /// the two EventBridge rules route them on AWS), Graph sync requests and queued session
    /// changes.
    pub fn spawn_consumers(&self) -> Result<(), String> {
        let queue = |name: QueueName| {
            self.deps
                .queues
                .get(&name)
                .cloned()
                .ok_or_else(|| format!("queue {} missing", name.as_str()))
        };
        // Deliveries due now reach this process's worker through a channel; their records
        // (written in the same commit as the rest of the dispatch) are the durable copy, which
        // the sweep below and the `redrive-webhooks` timer find after a crash.
        let (tx, rx) = tokio::sync::mpsc::channel(LOCAL_WAKE_CAPACITY);
        if self.webhooks.attach_local_worker(tx) {
            tokio::spawn(attempt_local(self.webhooks.clone(), rx));
            let deps = self.deps.clone();
            tokio::spawn(async move {
                // What a previous run left due (a crash between 202 and the attempt).
                match voyage_core::webhooks::redrive_due(&deps, Duration::ZERO).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(deliveries = n, "due webhook deliveries re-driven at start")
                    }
                    Err(e) => tracing::warn!(error = %e, "start-up webhook sweep failed"),
                }
            });
        }
        let engine = self.webhooks.clone();
        tokio::spawn(consume(queue(QueueName::WebhookDeliveries)?, move |body| {
            let engine = engine.clone();
            async move { voyage_fn_webhooks::worker::handle(&engine, &body).await }
        }));
        let engine = self.webhooks.clone();
        let deps = self.deps.clone();
        tokio::spawn(consume(queue(QueueName::PlatformEvents)?, move |body| {
            let engine = engine.clone();
            let deps = deps.clone();
            async move {
                if is_session_change(&body) {
                    voyage_fn_exchange_outbound::worker::handle(&deps, &body).await
                } else {
                    voyage_fn_webhooks::worker::handle(&engine, &body).await
                }
            }
        }));
        let deps = self.deps.clone();
        tokio::spawn(consume(queue(QueueName::ExchangeInbound)?, move |body| {
            let deps = deps.clone();
            async move { voyage_fn_exchange_inbound::worker::handle(&deps, &body).await }
        }));
        let deps = self.deps.clone();
        tokio::spawn(consume(queue(QueueName::GoogleSync)?, move |body| {
            let deps = deps.clone();
            async move { voyage_fn_google_sync::worker::handle(&deps, &body).await }
        }));
        let deps = self.deps.clone();
        tokio::spawn(consume(queue(QueueName::ExchangeOutbound)?, move |body| {
            let deps = deps.clone();
            async move { voyage_fn_exchange_outbound::worker::handle(&deps, &body).await }
        }));
        Ok(())
    }
}

/// Every operation the local system serves (the routes of [`Local::router`]): each
/// function's registry, declared next to its router, and the system's own routes.
pub fn operations() -> Vec<voyage_http::openapi::Operation> {
    use voyage_http::openapi::{schema, Operation};
    let mut ops = voyage_http::health_operations();
    ops.push(
        Operation::get("/metrics", "system")
            .public()
            .summary(
                "Counters and histograms in the Prometheus text format (no company, id or payload)",
            )
            .answers_as(200, "The metrics", "text/plain", schema::string()),
    );
    ops.push(
        Operation::get("/openapi.json", "system")
            .public()
            .summary("This document")
            .answers(200, "The OpenAPI 3.1 document", schema::any_object()),
    );
    ops.extend(voyage_fn_gateway::openapi::operations());
    ops.extend(voyage_fn_webhooks::openapi::operations());
    ops.extend(voyage_fn_google_sync::openapi::operations());
    ops.extend(voyage_fn_exchange_inbound::openapi::operations());
    ops.extend(voyage_fn_exchange_outbound::openapi::operations());
    ops
}

/// The OpenAPI 3.1 document of [`operations`].
pub fn openapi() -> serde_json::Value {
    voyage_http::openapi::document(
        "Voyage Integrations",
        env!("CARGO_PKG_VERSION"),
        &operations(),
    )
}

/// `GET /openapi.json`: the document, built once.
async fn openapi_document() -> axum::Json<serde_json::Value> {
    static DOCUMENT: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    axum::Json(DOCUMENT.get_or_init(openapi).clone())
}

/// Most immediate wake-ups waiting for the in-process worker; beyond it they go through the
/// durable queue.
pub const LOCAL_WAKE_CAPACITY: usize = 4096;

/// The in-process webhook worker: one attempt per wake-up, up to [`CONSUMER_CONCURRENCY`] at
/// once. A failed attempt leaves its record pending, for the sweep.
async fn attempt_local(
    engine: WebhookEngine,
    mut rx: tokio::sync::mpsc::Receiver<voyage_core::webhooks::engine::LocalWake>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(CONSUMER_CONCURRENCY));
    while let Some(wake) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let delivery = wake.delivery_id.clone();
            if let Err(e) = engine.attempt_local(wake).await {
                tracing::warn!(delivery = %delivery, error = %e, "webhook attempt failed; the sweep will retry it");
            }
            drop(permit);
        });
    }
}

/// `GET /metrics`: the process's counters and histograms in the Prometheus text format.
/// No key: it shows counts by outcome, origin and provider, never a company, id or payload
/// (README, "Metrics"); `voyage serve` listens on loopback unless told otherwise.
async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        voyage_core::metrics::prometheus_text(),
    )
}

/// The local stand-in for the `SessionChangesRule` event pattern.
fn is_session_change(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .is_some_and(|v| v.get("detail-type").and_then(|d| d.as_str()) == Some("session.changed"))
}

/// Receives from `queue` forever, handling up to [`CONSUMER_CONCURRENCY`] messages at once.
/// A handled message is acked; a failed one is released with a growing delay and, after
/// [`MAX_RECEIVES`], dead-lettered by the queue.
pub async fn consume<F, Fut>(queue: Arc<dyn Queue>, handler: F)
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), voyage_core::Error>> + Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(CONSUMER_CONCURRENCY));
    let handler = Arc::new(handler);
    loop {
        let free = permits.available_permits().clamp(1, 10);
        let messages = match queue.receive(free, Duration::from_secs(1)).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "queue receive failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for m in messages {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let queue = queue.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let result = handler(m.body).await;
                let done = match result {
                    Ok(()) => queue.ack(&m.receipt).await,
                    Err(e) => {
                        tracing::warn!(message_id = %m.id, error = %e, "message failed; will retry");
                        let backoff = Duration::from_secs(1 << m.receive_count.min(6));
                        queue.release(&m.receipt, backoff).await
                    }
                };
                if let Err(e) = done {
                    tracing::warn!(message_id = %m.id, error = %e, "could not settle message");
                }
                drop(permit);
            });
        }
    }
}

/// The key that seals tenants' provider secrets: `VOYAGE_CREDENTIALS_KEY`, else the key file
/// `credentials.key` beside the database (created on first use, readable by its owner only),
/// so a copy of the database alone does not reveal any secret.
fn credentials_key(data_dir: &Path) -> Result<[u8; 32], String> {
    let path = data_dir.join("credentials.key");
    let read = |p: &Path| -> Result<[u8; 32], String> {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        voyage_core::sealing::parse_key(&text).map_err(|e| format!("{}: {e}", p.display()))
    };
    if path.exists() {
        return read(&path);
    }
    let key = voyage_core::sealing::generate_key().map_err(|e| e.to_string())?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(&path) {
        Ok(mut f) => {
            use std::io::Write;
            f.write_all(key.as_bytes())
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        // Another process (a `jobs run` beside `serve`) made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    read(&path)
}

/// The sandbox's provider settings: `serve --simulate-providers` writes them beside the
/// database so `voyage jobs run` on the same data directory talks to the same simulators.
/// Environment variables still win.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Sandbox {
    pub graph_base_url: String,
    pub ms_login_base_url: String,
    #[serde(default)]
    pub google_calendar_base_url: String,
    #[serde(default)]
    pub google_token_url: String,
    pub public_base_url: String,
}

/// The app registration the sandbox's Graph simulator knows from the start.
pub const SANDBOX_TENANT: &str = "sandbox-tenant";
pub const SANDBOX_CLIENT_ID: &str = "sandbox-client";
pub const SANDBOX_CLIENT_SECRET: &str = "sandbox-secret";

impl Sandbox {
    const FILE: &'static str = "sandbox.json";

    pub fn for_address(base: &str) -> Sandbox {
        Sandbox {
            graph_base_url: format!("{base}/sim/graph"),
            ms_login_base_url: format!("{base}/sim/graph"),
            google_calendar_base_url: format!("{base}/sim/google"),
            google_token_url: format!("{base}/sim/google/token"),
            public_base_url: base.to_string(),
        }
    }

    pub fn read(data_dir: &Path) -> Option<Sandbox> {
        let text = std::fs::read_to_string(data_dir.join(Self::FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn write(&self, data_dir: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(data_dir.join(Self::FILE), text).map_err(|e| e.to_string())
    }

    pub fn remove(data_dir: &Path) {
        let _ = std::fs::remove_file(data_dir.join(Self::FILE));
    }

    /// Points the provider clients at the simulators, unless the environment says otherwise.
    pub fn apply(&self, config: &mut Config) {
        let unset = |var: &str| {
            std::env::var(var)
                .map(|v| v.trim().is_empty())
                .unwrap_or(true)
        };
        if unset("VOYAGE_GRAPH_BASE_URL") {
            config.graph_base_url = self.graph_base_url.clone();
        }
        if unset("VOYAGE_MS_LOGIN_BASE_URL") {
            config.ms_login_base_url = self.ms_login_base_url.clone();
        }
        if unset("VOYAGE_GOOGLE_CALENDAR_BASE_URL") && !self.google_calendar_base_url.is_empty() {
            config.google_calendar_base_url = self.google_calendar_base_url.clone();
        }
        if unset("VOYAGE_GOOGLE_TOKEN_URL") && !self.google_token_url.is_empty() {
            config.google_token_url = self.google_token_url.clone();
        }
        if config.public_base_url.is_none() {
            config.public_base_url = Some(self.public_base_url.clone());
        }
    }
}

/// Where `serve --simulate-providers` keeps the Graph simulator's state, in the data directory.
pub const SIMULATED_GRAPH_FILE: &str = "simulated-graph.json";

/// Where `serve --simulate-providers` keeps the Google simulator's state, in the data directory.
pub const SIMULATED_GOOGLE_FILE: &str = "simulated-google.json";

/// The data directory to use: the flag, else `VOYAGE_DATA_DIR`, else `.voyage`.
pub fn data_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| PathBuf::from(".voyage"))
}

/// Serves until `shutdown` resolves. Binds first (so an `--addr` with port 0 works), opens
/// the data directory with what the address implies (the public base URL; with
/// `simulate_providers`, the simulators under `/sim/...`), prints the address, the data
/// location and how to make a key, then answers requests.
pub async fn serve(
    data_dir: &Path,
    mut config: Config,
    addr: SocketAddr,
    simulate_providers: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let base = format!("http://{bound}");
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let simulators = if simulate_providers {
        let sandbox = Sandbox::for_address(&base);
        sandbox.write(data_dir)?;
        // The simulated mailboxes and calendars live in the data directory too, so a restart
        // finds the bookings' events where it left them (without them, every event would
        // read as deleted by its staff member).
        let graph = voyage_simulators::GraphSimulator::new();
        graph.persist_at(data_dir.join(SIMULATED_GRAPH_FILE))?;
        graph.register_app(SANDBOX_TENANT, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET);
        let google = voyage_simulators::GoogleSimulator::new();
        google.persist_at(data_dir.join(SIMULATED_GOOGLE_FILE))?;
        google.register_account(
            voyage_simulators::google::SANDBOX_CLIENT_EMAIL,
            voyage_simulators::google::SANDBOX_PRIVATE_KEY,
        )?;
        Some((graph, google))
    } else {
        Sandbox::remove(data_dir);
        None
    };
    if config.public_base_url.is_none() {
        config.public_base_url = Some(base.clone());
    }
    let local = Local::open(data_dir, config)?;
    local.spawn_timers();
    local.spawn_consumers()?;
    let mut router = local.router();
    println!("voyage: serving every route on {base}");
    println!("voyage: data lives in {}", local.db.path().display());
    if let Some((graph, google)) = simulators {
        router = Router::new()
            .nest("/sim/graph", graph.router())
            .nest("/sim/google", google.router())
            .merge(router);
        println!(
            "voyage: Microsoft Graph simulator on {base}/sim/graph (app: tenant {SANDBOX_TENANT}, client {SANDBOX_CLIENT_ID}, secret {SANDBOX_CLIENT_SECRET})"
        );
        println!(
            "voyage: Google Calendar simulator on {base}/sim/google (service account {}; its key: lib/simulators/sandbox-service-account.pem)",
            voyage_simulators::google::SANDBOX_CLIENT_EMAIL
        );
    }
    println!(
        "voyage: create an API key with: voyage keys create --company <company-id> --data-dir {}",
        data_dir.display()
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| format!("server failed: {e}"))
}
