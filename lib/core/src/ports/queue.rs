//! The queue port, and the envelope that lets any queue carry waits longer than SQS allows.
//!
//! Messages are wake-ups, not truth (DESIGN-NOTES 1.1): a lost message delays work that a
//! sweep of the records finds again; a duplicated one meets an idempotent handler.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Clock;

/// SQS's largest per-message delay. Longer waits are chained (see [`Envelope`]).
pub const MAX_DELAY: Duration = Duration::from_secs(900);

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum QueueError {
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    #[error("message rejected: {0}")]
    Rejected(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub id: String,
    /// Handle for `ack` / `release`; changes on every receive.
    pub receipt: String,
    pub body: String,
    /// How many times this message has been received, this time included.
    pub receive_count: u32,
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Sends `body`, invisible for `delay` (at most [`MAX_DELAY`]).
    async fn send(&self, body: &str, delay: Duration) -> Result<(), QueueError>;

    /// Up to `max` visible messages, waiting up to `wait` for the first. Received messages
    /// are hidden until acked or released, or until the visibility timeout passes.
    async fn receive(&self, max: usize, wait: Duration)
        -> Result<Vec<ReceivedMessage>, QueueError>;

    /// The message is done: delete it.
    async fn ack(&self, receipt: &str) -> Result<(), QueueError>;

    /// The message failed this time: make it visible again after `delay`. After the queue's
    /// maximum receives it goes to the dead-letter queue instead.
    async fn release(&self, receipt: &str, delay: Duration) -> Result<(), QueueError>;
}

/// What every message body is: a kind (which handler), a payload, and the earliest time it
/// may be handled. `not_before` is how waits beyond [`MAX_DELAY`] are chained: the consumer
/// re-sends an early message with the remaining wait instead of handling it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub kind: String,
    pub payload: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
}

impl Envelope {
    pub fn new(kind: impl Into<String>, payload: serde_json::Value) -> Self {
        Envelope {
            kind: kind.into(),
            payload,
            not_before: None,
        }
    }
}

/// Sends `envelope` to be handled no earlier than `delay` from now, whatever the length.
pub async fn send_after(
    queue: &dyn Queue,
    clock: &dyn Clock,
    mut envelope: Envelope,
    delay: Duration,
) -> Result<(), QueueError> {
    if delay > MAX_DELAY {
        let wait = chrono::Duration::from_std(delay)
            .map_err(|_| QueueError::Rejected(format!("delay {delay:?} out of range")))?;
        envelope.not_before = Some(clock.now() + wait);
    }
    let body = serde_json::to_string(&envelope)
        .map_err(|e| QueueError::Rejected(format!("unserialisable envelope: {e}")))?;
    queue.send(&body, delay.min(MAX_DELAY)).await
}

/// What a consumer should do with a received body.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrival {
    /// Handle it now.
    Due(Envelope),
    /// It is early: it was re-sent with the remaining wait; ack this copy.
    Rechained,
    /// Not an envelope at all: a poison message. Never retried into success.
    Malformed(String),
}

pub async fn on_arrival(
    queue: &dyn Queue,
    clock: &dyn Clock,
    body: &str,
) -> Result<Arrival, QueueError> {
    let envelope: Envelope = match serde_json::from_str(body) {
        Ok(e) => e,
        Err(e) => return Ok(Arrival::Malformed(e.to_string())),
    };
    let now = clock.now();
    match envelope.not_before {
        Some(t) if t > now => {
            let remaining = (t - now).to_std().unwrap_or(Duration::ZERO);
            send_after(queue, clock, envelope, remaining).await?;
            Ok(Arrival::Rechained)
        }
        _ => Ok(Arrival::Due(envelope)),
    }
}

/// Handles a batch of `(message id, body)` pairs, up to `concurrency` at once, and returns
/// the ids of the messages whose handler failed (each logged with its reason): what an SQS
/// Lambda reports as partial batch failures, so one poison message never fails its batch.
pub async fn handle_batch<F, Fut>(
    messages: Vec<(String, String)>,
    concurrency: usize,
    handler: F,
) -> Vec<String>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = crate::Result<()>>,
{
    handle_batch_until(messages, concurrency, None, handler).await
}

/// [`handle_batch`], over by `cut_at` when one is given: a message not finished by then
/// (or not started: the batch runs `concurrency` at a time) is stopped where it is, as a
/// crash there would stop it (every handler's steps are idempotent and resume from what
/// was recorded), and returned with the failures, so the queue offers it again. The
/// batch's answer never comes after `cut_at`. On Lambda that is a little before the
/// invocation's deadline: past the deadline Lambda ends the invocation, its answer is lost,
/// and every message of the batch, the finished ones too, is offered again.
pub async fn handle_batch_until<F, Fut>(
    messages: Vec<(String, String)>,
    concurrency: usize,
    cut_at: Option<std::time::Instant>,
    handler: F,
) -> Vec<String>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = crate::Result<()>>,
{
    use futures::stream::{self, StreamExt};
    let handler = &handler;
    stream::iter(messages)
        .map(|(id, body)| async move {
            let handled = handler(body);
            let result = match cut_at {
                Some(at) => {
                    match tokio::time::timeout_at(tokio::time::Instant::from_std(at), handled)
                        .await
                    {
                        Ok(result) => result,
                        Err(_) => {
                            tracing::warn!(message_id = %id, "message not finished before the invocation's deadline; it will be offered again");
                            return Some(id);
                        }
                    }
                }
                None => handled.await,
            };
            match result {
                Ok(()) => None,
                Err(e) => {
                    tracing::warn!(message_id = %id, error = %e, "message failed; it will be retried");
                    Some(id)
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|failed| async move { failed })
        .collect()
        .await
}
