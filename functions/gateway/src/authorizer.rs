//! The Lambda authorizer.
//!
//! HTTP API authorizers with simple responses can only allow (200 onwards) or deny, and a
//! deny is answered by API Gateway itself as `403 {"message":"Forbidden"}`. The contract is
//! 401 for a bad key, with our JSON error body. So the authorizer *allows* every request and
//! says in the context whether the key was good; the function's
//! [`voyage_http::Authenticated`] extractor answers 401 when it was not. Public routes
//! (health, provider notifications) are declared without the authorizer in template.yaml.

use serde::Serialize;
use serde_json::{json, Value};
use voyage_core::store::Store;
use voyage_core::Error;
use voyage_http::auth_context;

/// `{"isAuthorized": true, "context": {...}}`, the simple response format.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimpleResponse {
    pub is_authorized: bool,
    pub context: Value,
}

/// Resolves the request's `Authorization` header (any case) to a principal context.
pub async fn authorize(store: &Store, headers: &http::HeaderMap) -> Result<SimpleResponse, Error> {
    let header = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match voyage_core::auth::authenticate(store, header).await {
        Ok(p) => Ok(SimpleResponse {
            is_authorized: true,
            context: json!({
                auth_context::COMPANY: p.company_id,
                auth_context::KEY: p.key_id,
                auth_context::INTERNAL: p.internal,
            }),
        }),
        Err(Error::Unauthorized) => Ok(SimpleResponse {
            is_authorized: true,
            context: json!({ auth_context::ERROR: "unauthorized" }),
        }),
        // The store is down: deny rather than let requests through unauthenticated.
        Err(e) => Err(e),
    }
}
