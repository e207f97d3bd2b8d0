//! The Google simulator's request edge: the service-account (JWT bearer) token endpoint,
//! the bearer check, fault injection and the request log around every Google route.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use chrono::Utc;
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use serde_json::{json, Value};

use super::{google_error, GoogleRequest, GoogleSimulator};
use crate::util::{random_token, take_fault, FaultAction};

impl GoogleSimulator {
    pub(super) fn calendar_key(&self, calendar: &str, headers: &HeaderMap) -> String {
        if calendar == "primary" {
            if let Some(subject) =
                bearer(headers).and_then(|t| self.state().tokens.get(&t).map(|(s, _)| s.clone()))
            {
                return subject.to_ascii_lowercase();
            }
        }
        calendar.to_ascii_lowercase()
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::to_string)
}

pub(super) async fn google_edge(
    State(sim): State<GoogleSimulator>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let if_match = req
        .headers()
        .get("if-match")
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    // Keep the JSON body for the log, then hand the request on unchanged.
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let logged_body = if path.starts_with("/calendar/") && !bytes.is_empty() {
        serde_json::from_slice::<Value>(&bytes).ok()
    } else {
        None
    };
    let req = Request::from_parts(parts, axum::body::Body::from(bytes));
    let fault = take_fault(&mut sim.state().faults, &method, &path);
    let mut delay = None;
    let response = match fault {
        Some(FaultAction::Fail {
            status,
            retry_after,
        }) => {
            let reason = match status.as_u16() {
                429 => "rateLimitExceeded",
                403 => "userRateLimitExceeded",
                410 => "fullSyncRequired",
                _ => "backendError",
            };
            let mut resp = google_error(status, reason, "injected fault");
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
            let authorised = path == "/token"
                || bearer(req.headers())
                    .and_then(|t| sim.state().tokens.get(&t).cloned())
                    .is_some_and(|(_, exp)| exp > Utc::now());
            if authorised {
                let served = next.run(req).await;
                match lost {
                    Some(status) => google_error(
                        status,
                        "backendError",
                        "injected fault: the answer was lost after the request was served",
                    ),
                    None => served,
                }
            } else {
                google_error(StatusCode::UNAUTHORIZED, "authError", "Invalid Credentials")
            }
        }
    };
    sim.state().requests.push(GoogleRequest {
        method: method.to_string(),
        path,
        query,
        if_match,
        body: logged_body,
        status: response.status().as_u16(),
    });
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    response
}

pub(super) async fn token(State(sim): State<GoogleSimulator>, body: Bytes) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let oauth = |error: &str, description: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": error, "error_description": description})),
        )
            .into_response()
    };
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return oauth("unsupported_grant_type", "Invalid grant_type.");
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth("invalid_request", "Missing required parameter: assertion");
    };
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return oauth(
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe",
        );
    };
    let Some(claims_json) = b64url(claims).and_then(|c| serde_json::from_slice::<Value>(&c).ok())
    else {
        return oauth("invalid_grant", "Invalid JWT claims.");
    };
    let header_ok = b64url(header)
        .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
        .is_some_and(|h| h["alg"] == "RS256");
    let iss = claims_json["iss"].as_str().unwrap_or_default().to_string();
    let Some(public) = sim.state().accounts.get(&iss).cloned() else {
        return oauth(
            "invalid_client",
            &format!("The OAuth client was not found: {iss}"),
        );
    };
    let signed = format!("{header}.{claims}");
    let verified = header_ok
        && b64url(signature).is_some_and(|sig| {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &public)
                .verify(signed.as_bytes(), &sig)
                .is_ok()
        });
    if !verified {
        return oauth("invalid_grant", "Invalid JWT Signature.");
    }
    let now = Utc::now().timestamp();
    let (iat, exp) = (
        claims_json["iat"].as_i64().unwrap_or(0),
        claims_json["exp"].as_i64().unwrap_or(0),
    );
    if exp <= now || iat > now + 60 || exp - iat > 3600 {
        return oauth("invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.");
    }
    if !claims_json["scope"]
        .as_str()
        .unwrap_or_default()
        .contains("auth/calendar")
    {
        return oauth(
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        );
    }
    let Some(subject) = claims_json["sub"].as_str().map(str::to_string) else {
        return oauth(
            "invalid_grant",
            "Missing sub: domain-wide delegation needs a subject.",
        );
    };
    let token = format!("ya29.sim-{}", random_token(24));
    sim.state().tokens.insert(
        token.clone(),
        (subject, Utc::now() + chrono::Duration::seconds(3599)),
    );
    Json(json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})).into_response()
}

pub(super) fn b64url(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}
