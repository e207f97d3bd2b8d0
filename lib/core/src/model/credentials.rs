//! A company's credentials for a provider: the non-secret identity in clear (shown back to
//! the tenant), the secret part sealed (see [`crate::sealing`]) and never returned.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Provider;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    pub company_id: String,
    pub provider: Provider,
    /// Exchange: `tenant_id`, `client_id`. Google: `client_email`, `token_uri`.
    pub identity: serde_json::Map<String, serde_json::Value>,
    /// The secret fields as a JSON object, sealed with the record's identity as context.
    pub sealed: String,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub version: u64,
}

impl CredentialRecord {
    /// The sealing context: binds a sealed secret to its company and provider.
    pub fn context(company: &str, provider: Provider) -> String {
        format!("{company}/{}", provider.as_str())
    }
}
