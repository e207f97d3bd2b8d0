//! The exchange-outbound function: sessions become events in staff members' calendars.
//!
//! - `POST /v1/sessions/changes` (internal key): one change, every calendar connection of the
//!   staff member (Exchange and Google), one outcome per connection
//!   ([`voyage_core::calendar::changes::apply`]).
//! - `POST /v1/exchange/outbound` (internal key): the same change, Exchange only
//!   ([`voyage_core::exchange::outbound::apply`]).
//! - The outbound queue, which the platform fills through EventBridge (`session.changed`,
//!   `detail` = the body of either route) or directly (the body itself): every calendar.

pub mod openapi;
pub mod worker;

use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use voyage_core::calendar::changes::{self, ChangesOutcome};
use voyage_core::deps::Deps;
use voyage_core::exchange::outbound::{self, Outcome, SessionChangeInput};
use voyage_http::{ApiJson, ApiResult, Internal};

pub fn router(deps: Arc<Deps>) -> Router {
    Router::new()
        .route("/v1/exchange/outbound", post(write_session))
        .route("/v1/sessions/changes", post(write_changes))
        .with_state(deps)
}

/// Validates the whole payload first (a 422 names the field and nothing is stored), then
/// stores the session and writes it to each of the staff member's calendars.
async fn write_changes(
    State(deps): State<Arc<Deps>>,
    Internal(_): Internal,
    ApiJson(body): ApiJson<SessionChangeInput>,
) -> ApiResult<Json<ChangesOutcome>> {
    let change = body.validate()?;
    Ok(Json(changes::apply(&deps, &change).await?))
}

/// Validates the whole payload first (a 422 names the field and nothing is stored), then
/// stores the session and writes its event.
async fn write_session(
    State(deps): State<Arc<Deps>>,
    Internal(_): Internal,
    ApiJson(body): ApiJson<SessionChangeInput>,
) -> ApiResult<Json<Outcome>> {
    let change = body.validate()?;
    Ok(Json(outbound::apply(&deps, &change).await?))
}
