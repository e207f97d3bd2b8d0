use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use lambda_http::request::RequestContext;
use lambda_http::RequestExt;
use voyage_core::model::Principal;
use voyage_core::store::Store;
use voyage_core::Error;

use crate::ApiError;

/// How a served router learns who is calling. Both modes end in the same
/// [`voyage_core::auth::authenticate`]: on Lambda the gateway authorizer ran it and API
/// Gateway hands its answer over in the request context; locally it runs here.
#[derive(Clone)]
pub enum Auth {
    /// Behind API Gateway with the `gateway` Lambda authorizer.
    LambdaAuthorizer,
    /// Resolve `Authorization: Bearer` keys against the store (local system, tests).
    Keys(Store),
}

/// The calling tenant. A handler that takes this argument is a tenant route; one without it
/// is public (health, provider notifications).
#[derive(Debug, Clone)]
pub struct Authenticated(pub Principal);

/// The keys of the context the gateway authorizer hands to every function.
pub mod auth_context {
    pub const COMPANY: &str = "company_id";
    pub const KEY: &str = "key_id";
    pub const INTERNAL: &str = "internal";
    /// Present instead of the others when the key was missing, unknown or revoked.
    pub const ERROR: &str = "error";
}

fn from_authorizer(parts: &Parts) -> Result<Principal, Error> {
    let fields = match parts.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.authorizer.as_ref().map(|a| &a.fields),
        _ => None,
    }
    .ok_or(Error::Unauthorized)?;
    let text = |k: &str| fields.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let company_id = text(auth_context::COMPANY).ok_or(Error::Unauthorized)?;
    let key_id = text(auth_context::KEY).ok_or(Error::Unauthorized)?;
    let internal = match fields.get(auth_context::INTERNAL) {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => s == "true",
        _ => false,
    };
    Ok(Principal {
        company_id,
        key_id,
        internal,
    })
}

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let auth = parts
            .extensions
            .get::<Auth>()
            .cloned()
            .ok_or_else(|| Error::Internal("router served without an Auth mode".into()))?;
        let principal = match auth {
            Auth::LambdaAuthorizer => from_authorizer(parts)?,
            Auth::Keys(store) => {
                let header = parts
                    .headers
                    .get(AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                voyage_core::auth::authenticate(&store, header).await?
            }
        };
        Ok(Authenticated(principal))
    }
}

/// A caller whose key has the `internal` scope (the platform). A handler that takes this
/// answers 403 to any other key before anything else of the request is read, so a tenant key
/// learns nothing of an internal route's body rules (and no body is decoded for it).
#[derive(Debug, Clone)]
pub struct Internal(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Internal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Authenticated(principal) = Authenticated::from_request_parts(parts, state).await?;
        principal.require_internal()?;
        Ok(Internal(principal))
    }
}
