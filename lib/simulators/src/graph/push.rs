//! Graph's change-notification subscriptions: create (with the validation handshake),
//! get, renew and delete, and the change notifications posted (or captured) on every
//! change.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{
    bad_request, graph_error, graph_instant, parse_instant, user_key, CapturedNotification,
    GraphSimulator, MAX_SUBSCRIPTION_MINUTES,
};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Subscription {
    pub(super) id: String,
    pub(super) resource: String,
    pub(super) user: String,
    pub(super) calendar: Option<String>,
    pub(super) change_types: Vec<String>,
    pub(super) notification_url: String,
    pub(super) lifecycle_url: Option<String>,
    pub(super) client_state: Option<String>,
    pub(super) expires: DateTime<Utc>,
    pub(super) tenant: String,
}

impl Subscription {
    pub(super) fn to_json(&self) -> Value {
        json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "changeType": self.change_types.join(","),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": graph_instant(self.expires),
            "applicationId": "voyage-graph-simulator",
            "creatorId": "voyage-graph-simulator",
            "latestSupportedTlsVersion": "v1_2",
        })
    }
}

impl GraphSimulator {
    /// Posts (or, in capture mode, keeps) every change notification the change to `event` in
    /// `user`'s mailbox triggers.
    pub(super) fn notify(
        &self,
        user: &str,
        calendar: &str,
        event_id: &str,
        etag: &str,
        change: &str,
    ) {
        let targets: Vec<CapturedNotification> = {
            let mut state = self.state();
            let targets: Vec<CapturedNotification> = state
                .subscriptions
                .values()
                .filter(|s| s.user == user_key(user))
                .filter(|s| s.calendar.as_deref().is_none_or(|c| c == calendar))
                .filter(|s| s.change_types.iter().any(|c| c == change))
                .map(|s| {
                    let resource = format!("Users/{user}/Events/{event_id}");
                    let body = json!({"value": [{
                        "subscriptionId": s.id,
                        "subscriptionExpirationDateTime": graph_instant(s.expires),
                        "changeType": change,
                        "resource": resource,
                        "resourceData": {
                            "@odata.type": "#Microsoft.Graph.Event",
                            "@odata.id": resource,
                            "@odata.etag": etag,
                            "id": event_id,
                        },
                        "clientState": s.client_state,
                        "tenantId": s.tenant,
                    }]});
                    CapturedNotification {
                        url: s.notification_url.clone(),
                        body,
                    }
                })
                .collect();
            if state.capture {
                state.captured.extend(targets);
                return;
            }
            targets
        };
        for CapturedNotification { url, body } in targets {
            // A Rust-side staff action may run outside any runtime: without one there is
            // nothing to send with (capture mode is the way for such tests).
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                tracing::warn!(%url, "graph simulator: no Tokio runtime, notification dropped");
                continue;
            };
            let http = self.inner.http.clone();
            runtime.spawn(async move {
                if let Err(e) = http.post(&url).json(&body).send().await {
                    tracing::debug!(error = %e, "graph simulator: notification not delivered");
                }
            });
        }
    }
}

