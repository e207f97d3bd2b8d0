//! The webhooks function: tenants' endpoints and delivery logs, internal dispatch, and the
//! worker that makes delivery attempts. The HTTP routes and the queue handling are shared by
//! the Lambdas (`webhooks`, `webhooks-worker`) and the local system.

pub mod api;
pub mod openapi;
pub mod transport;
pub mod worker;

pub use api::router;
pub use transport::HttpTransport;
