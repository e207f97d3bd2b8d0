//! The google-sync function: Google Calendar into availability.
//!
//! - `POST /v1/google-sync/notifications` (public; authenticated by the channel token):
//!   Google's pushes, answered at once; `exists`/`not_exists` queue a coalesced sync.
//! - `POST /v1/google-sync` (internal key) `{"company_id", "connection_id"}`: a sync of one
//!   connection now (inline, inside its time budget: a large calendar's rest is queued);
//!   `{}`: 202 at once, one sync per connection queued.
//! - [`worker`]: queued syncs (the google-sync SQS queue; locally an in-process consumer).

pub mod openapi;
pub mod worker;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use voyage_core::deps::Deps;
use voyage_core::google::{push, sync};
use voyage_core::model::Provider;
use voyage_core::{validate, Error};
use voyage_http::{ApiJson, ApiResult, Internal};

pub fn router(deps: Arc<Deps>) -> Router {
    Router::new()
        .route("/v1/google-sync", post(sync_now))
        .route("/v1/google-sync/notifications", post(notification))
        .with_state(deps)
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    // HeaderMap lookups are case-insensitive, as Google's header names may vary in case.
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

/// Google's push. The body is empty (sometimes with a JSON content type) and is ignored.
async fn notification(
    State(deps): State<Arc<Deps>>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    let p = push::Push {
        channel_id: header(&headers, "x-goog-channel-id"),
        token: header(&headers, "x-goog-channel-token"),
        resource_state: header(&headers, "x-goog-resource-state"),
        message_number: header(&headers, "x-goog-message-number"),
    };
    let outcome = push::accept(&deps, &p).await?;
    Ok((StatusCode::OK, Json(json!({"outcome": outcome}))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncNow {
    #[serde(default)]
    company_id: Option<String>,
    #[serde(default)]
    connection_id: Option<String>,
}

async fn sync_now(
    State(deps): State<Arc<Deps>>,
    Internal(_): Internal,
    ApiJson(body): ApiJson<SyncNow>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    match (body.company_id, body.connection_id) {
        (Some(company), Some(id)) => {
            validate::identifier("company_id", &company)?;
            validate::identifier("connection_id", &id)?;
            let mut conn = deps.store.get_connection(&company, &id).await?;
            if conn.provider != Provider::Google {
                return Err(
                    Error::validation("connection_id", "is not a Google connection").into(),
                );
            }
            let report = sync::sync_connection(&deps, &mut conn).await?;
            Ok((
                StatusCode::OK,
                Json(
                    json!({"connection_id": conn.id, "status": conn.status, "last_error": conn.last_error, "report": report}),
                ),
            ))
        }
        (None, None) => {
            // Off the request path: every sync is queued, the workers run them.
            let queued = sync::queue_all(&deps).await?;
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"queued": queued.queued, "failed": queued.failed})),
            ))
        }
        (None, Some(_)) => {
            Err(Error::validation("company_id", "is required with connection_id").into())
        }
        (Some(_), None) => {
            Err(Error::validation("connection_id", "is required with company_id").into())
        }
    }
}
