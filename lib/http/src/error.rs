use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use voyage_core::Error;

/// A domain error as an HTTP answer. 5xx answers keep their detail in the log, not the body.
#[derive(Debug)]
pub struct ApiError(pub Error);

pub type ApiResult<T> = Result<T, ApiError>;

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = if status.is_server_error() {
            tracing::error!(code = self.0.code(), error = %self.0, "request failed");
            match &self.0 {
                Error::Unavailable(_) => "a dependency is unavailable; retry later".to_string(),
                // The provider's own readable reason: what the tenant needs to fix or wait for.
                Error::Provider { message, .. } => message.clone(),
                _ => "internal error".to_string(),
            }
        } else {
            self.0.to_string()
        };
        let mut error = json!({"code": self.0.code(), "message": message});
        if let Some(field) = self.0.field() {
            error["field"] = json!(field);
        }
        let mut response = (status, axum::Json(json!({ "error": error }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
