//! The dependencies a function needs, built once per process (in `main`, or once by the
//! local system) and borrowed by every handler.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::exchange::api::GraphApi;
use crate::google::GoogleApi;
use crate::ports::{EventBus, Queue};
use crate::sealing::Sealer;
use crate::store::Store;
use crate::{Error, Result};

/// The queues of the system. On AWS each is an SQS queue with a dead-letter queue; locally
/// each is a durable in-process queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueName {
    /// Webhook deliveries due for an attempt.
    WebhookDeliveries,
    /// Graph change notifications waiting for a delta round.
    ExchangeInbound,
    /// Session changes to write to Exchange calendars.
    ExchangeOutbound,
    /// Google push wake-ups waiting for a sync.
    GoogleSync,
    /// Platform events from the bus (EventBridge rule target / local bus).
    PlatformEvents,
}

impl QueueName {
    pub const ALL: [QueueName; 5] = [
        QueueName::WebhookDeliveries,
        QueueName::ExchangeInbound,
        QueueName::ExchangeOutbound,
        QueueName::GoogleSync,
        QueueName::PlatformEvents,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::WebhookDeliveries => "webhook-deliveries",
            QueueName::ExchangeInbound => "exchange-inbound",
            QueueName::ExchangeOutbound => "exchange-outbound",
            QueueName::GoogleSync => "google-sync",
            QueueName::PlatformEvents => "platform-events",
        }
    }
}

#[derive(Clone)]
pub struct Deps {
    pub store: Store,
    pub config: Arc<Config>,
    pub queues: HashMap<QueueName, Arc<dyn Queue>>,
    pub bus: Option<Arc<dyn EventBus>>,
    /// The Microsoft Graph client (HTTP adapter, or one pointed at the simulator).
    pub graph: Option<Arc<dyn GraphApi>>,
    /// The Google Calendar client.
    pub google: Option<Arc<dyn GoogleApi>>,
    /// Seals and opens tenants' provider secrets.
    pub sealer: Option<Arc<Sealer>>,
    /// The provider request budgets this process holds (shared by both clients).
    budget: Option<Arc<crate::throttle::Budget>>,
}

impl Deps {
    pub fn new(store: Store, config: Config) -> Self {
        Deps {
            store,
            queues: HashMap::new(),
            bus: None,
            graph: None,
            google: None,
            budget: None,
            sealer: config
                .credentials_key
                .and_then(|k| Sealer::with_previous(&k, &config.previous_credentials_keys).ok())
                .map(Arc::new),
            config: Arc::new(config),
        }
    }

    /// The Graph client, behind the mailbox concurrency limit and the request budget
    /// ([`crate::throttle`]).
    pub fn with_graph(mut self, graph: Arc<dyn GraphApi>) -> Self {
        let budget = self.budget();
        self.graph = Some(Arc::new(crate::throttle::BudgetedGraph::new(
            graph,
            budget,
            self.config.limits.graph,
        )));
        self
    }

    /// The Google client, behind the per-user request budget ([`crate::throttle`]).
    pub fn with_google(mut self, google: Arc<dyn GoogleApi>) -> Self {
        let budget = self.budget();
        self.google = Some(Arc::new(crate::throttle::BudgetedGoogle::new(
            google,
            budget,
            self.config.limits.google,
        )));
        self
    }

    fn budget(&mut self) -> Arc<crate::throttle::Budget> {
        self.budget
            .get_or_insert_with(|| {
                Arc::new(crate::throttle::Budget::new(
                    self.store.clone(),
                    self.config.limits.chunk,
                ))
            })
            .clone()
    }

    pub fn google(&self) -> Result<&dyn GoogleApi> {
        self.google
            .as_deref()
            .ok_or_else(|| Error::Internal("the Google client is not configured".into()))
    }

    pub fn with_sealer(mut self, sealer: Arc<Sealer>) -> Self {
        self.sealer = Some(sealer);
        self
    }

    pub fn graph(&self) -> Result<&dyn GraphApi> {
        self.graph
            .as_deref()
            .ok_or_else(|| Error::Internal("the Graph client is not configured".into()))
    }

    pub fn sealer(&self) -> Result<&Sealer> {
        self.sealer.as_deref().ok_or_else(|| {
            Error::Unavailable(
                "no credentials key (VOYAGE_CREDENTIALS_KEY, or the secret named by VOYAGE_CREDENTIALS_KEY_SECRET_ARN): provider credentials cannot be stored or read"
                    .into(),
            )
        })
    }

    pub fn with_queue(mut self, name: QueueName, queue: Arc<dyn Queue>) -> Self {
        self.queues.insert(name, queue);
        self
    }

    pub fn with_bus(mut self, bus: Arc<dyn EventBus>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// The queue `name`, or an error naming it when this function was deployed without it.
    pub fn queue(&self, name: QueueName) -> Result<&dyn Queue> {
        self.queues
            .get(&name)
            .map(|q| q.as_ref())
            .ok_or_else(|| Error::Internal(format!("queue {} is not configured", name.as_str())))
    }
}
