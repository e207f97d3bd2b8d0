//! Provider clients that run other work just before their first write of one kind (a
//! create, an update, a delete), forwarding everything to a world's client: the order a race
//! produces, made deterministic. [`hooked`] puts one in a world's dependencies; [`once`] runs
//! work to its end there (another writer finishing first); [`held`] stops the write until
//! the test lets it go.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;
use voyage_core::deps::Deps;
use voyage_core::exchange::api::{
    CalendarRef, DeltaPage, DeltaRequest, EventWrite, GraphEvent, GraphSubscription,
    NewSubscription,
};
use voyage_core::exchange::{GraphApi, GraphCredentials, GraphError};
use voyage_core::google::api::{Channel, EventsPage, GoogleEvent, ListRequest, WatchRequest};
use voyage_core::google::{GoogleApi, GoogleError, GoogleEventWrite, ServiceAccount};
use voyage_core::model::Provider;

use crate::races::Meanwhile;

/// The kind of event write a hook runs before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Create,
    Update,
    Delete,
    /// A Graph subscription's or a Google channel's creation.
    Subscribe,
    /// Not a write: a page of events read (a delta page, a Google list). The hook runs
    /// after the page is read and before the caller gets it: what the page shows is then
    /// older than what the hook's work wrote (a slow answer on the way back).
    Read,
}

/// Called before each write of the hooked kind: the work to run to its end first, if any.
pub type Hook = Arc<dyn Fn() -> Option<Meanwhile> + Send + Sync>;

/// `work`, run before the first hooked write only.
pub fn once(work: Meanwhile) -> Hook {
    let slot = Mutex::new(Some(work));
    Arc::new(move || slot.lock().ok().and_then(|mut w| w.take()))
}

/// The test's side of [`held`]: `reached` once the write is about to be sent, `go` sends it.
pub struct Gate {
    pub reached: oneshot::Receiver<()>,
    pub go: oneshot::Sender<()>,
}

/// The first hooked write says it was reached, then waits for the gate to let it go.
pub fn held() -> (Hook, Gate) {
    let (reached_tx, reached) = oneshot::channel();
    let (go, go_rx) = oneshot::channel::<()>();
    let work: Meanwhile = Box::pin(async move {
        let _ = reached_tx.send(());
        let _ = go_rx.await;
    });
    (once(work), Gate { reached, go })
}

/// `world`'s dependencies with `provider`'s client hooked before its writes of kind `at`.
pub fn hooked(world: &Arc<Deps>, provider: Provider, at: Write, hook: Hook) -> Deps {
    let mut deps = (**world).clone();
    match provider {
        Provider::Exchange => {
            if let Some(inner) = world.graph.clone() {
                deps.graph = Some(Arc::new(HookedGraph { inner, at, hook }));
            }
        }
        Provider::Google => {
            if let Some(inner) = world.google.clone() {
                deps.google = Some(Arc::new(HookedGoogle { inner, at, hook }));
            }
        }
    }
    deps
}

/// A Graph client whose writes of kind `at` run `hook`'s work first.
pub struct HookedGraph {
    inner: Arc<dyn GraphApi>,
    at: Write,
    hook: Hook,
}

impl HookedGraph {
    async fn before(&self, write: Write) {
        if write == self.at {
            if let Some(work) = (self.hook)() {
                work.await;
            }
        }
    }
}

#[async_trait::async_trait]
impl GraphApi for HookedGraph {
    async fn create_event(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        event: &EventWrite,
    ) -> Result<GraphEvent, GraphError> {
        self.before(Write::Create).await;
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
        self.before(Write::Update).await;
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
        self.inner.get_event(creds, calendar, id).await
    }
    async fn get_events(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        ids: &[String],
    ) -> Result<Vec<Result<GraphEvent, GraphError>>, GraphError> {
        self.inner.get_events(creds, calendar, ids).await
    }
    async fn mailbox_time_zone(
        &self,
        creds: &GraphCredentials,
        user: &str,
    ) -> Result<String, GraphError> {
        self.inner.mailbox_time_zone(creds, user).await
    }
    async fn delete_event(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        id: &str,
    ) -> Result<(), GraphError> {
        self.before(Write::Delete).await;
        self.inner.delete_event(creds, calendar, id).await
    }
    async fn create_subscription(
        &self,
        creds: &GraphCredentials,
        sub: &NewSubscription,
    ) -> Result<GraphSubscription, GraphError> {
        self.before(Write::Subscribe).await;
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
        let page = self.inner.delta_page(creds, request).await;
        self.before(Write::Read).await;
        page
    }
}

/// A Google client whose writes of kind `at` run `hook`'s work first.
pub struct HookedGoogle {
    inner: Arc<dyn GoogleApi>,
    at: Write,
    hook: Hook,
}

impl HookedGoogle {
    async fn before(&self, write: Write) {
        if write == self.at {
            if let Some(work) = (self.hook)() {
                work.await;
            }
        }
    }
}

#[async_trait::async_trait]
impl GoogleApi for HookedGoogle {
    async fn list_events(
        &self,
        account: &ServiceAccount,
        subject: &str,
        request: &ListRequest,
    ) -> Result<EventsPage, GoogleError> {
        let page = self.inner.list_events(account, subject, request).await;
        self.before(Write::Read).await;
        page
    }
    async fn watch(
        &self,
        account: &ServiceAccount,
        subject: &str,
        request: &WatchRequest,
    ) -> Result<Channel, GoogleError> {
        self.before(Write::Subscribe).await;
        self.inner.watch(account, subject, request).await
    }
    async fn stop_channel(
        &self,
        account: &ServiceAccount,
        subject: &str,
        channel_id: &str,
        resource_id: &str,
    ) -> Result<(), GoogleError> {
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
        self.before(Write::Create).await;
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
        self.before(Write::Update).await;
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
        self.before(Write::Delete).await;
        self.inner
            .delete_event(account, subject, calendar_id, event_id, etag)
            .await
    }
}
