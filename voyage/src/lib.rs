//! The local system: every function's routes in one axum server, every queue and schedule
//! in process, on a durable SQLite store in a data directory. The same handlers, auth and
//! core code as on Lambda; only the adapters differ.

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
    pub fn open(data_dir: &Path, config: Config) -> Result<Local, String> {
        let db =
            Db::open(data_dir).map_err(|e| format!("cannot open {}: {e}", data_dir.display()))?;
        let store = Store::new(
            Arc::new(SqliteTable::new(db.clone())),
            Arc::new(SystemClock),
        );
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
        let deps = Arc::new(deps);
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

    /// Consumes the in-process queues: delivery attempts and platform events, each message
    /// handled by the same worker code as the Lambda's.
    pub fn spawn_consumers(&self) -> Result<(), String> {
        for name in [QueueName::WebhookDeliveries, QueueName::PlatformEvents] {
            let queue = self
                .deps
                .queues
                .get(&name)
                .cloned()
                .ok_or_else(|| format!("queue {} missing", name.as_str()))?;
            let engine = self.webhooks.clone();
            tokio::spawn(consume(queue, move |body| {
                let engine = engine.clone();
                async move { voyage_fn_webhooks::worker::handle(&engine, &body).await }
            }));
        }
        Ok(())
    }
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

/// The data directory to use: the flag, else `VOYAGE_DATA_DIR`, else `.voyage`.
pub fn data_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| PathBuf::from(".voyage"))
}

/// Serves until `shutdown` resolves. Prints the address, the data location and how to make a
/// key, then answers requests.
pub async fn serve(
    local: Local,
    addr: SocketAddr,
    data_dir: &Path,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    local.spawn_timers();
    local.spawn_consumers()?;
    println!("voyage: serving every route on http://{bound}");
    println!("voyage: data lives in {}", local.db.path().display());
    println!(
        "voyage: create an API key with: voyage keys create --company <company-id> --data-dir {}",
        data_dir.display()
    );
    axum::serve(listener, local.router())
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| format!("server failed: {e}"))
}
