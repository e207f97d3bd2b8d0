//! Graph's calls to us: change notifications and lifecycle events, authenticated by the
//! subscription's `clientState` (compared in constant time), turned into one queue message
//! per subscription and answered at once (Graph wants an answer within 3 s). The delta
//! round that reads the actual changes runs from the queue.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::secrets_equal;
use crate::deps::{Deps, QueueName};
use crate::model::Provider;
use crate::ports::queue::Envelope;
use crate::{Error, Result};

/// The queue message kind the inbound worker handles.
pub const SYNC_KIND: &str = "exchange.sync";

/// The payload key beside a [`SyncRequest`] saying when it was queued (RFC 3339).
pub const RECEIVED_AT: &str = "received_at";

/// When a queued sync request's notification arrived, from its envelope payload.
pub fn received_at(payload: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    let text = payload.get(RECEIVED_AT)?.as_str()?;
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Why a connection is to be synced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    pub company_id: String,
    pub connection_id: String,
    pub subscription_id: String,
    /// `notification`, or the lifecycle event (`missed`, `reauthorizationRequired`,
    /// `subscriptionRemoved`).
    pub reason: String,
}

impl SyncRequest {
    /// A delta round of `conn`, for `reason` (`connected`, `rebase`, `resume`, ...).
    pub fn for_connection(conn: &crate::model::Connection, reason: &str) -> SyncRequest {
        SyncRequest {
            company_id: conn.company_id.clone(),
            connection_id: conn.id.clone(),
            subscription_id: conn
                .channel
                .as_ref()
                .map(|c| c.id.clone())
                .unwrap_or_default(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Accepted {
    /// Messages queued (one per subscription with at least one genuine notification).
    pub queued: usize,
    /// Notifications dropped: unknown subscription or wrong `clientState`.
    pub dropped: usize,
}

/// Checks every notification in a Graph callback body and queues the genuine ones.
pub async fn accept(deps: &Deps, body: &[u8]) -> Result<Accepted> {
    // Not JSON at all is a malformed body (400), as on every route; JSON without the
    // notifications array is a bad `value` (422).
    let parsed: Value = serde_json::from_slice(body).map_err(|e| Error::BadRequest {
        status: 400,
        code: "malformed_json",
        message: format!("the body is not valid JSON: {e}"),
    })?;
    let Some(items) = parsed.get("value").and_then(Value::as_array) else {
        return Err(Error::validation(
            "value",
            "must be an array of notifications",
        ));
    };
    let mut accepted = Accepted::default();
    // One message per subscription: a burst of notifications becomes one delta round.
    let mut wanted: BTreeMap<String, SyncRequest> = BTreeMap::new();
    let mut looked_up: BTreeMap<String, Option<crate::model::Connection>> = BTreeMap::new();
    for item in items {
        let field = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or_default();
        let subscription = field("subscriptionId");
        let reason = match item.get("lifecycleEvent").and_then(Value::as_str) {
            Some(event) => event.to_string(),
            None => "notification".to_string(),
        };
        if subscription.is_empty() {
            accepted.dropped += 1;
            continue;
        }
        // One lookup per subscription, however many notifications a body carries for it.
        if !looked_up.contains_key(subscription) {
            let found = deps.store.connection_by_channel(subscription).await?;
            looked_up.insert(subscription.to_string(), found);
        }
        let connection = looked_up.get(subscription).cloned().flatten();
        let genuine = connection.as_ref().is_some_and(|c| {
            c.provider == Provider::Exchange
                && c.channel
                    .as_ref()
                    .is_some_and(|ch| secrets_equal(&ch.secret, field("clientState")))
        });
        match (genuine, connection) {
            (true, Some(c)) => {
                let entry = wanted
                    .entry(subscription.to_string())
                    .or_insert(SyncRequest {
                        company_id: c.company_id,
                        connection_id: c.id,
                        subscription_id: subscription.to_string(),
                        reason: reason.clone(),
                    });
                // A lifecycle event outranks a plain notification for the same subscription.
                if reason != "notification" {
                    entry.reason = reason;
                }
            }
            _ => {
                tracing::warn!(
                    subscription,
                    "graph notification dropped: unknown subscription or wrong clientState"
                );
                accepted.dropped += 1;
            }
        }
    }
    for request in wanted.into_values() {
        send(deps, &request, true).await?;
        accepted.queued += 1;
    }
    Ok(accepted)
}

/// Queues a delta round for one connection (a job's or a follow-up's, not a notification's:
/// it carries no arrival time for the notification-to-session latency).
pub async fn enqueue(deps: &Deps, request: &SyncRequest) -> Result<()> {
    send(deps, request, false).await
}

async fn send(deps: &Deps, request: &SyncRequest, notified: bool) -> Result<()> {
    let mut payload = serde_json::to_value(request).map_err(|e| Error::Internal(e.to_string()))?;
    // When the notification arrived, beside the request (older messages lack it; the worker
    // reads it for the notification-to-session latency metric).
    if let (true, Value::Object(fields)) = (notified, &mut payload) {
        fields.insert(
            RECEIVED_AT.into(),
            Value::String(deps.store.now().to_rfc3339()),
        );
    }
    let envelope = Envelope {
        kind: SYNC_KIND.into(),
        payload,
        not_before: None,
    };
    let body = serde_json::to_string(&envelope).map_err(|e| Error::Internal(e.to_string()))?;
    deps.queue(QueueName::ExchangeInbound)?
        .send(&body, std::time::Duration::ZERO)
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))
}
