//! Dispatch and delivery. Records are the truth: a delivery is stored before any message
//! about it is sent, and every message handler re-reads the record, so a lost message only
//! delays an attempt (the sweep finds it) and a duplicated one finds the work claimed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::catalogue::matches_any;
use super::outcome::{judge, Verdict};
use super::request::{build, Transport};
use super::sequence::{self, Stamp};
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
/// At most one `webhook.endpoint.failing` event per endpoint in this long.
pub const FAILING_EVENT_INTERVAL: chrono::Duration = chrono::Duration::days(1);
/// The widest window bulk recovery accepts (deliveries are kept 30 days).
pub const RECOVER_WINDOW: chrono::Duration = chrono::Duration::days(30);
/// Most deliveries one recovery call re-sends; a larger window answers where to resume.
pub const RECOVER_LIMIT: usize = 1000;
/// The longest a worker waits in place for a rate-limit slot; a later slot is waited for
/// through the queue (a delayed wake-up), so no worker sleeps long.
pub const MAX_INLINE_RATE_WAIT: Duration = Duration::from_secs(1);

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
    /// Not sent yet: the endpoint's rate limit reserved it this later slot.
    Deferred(DateTime<Utc>),
}

/// An event's deliveries, made but not yet stored, with the endpoint of each.
struct Made<'e> {
    event_id: String,
    deliveries: Vec<Delivery>,
    targets: Vec<&'e WebhookEndpoint>,
}

/// What a bulk recovery did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovered {
    /// New deliveries made (one per failed delivery found in the window).
    pub count: usize,
    /// The window, as applied (millisecond precision; `until` excluded).
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// More failed deliveries than [`RECOVER_LIMIT`] lie in the window: the oldest ones
    /// were not re-sent; call again with `until` = `next_until` to go on.
    pub truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_until: Option<DateTime<Utc>>,
}

/// A time cut to whole milliseconds (the precision of the store's time indexes).
fn to_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AttemptMessage {
    company_id: String,
    delivery_id: String,
}

/// Per-endpoint locks that serialise this process's rate-slot reservations, so workers of
/// one process do not race each other's compare-and-set (other processes still may; the
/// store decides).
type RateLocks = std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// A due delivery handed straight to an in-process worker.
#[derive(Debug)]
pub struct LocalWake {
    pub company_id: String,
    pub delivery_id: String,
    /// The delivery and its endpoint as the dispatch that made it had them.
    pub hint: Option<Box<WakeHint>>,
}

#[derive(Debug)]
pub struct WakeHint {
    pub delivery: Delivery,
    pub endpoint: WebhookEndpoint,
    pub at: Instant,
}

/// How long a wake-up's copy of its delivery and endpoint is used instead of reading them.
pub const HINT_FRESH: Duration = Duration::from_millis(500);

/// A delivery this process is attempting; leaves the set when dropped.
struct InFlight {
    set: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    id: String,
}

