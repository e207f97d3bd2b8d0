//! Provider throttling respected at scale: every Graph and Google call goes through a
//! decorator ([`BudgetedGraph`], [`BudgetedGoogle`], put in place by [`crate::deps::Deps`])
//! that
//! - runs at most [`MAILBOX_CONCURRENCY`] requests at once per mailbox (Outlook's limit) in
//!   this process (across processes, a connection's rounds are serialised by its lease);
//! - takes each request from a budget counted in the store per scope and one-minute window,
//!   shared by every process: per app and mailbox a tenth of `VOYAGE_GRAPH_MAILBOX_BUDGET`
//!   (default 9,000 per 10 minutes, so 900 a minute: any 10 minutes touch at most 11 windows,
//!   9,900 requests, under Graph's documented 10,000), per service account and user Google's
//!   per-user quota ([`Limits::google`], default 500 per minute). A spent budget answers as
//!   the provider would (`Throttled` / `RateLimited` with the time until the window turns),
//!   so the callers' existing handling (the queue offers the message again later) applies.
//!
//! Budget is reserved from the store in chunks ([`Limits::chunk`]), so the count costs one
//! store write per chunk of requests, not one per request. A store that cannot be reached
//! does not stop provider calls (the budget protects the provider, not our data): the call
//! goes ahead and the failure is logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;

use crate::exchange::api::{
    CalendarRef, DeltaPage, DeltaRequest, EventWrite, GraphApi, GraphCredentials, GraphError,
    GraphEvent, GraphSubscription, NewSubscription, MAILBOX_CONCURRENCY,
};
use crate::google::api::{
    Channel, EventsPage, GoogleEvent, GoogleEventWrite, ListRequest, ServiceAccount, WatchRequest,
};
use crate::google::{GoogleApi, GoogleError};
use crate::store::Store;

/// One budget: `requests` per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub requests: u64,
    pub window: Duration,
}

/// The budgets in force (`VOYAGE_GRAPH_MAILBOX_BUDGET`, `VOYAGE_GOOGLE_USER_BUDGET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub graph: Limit,
    pub google: Limit,
    /// Requests reserved from the store at a time.
    pub chunk: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            graph: Limit {
                requests: 900,
                window: Duration::from_secs(60),
            },
            google: Limit {
                requests: 500,
                window: Duration::from_secs(60),
            },
            chunk: 50,
        }
    }
}

/// What this process holds of a scope's current window.
#[derive(Debug, Clone, Copy)]
struct Held {
    window_start: i64,
    left: u64,
}

/// Budgets counted in the store, with this process's reserved remainder per scope.
pub struct Budget {
    store: Store,
    chunk: u64,
    held: Mutex<HashMap<String, Held>>,
}

impl Budget {
    pub fn new(store: Store, chunk: u64) -> Budget {
        Budget {
            store,
            chunk: chunk.max(1),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `n` requests from `scope` under `limit`; `Err(wait)` when the window is spent,
    /// with the time until it turns.
    pub async fn take(&self, scope: &str, n: u64, limit: Limit) -> Result<(), Duration> {
        let now: DateTime<Utc> = self.store.now();
        let window = limit.window.as_secs().max(1) as i64;
        let window_start = now.timestamp().div_euclid(window) * window;
        let wait = Duration::from_secs((window_start + window - now.timestamp()).max(1) as u64);
        let mut needed = n;
        {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            let h = held.entry(scope.to_string()).or_insert(Held {
                window_start,
                left: 0,
            });
            if h.window_start != window_start {
                *h = Held {
                    window_start,
                    left: 0,
                };
            }
            let used = h.left.min(needed);
            h.left -= used;
            needed -= used;
        }
        if needed == 0 {
            return Ok(());
        }
        let want = needed.max(self.chunk.min(limit.requests));
        match self
            .store
            .take_budget(
                scope,
                window_start,
                window_start + window,
                want,
                limit.requests,
            )
            .await
        {
            Ok(granted) if granted >= needed => {
                let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(h) = held.get_mut(scope) {
                    if h.window_start == window_start {
                        h.left += granted - needed;
                    }
                }
                Ok(())
            }
            Ok(granted) => {
                // Not enough left in this window: keep what was granted for later callers.
                let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(h) = held.get_mut(scope) {
                    if h.window_start == window_start {
                        h.left += granted;
                    }
                }
                crate::metrics::count("provider_budget_spent", &[("scope", scope_kind(scope))], 1);
                tracing::warn!(
                    scope = scope_kind(scope),
                    wait_s = wait.as_secs(),
                    "request budget spent for this window"
                );
                Err(wait)
            }
            // Many processes taking from one scope at once: the budget is in demand, so wait
            // as on a spent one rather than let the call through uncounted.
            Err(crate::Error::Conflict { .. }) => Err(Duration::from_secs(1)),
            Err(e) => {
                tracing::warn!(error = %e, "request budget not readable; the call goes ahead");
                Ok(())
            }
        }
    }
}

fn scope_kind(scope: &str) -> &'static str {
    if scope.starts_with("graph:") {
        "graph"
    } else {
        "google"
    }
}

/// Per-mailbox semaphores of this process.
#[derive(Default)]
struct Gates {
    gates: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Gates {
    fn of(&self, mailbox: &str) -> Arc<Semaphore> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates
            .entry(mailbox.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(MAILBOX_CONCURRENCY)))
            .clone()
    }
}

