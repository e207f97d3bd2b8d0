//! The public routes the gateway Lambda serves on AWS without a key: `GET /health` and
//! `GET /openapi.json`. The document is `schemas/openapi.json`, the output of `voyage
//! openapi` (every function's operations; `tests/tests/openapi.rs` fails when the file and
//! the code differ), built into the binary: this crate cannot build it from the other
//! functions' registries without depending on all of them. `voyage serve` has its own
//! (the same document, built at run time), so the local system does not merge these.

use axum::routing::get;
use axum::Router;

/// `schemas/openapi.json`, as built into the binary.
pub const DOCUMENT: &str = include_str!("../../../schemas/openapi.json");

/// `GET /health` and `GET /openapi.json`.
pub fn router() -> Router {
    Router::new()
        .merge(voyage_http::health_routes())
        .route("/openapi.json", get(document))
}

async fn document() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        DOCUMENT,
    )
        .into_response()
}
