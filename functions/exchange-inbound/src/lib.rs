//! The exchange-inbound function: Graph's calls to us (this router) and the delta rounds
//! they trigger ([`worker`], from the inbound queue).
//!
//! - `POST /v1/exchange/notifications` and `POST /v1/exchange/lifecycle` (public; no tenant
//!   key): with `?validationToken=` they answer Graph's validation handshake (200,
//!   `text/plain`, the decoded token and nothing else); otherwise each notification's
//!   `clientState` is checked against its subscription in constant time, genuine ones are
//!   queued (one message per subscription) and the answer is 202 at once.

pub mod openapi;
pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use voyage_core::deps::Deps;
use voyage_core::exchange::push;
use voyage_http::{ApiQuery, ApiResult};

pub fn router(deps: Arc<Deps>) -> Router {
    Router::new()
        .route("/v1/exchange/notifications", post(graph_callback))
        .route("/v1/exchange/lifecycle", post(graph_callback))
        .with_state(deps)
}

/// The handshake answer: exactly the token, as plain text. (axum has already
/// percent-decoded the query.)
pub fn handshake(token: &str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        token.to_string(),
    )
        .into_response()
}

async fn graph_callback(
    State(deps): State<Arc<Deps>>,
    ApiQuery(query): ApiQuery<HashMap<String, String>>,
    body: Bytes,
) -> ApiResult<Response> {
    if let Some(token) = query.get("validationToken") {
        return Ok(handshake(token));
    }
    let accepted = push::accept(&deps, &body).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}
