//! The Exchange (Microsoft Graph) integration, module for module like Google's
//! ([`crate::calendar`]): the API port (`api`), push intake (`push`: Graph's change
//! notifications), the sync round (`sync`: delta rounds and their reconciliation), channel
//! renewal (`channels`: Graph subscriptions), the outbound writer (`outbound`), tenants' app
//! credentials, and the mailbox time zones (`zones`).

pub mod api;
pub mod channels;
pub mod credentials;
pub mod outbound;
pub mod push;
pub mod resource;
pub mod sync;
pub mod zones;

pub use api::{GraphApi, GraphCredentials, GraphError};

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
