//! Provider answers the simulators do not give, made by wrapping a client: a Graph event
//! whose times carry a zone this build cannot read (`"Customized Time Zone"`, which Graph
//! serves for events made with a custom zone definition, whatever `Prefer:
//! outlook.timezone` asked for).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use voyage_core::deps::Deps;
use voyage_core::exchange::api::{
    CalendarRef, DeltaPage, DeltaRequest, EventWrite, GraphEvent, GraphSubscription,
    NewSubscription,
};
use voyage_core::exchange::{GraphApi, GraphCredentials, GraphError};

/// The zone label Graph gives an event made with a custom time zone definition.
pub const UNREADABLE_ZONE: &str = "Customized Time Zone";

/// Forwards to a Graph client; reads of `event` answer its times labelled
/// [`UNREADABLE_ZONE`].
pub struct UnreadableTimes {
    inner: Arc<dyn GraphApi>,
    event: String,
}

impl UnreadableTimes {
    fn twist(&self, mut e: GraphEvent) -> GraphEvent {
        if e.id == self.event {
            for t in [e.start.as_mut(), e.end.as_mut()].into_iter().flatten() {
                t.time_zone = Some(UNREADABLE_ZONE.into());
            }
        }
        e
    }
}

/// `world`'s dependencies with a Graph client whose reads of `event` show unreadable times.
pub fn unreadable_times(world: &Deps, event: &str) -> Deps {
    let mut deps = world.clone();
    let inner = world.graph.clone().expect("the world has a Graph client");
    deps.graph = Some(Arc::new(UnreadableTimes {
        inner,
        event: event.to_string(),
    }));
    deps
}

#[async_trait]
impl GraphApi for UnreadableTimes {
    async fn create_event(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        event: &EventWrite,
    ) -> Result<GraphEvent, GraphError> {
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
        self.inner
            .get_event(creds, calendar, id)
            .await
            .map(|e| self.twist(e))
    }
    async fn get_events(
        &self,
        creds: &GraphCredentials,
        calendar: &CalendarRef,
        ids: &[String],
    ) -> Result<Vec<Result<GraphEvent, GraphError>>, GraphError> {
        let read = self.inner.get_events(creds, calendar, ids).await?;
        Ok(read.into_iter().map(|r| r.map(|e| self.twist(e))).collect())
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
        self.inner.delete_event(creds, calendar, id).await
    }
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
        let mut page = self.inner.delta_page(creds, request).await?;
        page.events = page.events.into_iter().map(|e| self.twist(e)).collect();
        Ok(page)
    }
}
