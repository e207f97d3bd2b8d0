//! `/v1/settings/availability`: what the company counts as busy
//! ([`voyage_core::availability`]). Decode, call core, encode.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use voyage_core::availability::{self, AvailabilitySettings};
use voyage_core::deps::Deps;
use voyage_http::{ApiJson, ApiResult, Authenticated};

/// `GET`: the company's settings, the defaults (`busy`, `busy`) when it never set any.
pub async fn get_availability(
    State(deps): State<Arc<Deps>>,
    Authenticated(p): Authenticated,
) -> ApiResult<Json<AvailabilitySettings>> {
    Ok(Json(
        availability::settings(&deps.store, &p.company_id).await?,
    ))
}

/// `PUT`: replaces the settings; a field left out takes its default. Unknown fields and
/// values other than `busy`/`free` are refused with 422 naming the field.
pub async fn put_availability(
    State(deps): State<Arc<Deps>>,
    Authenticated(p): Authenticated,
    ApiJson(body): ApiJson<AvailabilitySettings>,
) -> ApiResult<Json<AvailabilitySettings>> {
    deps.store
        .put_availability_settings(&p.company_id, &body)
        .await?;
    Ok(Json(body))
}