impl InFlight {
    fn take(
        set: &Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
        id: &str,
    ) -> Option<InFlight> {
        let mut held = set.lock().ok()?;
        held.insert(id.to_string()).then(|| InFlight {
            set: set.clone(),
            id: id.to_string(),
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut held) = self.set.lock() {
            held.remove(&self.id);
        }
    }
}

/// An attempt at least this long re-reads its endpoint after a success: another process may
/// have recorded a failure meanwhile.
const SLOW_ATTEMPT_MS: u64 = 250;

#[derive(Clone)]
pub struct WebhookEngine {
    pub deps: Arc<Deps>,
    pub transport: Arc<dyn Transport>,
    rate_locks: Arc<RateLocks>,
    /// Session counters as this process's commits left them: the local system's dispatches
    /// draw from them without a read ([`sequence::Guesses`]).
    guesses: Arc<sequence::Guesses>,
    /// Set once an in-process worker consumes due deliveries (the local system): an immediate
    /// wake-up is then a channel send instead of a queue message. The delivery's record, with
    /// its entry in the due index, is written in the same commit as everything else about it,
    /// so it is itself the durable wake-up (a transactional outbox): after a crash the
    /// start-up sweep finds it.
    local: Arc<std::sync::OnceLock<tokio::sync::mpsc::Sender<LocalWake>>>,
    /// Deliveries this process is attempting (the local system's claims).
    inflight: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Failures this process has recorded against any endpoint: a success whose attempt saw
    /// this move (or that took long enough for another process to record one) reads the
    /// endpoint again rather than trust the copy it was sent with.
    failures_recorded: Arc<std::sync::atomic::AtomicU64>,
}

impl WebhookEngine {
    pub fn new(deps: Arc<Deps>, transport: Arc<dyn Transport>) -> Self {
        WebhookEngine {
            deps,
            transport,
            rate_locks: Arc::default(),
            guesses: Arc::default(),
            local: Arc::default(),
            inflight: Arc::default(),
            failures_recorded: Arc::default(),
        }
    }

    /// Hands immediate wake-ups to an in-process worker from now on (see the `local` field);
    /// answers false if one was attached already.
    pub fn attach_local_worker(&self, tx: tokio::sync::mpsc::Sender<LocalWake>) -> bool {
        self.local.set(tx).is_ok()
    }

    /// Wakes a worker for a delivery due now: through the in-process channel when there is
    /// room, else through the queue.
    async fn wake_now(&self, company: &str, delivery: &str, hint: Option<WakeHint>) {
        if let Some(tx) = self.local.get() {
            let wake = LocalWake {
                company_id: company.to_string(),
                delivery_id: delivery.to_string(),
                hint: hint.map(Box::new),
            };
            if tx.try_send(wake).is_ok() {
                return;
            }
        }
        wake(&self.deps, company, delivery, Duration::ZERO).await;
    }

    fn now(&self) -> DateTime<Utc> {
        self.deps.store.now()
    }

    /// Stores one delivery per matching active endpoint and wakes a worker for each.
    /// With an idempotency key, a repeat within 24 h answers as the first did and sends
    /// nothing. The payload is sent as given (see [`WebhookEngine::dispatch_stamped`] for
    /// the platform's events).
    pub async fn dispatch(&self, d: Dispatch) -> Result<Dispatched> {
        if let Some(replay) = self.claim_key(&d).await? {
            return Ok(replay);
        }
        let result = self.fan_out(&d, None).await;
        self.settle_key(&d, result).await
    }

    /// Dispatches an event the platform sent (the internal dispatch route, platform events
    /// from the bus), as [`WebhookEngine::dispatch`] does, after [`sequence::plan`]: a
    /// `session.*` event gets its `sequence`, and the counter's compare-and-set commits in
    /// the same transaction as the event's deliveries (one commit; a lost race or a wrong
    /// guess writes nothing and draws again). With `check_schema`, the payload (with its
    /// `sequence`) must match its type's published schema; checked before anything is
    /// stored or claimed.
    pub async fn dispatch_stamped(
        &self,
        mut d: Dispatch,
        check_schema: bool,
    ) -> Result<Dispatched> {
        let stamp = sequence::plan(&d)?;
        if check_schema {
            // The value is drawn later; any drawn value is a non-negative integer, as 0 is.
            let placeholder = matches!(stamp, Stamp::Next { .. });
            if placeholder {
                d.payload.insert("sequence".into(), json!(0));
            }
            let checked = super::schemas::check_payload(&d.event_type, &d.payload);
            if placeholder {
                d.payload.remove("sequence");
            }
            checked?;
        }
        if let Some(replay) = self.claim_key(&d).await? {
            return Ok(replay);
        }
        let result = match &stamp {
            Stamp::Unsequenced => self.fan_out(&d, None).await,
            Stamp::Next { session } | Stamp::Given { session, .. } => {
                self.fan_out_sequenced(&mut d, &stamp, session).await
            }
        };
        self.settle_key(&d, result).await
    }