/// [`GraphApi`] within Outlook's limits: see the module docs.
pub struct BudgetedGraph {
    inner: Arc<dyn GraphApi>,
    budget: Arc<Budget>,
    limit: Limit,
    gates: Gates,
}

impl BudgetedGraph {
    pub fn new(inner: Arc<dyn GraphApi>, budget: Arc<Budget>, limit: Limit) -> Self {
        BudgetedGraph {
            inner,
            budget,
            limit,
            gates: Gates::default(),
        }
    }

    /// Waits for `n` of the mailbox's concurrency slots and takes `n` requests from the
    /// app's budget for it.
    async fn admit(
        &self,
        creds: &GraphCredentials,
        mailbox: &str,
        n: usize,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, GraphError> {
        let mailbox = mailbox.to_ascii_lowercase();
        let scope = format!("graph:{}:{}:{mailbox}", creds.tenant_id, creds.client_id);
        self.budget
            .take(&scope, n as u64, self.limit)
            .await
            .map_err(|wait| GraphError::Throttled {
                retry_after: Some(wait),
            })?;
        let slots = n.clamp(1, MAILBOX_CONCURRENCY) as u32;
        self.gates
            .of(&format!("{}:{mailbox}", creds.tenant_id))
            .acquire_many_owned(slots)
            .await
            .map_err(|_| GraphError::Unavailable("mailbox gate closed".into()))
    }
}

/// The mailbox a delta request reads: the calendar's user, or the `users/{user}` segment of
/// a link Graph gave.
fn delta_mailbox(request: &DeltaRequest) -> String {
    match request {
        DeltaRequest::Start { calendar, .. } => calendar.user.clone(),
        DeltaRequest::Link(link) => link
            .split("/users/")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("unknown")
            .to_string(),
    }
}

#[async_trait]
impl GraphApi for BudgetedGraph {
    async fn create_event(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        event: &EventWrite,
    ) -> Result<GraphEvent, GraphError> {
        let _slot = self.admit(creds, &calendar.user, 1).await?;
        self.inner.create_event(creds, calendar, event).await
    }

    async fn update_event(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        id: &str,
        etag: Option<&str>,
        event: &EventWrite,
    ) -> Result<GraphEvent, GraphError> {
        let _slot = self.admit(creds, &calendar.user, 1).await?;
        self.inner
            .update_event(creds, calendar, id, etag, event)
            .await
    }

    async fn get_event(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        id: &str,
    ) -> Result<GraphEvent, GraphError> {
        let _slot = self.admit(creds, &calendar.user, 1).await?;
        self.inner.get_event(creds, calendar, id).await
    }

    async fn get_events(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        ids: &[String],
    ) -> Result<Vec<Result<GraphEvent, GraphError>>, GraphError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let _slots = self.admit(creds, &calendar.user, ids.len()).await?;
        self.inner.get_events(creds, calendar, ids).await
    }

    async fn mailbox_time_zone(
        &self,
        creds: &GraphCredentials,
        user: &str,
    ) -> Result<String, GraphError> {
        let _slot = self.admit(creds, user, 1).await?;
        self.inner.mailbox_time_zone(creds, user).await
    }

