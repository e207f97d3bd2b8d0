//! The Exchange (Microsoft Graph) integration: the Graph port, tenants' app credentials,
//! the outbound path (sessions become Graph events) and subscriptions.

pub mod credentials;
pub mod graph;
pub mod inbound;
pub mod notifications;
pub mod outbound;
pub mod resource;
pub mod subscriptions;
pub mod zones;

pub use graph::{GraphApi, GraphCredentials, GraphError};

use crate::Error;

/// Graph failures as answers: what the tenant must fix (credentials), what passes (throttling,
/// outages), and what Graph refused.
pub fn provider_error(e: &GraphError) -> Error {
    let (status, code) = match e {
        GraphError::Auth(_) => (502, "exchange_auth_failed"),
        GraphError::Throttled { .. } => (503, "exchange_throttled"),
        GraphError::Unavailable(_) => (503, "exchange_unavailable"),
        _ => (502, "exchange_rejected"),
    };
    Error::Provider {
        status,
        code,
        message: e.to_string(),
    }
}
