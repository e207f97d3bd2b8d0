//! The HTTP edge through the whole local router: authentication, the error contract, and a
//! property test that no request makes any route answer 5xx.

use std::sync::Arc;

use axum::body::Body;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{json, Value};
use tower::ServiceExt;
use voyage::Local;
use voyage_core::config::Config;

struct App {
    router: Router,
    local: Local,
    _dir: tempfile::TempDir,
}

fn app() -> App {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_lookup(|_| None).unwrap();
    let local = Local::open(dir.path(), config).unwrap();
    App {
        router: local.router(),
        local,
        _dir: dir,
    }
}

async fn key(app: &App, internal: bool) -> String {
    voyage_core::auth::create_key(&app.local.deps.store, "acme", internal, None)
        .await
        .unwrap()
        .plaintext
}

async fn call(router: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body)
}

fn get(path: &str, key: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(Body::empty()).unwrap()
}

fn post(path: &str, key: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", content_type)
        .body(body.into())
        .unwrap()
}

#[tokio::test]
async fn health_answers_without_a_key() {
    let app = app();
    let (status, body) = call(&app.router, get("/health", None)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
}

#[tokio::test]
async fn missing_unknown_and_revoked_keys_are_401_and_scope_is_403() {
    let app = app();
    for k in [None, Some("vk_0000"), Some("garbage")] {
        let (status, body) = call(&app.router, get("/v1/me", k)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{k:?}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let tenant = key(&app, false).await;
    let (status, body) = call(&app.router, get("/v1/me", Some(&tenant))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"company_id": "acme", "key_id": body["key_id"], "internal": false})
    );
    // A tenant key cannot mint an internal key.
    let (status, body) = call(
        &app.router,
        post(
            "/v1/keys",
            &tenant,
            "application/json",
            r#"{"internal":true}"#,
        ),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    // Revoked: 401 from then on.
    let key_id = body_key_id(&app, &tenant).await;
    let req = Request::delete(format!("/v1/keys/{key_id}"))
        .header("authorization", format!("Bearer {tenant}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app.router, req).await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        call(&app.router, get("/v1/me", Some(&tenant))).await.0,
        StatusCode::UNAUTHORIZED
    );
}

async fn body_key_id(app: &App, key: &str) -> String {
    call(&app.router, get("/v1/me", Some(key))).await.1["key_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_created_key_is_shown_once_and_never_listed() {
    let app = app();
    let internal = key(&app, true).await;
    let (status, created) = call(
        &app.router,
        post(
            "/v1/keys",
            &internal,
            "application/json",
            r#"{"description":"ci","internal":true}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let new_key = created["key"].as_str().unwrap().to_string();
    assert_eq!(
        call(&app.router, get("/v1/me", Some(&new_key))).await.1["internal"],
        true
    );
    let (_, listed) = call(&app.router, get("/v1/keys", Some(&internal))).await;
    let text = listed.to_string();
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
    assert!(
        !text.contains(&new_key) && !text.contains("key_hash"),
        "{text}"
    );
}

#[tokio::test]
async fn each_kind_of_bad_body_has_its_own_code() {
    let app = app();
    let k = key(&app, false).await;
    let good = r#"{"provider":"exchange","staff_id":"s1","staff_email":"ann@example.com"}"#;
    let cases: Vec<(Request<Body>, StatusCode, &str, Option<&str>)> = vec![
        (
            post("/v1/connections", &k, "text/plain", good),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            None,
        ),
        (
            post("/v1/connections", &k, "application/json", "{\"provider\":"),
            StatusCode::BAD_REQUEST,
            "malformed_json",
            None,
        ),
        (
            post(
                "/v1/connections",
                &k,
                "application/json",
                vec![b' '; 300 * 1024],
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            None,
        ),
        (
            post(
                "/v1/connections",
                &k,
                "application/json",
                r#"{"provider":"exchange","staff_id":"s1","staff_email":"ann@example.com","colour":"red"}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_field",
            Some("colour"),
        ),
        (
            post(
                "/v1/connections",
                &k,
                "application/json",
                r#"{"provider":"exchange","staff_id":"s1"}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("staff_email"),
        ),
        (
            post(
                "/v1/connections",
                &k,
                "application/json",
                r#"{"provider":"exchange","staff_id":"s#1","staff_email":"ann@example.com"}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("staff_id"),
        ),
        (
            post(
                "/v1/connections",
                &k,
                "application/json",
                r#"{"provider":"google","staff_id":"s1","staff_email":"ann@example.com"}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("calendar_id"),
        ),
        (
            get("/v1/connections?limit=500", Some(&k)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("limit"),
        ),
        (
            get("/v1/connections?limit=abc", Some(&k)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("limit"),
        ),
        (
            get("/v1/connections/conn_missing", Some(&k)),
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        ),
        (
            get("/v1/nowhere", Some(&k)),
            StatusCode::NOT_FOUND,
            "route_not_found",
            None,
        ),
        (
            Request::put("/v1/me").body(Body::empty()).unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            None,
        ),
    ];
    for (req, status, code, field) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (got, body) = call(&app.router, req).await;
        assert_eq!(got, status, "{what}: {body}");
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
        if let Some(f) = field {
            assert_eq!(body["error"]["field"], f, "{what}: {body}");
        }
    }
    // Nothing was created by any of them.
    let (_, listed) = call(&app.router, get("/v1/connections", Some(&k))).await;
    assert_eq!(listed["data"], json!([]));
    // The good body works, and a second connection for the same staff and provider is 409.
    let (status, _) = call(
        &app.router,
        post("/v1/connections", &k, "application/json", good),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = call(
        &app.router,
        post("/v1/connections", &k, "application/json", good),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("duplicate"))
    );
}

#[tokio::test]
async fn a_tenant_never_sees_another_tenants_connections() {
    let app = app();
    let acme = key(&app, false).await;
    let other = voyage_core::auth::create_key(&app.local.deps.store, "other", false, None)
        .await
        .unwrap()
        .plaintext;
    let body = r#"{"provider":"exchange","staff_id":"s1","staff_email":"ann@example.com"}"#;
    let (_, created) = call(
        &app.router,
        post("/v1/connections", &acme, "application/json", body),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        call(
            &app.router,
            get(&format!("/v1/connections/{id}"), Some(&other))
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(
            &app.router,
            get(&format!("/v1/connections/{id}"), Some(&acme))
        )
        .await
        .0,
        StatusCode::OK
    );
}

/// The Lambda path: a real API Gateway v2 event, converted by lambda_http exactly as on
/// Lambda, resolved through the authorizer context rather than the store.
#[tokio::test]
async fn on_lambda_the_authorizer_context_names_the_caller() {
    let store = voyage_core::store::Store::new(
        Arc::new(voyage_core::ports::memory::MemoryTable::new()),
        Arc::new(voyage_core::ports::SystemClock),
    );
    let deps = Arc::new(voyage_core::deps::Deps::new(
        store,
        Config::from_lookup(|_| None).unwrap(),
    ));
    let router = voyage_http::finish(
        voyage_fn_gateway::api::router(deps),
        voyage_http::Auth::LambdaAuthorizer,
    );
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../events/");
    let ok = lambda_http::request::from_str(
        &std::fs::read_to_string(format!("{root}apigw-v2-get-me.json")).unwrap(),
    )
    .unwrap();
    let resp = router
        .clone()
        .oneshot(ok.map(|b| Body::from(b.to_vec())))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["company_id"], "acme");
    let bad = lambda_http::request::from_str(
        &std::fs::read_to_string(format!("{root}apigw-v2-get-me-bad-key.json")).unwrap(),
    )
    .unwrap();
    let resp = router
        .oneshot(bad.map(|b| Body::from(b.to_vec())))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_authorizer_resolves_keys_and_flags_bad_ones() {
    let app = app();
    let k = key(&app, true).await;
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {k}").parse().unwrap());
    let ok = voyage_fn_gateway::authorizer::authorize(&app.local.deps.store, &headers)
        .await
        .unwrap();
    assert!(ok.is_authorized);
    assert_eq!(
        (
            ok.context["company_id"].as_str(),
            ok.context["internal"].as_bool()
        ),
        (Some("acme"), Some(true))
    );
    headers.insert("authorization", "Bearer vk_nope".parse().unwrap());
    let bad = voyage_fn_gateway::authorizer::authorize(&app.local.deps.store, &headers)
        .await
        .unwrap();
    assert_eq!(bad.context, json!({"error": "unauthorized"}));
    let as_json = serde_json::to_value(&ok).unwrap();
    assert!(
        as_json.get("isAuthorized").is_some(),
        "simple response format: {as_json}"
    );
}

fn arb_request(valid_key: String) -> impl Strategy<Value = Request<Body>> {
    let methods = prop_oneof![
        Just("GET"),
        Just("POST"),
        Just("PUT"),
        Just("PATCH"),
        Just("DELETE"),
        Just("OPTIONS")
    ];
    let paths = prop_oneof![
        Just("/health".to_string()),
        Just("/v1/me".to_string()),
        Just("/v1/keys".to_string()),
        Just("/v1/connections".to_string()),
        "/v1/connections/[a-zA-Z0-9%_#.-]{0,40}".prop_map(|s| s),
        "/v1/keys/[a-z0-9%_]{0,30}".prop_map(|s| s),
        "/v1/connections\\?(limit|cursor|x)=[a-zA-Z0-9%=-]{0,20}".prop_map(|s| s),
        Just("/v1/exchange/outbound".to_string()),
        Just("/v1/exchange/notifications".to_string()),
        "/v1/exchange/(notifications|lifecycle)\\?validationToken=[a-zA-Z0-9%+ -]{0,30}"
            .prop_map(|s| s),
        Just("/v1/credentials/exchange".to_string()),
        Just("/v1/credentials/google".to_string()),
        Just("/v1/google-sync".to_string()),
        Just("/v1/google-sync/notifications".to_string()),
        "/v1/sessions/[a-zA-Z0-9%_#.-]{0,20}".prop_map(|s| s),
        "/v1/staff/[a-z0-9%]{0,10}/overrides\\?(from|to|x)=[a-zA-Z0-9%:-]{0,25}".prop_map(|s| s),
        "/[a-z/%.]{0,30}".prop_map(|s| s),
    ];
    let content_types = prop_oneof![
        Just(None),
        Just(Some("application/json")),
        Just(Some("text/plain")),
        Just(Some("application/json; charset=utf-8")),
        Just(Some("application/x+json")),
    ];
    let auth = prop_oneof![
        Just(None),
        Just(Some(format!("Bearer {valid_key}"))),
        "[ -~]{0,60}".prop_map(Some),
        Just(Some("Bearer vk_".to_string())),
    ];
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        "[ -~]{0,200}".prop_map(String::into_bytes),
        Just(br#"{"provider":"exchange","staff_id":"s1","staff_email":"a@b.co"}"#.to_vec()),
        Just(
            br#"{"provider":"google","staff_id":"","staff_email":"x","calendar_id":null}"#.to_vec()
        ),
        Just(br#"{"internal":"yes","description":7}"#.to_vec()),
        (any::<u32>(), "[a-z_]{1,10}").prop_map(|(n, k)| format!("{{\"{k}\":{n}}}").into_bytes()),
    ];
    (methods, paths, content_types, auth, body).prop_map(|(m, p, ct, a, b)| {
        let mut req = Request::builder().method(m).uri(p);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        if let Some(a) = a {
            if let Ok(v) = http::HeaderValue::from_str(&a) {
                req = req.header("authorization", v);
            }
        }
        req.body(Body::from(b))
            .unwrap_or_else(|_| Request::new(Body::empty()))
    })
}

#[test]
fn no_request_makes_any_route_answer_5xx() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = app();
    let k = rt.block_on(key(&app, false));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&arb_request(k), |req| {
            let what = format!("{} {}", req.method(), req.uri());
            let (status, body) = rt.block_on(call(&app.router, req));
            prop_assert!(status.as_u16() < 500, "{what} -> {status} {body}");
            if status.is_client_error() {
                prop_assert!(
                    body["error"]["code"].is_string(),
                    "{what} -> {status} without a JSON error: {body}"
                );
            }
            Ok(())
        })
        .unwrap();
}

/// Lambda event fixtures through the handlers they are for: Graph's validation handshake as
/// API Gateway delivers it (no tenant key), and an SQS batch for the inbound worker with a
/// poison message.
#[tokio::test]
async fn exchange_fixtures_run_through_their_handlers() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../events/");
    let app = app();
    let router = voyage_http::finish(
        voyage_fn_exchange_inbound::router(app.local.deps.clone()),
        voyage_http::Auth::LambdaAuthorizer,
    );
    let req = lambda_http::request::from_str(
        &std::fs::read_to_string(format!("{root}apigw-v2-graph-validation.json")).unwrap(),
    )
    .unwrap();
    let resp = router
        .oneshot(req.map(|b| Body::from(b.to_vec())))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        "Validation: Testing client application reachability for subscription Request-Id: 2e8f8a5c"
    );
    let event: aws_lambda_events::sqs::SqsEvent = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}sqs-exchange-inbound.json")).unwrap(),
    )
    .unwrap();
    let messages: Vec<(String, String)> = event
        .records
        .into_iter()
        .map(|r| (r.message_id.unwrap(), r.body.unwrap()))
        .collect();
    let failed = voyage_fn_exchange_inbound::worker::handle_batch(&app.local.deps, messages).await;
    // The sync request names a connection that does not exist here: done, nothing to do.
    assert_eq!(failed, ["2e1424d4-f796-459a-8184-9c92662be6da"]);
}