pub(super) async fn create_subscription(
    State(sim): State<GraphSimulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("The body must be a JSON subscription object.");
    };
    let field = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(change), Some(url), Some(resource), Some(expiry)) = (
        field("changeType"),
        field("notificationUrl"),
        field("resource"),
        field("expirationDateTime"),
    ) else {
        return bad_request(
            "changeType, notificationUrl, resource and expirationDateTime are required.",
        );
    };
    let Some(expires) = parse_instant(&expiry) else {
        return bad_request("expirationDateTime is not a valid instant.");
    };
    if let Err(resp) = check_expiry(expires) {
        return resp;
    }
    let client_state = field("clientState");
    if client_state.as_ref().is_some_and(|c| c.len() > 128) {
        return bad_request("clientState must be at most 128 characters.");
    }
    let change_types: Vec<String> = change.split(',').map(|c| c.trim().to_string()).collect();
    if change_types
        .iter()
        .any(|c| !["created", "updated", "deleted"].contains(&c.as_str()))
    {
        return bad_request("changeType must list created, updated or deleted.");
    }
    let parts: Vec<&str> = resource.trim_matches('/').split('/').collect();
    let (user, calendar) = match parts.as_slice() {
        [u, user, e] if u.eq_ignore_ascii_case("users") && e.eq_ignore_ascii_case("events") => {
            (user.to_string(), None)
        }
        [u, user, c, cal, e]
            if u.eq_ignore_ascii_case("users")
                && c.eq_ignore_ascii_case("calendars")
                && e.eq_ignore_ascii_case("events") =>
        {
            (user.to_string(), Some(cal.to_string()))
        }
        _ => {
            return bad_request(
                "resource must be users/{id}/events or users/{id}/calendars/{id}/events.",
            )
        }
    };
    let lifecycle = field("lifecycleNotificationUrl");
    // In capture mode the test delivers Graph's pushes itself, so the handshake (a call to
    // the notification URLs) is taken as passed.
    let capture = sim.state().capture;
    for target in std::iter::once(&url).chain(lifecycle.iter()) {
        if capture {
            break;
        }
        if let Err(message) = handshake(&sim, target).await {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                &format!("Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request. {message}"),
            );
        }
    }
    let bearer = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let mut state = sim.state();
    let tenant = state
        .tokens
        .get(&bearer)
        .map(|(t, _)| t.clone())
        .unwrap_or_default();
    let sub = Subscription {
        id: format!("{}-{}", sim.token(6), sim.token(9)),
        resource,
        user: user_key(&user),
        calendar,
        change_types,
        notification_url: url,
        lifecycle_url: lifecycle,
        client_state,
        expires,
        tenant,
    };
    let out = sub.to_json();
    state.subscriptions.insert(sub.id.clone(), sub);
    (StatusCode::CREATED, Json(out)).into_response()
}

fn check_expiry(expires: DateTime<Utc>) -> Result<(), Response> {
    let now = Utc::now();
    if expires <= now {
        return Err(bad_request("expirationDateTime must be in the future."));
    }
    if expires > now + chrono::Duration::minutes(MAX_SUBSCRIPTION_MINUTES) {
        return Err(graph_error(
            StatusCode::BAD_REQUEST,
            "ExtensionError",
            "Subscription expiration can only be 10080 minutes in the future.",
        ));
    }
    Ok(())
}

/// Graph's validation handshake: POST `?validationToken=`; the endpoint must answer 200,
/// `text/plain`, with the decoded token as the whole body. Skipped in capture mode.
async fn handshake(sim: &GraphSimulator, url: &str) -> Result<(), String> {
    let http = &sim.inner.http;
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        sim.token(12)
    );
    let mut target = url::Url::parse(url).map_err(|e| format!("bad URL: {e}"))?;
    target
        .query_pairs_mut()
        .append_pair("validationToken", &token);
    let resp = http
        .post(target)
        .header("content-type", "text/plain; charset=utf-8")
        .send()
        .await
        .map_err(|e| format!("could not reach the endpoint: {e}"))?;
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = resp.text().await.unwrap_or_default();
    if status != reqwest::StatusCode::OK {
        return Err(format!("the endpoint answered {status}"));
    }
    if !content_type.starts_with("text/plain") {
        return Err(format!(
            "the endpoint answered content type `{content_type}`"
        ));
    }
    if text != token {
        return Err("the endpoint did not echo the validation token".into());
    }
    Ok(())
}

pub(super) async fn get_subscription(
    State(sim): State<GraphSimulator>,
    Path(id): Path<String>,
) -> Response {
    match sim.state().subscriptions.get(&id) {
        Some(s) => Json(s.to_json()).into_response(),
        None => subscription_not_found(),
    }
}

pub(super) fn subscription_not_found() -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        "The object was not found.",
    )
}

pub(super) async fn renew_subscription(
    State(sim): State<GraphSimulator>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Some(expires) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b.get("expirationDateTime")?.as_str().map(str::to_string))
        .and_then(|s| parse_instant(&s))
    else {
        return bad_request("expirationDateTime is required.");
    };
    if let Err(resp) = check_expiry(expires) {
        return resp;
    }
    let mut state = sim.state();
    match state.subscriptions.get_mut(&id) {
        Some(s) => {
            s.expires = expires;
            Json(s.to_json()).into_response()
        }
        None => subscription_not_found(),
    }
}

pub(super) async fn delete_subscription(
    State(sim): State<GraphSimulator>,
    Path(id): Path<String>,
) -> Response {
    match sim.state().subscriptions.remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => subscription_not_found(),
    }
}
