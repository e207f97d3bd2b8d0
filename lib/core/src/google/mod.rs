//! The Google Calendar integration: the port (reads, push channels and event writes),
//! service-account credentials and JWTs, delta sync into availability overrides, push
//! channels and push notifications.

pub mod api;
pub mod channels;
pub mod credentials;
pub mod inbound;
pub mod jwt;
pub mod outbound;
pub mod push;
pub mod sync;

pub use api::{event_id_for, GoogleApi, GoogleError, GoogleEventWrite, ServiceAccount};

/// The origin recorded for changes caused by Google.
pub const ORIGIN_GOOGLE_SYNC: &str = "google-sync";
