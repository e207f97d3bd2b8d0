//! Graph's JSON batching, `POST /v1.0/$batch`: each request of a batch is served by the
//! simulator's own routes.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{bad_request, GraphSimulator};

/// Most requests one `$batch` may carry (Graph's limit).
const MAX_BATCH: usize = 20;

/// `POST /v1.0/$batch`: each request is served by the simulator's own routes with the
/// batch's token, so faults, the request log and every rule apply to it as to a direct call.
pub(super) async fn batch(
    State(sim): State<GraphSimulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    use tower::ServiceExt;
    let Some(requests) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("requests").and_then(Value::as_array).cloned())
    else {
        return bad_request("A batch body is {\"requests\": [...]}.");
    };
    if requests.is_empty() || requests.len() > MAX_BATCH {
        return bad_request("A batch carries between 1 and 20 requests.");
    }
    let auth = headers.get("authorization").cloned();
    let mut responses = Vec::with_capacity(requests.len());
    for r in requests {
        let id = r
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let method = r.get("method").and_then(Value::as_str).unwrap_or("GET");
        let url = r.get("url").and_then(Value::as_str).unwrap_or_default();
        let Ok(method) = axum::http::Method::from_bytes(method.as_bytes()) else {
            return bad_request("A batch request has an unknown method.");
        };
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(format!("/v1.0/{}", url.trim_start_matches('/')));
        if let Some(a) = &auth {
            req = req.header("authorization", a.clone());
        }
        if let Some(h) = r.get("headers").and_then(Value::as_object) {
            for (k, v) in h {
                if let Some(v) = v.as_str() {
                    req = req.header(k.as_str(), v);
                }
            }
        }
        let body = match r.get("body") {
            Some(b) => {
                req = req.header("content-type", "application/json");
                axum::body::Body::from(b.to_string())
            }
            None => axum::body::Body::empty(),
        };
        let Ok(req) = req.body(body) else {
            return bad_request("A batch request could not be read.");
        };
        let Ok(resp) = sim.router().oneshot(req).await;
        let status = resp.status().as_u16();
        let mut out_headers = Map::new();
        if let Some(v) = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
        {
            out_headers.insert("Retry-After".into(), json!(v));
        }
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        responses.push(json!({"id": id, "status": status, "headers": out_headers, "body": body}));
    }
    Json(json!({ "responses": responses })).into_response()
}
