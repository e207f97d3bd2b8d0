//! The Voyage integrations domain and its ports.
//!
//! Nothing in this crate knows about AWS, HTTP frameworks or SQLite. It holds:
//! - [`model`]: the records the system keeps (connections, cursors, mappings, sessions, ...);
//! - [`ports`]: the capabilities the domain needs from the outside world: a [`ports::Table`]
//!   (the one storage primitive every store adapter implements), a [`ports::Queue`], an
//!   [`ports::EventBus`] and a [`ports::Clock`];
//! - [`store`]: typed stores built once over any `Table`, so every adapter shows the same
//!   behaviour and the same errors by construction;
//! - [`auth`], [`signing`], [`retry`], [`config`], [`jobs`]: pure logic the functions share;
//! - [`metrics`]: in-process counters and histograms, written as CloudWatch EMF log lines on
//!   Lambda and as Prometheus text locally.
//!
//! Adapters live in other crates (`voyage-store-sqlite`, `voyage-aws`) and depend on this
//! one, never the other way round.

pub mod auth;
pub mod availability;
pub mod booking;
pub mod calendar;
pub mod config;
pub mod connections;
pub mod deps;
pub mod error;
pub mod exchange;
pub mod google;
pub mod ids;
pub mod jobs;
pub mod metrics;
pub mod model;
pub mod ports;
pub mod reconcile;
pub mod retry;
pub mod sealing;
pub mod signing;
pub mod store;
pub mod throttle;
pub mod validate;
pub mod webhooks;

pub use error::{Error, Result};
