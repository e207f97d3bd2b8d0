//! The HTTP edge every function shares, so that one axum router serves both API Gateway on
//! Lambda (through `lambda_http`) and the local `voyage serve`:
//! - [`ApiError`]: every error as `{"error": {"code", "message", "field"?}}`;
//! - [`ApiJson`] / [`ApiQuery`]: strict request decoding that names the offending field;
//! - [`Principal`](voyage_core::model::Principal) extraction through [`Auth`];
//! - [`finish`]: fallbacks, body limit and panic catching applied to a router;
//! - [`logging`]: structured `tracing`, JSON on Lambda;
//! - [`openapi`]: the operation registry the OpenAPI document is built from.

mod auth;
mod error;
mod json;
pub mod logging;
pub mod openapi;
mod sqs;

pub use auth::{auth_context, Auth, Authenticated, Internal};
pub use error::{ApiError, ApiResult};
pub use json::{decode_json, ApiJson, ApiPath, ApiQuery, MAX_BODY_BYTES};
pub use sqs::serve_sqs;

use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use voyage_core::Error;

/// `GET /health`: the process is up and serving.
pub fn health_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route(
        "/health",
        get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
    )
}

/// The operations of [`health_routes`].
pub fn health_operations() -> Vec<openapi::Operation> {
    use openapi::{schema, Operation};
    vec![Operation::get("/health", "system")
        .public()
        .summary("The process is up and serving")
        .answers(
            200,
            "Serving",
            schema::object(&[("status", schema::one_of_strings(&["ok"]))], &["status"]),
        )]
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError(Error::BadRequest {
        status: 404,
        code: "route_not_found",
        message: format!("no route for {}", uri.path()),
    })
}

async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError(Error::BadRequest {
        status: 405,
        code: "method_not_allowed",
        message: format!("{method} is not allowed on this route"),
    })
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    // The panic message may quote request data: it is not echoed, and the log line carries
    // only the fact of the panic (the tracing span names the route).
    tracing::error!("handler panicked");
    ApiError(Error::Internal("the request could not be completed".into())).into_response()
}

/// Adds what every served router needs: JSON 404/405 answers, a panic net that turns a
/// panic into a JSON 500 instead of a dropped connection, and the authentication mode.
pub fn finish(router: Router, auth: Auth) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::Extension(auth))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<_>| {
                    // Route and method only: never headers (they carry keys) nor queries.
                    let route = req
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_else(|| "unmatched".into());
                    tracing::info_span!("request", method = %req.method(), route)
                })
                .on_request(())
                .on_body_chunk(())
                .on_eos(()),
        )
}

/// Serves `router` as an API Gateway HTTP API Lambda, behind the gateway authorizer. The
/// metrics each invocation recorded are printed as EMF log lines once its response is ready.
pub async fn serve_lambda(router: Router) -> Result<(), lambda_http::Error> {
    let service = tower::util::MapResponse::new(
        finish(router, Auth::LambdaAuthorizer),
        |response: axum::response::Response| {
            voyage_core::metrics::flush_emf();
            response
        },
    );
    lambda_http::run(service).await
}
