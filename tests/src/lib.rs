//! Test harness shared by the cross-crate suites: adapter fixtures and the AWS emulator.
//!
//! The DynamoDB, SQS and EventBridge adapters are tested through the real AWS SDK against
//! moto server. `scripts/test` (the README's test command) starts one on a free loopback
//! port and exports `AWS_ENDPOINT_URL`; without it these tests fail with a message saying
//! so, rather than pass by skipping.

pub mod app;
pub mod calendars;
pub mod contract;
pub mod counting;
pub mod dates;
pub mod fixtures;
pub mod google;
pub mod graph;
pub mod hooked;
pub mod lagging;
pub mod lambda;
pub mod quirks;
pub mod races;
pub mod receiver;
pub mod simulation;