    /// Claims a dispatch's idempotency key, if it has one: `Some` is the answer to repeat
    /// (the key was used before), `None` means go on.
    async fn claim_key(&self, d: &Dispatch) -> Result<Option<Dispatched>> {
        let Some(key) = &d.idempotency_key else {
            return Ok(None);
        };
        match self
            .deps
            .store
            .claim_idempotent(&d.company_id, "dispatch", key, IDEMPOTENCY_LEASE)
            .await?
        {
            Claim::Fresh => Ok(None),
            Claim::Replay(answer) => serde_json::from_value(answer)
                .map(Some)
                .map_err(|e| Error::Internal(format!("stored dispatch answer: {e}"))),
            Claim::InFlight => Err(Error::Conflict {
                entity: "idempotency key",
                id: key.clone(),
            }),
        }
    }

    /// Records a claimed key's answer (or releases the claim when the dispatch failed).
    async fn settle_key(&self, d: &Dispatch, result: Result<Dispatched>) -> Result<Dispatched> {
        let Some(key) = &d.idempotency_key else {
            return result;
        };
        let store = &self.deps.store;
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
        result
    }

    /// Stores and wakes one delivery per target; `except` is never a target (an endpoint's
    /// own health events go to the company's other endpoints).
    async fn fan_out(&self, d: &Dispatch, except: Option<&str>) -> Result<Dispatched> {
        let endpoints = self.deps.store.all_endpoints(&d.company_id).await?;
        let made = self.make_deliveries(d, &endpoints, except)?;
        self.deps.store.create_deliveries(&made.deliveries).await?;
        Ok(self.announce(d, made).await)
    }

    /// [`WebhookEngine::fan_out`] for a session event: draws the session's `sequence` (read
    /// beside the endpoints, or guessed in the local system), stamps it, and stores the
    /// deliveries in one transaction with the counter's compare-and-set (and, for a guess,
    /// the mirror's check); a lost race or a wrong guess stores nothing and draws again
    /// from a read.
    async fn fan_out_sequenced(
        &self,
        d: &mut Dispatch,
        stamp: &Stamp,
        session: &str,
    ) -> Result<Dispatched> {
        let store = &self.deps.store;
        let company = d.company_id.clone();
        let guess = match stamp {
            Stamp::Next { .. } if self.local.get().is_some() => {
                self.guesses.guess(&company, session, &d.event_type)
            }
            _ => None,
        };
        let first = async {
            match guess {
                Some(state) => store
                    .draw_guessed_session_sequence(&company, session, state)
                    .map(Some),
                None => sequence::draw(store, &company, stamp).await,
            }
        };
        let (endpoints, mut draw) = futures::try_join!(store.all_endpoints(&company), first)?;
        // A wrong guess is no lost race: it is not counted, and the read after it comes at
        // once.
        let mut guessed = guess.is_some();
        for attempt in 0..sequence::ATTEMPTS + usize::from(guessed) {
            if attempt > 0 {
                if !guessed {
                    crate::retry::after_lost_race().await;
                }
                guessed = false;
                draw = sequence::draw(store, &company, stamp).await?;
            }
            let Some(taken) = draw.take() else {
                return Err(Error::Internal("a session event drew no sequence".into()));
            };
            d.payload.insert("sequence".into(), json!(taken.value));
            let made = self.make_deliveries(d, &endpoints, None)?;
            let committed = store
                .create_deliveries_with(&made.deliveries, taken.writes)
                .await?;
            if self.local.get().is_some() {
                self.guesses
                    .remember(&company, session, taken.after.filter(|_| committed));
            }
            if committed {
                return Ok(self.announce(d, made).await);
            }
        }
        Err(sequence::contended(session))
    }

