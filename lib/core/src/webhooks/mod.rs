//! Outbound webhooks: the pure rules (what may be registered, what an endpoint receives,
//! how an attempt's outcome is judged, which addresses may be called) and the engine that
//! dispatches events and runs delivery attempts through the ports.

pub mod address;
pub mod catalogue;
pub mod engine;
pub mod options;
pub mod outcome;
pub mod request;
pub mod schemas;
pub mod sequence;

pub use catalogue::{matches_any, validate_event_type, validate_pattern, EVENT_TYPES};
pub use engine::{
    redrive_due, AttemptOutcome, Dispatch, Dispatched, Recovered, WebhookEngine, RECOVER_LIMIT,
    RECOVER_WINDOW,
};
pub use outcome::{AttemptResult, Verdict};
pub use request::{OutgoingRequest, Transport, TransportError, TransportResponse};
