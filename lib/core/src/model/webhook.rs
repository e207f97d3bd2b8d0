//! Tenant webhook endpoints and the deliveries made to them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

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
    /// When the current run of failed deliveries began (none since the last success).
    #[serde(default)]
    pub failing_since: Option<DateTime<Utc>>,
    /// Deliveries that failed for good since the last success.
    #[serde(default)]
    pub failed_deliveries: u32,
    /// Static headers sent with every delivery (lower-case names; never a reserved one).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// At most this many delivery attempts per second to this endpoint; excess waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// When the last `webhook.endpoint.failing` event about this endpoint was sent (at most
    /// one a day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_event_at: Option<DateTime<Utc>>,
    /// Set while a `webhook.endpoint.failing` event awaits its `webhook.endpoint.recovered`:
    /// the start of the failing run it announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced_failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub version: u64,
}

impl WebhookEndpoint {
    /// The secrets that sign at `now`: the current one and any still in its overlap.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        self.secrets
            .iter()
            .filter(|s| s.expires_at.is_none_or(|t| t > now))
            .map(|s| s.secret.as_str())
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
}

impl DeliveryStatus {
    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "succeeded" => Some(DeliveryStatus::Succeeded),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// One try at delivering, stored as its own record beside the delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub delivery_id: String,
    /// 1 for the first attempt.
    pub number: u32,
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub status_code: Option<u16>,
    pub duration_ms: u64,
    /// `timeout`, `connect`, `http_status`, `redirect`, `ssrf_blocked`, ... when it failed.
    #[serde(default)]
    pub error_class: Option<String>,
    /// Truncated to 64 KiB.
    #[serde(default)]
    pub response_body: Option<String>,
    #[serde(default)]
    pub next_retry_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    /// Also the `X-Webhook-Delivery` and `webhook-id` headers: the same on every retry.
    pub id: String,
    pub company_id: String,
    pub endpoint_id: String,
    pub event_id: String,
    pub event_type: String,
    /// The exact JSON that is signed and sent, identical on every retry. Stored raw, so a
    /// large payload is not inflated by string escaping.
    pub body: Box<RawValue>,
    pub status: DeliveryStatus,
    #[serde(default)]
    pub attempt_count: u32,
    #[serde(default)]
    pub last_status_code: Option<u16>,
    #[serde(default)]
    pub last_error_class: Option<String>,
    /// When the next attempt is due (pending only). While an attempt runs this is its lease.
    #[serde(default)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The delivery this one re-sends, for a redelivery.
    #[serde(default)]
    pub redelivery_of: Option<String>,
    /// A send time already reserved under the endpoint's rate limit: the attempt made at
    /// this time uses it instead of reserving another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_slot: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub version: u64,
}
