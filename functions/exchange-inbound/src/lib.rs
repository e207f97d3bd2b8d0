//! The exchange-inbound function. Its routes and queue handling arrive with the issue that owns this
//! capability; until then the router serves nothing but JSON 404s, so API Gateway and the
//! local system already route to it.

use std::sync::Arc;

use axum::Router;
use voyage_core::deps::Deps;

pub fn router(deps: Arc<Deps>) -> Router {
    Router::new().with_state(deps)
}