    async fn delete_event(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        id: &str,
    ) -> Result<(), GraphError> {
        let _slot = self.admit(creds, &calendar.user, 1).await?;
        self.inner.delete_event(creds, calendar, id).await
    }

    // Subscriptions are the app's, not a mailbox's: a few calls a week per connection.
    async fn create_subscription(
        &self,
        creds: &GraphCredentials,
        sub: &NewSubscription,
    ) -> Result<GraphSubscription, GraphError> {
        self.inner.create_subscription(creds, sub).await
    }

    async fn renew_subscription(
        &self,
        creds: &GraphCredentials,
        id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<GraphSubscription, GraphError> {
        self.inner.renew_subscription(creds, id, expires_at).await
    }

    async fn delete_subscription(
        &self,
        creds: &GraphCredentials,
        id: &str,
    ) -> Result<(), GraphError> {
        self.inner.delete_subscription(creds, id).await
    }

    async fn delta_page(
        &self,
        creds: &GraphCredentials,
        request: &DeltaRequest,
    ) -> Result<DeltaPage, GraphError> {
        let _slot = self.admit(creds, &delta_mailbox(request), 1).await?;
        self.inner.delta_page(creds, request).await
    }
}

/// [`GoogleApi`] within the per-user quota: see the module docs.
pub struct BudgetedGoogle {
    inner: Arc<dyn GoogleApi>,
    budget: Arc<Budget>,
    limit: Limit,
}

impl BudgetedGoogle {
    pub fn new(inner: Arc<dyn GoogleApi>, budget: Arc<Budget>, limit: Limit) -> Self {
        BudgetedGoogle {
            inner,
            budget,
            limit,
        }
    }

    async fn admit(&self, account: &ServiceAccount, subject: &str) -> Result<(), GoogleError> {
        let scope = format!(
            "google:{}:{}",
            account.client_email,
            subject.to_ascii_lowercase()
        );
        self.budget
            .take(&scope, 1, self.limit)
            .await
            .map_err(|wait| GoogleError::RateLimited {
                retry_after: Some(wait),
            })
    }
}

#[async_trait]
impl GoogleApi for BudgetedGoogle {
    async fn list_events(
        &self,
        account: &ServiceAccount,
        subject: &str,
        request: &ListRequest,
    ) -> Result<EventsPage, GoogleError> {
        self.admit(account, subject).await?;
        self.inner.list_events(account, subject, request).await
    }

    async fn watch(
        &self,
        account: &ServiceAccount,
        subject: &str,
        request: &WatchRequest,
    ) -> Result<Channel, GoogleError> {
        self.admit(account, subject).await?;
        self.inner.watch(account, subject, request).await
    }

    async fn stop_channel(
        &self,
        account: &ServiceAccount,
        subject: &str,
        channel_id: &str,
        resource_id: &str,
    ) -> Result<(), GoogleError> {
        self.admit(account, subject).await?;
        self.inner
            .stop_channel(account, subject, channel_id, resource_id)
            .await
    }

    async fn insert_event(
        &self,
        account: &ServiceAccount,
        subject: &str,
        calendar_id: &str,
        event: &GoogleEventWrite,
    ) -> Result<GoogleEvent, GoogleError> {
        self.admit(account, subject).await?;
        self.inner
            .insert_event(account, subject, calendar_id, event)
            .await
    }

    async fn update_event(
        &self,
        account: &ServiceAccount,
        subject: &str,
        calendar_id: &str,
        event_id: &str,
        etag: Option<&str>,
        event: &GoogleEventWrite,
    ) -> Result<GoogleEvent, GoogleError> {
        self.admit(account, subject).await?;
        self.inner
            .update_event(account, subject, calendar_id, event_id, etag, event)
            .await
    }

    async fn get_event(
        &self,
        account: &ServiceAccount,
        subject: &str,
        calendar_id: &str,
        event_id: &str,
    ) -> Result<GoogleEvent, GoogleError> {
        self.admit(account, subject).await?;
        self.inner
            .get_event(account, subject, calendar_id, event_id)
            .await
    }

