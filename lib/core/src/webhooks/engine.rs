//! Dispatch and delivery. Records are the truth: a delivery is stored before any message
//! about it is sent, and every message handler re-reads the record, so a lost message only
//! delays an attempt (the sweep finds it) and a duplicated one finds the work claimed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

use super::catalogue::matches_any;
use super::outcome::{judge, Verdict};
use super::request::{build, Transport};
use crate::deps::{Deps, QueueName};
use crate::model::{Attempt, Delivery, DeliveryStatus, EndpointStatus, WebhookEndpoint};
use crate::ports::queue::{on_arrival, send_after, Arrival, Envelope};
use crate::retry::RetryPolicy;
use crate::store::Claim;
use crate::{ids, Error, Result};

/// The queue message kind of a delivery attempt.
pub const ATTEMPT: &str = "webhook.attempt";
/// How long an attempt holds its claim on a delivery: longer than the request timeout, so
/// a second worker never sends while the first still might.
pub const LEASE: Duration = Duration::from_secs(60);
/// The longest wait a receiver's `Retry-After` can impose.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// An endpoint is disabled when every delivery for this long has failed...
pub const DISABLE_AFTER: chrono::Duration = chrono::Duration::days(5);
/// ...and at least this many have.
pub const DISABLE_MIN_FAILURES: u32 = 10;
/// Idempotency keys are remembered this long.
pub const IDEMPOTENCY_TTL: chrono::Duration = chrono::Duration::hours(24);
/// How long a dispatch holds its idempotency key before answering; a retry after a crash
/// within the dispatch may redo it once this has passed.
pub const IDEMPOTENCY_LEASE: chrono::Duration = chrono::Duration::minutes(2);

