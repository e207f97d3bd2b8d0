//! The transport port and the exact request a delivery attempt sends.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::model::{Delivery, WebhookEndpoint};
use crate::signing;

/// Attempt timeout (the platform's contract).
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Most response body kept per attempt.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;

pub fn user_agent() -> String {
    format!("Voyage-Webhooks/{}", env!("CARGO_PKG_VERSION"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportResponse {
    pub status: u16,
    /// At most [`MAX_RESPONSE_BODY`] bytes, cut at a character boundary.
    pub body: String,
    /// `Retry-After`, when the receiver sent one (seconds or an HTTP date).
    pub retry_after: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("timed out")]
    Timeout,
    #[error("could not connect: {0}")]
    Connect(String),
    /// The address is internal and private targets are not allowed (SSRF protection).
    #[error("refused: {0}")]
    Blocked(String),
    #[error("{0}")]
    Other(String),
}

impl TransportError {
    pub fn class(&self) -> &'static str {
        match self {
            TransportError::Timeout => "timeout",
            TransportError::Connect(_) => "connect",
            TransportError::Blocked(_) => "ssrf_blocked",
            TransportError::Other(_) => "transport",
        }
    }
}

/// Sends one request. The adapter refuses internal addresses after DNS resolution, follows
/// no redirects and honours `timeout`.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    async fn send(&self, request: OutgoingRequest) -> Result<TransportResponse, TransportError>;
}

/// The request for one attempt: body as stored, both signature conventions with every
/// secret that signs at `now` (newest first; two during a rotation's overlap).
pub fn build(
    endpoint: &WebhookEndpoint,
    delivery: &Delivery,
    now: DateTime<Utc>,
) -> OutgoingRequest {
    let body = delivery.body.get().to_string();
    let timestamp = now.timestamp();
    let secrets = endpoint.signing_secrets(now);
    let github: Vec<String> = secrets
        .iter()
        .map(|s| signing::github_signature(s, body.as_bytes()))
        .collect();
    let standard: Vec<String> = secrets
        .iter()
        .filter_map(|s| {
            signing::standard_signature(s, &delivery.id, timestamp, body.as_bytes()).ok()
        })
        .collect();
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("user-agent".to_string(), user_agent()),
        ("x-webhook-event".to_string(), delivery.event_type.clone()),
        ("x-webhook-delivery".to_string(), delivery.id.clone()),
        ("webhook-id".to_string(), delivery.id.clone()),
        ("webhook-timestamp".to_string(), timestamp.to_string()),
    ];
    if !github.is_empty() {
        headers.push(("x-webhook-signature-256".to_string(), github.join(", ")));
        headers.push(("webhook-signature".to_string(), standard.join(" ")));
    }
    // The tenant's static headers; reserved names were refused when they were set, and are
    // skipped here too, so a record written otherwise can never replace a signature.
    for (name, value) in &endpoint.headers {
        if !super::options::is_reserved(name) {
            headers.push((name.clone(), value.clone()));
        }
    }
    OutgoingRequest {
        url: endpoint.url.clone(),
        headers,
        body,
        timeout: TIMEOUT,
    }
}