    async fn delete_event(
        &self,
        account: &ServiceAccount,
        subject: &str,
        calendar_id: &str,
        event_id: &str,
        etag: Option<&str>,
    ) -> Result<(), GoogleError> {
        self.admit(account, subject).await?;
        self.inner
            .delete_event(account, subject, calendar_id, event_id, etag)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::memory::MemoryTable;
    use crate::ports::ManualClock;

    fn budget(chunk: u64) -> Budget {
        let clock = Arc::new(ManualClock::new("2026-12-01T10:00:30Z".parse().unwrap()));
        Budget::new(Store::new(Arc::new(MemoryTable::default()), clock), chunk)
    }

    const TEN: Limit = Limit {
        requests: 10,
        window: Duration::from_secs(60),
    };

    #[tokio::test]
    async fn a_scope_gets_its_limit_per_window_and_then_waits_for_the_next() {
        let b = budget(4);
        for _ in 0..10 {
            assert!(b.take("graph:t:c:m", 1, TEN).await.is_ok());
        }
        let wait = b.take("graph:t:c:m", 1, TEN).await.unwrap_err();
        assert_eq!(wait, Duration::from_secs(30), "until the minute turns");
        assert!(
            b.take("graph:t:c:other", 1, TEN).await.is_ok(),
            "scopes are apart"
        );
    }

    /// A Graph stand-in that counts requests in flight per mailbox.
    #[derive(Default)]
    struct InFlight {
        now: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl GraphApi for InFlight {
        async fn create_event(
            &self,
            _: &GraphCredentials,
            _: &CalendarRef,
            _: &EventWrite,
        ) -> Result<GraphEvent, GraphError> {
            Err(GraphError::NotFound)
        }
        async fn update_event(
            &self,
            _: &GraphCredentials,
            _: &CalendarRef,
            _: &str,
            _: Option<&str>,
            _: &EventWrite,
        ) -> Result<GraphEvent, GraphError> {
            Err(GraphError::NotFound)
        }
        async fn get_event(
            &self,
            _: &GraphCredentials,
            _: &CalendarRef,
            id: &str,
        ) -> Result<GraphEvent, GraphError> {
            use std::sync::atomic::Ordering::SeqCst;
            let n = self.now.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(n, SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.now.fetch_sub(1, SeqCst);
            Ok(GraphEvent {
                id: id.into(),
                ..Default::default()
            })
        }
        async fn get_events(
            &self,
            _: &GraphCredentials,
            _: &CalendarRef,
            _: &[String],
        ) -> Result<Vec<Result<GraphEvent, GraphError>>, GraphError> {
            Ok(Vec::new())
        }
        async fn mailbox_time_zone(
            &self,
            _: &GraphCredentials,
            _: &str,
        ) -> Result<String, GraphError> {
            Ok("UTC".into())
        }
        async fn delete_event(
            &self,
            _: &GraphCredentials,
            _: &CalendarRef,
            _: &str,
        ) -> Result<(), GraphError> {
            Ok(())
        }
        async fn create_subscription(
            &self,
            _: &GraphCredentials,
            _: &NewSubscription,
        ) -> Result<GraphSubscription, GraphError> {
            Err(GraphError::NotFound)
        }
        async fn renew_subscription(
            &self,
            _: &GraphCredentials,
            _: &str,
            _: DateTime<Utc>,
        ) -> Result<GraphSubscription, GraphError> {
            Err(GraphError::NotFound)
        }
        async fn delete_subscription(
            &self,
            _: &GraphCredentials,
            _: &str,
        ) -> Result<(), GraphError> {
            Ok(())
        }
        async fn delta_page(
            &self,
            _: &GraphCredentials,
            _: &DeltaRequest,
        ) -> Result<DeltaPage, GraphError> {
            Ok(DeltaPage::default())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_four_requests_run_at_once_for_one_mailbox() {
        let inner = Arc::new(InFlight::default());
        let graph = Arc::new(BudgetedGraph::new(
            inner.clone(),
            Arc::new(budget(50)),
            Limits::default().graph,
        ));
        let creds = GraphCredentials {
            tenant_id: "t".into(),
            client_id: "c".into(),
            client_secret: "s".into(),
        };
        let calendar = CalendarRef {
            user: "ann@example.com".into(),
            calendar: None,
        };
        let calls = (0..12).map(|i| {
            let (graph, creds, calendar) = (graph.clone(), creds.clone(), calendar.clone());
            tokio::spawn(async move { graph.get_event(&creds, &calendar, &format!("e{i}")).await })
        });
        for call in futures::future::join_all(calls).await {
            assert!(call.unwrap().is_ok());
        }
        assert_eq!(
            inner.most.load(std::sync::atomic::Ordering::SeqCst),
            MAILBOX_CONCURRENCY
        );
    }

    #[tokio::test]
    async fn two_processes_share_one_count() {
        let clock = Arc::new(ManualClock::new("2026-12-01T10:00:30Z".parse().unwrap()));
        let store = Store::new(Arc::new(MemoryTable::default()), clock);
        let (a, b) = (Budget::new(store.clone(), 3), Budget::new(store, 3));
        let mut granted = 0;
        for _ in 0..20 {
            granted += a.take("s", 1, TEN).await.is_ok() as u32;
            granted += b.take("s", 1, TEN).await.is_ok() as u32;
        }
        assert_eq!(granted, 10);
    }

    /// A Google stand-in whose every call finds nothing.
    struct NothingThere;

    #[async_trait]
    impl GoogleApi for NothingThere {
        async fn list_events(
            &self,
            _: &ServiceAccount,
            _: &str,
            _: &ListRequest,
        ) -> Result<EventsPage, GoogleError> {
            Err(GoogleError::NotFound)
        }
        async fn watch(
            &self,
            _: &ServiceAccount,
            _: &str,
            _: &WatchRequest,
        ) -> Result<Channel, GoogleError> {
            Err(GoogleError::NotFound)
        }
        async fn stop_channel(
            &self,
            _: &ServiceAccount,
            _: &str,
            _: &str,
            _: &str,
        ) -> Result<(), GoogleError> {
            Err(GoogleError::NotFound)
        }
        async fn insert_event(
            &self,
            _: &ServiceAccount,
            _: &str,
            _: &str,
            _: &GoogleEventWrite,
        ) -> Result<GoogleEvent, GoogleError> {
            Err(GoogleError::NotFound)
        }
        async fn update_event(
            &self,
            _: &ServiceAccount,
            _: &str,
            _: &str,
            _: &str,
            _: Option<&str>,
            _: &GoogleEventWrite,
        ) -> Result<GoogleEvent, GoogleError> {
            Err(GoogleError::NotFound)
        }
        async fn get_event(
            &self,
            _: &ServiceAccount,
            _: &str,
            _: &str,
            _: &str,
        ) -> Result<GoogleEvent, GoogleError> {
            Err(GoogleError::NotFound)
        }
        async fn delete_event(
            &self,
            _: &ServiceAccount,
            _: &str,
            _: &str,
            _: &str,
            _: Option<&str>,
        ) -> Result<(), GoogleError> {
            Err(GoogleError::NotFound)
        }
    }

    #[tokio::test]
    async fn google_event_writes_and_reads_each_take_one_request_from_the_users_budget() {
        let four = Limit {
            requests: 4,
            window: Duration::from_secs(60),
        };
        let google = BudgetedGoogle::new(Arc::new(NothingThere), Arc::new(budget(2)), four);
        let account = ServiceAccount {
            client_email: "sa@p.iam.gserviceaccount.com".into(),
            private_key: "k".into(),
        };
        let t = Utc::now();
        let write = GoogleEventWrite {
            id: crate::google::event_id_for("acme", "s1"),
            summary: "s".into(),
            description: "d".into(),
            location: None,
            start: crate::google::api::GoogleDateTime::utc(t),
            end: crate::google::api::GoogleDateTime::utc(t),
            transparency: "opaque".into(),
            status: None,
            extended_properties: Default::default(),
            attendees: None,
        };
        let (a, cal) = (&account, "ann@example.com");
        assert_eq!(
            google.insert_event(a, cal, cal, &write).await,
            Err(GoogleError::NotFound)
        );
        assert_eq!(
            google
                .update_event(a, cal, cal, "e1", Some("\"1\""), &write)
                .await,
            Err(GoogleError::NotFound)
        );
        assert_eq!(
            google.get_event(a, cal, cal, "e1").await,
            Err(GoogleError::NotFound)
        );
        assert_eq!(
            google.delete_event(a, cal, cal, "e1", None).await,
            Err(GoogleError::NotFound)
        );
        assert_eq!(
            google.get_event(a, cal, cal, "e1").await,
            Err(GoogleError::RateLimited {
                retry_after: Some(Duration::from_secs(30))
            }),
            "the fifth request waits for the minute to turn"
        );
    }
}
