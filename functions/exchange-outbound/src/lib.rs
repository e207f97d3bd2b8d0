//! The exchange-outbound function: sessions become events in staff members' Exchange
//! calendars. Two ways in, one core path ([`voyage_core::exchange::outbound::apply`]):
//! `POST /v1/exchange/outbound` (internal key) and the outbound queue, which the platform
//! fills through EventBridge (`detail` = the route's body) or directly (the body itself).

pub mod openapi;
pub mod worker;

use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use voyage_core::deps::Deps;
use voyage_core::exchange::outbound::{self, Outcome, SessionChangeInput};
use voyage_http::{ApiJson, ApiResult, Authenticated};

pub fn router(deps: Arc<Deps>) -> Router {
    Router::new()
        .route("/v1/exchange/outbound", post(write_session))
        .with_state(deps)
}

/// Validates the whole payload first (a 422 names the field and nothing is stored), then
/// stores the session and writes its event.
async fn write_session(
    State(deps): State<Arc<Deps>>,
    Authenticated(p): Authenticated,
    ApiJson(body): ApiJson<SessionChangeInput>,
) -> ApiResult<Json<Outcome>> {
    p.require_internal()?;
    let change = body.validate()?;
    Ok(Json(outbound::apply(&deps, &change).await?))
}
