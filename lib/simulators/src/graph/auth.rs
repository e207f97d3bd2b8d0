//! The Graph simulator's request edge: the client-credentials token endpoint, the bearer
//! check, fault injection and the request log around every Graph route.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::json;

use super::{graph_error, GraphSimulator, SERVING};
use crate::util::{take_fault, FaultAction, Served};

const TOKEN_LIFETIME_SECS: i64 = 3599;

/// Runs every request (Graph and control routes) with its simulator in [`SERVING`], for the
/// `request-id` of error bodies.
pub(super) async fn serving(
    State(sim): State<GraphSimulator>,
    req: Request,
    next: Next,
) -> Response {
    SERVING.scope(sim, next.run(req)).await
}

/// Fault injection, request log and bearer-token check for every Graph route.
pub(super) async fn graph_edge(
    State(sim): State<GraphSimulator>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let fault = take_fault(&mut sim.state().faults, &method, &path);
    let mut delay = None;
    let response = match fault {
        Some(FaultAction::Fail {
            status,
            retry_after,
        }) => {
            let code = match status.as_u16() {
                429 => "TooManyRequests",
                503 => "ServiceUnavailable",
                410 => "syncStateNotFound",
                _ => "InternalServerError",
            };
            let mut resp = graph_error(status, code, "injected fault");
            if let Some(secs) = retry_after {
                if let Ok(v) = secs.to_string().parse() {
                    resp.headers_mut().insert("retry-after", v);
                }
            }
            resp
        }
        other => {
            let mut lost = None;
            match other {
                Some(FaultAction::Delay(d)) => delay = Some(d),
                Some(FaultAction::LoseAnswer { status }) => lost = Some(status),
                _ => {}
            }
            let authorised = path.ends_with("/oauth2/v2.0/token") || {
                let bearer = req
                    .headers()
                    .get("authorization")
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .map(str::to_string);
                let state = sim.state();
                bearer
                    .and_then(|b| state.tokens.get(&b).cloned())
                    .is_some_and(|(_, exp)| exp > Utc::now())
            };
            if authorised {
                let served = next.run(req).await;
                match lost {
                    Some(status) => graph_error(
                        status,
                        "ServiceUnavailable",
                        "injected fault: the answer was lost after the request was served",
                    ),
                    None => served,
                }
            } else {
                graph_error(
                    StatusCode::UNAUTHORIZED,
                    "InvalidAuthenticationToken",
                    "Access token is empty or invalid.",
                )
            }
        }
    };
    sim.state().served.push(Served {
        method: method.to_string(),
        path,
        status: response.status().as_u16(),
    });
    // Latency is added after the work is done, like a slow network on the way back: the
    // caller may time out although the change was made (what idempotent retries are for).
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    response
}

pub(super) async fn token(
    State(sim): State<GraphSimulator>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let oauth_error = |status: StatusCode, error: &str, description: &str| {
        (
            status,
            Json(json!({"error": error, "error_description": description})),
        )
            .into_response()
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
        );
    }
    if form.get("scope").map(String::as_str) != Some("https://graph.microsoft.com/.default") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS70011: The provided value for the input parameter 'scope' is not valid.",
        );
    }
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let secret = form.get("client_secret").cloned().unwrap_or_default();
    let mut state = sim.state();
    match state.apps.get(&(tenant.clone(), client_id.clone())) {
        None => oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            &format!(
                "AADSTS700016: Application with identifier '{client_id}' was not found in the directory '{tenant}'."
            ),
        ),
        Some(expected) if *expected != secret => oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        ),
        Some(_) => {
            let token = format!("simgraph.{}", sim.token(24));
            let expires = Utc::now() + chrono::Duration::seconds(TOKEN_LIFETIME_SECS);
            state.tokens.insert(token.clone(), (tenant, expires));
            Json(json!({
                "token_type": "Bearer",
                "expires_in": TOKEN_LIFETIME_SECS,
                "ext_expires_in": TOKEN_LIFETIME_SECS,
                "access_token": token,
            }))
            .into_response()
        }
    }
}