    /// The event's body and one pending delivery of it per target among `endpoints` (active,
    /// subscribed, not `except`; only `d.only_endpoint` when set). Nothing is stored.
    fn make_deliveries<'e>(
        &self,
        d: &Dispatch,
        endpoints: &'e [WebhookEndpoint],
        except: Option<&str>,
    ) -> Result<Made<'e>> {
        let now = self.now();
        let event_id = ids::new_id("evt");
        // Serialised once, straight from borrowed parts (no copy of the payload, no
        // re-parse); keys in the order `json!` gave them (sorted).
        #[derive(Serialize)]
        struct Envelope<'a> {
            company_id: &'a str,
            created_at: DateTime<Utc>,
            data: &'a serde_json::Map<String, serde_json::Value>,
            id: &'a str,
            #[serde(rename = "type")]
            event_type: &'a str,
        }
        let body = serde_json::value::to_raw_value(&Envelope {
            company_id: &d.company_id,
            created_at: now,
            data: &d.payload,
            id: &event_id,
            event_type: &d.event_type,
        })
        .map_err(|e| Error::Internal(format!("event body: {e}")))?;
        let targets: Vec<&WebhookEndpoint> = endpoints
            .iter()
            .filter(|e| e.status == EndpointStatus::Active)
            .filter(|e| except != Some(e.id.as_str()))
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
                rate_slot: None,
                created_at: now,
                updated_at: now,
                version: 0,
            })
            .collect();
        Ok(Made {
            event_id,
            deliveries,
            targets,
        })
    }

    /// After the deliveries are stored: wakes a worker for each and answers the dispatch.
    async fn announce(&self, d: &Dispatch, made: Made<'_>) -> Dispatched {
        let Made {
            event_id,
            deliveries,
            targets,
        } = made;
        let local = self.local.get().is_some();
        for (delivery, endpoint) in deliveries.iter().zip(&targets) {
            let hint = local.then(|| WakeHint {
                // As stored: deliveries are written at version 1.
                delivery: Delivery {
                    version: 1,
                    ..delivery.clone()
                },
                endpoint: (*endpoint).clone(),
                at: Instant::now(),
            });
            self.wake_now(&delivery.company_id, &delivery.id, hint)
                .await;
        }
        tracing::info!(
            company = %d.company_id,
            event = %d.event_type,
            event_id = %event_id,
            deliveries = deliveries.len(),
            "event dispatched"
        );
        Dispatched {
            event_id,
            deliveries: deliveries
                .into_iter()
                .map(|x| DispatchedDelivery {
                    id: x.id,
                    endpoint_id: x.endpoint_id,
                })
                .collect(),
        }
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
        if self.local.get().is_some() {
            // This process is the local system's worker: its claims are held in memory.
            return self
                .attempt_local(LocalWake {
                    company_id: company.to_string(),
                    delivery_id: delivery_id.to_string(),
                    hint: None,
                })
                .await;
        }
        let store = &self.deps.store;
        let mut d = match store.get_delivery(company, delivery_id).await {
            Ok(d) => d,
            Err(Error::NotFound { .. }) => return Ok(AttemptOutcome::Skipped("no such delivery")),
            Err(e) => return Err(e),
        };
        if let Some(skip) = self.not_ready(&d) {
            return Ok(skip);
        }
        // Claim: a compare-and-set that moves the due time past the lease.
        let now = self.now();
        d.next_attempt_at = Some(now + chrono::Duration::from_std(LEASE).unwrap_or_default());
        match store.update_delivery(&mut d, None).await {
            Ok(()) => {}
            Err(Error::Conflict { .. }) => return Ok(AttemptOutcome::Skipped("claimed elsewhere")),
            Err(e) => return Err(e),
        }
        self.deliver(d, None, true).await
    }

    /// The local system's attempt: the claim is this process's in-flight set (the local
    /// system's deliveries are attempted by its one `serve` process only), so the attempt
    /// costs one store write, the record. A wake-up straight from a dispatch carries the
    /// delivery and endpoint it was made from; used while fresh, they save two reads.
    pub async fn attempt_local(&self, wake: LocalWake) -> Result<AttemptOutcome> {
        let Some(_claim) = InFlight::take(&self.inflight, &wake.delivery_id) else {
            return Ok(AttemptOutcome::Skipped("claimed elsewhere"));
        };
        let (d, endpoint) = match wake.hint {
            Some(hint) if hint.at.elapsed() < HINT_FRESH => (hint.delivery, Some(hint.endpoint)),
            _ => {
                match self
                    .deps
                    .store
                    .get_delivery(&wake.company_id, &wake.delivery_id)
                    .await
                {
                    Ok(d) => (d, None),
                    Err(Error::NotFound { .. }) => {
                        return Ok(AttemptOutcome::Skipped("no such delivery"))
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        if let Some(skip) = self.not_ready(&d) {
            return Ok(skip);
        }
        self.deliver(d, endpoint, false).await
    }

    /// Why a delivery is not to be attempted now, if it is not.
    fn not_ready(&self, d: &Delivery) -> Option<AttemptOutcome> {
        if d.status != DeliveryStatus::Pending {
            return Some(AttemptOutcome::Skipped("finished"));
        }
        let now = self.now();
        if d.next_attempt_at
            .is_some_and(|t| t > now + chrono::Duration::seconds(1))
        {
            return Some(AttemptOutcome::Skipped("not due"));
        }
        None
    }

    /// Sends a claimed delivery and records the attempt. `durable_claim`: the claim is a
    /// lease in the store (else this process's in-flight set).
    async fn deliver(
        &self,
        mut d: Delivery,
        endpoint: Option<WebhookEndpoint>,
        durable_claim: bool,
    ) -> Result<AttemptOutcome> {
        let store = &self.deps.store;
        let company = d.company_id.clone();
        let company = company.as_str();
        let endpoint = match endpoint {
            Some(e) => Some(e),
            None => store.find_endpoint(company, &d.endpoint_id).await?,
        }
        .filter(|e| e.status == EndpointStatus::Active);
        let Some(endpoint) = endpoint else {
            d.status = DeliveryStatus::Failed;
            d.next_attempt_at = None;
            d.last_error_class = Some("endpoint_disabled".into());
            store.update_delivery(&mut d, None).await?;
            crate::metrics::count("webhook_deliveries", &[("outcome", "failed")], 1);
            return Ok(AttemptOutcome::Failed);
        };
        if let Some(per_second) = endpoint.rate_limit {
            if let Some(later) = self.take_rate_slot(&mut d, per_second).await? {
                return Ok(AttemptOutcome::Deferred(later));
            }
        }
        let now = self.now();

        let request = build(&endpoint, &d, now);
        let failures_before = self
            .failures_recorded
            .load(std::sync::atomic::Ordering::SeqCst);
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
        match store.update_delivery(&mut d, Some(&attempt)).await {
            Ok(()) => {}
            Err(Error::Conflict { .. }) if !durable_claim => {
                // Changed meanwhile without a lease to stop it (the sweep re-driving a
                // delivery that waited): this attempt happened, so record it on the fresh
                // record unless that one moved on already.
                let fresh = store.get_delivery(company, &d.id).await?;
                if fresh.status != DeliveryStatus::Pending || fresh.attempt_count + 1 != number {
                    return Ok(AttemptOutcome::Skipped("recorded elsewhere"));
                }
                d.version = fresh.version;
                store.update_delivery(&mut d, Some(&attempt)).await?;
            }
            Err(e) => return Err(e),
        }
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
                // The endpoint as read for this attempt had nothing to reset, and no failure
                // can have been recorded meanwhile (none here, and the attempt was quick):
                // skip the read.
                let clean = endpoint.failed_deliveries == 0
                    && endpoint.failing_since.is_none()
                    && endpoint.announced_failing_since.is_none();
                let quiet = self
                    .failures_recorded
                    .load(std::sync::atomic::Ordering::SeqCst)
                    == failures_before
                    && duration_ms < SLOW_ATTEMPT_MS;
                if !(clean && quiet) {
                    self.record_health(company, &d, None).await?
                }
            }
            (AttemptOutcome::Failed, _) => {
                let error = last_error(&result);
                self.failures_recorded
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                self.record_health(company, &d, Some(error)).await?
            }
            _ => {}
        }
        Ok(outcome)
    }

    /// Holds `d` to its endpoint's rate limit. Answers `None` when it may be sent now (after
    /// waiting in place, at most [`MAX_INLINE_RATE_WAIT`]), or the later slot it was given:
    /// then the delivery is stored due at that slot (which it keeps: the attempt made then
    /// reserves no other) and a delayed wake-up is sent.
    async fn take_rate_slot(
        &self,
        d: &mut Delivery,
        per_second: u32,
    ) -> Result<Option<DateTime<Utc>>> {
        let store = &self.deps.store;
        // A slot missed by more than one interval (the process was down, the queue backed
        // up) is given up: used late, every such delivery would go out at once.
        let interval = chrono::Duration::microseconds(1_000_000 / i64::from(per_second.max(1)));
        let fresh = d.rate_slot.filter(|slot| self.now() - *slot <= interval);
        let slot = match fresh {
            Some(slot) => slot,
            None => {
                let lock = {
                    let mut locks = self
                        .rate_locks
                        .lock()
                        .map_err(|_| Error::Internal("rate lock poisoned".into()))?;
                    locks.entry(d.endpoint_id.clone()).or_default().clone()
                };
                let _held = lock.lock().await;
                store
                    .reserve_rate_slot(&d.company_id, &d.endpoint_id, per_second)
                    .await?
            }
        };
        let wait = (slot - self.now()).to_std().unwrap_or(Duration::ZERO);
        if wait <= MAX_INLINE_RATE_WAIT {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            if d.rate_slot.is_some() {
                // The slot is used now; a retry of this delivery reserves a new one. Kept
                // in memory only: the attempt's record write stores it.
                d.rate_slot = None;
            }
            return Ok(None);
        }
        d.rate_slot = Some(slot);
        d.next_attempt_at = Some(slot);
        store.update_delivery(d, None).await?;
        wake(&self.deps, &d.company_id, &d.id, wait).await;
        Ok(Some(slot))
    }

    /// Tracks an endpoint's run of failed deliveries (`failure` is the last error of a
    /// delivery that failed for good; `None` for a success). Disables the endpoint when every
    /// delivery for [`DISABLE_AFTER`] failed and at least [`DISABLE_MIN_FAILURES`] did; tells
    /// the company's other endpoints `webhook.endpoint.failing` at the first failure of a
    /// run (at most once per [`FAILING_EVENT_INTERVAL`]), and `webhook.endpoint.recovered` at
    /// the first success after that.
    async fn record_health(
        &self,
        company: &str,
        d: &Delivery,
        failure: Option<Option<String>>,
    ) -> Result<()> {
        let store = &self.deps.store;
        let endpoint_id = &d.endpoint_id;
        for _ in 0..5 {
            let Some(mut e) = store.find_endpoint(company, endpoint_id).await? else {
                return Ok(());
            };
            let now = self.now();
            let mut event = None;
            match &failure {
                None => {
                    if e.failed_deliveries == 0
                        && e.failing_since.is_none()
                        && e.announced_failing_since.is_none()
                    {
                        return Ok(());
                    }
                    e.failed_deliveries = 0;
                    e.failing_since = None;
                    if let Some(since) = e.announced_failing_since.take() {
                        event = Some((
                            "webhook.endpoint.recovered",
                            json!({
                                "endpoint_id": e.id,
                                "url": e.url,
                                "delivery_id": d.id,
                                "recovered_at": d.updated_at,
                                "failing_since": since,
                            }),
                        ));
                    }
                }
                Some(last_error) => {
                    e.failed_deliveries += 1;
                    // A run begins when its first delivery failed.
                    let since = *e.failing_since.get_or_insert(d.updated_at);
                    if e.status == EndpointStatus::Active
                        && e.failed_deliveries >= DISABLE_MIN_FAILURES
                        && now - since >= DISABLE_AFTER
                    {
                        return self
                            .disable_endpoint(
                                company,
                                endpoint_id,
                                "every delivery failed for 5 days",
                            )
                            .await;
                    }
                    let announce = e.announced_failing_since.is_none()
                        && e.failing_event_at
                            .is_none_or(|t| now - t >= FAILING_EVENT_INTERVAL);
                    if announce {
                        e.failing_event_at = Some(now);
                        e.announced_failing_since = Some(since);
                        event = Some((
                            "webhook.endpoint.failing",
                            json!({
                                "endpoint_id": e.id,
                                "url": e.url,
                                "delivery_id": d.id,
                                "event_type": d.event_type,
                                "failed_at": d.updated_at,
                                "last_error": last_error,
                            }),
                        ));
                    }
                }
            }
            match store.update_endpoint(&mut e).await {
                Ok(()) => {
                    if let Some((event_type, payload)) = event {
                        tracing::info!(endpoint = %endpoint_id, event = event_type, "endpoint health event");
                        self.tell_others(company, &e.id, event_type, payload)
                            .await?;
                    }
                    return Ok(());
                }
                Err(Error::Conflict { .. }) => continue,
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Dispatches an event about `endpoint_id` to the company's other endpoints.
    async fn tell_others(
        &self,
        company: &str,
        endpoint_id: &str,
        event_type: &str,
        payload: serde_json::Value,
    ) -> Result<()> {
        let payload = match payload {
            serde_json::Value::Object(map) => map,
            _ => return Err(Error::Internal("event payload is not an object".into())),
        };
        self.fan_out(
            &Dispatch {
                company_id: company.to_string(),
                event_type: event_type.to_string(),
                payload,
                idempotency_key: None,
                only_endpoint: None,
            },
            Some(endpoint_id),
        )
        .await?;
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
                    self.tell_others(
                        company,
                        &e.id,
                        "webhook.endpoint.disabled",
                        json!({"endpoint_id": e.id, "url": e.url, "reason": reason}),
                    )
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

    /// Re-sends, as new deliveries, every delivery to `endpoint_id` that ended `failed` in
    /// `[since, until)` (newest failure first, at most [`RECOVER_LIMIT`] per call). The
    /// endpoint must be active. Reads the endpoint's failed-delivery index a page at a time.
    pub async fn recover(
        &self,
        company: &str,
        endpoint_id: &str,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Recovered> {
        let store = &self.deps.store;
        let since = to_ms(since);
        let until = to_ms(until.unwrap_or_else(|| self.now() + chrono::Duration::milliseconds(1)));
        if since >= until {
            return Err(Error::validation("since", "must be before `until`"));
        }
        if until - since > RECOVER_WINDOW {
            return Err(Error::validation(
                "since",
                format!(
                    "the window is at most {} days (deliveries are kept that long)",
                    RECOVER_WINDOW.num_days()
                ),
            ));
        }
        let endpoint = store.get_endpoint(company, endpoint_id).await?;
        if endpoint.status != EndpointStatus::Active {
            return Err(Error::validation(
                "endpoint",
                "the endpoint is disabled; enable it before recovering",
            ));
        }
        let mut out = Recovered {
            count: 0,
            since,
            until,
            truncated: false,
            next_until: None,
        };
        let mut cursor = None;
        let mut last_ms: Option<DateTime<Utc>> = None;
        // One copy per event per call (an event that failed twice, say as an original and a
        // manual redelivery, is sent once).
        let mut events_sent = std::collections::HashSet::new();
        'pages: loop {
            let (failed, next) = store
                .failed_deliveries(company, endpoint_id, since, until, 100, cursor)
                .await?;
            // A failed delivery is recovered once, ever: its copy's id is derived from its
            // own, and one that exists already (an earlier recover, a retried call) is not
            // made again. A copy that failed in turn is a failed delivery of its own, so a
            // later recover sends the event once more, never twice.
            let candidates: Vec<String> = failed.iter().map(|d| recovery_id(&d.id)).collect();
            let made = store.existing_deliveries(company, &candidates).await?;
            let failed: Vec<Delivery> = failed
                .into_iter()
                .filter(|d| !made.contains(&recovery_id(&d.id)))
                .filter(|d| events_sent.insert(d.event_id.clone()))
                .collect();
            let now = self.now();
            let mut copies = Vec::with_capacity(failed.len());
            for original in failed {
                let ms = to_ms(original.updated_at);
                // Past the limit, finish the millisecond in hand, so resuming with
                // `until` = that millisecond neither skips nor repeats a delivery.
                if out.count + copies.len() >= RECOVER_LIMIT && last_ms != Some(ms) {
                    out.truncated = true;
                    out.next_until = last_ms;
                    out.count += self.send_copies(company, &copies).await?;
                    break 'pages;
                }
                last_ms = Some(ms);
                copies.push(Delivery {
                    id: recovery_id(&original.id),
                    status: DeliveryStatus::Pending,
                    attempt_count: 0,
                    last_status_code: None,
                    last_error_class: None,
                    next_attempt_at: Some(now),
                    redelivery_of: Some(original.id.clone()),
                    rate_slot: None,
                    created_at: now,
                    updated_at: now,
                    version: 0,
                    ..original
                });
            }
            out.count += self.send_copies(company, &copies).await?;
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        tracing::info!(
            company = %company,
            endpoint = %endpoint_id,
            count = out.count,
            truncated = out.truncated,
            "failed deliveries recovered"
        );
        Ok(out)
    }

    /// Stores the recovery copies that do not exist yet and wakes a worker for each (16
    /// wake-ups at a time); answers how many this call made. (`recover` skips the copies it
    /// read as existing; another recover of the same window at once may make some first.)
    async fn send_copies(&self, company: &str, copies: &[Delivery]) -> Result<usize> {
        use futures::stream::{self, StreamExt};
        if copies.is_empty() {
            return Ok(0);
        }
        let made = self.deps.store.create_new_deliveries(copies).await?;
        stream::iter(&made)
            .for_each_concurrent(16, |c| self.wake_now(company, &c.id, None))
            .await;
        Ok(made.len())
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
            rate_slot: None,
            created_at: now,
            updated_at: now,
            version: 0,
            ..original
        };
        store.create_deliveries(std::slice::from_ref(&copy)).await?;
        self.wake_now(company, &copy.id, None).await;
        Ok(copy)
    }
}

/// What a delivery's failure is told as: the HTTP status, or the error class and message.
fn last_error(result: &super::outcome::AttemptResult) -> Option<String> {
    let text = match (result.status_code, result.error_class) {
        (Some(code), _) => format!("HTTP {code}"),
        (None, Some(class)) => match &result.response_body {
            Some(message) if !message.is_empty() => format!("{class}: {message}"),
            _ => class.to_string(),
        },
        (None, None) => return None,
    };
    Some(text.chars().take(500).collect())
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

/// The id of the copy a recover makes of failed delivery `original`: derived from it, so a
/// failed delivery is recovered once however often a window is recovered.
fn recovery_id(original: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("recover:{original}").as_bytes());
    format!("dlv_r{}", &hex::encode(digest)[..25])
}