/// A platform event to deliver.
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub company_id: String,
    pub event_type: String,
    pub payload: serde_json::Map<String, serde_json::Value>,
    pub idempotency_key: Option<String>,
    /// Deliver to this endpoint only, whatever it subscribes to (test events).
    pub only_endpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchedDelivery {
    pub id: String,
    pub endpoint_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatched {
    pub event_id: String,
    pub deliveries: Vec<DispatchedDelivery>,
}

/// What handling one attempt message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Nothing to do (already finished, not yet due, or claimed by another worker).
    Skipped(&'static str),
    Delivered,
    Retrying(DateTime<Utc>),
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AttemptMessage {
    company_id: String,
    delivery_id: String,
}

#[derive(Clone)]
pub struct WebhookEngine {
    pub deps: Arc<Deps>,
    pub transport: Arc<dyn Transport>,
}

impl WebhookEngine {
    pub fn new(deps: Arc<Deps>, transport: Arc<dyn Transport>) -> Self {
        WebhookEngine { deps, transport }
    }

    fn now(&self) -> DateTime<Utc> {
        self.deps.store.now()
    }

    /// Stores one delivery per matching active endpoint and wakes a worker for each.
    /// With an idempotency key, a repeat within 24 h answers as the first did and sends
    /// nothing.
    pub async fn dispatch(&self, d: Dispatch) -> Result<Dispatched> {
        let store = &self.deps.store;
        if let Some(key) = &d.idempotency_key {
            match store
                .claim_idempotent(&d.company_id, "dispatch", key, IDEMPOTENCY_LEASE)
                .await?
            {
                Claim::Fresh => {}
                Claim::Replay(answer) => {
                    return serde_json::from_value(answer)
                        .map_err(|e| Error::Internal(format!("stored dispatch answer: {e}")))
                }
                Claim::InFlight => {
                    return Err(Error::Conflict {
                        entity: "idempotency key",
                        id: key.clone(),
                    })
                }
            }
        }
        let result = self.fan_out(&d).await;
        if let Some(key) = &d.idempotency_key {
            match &result {
                Ok(answer) => {
                    let value =
                        serde_json::to_value(answer).map_err(|e| Error::Internal(e.to_string()))?;
                    store
                        .complete_idempotent(&d.company_id, "dispatch", key, IDEMPOTENCY_TTL, value)
                        .await?;
                }
                Err(_) => {
                    // Nothing was promised: let a retry of the request do the work.
                    let _ = store
                        .abandon_idempotent(&d.company_id, "dispatch", key)
                        .await;
                }
            }
        }
        result
    }

    async fn fan_out(&self, d: &Dispatch) -> Result<Dispatched> {
        let store = &self.deps.store;
        let now = self.now();
        let event_id = ids::new_id("evt");
        let body = json!({
            "id": event_id,
            "type": d.event_type,
            "created_at": now,
            "company_id": d.company_id,
            "data": d.payload,
        });
        let body = RawValue::from_string(body.to_string())
            .map_err(|e| Error::Internal(format!("event body: {e}")))?;
        let endpoints = store.all_endpoints(&d.company_id).await?;
        let targets: Vec<&WebhookEndpoint> = endpoints
            .iter()
            .filter(|e| e.status == EndpointStatus::Active)
            .filter(|e| match &d.only_endpoint {
                Some(only) => &e.id == only,
                None => matches_any(&e.events, &d.event_type),
            })
            .collect();
        let deliveries: Vec<Delivery> = targets
            .iter()
            .map(|e| Delivery {
                id: ids::new_id("dlv"),
                company_id: d.company_id.clone(),
                endpoint_id: e.id.clone(),
                event_id: event_id.clone(),
                event_type: d.event_type.clone(),
                body: body.clone(),
                status: DeliveryStatus::Pending,
                attempt_count: 0,
                last_status_code: None,
                last_error_class: None,
                next_attempt_at: Some(now),
                redelivery_of: None,
                created_at: now,
                updated_at: now,
                version: 0,
            })
            .collect();
        store.create_deliveries(&deliveries).await?;
        for delivery in &deliveries {
            wake(
                &self.deps,
                &delivery.company_id,
                &delivery.id,
                Duration::ZERO,
            )
            .await;
        }
        tracing::info!(
            company = %d.company_id,
            event = %d.event_type,
            event_id = %event_id,
            deliveries = deliveries.len(),
            "event dispatched"
        );
        Ok(Dispatched {
            event_id,
            deliveries: deliveries
                .into_iter()
                .map(|x| DispatchedDelivery {
                    id: x.id,
                    endpoint_id: x.endpoint_id,
                })
                .collect(),
        })
    }

    /// Handles one queue message body (a wake-up for an attempt).
    pub async fn handle_message(&self, body: &str) -> Result<AttemptOutcome> {
        let queue = self.deps.queue(QueueName::WebhookDeliveries)?;
        match on_arrival(queue, self.deps.store.clock(), body)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?
        {
            Arrival::Rechained => Ok(AttemptOutcome::Skipped("re-chained")),
            Arrival::Malformed(why) => Err(Error::validation("message", why)),
            Arrival::Due(env) if env.kind == ATTEMPT => {
                let m: AttemptMessage = serde_json::from_value(env.payload)
                    .map_err(|e| Error::validation("message.payload", e.to_string()))?;
                self.attempt(&m.company_id, &m.delivery_id).await
            }
            Arrival::Due(env) => Err(Error::validation(
                "message.kind",
                format!("unknown kind `{}`", env.kind),
            )),
        }
    }

    /// Makes one delivery attempt, if the delivery is due and no one else is making it.
    pub async fn attempt(&self, company: &str, delivery_id: &str) -> Result<AttemptOutcome> {
        let store = &self.deps.store;
        let mut d = match store.get_delivery(company, delivery_id).await {
            Ok(d) => d,
            Err(Error::NotFound { .. }) => return Ok(AttemptOutcome::Skipped("no such delivery")),
            Err(e) => return Err(e),
        };
        if d.status != DeliveryStatus::Pending {
            return Ok(AttemptOutcome::Skipped("finished"));
        }
        let now = self.now();
        if d.next_attempt_at
            .is_some_and(|t| t > now + chrono::Duration::seconds(1))
        {
            return Ok(AttemptOutcome::Skipped("not due"));
        }
        // Claim: a compare-and-set that moves the due time past the lease.
        d.next_attempt_at = Some(now + chrono::Duration::from_std(LEASE).unwrap_or_default());
        match store.update_delivery(&mut d, None).await {
            Ok(()) => {}
            Err(Error::Conflict { .. }) => return Ok(AttemptOutcome::Skipped("claimed elsewhere")),
            Err(e) => return Err(e),
        }
        let endpoint = store
            .find_endpoint(company, &d.endpoint_id)
            .await?
            .filter(|e| e.status == EndpointStatus::Active);
        let Some(endpoint) = endpoint else {
            d.status = DeliveryStatus::Failed;
            d.next_attempt_at = None;
            d.last_error_class = Some("endpoint_disabled".into());
            store.update_delivery(&mut d, None).await?;
            crate::metrics::count("webhook_deliveries", &[("outcome", "failed")], 1);
            return Ok(AttemptOutcome::Failed);
        };

        let request = build(&endpoint, &d, now);
        let started = Instant::now();
        let result = judge(self.transport.send(request).await);
        let duration_ms = started.elapsed().as_millis() as u64;
        let finished_at = self.now();
        let number = d.attempt_count + 1;

        let policy = match &endpoint.retry_delays_secs {
            Some(secs) => {
                RetryPolicy::from_delays(secs.iter().map(|s| Duration::from_secs(*s)).collect())
                    .unwrap_or_else(|_| self.deps.config.webhook_retry.clone())
            }
            None => self.deps.config.webhook_retry.clone(),
        };
        let mut retry_in = None;
        let outcome = match &result.verdict {
            Verdict::Success => AttemptOutcome::Delivered,
            Verdict::Gone | Verdict::Fail => AttemptOutcome::Failed,
            Verdict::Retry { retry_after } => match policy.next_delay(number as usize) {
                Some(scheduled) => {
                    let wait =
                        RetryPolicy::honour_retry_after(scheduled, *retry_after, MAX_RETRY_AFTER);
                    retry_in = Some(wait);
                    AttemptOutcome::Retrying(
                        finished_at + chrono::Duration::from_std(wait).unwrap_or_default(),
                    )
                }
                None => AttemptOutcome::Failed,
            },
        };
        let next_retry_at = match outcome {
            AttemptOutcome::Retrying(at) => Some(at),
            _ => None,
        };
        let attempt = Attempt {
            delivery_id: d.id.clone(),
            number,
            at: now,
            status_code: result.status_code,
            duration_ms,
            error_class: result.error_class.map(String::from),
            response_body: result.response_body.clone(),
            next_retry_at,
        };
        d.attempt_count = number;
        d.last_status_code = result.status_code;
        d.last_error_class = result.error_class.map(String::from);
        d.next_attempt_at = next_retry_at;
        d.status = match outcome {
            AttemptOutcome::Delivered => DeliveryStatus::Succeeded,
            AttemptOutcome::Retrying(_) => DeliveryStatus::Pending,
            _ => DeliveryStatus::Failed,
        };
        store.update_delivery(&mut d, Some(&attempt)).await?;
        let label = match outcome {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retrying(_) => "retrying",
            _ => "failed",
        };
        crate::metrics::count("webhook_attempts", &[("outcome", label)], 1);
        crate::metrics::observe_ms(
            "webhook_attempt_ms",
            &[("outcome", label)],
            duration_ms as f64,
        );
        match outcome {
            AttemptOutcome::Delivered => {
                crate::metrics::count("webhook_deliveries", &[("outcome", "succeeded")], 1)
            }
            AttemptOutcome::Failed => {
                crate::metrics::count("webhook_deliveries", &[("outcome", "failed")], 1)
            }
            _ => {}
        }
        tracing::info!(
            delivery = %d.id,
            endpoint = %d.endpoint_id,
            attempt = number,
            status_code = ?result.status_code,
            error_class = ?result.error_class,
            outcome = ?outcome,
            "webhook attempt"
        );
        if let Some(wait) = retry_in {
            wake(&self.deps, company, &d.id, wait).await;
        }
        match (&outcome, &result.verdict) {
            (_, Verdict::Gone) => {
                self.disable_endpoint(company, &d.endpoint_id, "the receiver answered 410 Gone")
                    .await?
            }
            (AttemptOutcome::Delivered, _) => {
                self.record_health(company, &d.endpoint_id, true).await?
            }
            (AttemptOutcome::Failed, _) => {
                self.record_health(company, &d.endpoint_id, false).await?
            }
            _ => {}
        }
        Ok(outcome)
    }

    /// Tracks an endpoint's run of failed deliveries; disables it when every delivery for
    /// [`DISABLE_AFTER`] failed and at least [`DISABLE_MIN_FAILURES`] did.
    async fn record_health(&self, company: &str, endpoint_id: &str, delivered: bool) -> Result<()> {
        let store = &self.deps.store;
        for _ in 0..5 {
            let Some(mut e) = store.find_endpoint(company, endpoint_id).await? else {
                return Ok(());
            };
            let now = self.now();
            if delivered {
                if e.failed_deliveries == 0 && e.failing_since.is_none() {
                    return Ok(());
                }
                e.failed_deliveries = 0;
                e.failing_since = None;
            } else {
                e.failed_deliveries += 1;
                let since = *e.failing_since.get_or_insert(now);
                if e.status == EndpointStatus::Active
                    && e.failed_deliveries >= DISABLE_MIN_FAILURES
                    && now - since >= DISABLE_AFTER
                {
                    return self
                        .disable_endpoint(company, endpoint_id, "every delivery failed for 5 days")
                        .await;
                }
            }
            match store.update_endpoint(&mut e).await {
                Ok(()) => return Ok(()),
                Err(Error::Conflict { .. }) => continue,
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Disables an endpoint and tells the tenant's other endpoints.
    pub async fn disable_endpoint(
        &self,
        company: &str,
        endpoint_id: &str,
        reason: &str,
    ) -> Result<()> {
        let store = &self.deps.store;
        for _ in 0..5 {
            let Some(mut e) = store.find_endpoint(company, endpoint_id).await? else {
                return Ok(());
            };
            if e.status == EndpointStatus::Disabled {
                return Ok(());
            }
            e.status = EndpointStatus::Disabled;
            e.disabled_reason = Some(reason.to_string());
            match store.update_endpoint(&mut e).await {
                Ok(()) => {
                    tracing::warn!(endpoint = %endpoint_id, reason, "webhook endpoint disabled");
                    let mut payload = serde_json::Map::new();
                    payload.insert("endpoint_id".into(), json!(e.id));
                    payload.insert("url".into(), json!(e.url));
                    payload.insert("reason".into(), json!(reason));
                    self.dispatch(Dispatch {
                        company_id: company.to_string(),
                        event_type: "webhook.endpoint.disabled".into(),
                        payload,
                        idempotency_key: None,
                        only_endpoint: None,
                    })
                    .await?;
                    return Ok(());
                }
                Err(Error::Conflict { .. }) => continue,
                Err(err) => return Err(err),
            }
        }
        Err(Error::Unavailable(format!(
            "endpoint {endpoint_id} kept changing"
        )))
    }

    /// Sends a delivery's event again, as a new delivery to the same endpoint.
    pub async fn redeliver(&self, company: &str, delivery_id: &str) -> Result<Delivery> {
        let store = &self.deps.store;
        let original = store.get_delivery(company, delivery_id).await?;
        let endpoint = store.get_endpoint(company, &original.endpoint_id).await?;
        if endpoint.status != EndpointStatus::Active {
            return Err(Error::validation(
                "endpoint",
                "the endpoint is disabled; enable it before redelivering",
            ));
        }
        let now = self.now();
        let copy = Delivery {
            id: ids::new_id("dlv"),
            status: DeliveryStatus::Pending,
            attempt_count: 0,
            last_status_code: None,
            last_error_class: None,
            next_attempt_at: Some(now),
            redelivery_of: Some(original.id.clone()),
            created_at: now,
            updated_at: now,
            version: 0,
            ..original
        };
        store.create_deliveries(std::slice::from_ref(&copy)).await?;
        wake(&self.deps, company, &copy.id, Duration::ZERO).await;
        Ok(copy)
    }
}

/// Sends the wake-up for an attempt. A failure is logged, not raised: the record is stored,
/// and the five-minute sweep re-drives it.
pub async fn wake(deps: &Deps, company: &str, delivery: &str, delay: Duration) {
    let message = Envelope::new(
        ATTEMPT,
        json!(AttemptMessage {
            company_id: company.to_string(),
            delivery_id: delivery.to_string()
        }),
    );
    let sent = match deps.queue(QueueName::WebhookDeliveries) {
        Ok(q) => send_after(q, deps.store.clock(), message, delay)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = sent {
        tracing::warn!(delivery = %delivery, error = %e, "wake-up not sent; the sweep will re-drive it");
    }
}

/// Re-sends wake-ups for pending deliveries whose time passed over `slack` ago (their
/// message was lost, or a worker died holding its claim). Returns how many.
pub async fn redrive_due(deps: &Deps, slack: Duration) -> Result<u64> {
    let store = &deps.store;
    let until = store.now() - chrono::Duration::from_std(slack).unwrap_or_default();
    let mut total = 0;
    loop {
        let due = store.due_deliveries(until, 100).await?;
        if due.is_empty() {
            return Ok(total);
        }
        for mut d in due {
            // Move the due time forward first, so this loop (and the next sweep) does not
            // find it again before a worker has run it.
            d.next_attempt_at = Some(store.now());
            match store.update_delivery(&mut d, None).await {
                Ok(()) => {
                    wake(deps, &d.company_id, &d.id, Duration::ZERO).await;
                    total += 1;
                }
                Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if total >= 10_000 {
            return Ok(total);
        }
    }
}
