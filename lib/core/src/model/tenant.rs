//! Tenants (companies) and the API keys that act for them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A stored API key. The key itself is never stored: only its SHA-256, which is also how it
/// is found (the store key is the hash), so a database dump yields no usable key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub company_id: String,
    /// Lowercase hex SHA-256 of the full key string.
    pub key_hash: String,
    /// Grants the internal routes (platform-to-integrations calls).
    pub internal: bool,
    #[serde(default)]
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Who is calling: resolved from a key by the gateway, trusted by every other function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub company_id: String,
    pub key_id: String,
    pub internal: bool,
}

impl Principal {
    pub fn require_internal(&self) -> crate::Result<()> {
        if self.internal {
            Ok(())
        } else {
            Err(crate::Error::Forbidden { scope: "internal" })
        }
    }
}
