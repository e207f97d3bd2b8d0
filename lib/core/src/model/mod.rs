//! The records the integrations layer keeps. Every record belongs to one company and carries
//! its id, so that every store key can start with it (tenant isolation at the key).

pub mod availability;
pub mod connection;
pub mod credentials;
pub mod cursor;
pub mod mapping;
pub mod pending;
pub mod session;
pub mod tenant;
pub mod webhook;

pub use availability::AvailabilityOverride;
pub use connection::{Connection, ConnectionStatus, Provider, PushChannel};
pub use credentials::CredentialRecord;
pub use cursor::{CursorToken, DeltaCursor, RoundProgress};
pub use mapping::EventMapping;
pub use pending::{PendingChange, PendingKind};
pub use session::{HistoryEntry, OutboxEvent, RetiredEvent, Session, SessionClient, SessionStatus};
pub use tenant::{ApiKey, Principal};
pub use webhook::{
    Attempt, Delivery, DeliveryStatus, EndpointStatus, SigningSecret, WebhookEndpoint,
};
