//! Tenant webhook endpoints and the deliveries made to them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointStatus {
    Active,
    Disabled,
}

/// A signing secret; after a rotation the old one keeps signing until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningSecret {
    /// `whsec_<base64>`, exactly as the tenant was shown it.
    pub secret: String,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    pub id: String,
    pub company_id: String,
    pub url: String,
    pub events: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub status: EndpointStatus,
    /// Newest first.
    pub secrets: Vec<SigningSecret>,
    /// Per-endpoint retry schedule in seconds; the deployment's when absent.
    #[serde(default)]
    pub retry_delays_secs: Option<Vec<u64>>,
    #[serde(default)]
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub status_code: Option<u16>,
    pub duration_ms: u64,
    /// `timeout`, `connect`, `http_status`, `ssrf_blocked`, ... when it failed.
    #[serde(default)]
    pub error_class: Option<String>,
    /// Truncated to 64 KiB.
    #[serde(default)]
    pub response_body: Option<String>,
    #[serde(default)]
    pub next_retry_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: String,
    pub company_id: String,
    pub endpoint_id: String,
    pub event_id: String,
    pub event_type: String,
    /// The exact body that is signed and sent, identical on every retry.
    pub body: String,
    pub status: DeliveryStatus,
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    #[serde(default)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub version: u64,
}
