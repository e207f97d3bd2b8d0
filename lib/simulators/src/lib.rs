//! Stateful provider simulators, used by the tests and by `voyage serve --simulate-providers`.
//!
//! Each simulator serves a subset of the provider's real routes with the provider's real
//! shapes, keeps state in memory, calls back (validation handshakes, change notifications)
//! like the provider does, and takes fault injections through documented `/_control/` routes
//! for what the provider itself has no route for. They know nothing of Voyage's domain: the
//! system under test talks to them only through the provider protocol.

pub mod google;
pub mod graph;
mod util;

pub use google::{GoogleEventView, GoogleRequest, GoogleSimulator};
pub use graph::{CapturedNotification, GraphSimulator, SimEventView};
pub use util::Fault;
