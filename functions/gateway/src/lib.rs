//! The gateway: who may call, and the tenant's own administration.
//!
//! - [`authorizer`]: the API Gateway HTTP API Lambda authorizer (REQUEST type, simple
//!   responses) that resolves `Authorization: Bearer <key>` to its company for every other
//!   function.
//! - [`api`]: the tenant admin routes: `/v1/me`, `/v1/keys`, `/v1/connections`.
//! - [`openapi`]: the operations of these routes, for `GET /openapi.json`.
//! - [`settings`]: the company's settings (`/v1/settings/availability`).
//! - [`public`]: `GET /health` and `GET /openapi.json` on AWS (no key).

pub mod api;
pub mod authorizer;
pub mod openapi;
pub mod public;
pub mod settings;
