//! The HTTP edge through the whole local router: authentication, the error contract, and a
//! property test that no request makes any route answer 5xx. And the deployed shape without
//! AWS (`deployed_shape`): every Lambda binary started as Lambda starts it, fed the events of
//! `events/`, against moto.

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

#[tokio::test]
async fn a_tenant_key_on_an_internal_route_is_403_whatever_the_body() {
    // Arrange
    let app = app();
    let tenant = key(&app, false).await;
    let routes = [
        "/v1/sessions/changes",
        "/v1/exchange/outbound",
        "/v1/google-sync",
        "/v1/webhooks/dispatch",
    ];

    // Act: an empty object, and a body that is not JSON at all
    let mut answers = Vec::new();
    for route in routes {
        for body in ["{}", "not json"] {
            let (status, out) =
                call(&app.router, post(route, &tenant, "application/json", body)).await;
            answers.push((route, status, out["error"]["code"].clone()));
        }
    }

    // Assert
    let expected: Vec<_> = routes
        .iter()
        .flat_map(|r| [*r, *r])
        .map(|r| (r, StatusCode::FORBIDDEN, json!("forbidden")))
        .collect();
    assert_eq!(answers, expected);
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

/// The deployed shape without AWS: each function binary started against a Lambda Runtime API
/// stand-in (`voyage_tests::lambda`) with its template.yaml environment, moto behind it.
mod deployed_shape {
    use std::time::Duration;

    use serde_json::{json, Value};
    use voyage_tests::lambda::{event, http_answer, http_event, sqs_event, Function, Stack};
    use voyage_tests::receiver::Receiver;

    /// The Lambda authorizer's context for `key`, through the `gateway` binary.
    async fn authorize(gateway: &mut Function, key: &str) -> Value {
        let mut request = event("authorizer-request.json");
        request["headers"]["authorization"] = json!(format!("Bearer {key}"));
        request["identitySource"] = json!([format!("Bearer {key}")]);
        let answer = gateway.invoke(request).await.response();
        assert_eq!(answer["isAuthorized"], true, "{answer}");
        answer["context"].clone()
    }

    /// The EMF lines a function printed on stdout.
    fn emf_lines(f: &Function) -> Vec<Value> {
        f.stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("_aws").is_some())
            .collect()
    }

    /// The function's EMF lines once one satisfies `wanted`, or as they are after 5 s: its
    /// stdout is collected as the process writes it, so a line printed just before the
    /// answer can be read just after it (a CI run once checked too early).
    async fn emf_lines_with(f: &Function, wanted: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let lines = emf_lines(f);
            if lines.iter().any(&wanted) || std::time::Instant::now() >= deadline {
                return lines;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_walks_the_deployed_path_from_authorizer_to_a_receiver() {
        let stack = Stack::create().await;
        let receiver = Receiver::start().await;
        let store = stack.store().await;
        let tenant = voyage_core::auth::create_key(&store, "acme", false, None)
            .await
            .unwrap()
            .plaintext;
        let internal = voyage_core::auth::create_key(&store, "platform", true, None)
            .await
            .unwrap()
            .plaintext;
        // A loopback receiver needs what production refuses: private, plain-HTTP targets.
        let loopback = [
            ("VOYAGE_ALLOW_PRIVATE_WEBHOOK_TARGETS", "true".to_string()),
            ("VOYAGE_ALLOW_HTTP_WEBHOOKS", "true".to_string()),
        ];
        let with_loopback = |binary: &str| {
            let mut env = stack.env(binary);
            env.extend(loopback.iter().cloned());
            env
        };
        let (gateway_env, webhooks_env, worker_env) = (
            stack.env("gateway"),
            with_loopback("webhooks"),
            with_loopback("webhooks-worker"),
        );
        let (mut gateway, mut webhooks, mut worker) = tokio::join!(
            Function::start("gateway", &gateway_env),
            Function::start("webhooks", &webhooks_env),
            Function::start("webhooks-worker", &worker_env),
        );

        // 1. The authorizer resolves the tenant's key; API Gateway passes its context on.
        let context = authorize(&mut gateway, &tenant).await;
        assert_eq!(context["company_id"], "acme");
        // 2. The webhooks function registers the receiver for the tenant.
        let create = http_event(
            "POST",
            "/v1/webhooks",
            Some(context),
            Some(json!({"url": receiver.url("/hook"), "events": ["session.*"]})),
            &[],
        );
        let (status, endpoint) = http_answer(&webhooks.invoke(create).await.response());
        assert_eq!(status, 201, "{endpoint}");
        // 3. The platform's internal key dispatches an event: a delivery is stored and its
        //    wake-up sent to the deliveries queue.
        let context = authorize(&mut gateway, &internal).await;
        assert_eq!(context["internal"], true);
        let dispatch = http_event(
            "POST",
            "/v1/webhooks/dispatch",
            Some(context),
            Some(
                json!({"company_id": "acme", "event": "session.created", "payload": {"session_id": "s1"}}),
            ),
            &[],
        );
        let (status, dispatched) = http_answer(&webhooks.invoke(dispatch).await.response());
        assert_eq!(status, 202, "{dispatched}");
        let delivery_id = dispatched["deliveries"][0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        // 4. SQS hands the wake-up to the worker, as the event source mapping would.
        let sqs = aws_sdk_sqs::Client::new(&voyage_tests::fixtures::aws().await);
        let queue = voyage_aws::SqsQueue::new(sqs, stack.webhooks.url.clone());
        use voyage_core::ports::Queue;
        let messages = queue.receive(10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(messages.len(), 1);
        let batch: Vec<(&str, &str)> = messages
            .iter()
            .map(|m| (m.id.as_str(), m.body.as_str()))
            .collect();
        let answer = worker
            .invoke(sqs_event(&stack.webhooks.arn, &batch))
            .await
            .response();
        assert_eq!(answer, json!({"batchItemFailures": []}));
        // 5. The receiver got the signed event.
        let got = receiver.wait_for(1, Duration::from_secs(5)).await;
        assert_eq!(got[0].path, "/hook");
        assert_eq!(
            got[0].header("x-webhook-delivery").as_deref(),
            Some(delivery_id.as_str())
        );
        assert!(got[0].header("webhook-signature").is_some());
        let body: Value = serde_json::from_str(&got[0].body).unwrap();
        assert_eq!(body["type"], "session.created");
        assert_eq!(body["data"], json!({"session_id": "s1", "sequence": 1}));
        // 6. The worker logged the invocation's metrics as EMF on stdout.
        let delivered =
            |l: &Value| l["webhook_attempts"] == json!(1.0) && l["outcome"] == "delivered";
        let emf = emf_lines_with(&worker, delivered).await;
        assert!(
            emf.iter().any(delivered),
            "no EMF line for the attempt in:\n{}",
            worker.stdout()
        );
        assert!(emf
            .iter()
            .all(|l| l["function"] == "voyage-webhooks-worker"));
    }

    /// Registers `url` for `company` and dispatches one event to it through the webhooks
    /// binary; returns the wake-up message the deliveries queue then holds.
    async fn dispatched_wake_up(
        stack: &Stack,
        webhooks: &mut Function,
        company: &str,
        url: String,
    ) -> voyage_core::ports::ReceivedMessage {
        let tenant = json!({"company_id": company, "key_id": "key_01example", "internal": false});
        let platform =
            json!({"company_id": "platform", "key_id": "key_02example", "internal": true});
        let create = http_event(
            "POST",
            "/v1/webhooks",
            Some(tenant),
            Some(json!({"url": url, "events": ["session.*"]})),
            &[],
        );
        let (status, endpoint) = http_answer(&webhooks.invoke(create).await.response());
        assert_eq!(status, 201, "{endpoint}");
        let dispatch = http_event(
            "POST",
            "/v1/webhooks/dispatch",
            Some(platform),
            Some(
                json!({"company_id": company, "event": "session.created", "payload": {"session_id": "s1"}}),
            ),
            &[],
        );
        let (status, dispatched) = http_answer(&webhooks.invoke(dispatch).await.response());
        assert_eq!(status, 202, "{dispatched}");
        let sqs = aws_sdk_sqs::Client::new(&voyage_tests::fixtures::aws().await);
        let queue = voyage_aws::SqsQueue::new(sqs, stack.webhooks.url.clone());
        use voyage_core::ports::Queue;
        let mut messages = queue.receive(10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(messages.len(), 1);
        messages.remove(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_answers_before_its_deadline_and_hands_back_only_the_unfinished_message() {
        let stack = Stack::create().await;
        let (stuck, quick) = (Receiver::start().await, Receiver::start().await);
        // The stuck receiver never answers (its gate is never opened): the attempt would
        // wait for its 10 s timeout, past the invocation's deadline.
        let never = std::sync::Arc::new(tokio::sync::Notify::new());
        stuck.answer_always(voyage_tests::receiver::Answer::held(200, &never));
        let loopback = |binary: &str| {
            let mut env = stack.env(binary);
            env.push(("VOYAGE_ALLOW_PRIVATE_WEBHOOK_TARGETS", "true".to_string()));
            env.push(("VOYAGE_ALLOW_HTTP_WEBHOOKS", "true".to_string()));
            env
        };
        let (webhooks_env, worker_env) = (loopback("webhooks"), loopback("webhooks-worker"));
        let (mut webhooks, mut worker) = tokio::join!(
            Function::start("webhooks", &webhooks_env),
            Function::start("webhooks-worker", &worker_env),
        );
        let to_stuck = dispatched_wake_up(&stack, &mut webhooks, "acme", stuck.url("/hook")).await;
        let to_quick = dispatched_wake_up(&stack, &mut webhooks, "beta", quick.url("/hook")).await;

        worker.api.set_timeout(Duration::from_secs(4));
        let started = std::time::Instant::now();
        let answer = worker
            .invoke(sqs_event(
                &stack.webhooks.arn,
                &[
                    (to_stuck.id.as_str(), to_stuck.body.as_str()),
                    (to_quick.id.as_str(), to_quick.body.as_str()),
                ],
            ))
            .await
            .response();
        let took = started.elapsed();

        assert!(
            took < Duration::from_secs(4),
            "answered after {took:?}, past the 4 s deadline (Lambda would have ended the \
             invocation and offered the whole batch again)"
        );
        assert_eq!(
            answer,
            json!({"batchItemFailures": [{"itemIdentifier": to_stuck.id}]})
        );
        assert_eq!(quick.received().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_function_binary_answers_its_events_as_lambda_would() {
        let stack = Stack::create().await;
        let start = |binary: &'static str| {
            let env = stack.env(binary);
            async move { Function::start(binary, &env).await }
        };
        let (mut gateway, mut gateway_api, mut webhooks, mut webhooks_worker) = tokio::join!(
            start("gateway"),
            start("gateway-api"),
            start("webhooks"),
            start("webhooks-worker")
        );
        let (mut google_sync, mut google_sync_worker, mut inbound, mut inbound_worker) = tokio::join!(
            start("google-sync"),
            start("google-sync-worker"),
            start("exchange-inbound"),
            start("exchange-inbound-worker")
        );
        let (mut outbound, mut outbound_worker, mut scheduled) = tokio::join!(
            start("exchange-outbound"),
            start("exchange-outbound-worker"),
            start("scheduled")
        );
        let acme = json!({"company_id": "acme", "key_id": "key_01example", "internal": false});
        let platform =
            json!({"company_id": "platform", "key_id": "key_02example", "internal": true});

        // gateway: an unknown key is let through with the error in the context (the function
        // answers the contract's JSON 401).
        let answer = gateway
            .invoke(event("authorizer-request.json"))
            .await
            .response();
        assert_eq!(
            answer,
            json!({"isAuthorized": true, "context": {"error": "unauthorized"}})
        );

        // gateway-api: the authorizer's context is the caller; a bad key's context is a 401.
        let (status, me) = http_answer(
            &gateway_api
                .invoke(event("apigw-v2-get-me.json"))
                .await
                .response(),
        );
        assert_eq!((status, &me["company_id"]), (200, &json!("acme")), "{me}");
        let (status, err) = http_answer(
            &gateway_api
                .invoke(event("apigw-v2-get-me-bad-key.json"))
                .await
                .response(),
        );
        assert_eq!(status, 401, "{err}");
        assert_eq!(err["error"]["code"], "unauthorized");
        // gateway-api also answers the public routes, with no authorizer (`Authorizer: NONE`).
        let (status, health) = http_answer(
            &gateway_api
                .invoke(http_event("GET", "/health", None, None, &[]))
                .await
                .response(),
        );
        assert_eq!((status, health), (200, json!({"status": "ok"})));
        let (status, document) = http_answer(
            &gateway_api
                .invoke(http_event("GET", "/openapi.json", None, None, &[]))
                .await
                .response(),
        );
        assert_eq!(status, 200);
        assert_eq!(document, voyage::openapi());

        // webhooks: the tenant's endpoints (none yet).
        let (status, list) = http_answer(
            &webhooks
                .invoke(http_event(
                    "GET",
                    "/v1/webhooks",
                    Some(acme.clone()),
                    None,
                    &[],
                ))
                .await
                .response(),
        );
        assert_eq!(status, 200, "{list}");

        // webhooks-worker: a poison message fails alone.
        let answer = webhooks_worker
            .invoke(sqs_event(&stack.webhooks.arn, &[("poison-1", "{not json")]))
            .await
            .response();
        assert_eq!(
            answer,
            json!({"batchItemFailures": [{"itemIdentifier": "poison-1"}]})
        );

        // google-sync: a push for a channel nobody opened.
        let push = http_event(
            "POST",
            "/v1/google-sync/notifications",
            None,
            None,
            &[
                ("x-goog-channel-id", "no-such-channel"),
                ("x-goog-channel-token", "t"),
                ("x-goog-resource-state", "exists"),
                ("x-goog-message-number", "2"),
            ],
        );
        let (status, err) = http_answer(&google_sync.invoke(push).await.response());
        assert_eq!(status, 404, "{err}");
        assert_eq!(err["error"]["code"], "unknown_channel");

        // google-sync-worker: a sync of a connection that is gone is done; poison fails alone.
        let gone = json!({"kind": voyage_core::google::push::SYNC_KIND, "payload": {"company_id": "acme", "connection_id": "conn_gone"}}).to_string();
        let answer = google_sync_worker
            .invoke(sqs_event(
                &stack.google.arn,
                &[("m1", &gone), ("poison-2", "{not json")],
            ))
            .await
            .response();
        assert_eq!(
            answer,
            json!({"batchItemFailures": [{"itemIdentifier": "poison-2"}]})
        );

        // exchange-inbound: Graph's validation handshake is answered with the token, as text.
        let answer = inbound
            .invoke(event("apigw-v2-graph-validation.json"))
            .await
            .response();
        let (status, token) = http_answer(&answer);
        assert_eq!(status, 200);
        assert_eq!(
            token,
            json!("Validation: Testing client application reachability for subscription Request-Id: 2e8f8a5c")
        );
        assert!(answer["headers"]["content-type"]
            .as_str()
            .unwrap()
            .starts_with("text/plain"));

        // exchange-inbound-worker: the example batch (a connection unknown here, then poison).
        let answer = inbound_worker
            .invoke(event("sqs-exchange-inbound.json"))
            .await
            .response();
        assert_eq!(
            answer,
            json!({"batchItemFailures": [{"itemIdentifier": "2e1424d4-f796-459a-8184-9c92662be6da"}]})
        );
        let skipped =
            |l: &Value| l["exchange_delta_rounds"] == json!(1.0) && l["outcome"] == "skipped";
        assert!(
            emf_lines_with(&inbound_worker, skipped)
                .await
                .iter()
                .any(skipped),
            "{}",
            inbound_worker.stdout()
        );

        // exchange-outbound: a valid session for a staff member without Exchange.
        let session = json!({"action": "created", "session": {"id": "s1", "company_id": "acme", "staff_id": "ann", "start": format!("{d0}T09:00:00Z", d0 = voyage_tests::dates::date(0)), "end": format!("{d0}T10:00:00Z", d0 = voyage_tests::dates::date(0)), "time_zone": "Europe/Berlin", "title": "Intro call"}});
        let (status, err) = http_answer(
            &outbound
                .invoke(http_event(
                    "POST",
                    "/v1/exchange/outbound",
                    Some(platform),
                    Some(session.clone()),
                    &[],
                ))
                .await
                .response(),
        );
        assert_eq!(status, 404, "{err}");
        assert_eq!(err["error"]["code"], "exchange_connection_not_found");

        // exchange-outbound-worker: the same change from EventBridge is not a failure.
        let change = json!({"version": "0", "id": "e1", "source": "voyage.platform", "detail-type": "session.changed", "account": "123456789012", "time": "2026-11-30T09:00:00Z", "region": "us-east-1", "resources": [], "detail": session}).to_string();
        let answer = outbound_worker
            .invoke(sqs_event(&stack.outbound.arn, &[("m2", &change)]))
            .await
            .response();
        assert_eq!(answer, json!({"batchItemFailures": []}));

        // scheduled: both EventBridge rule inputs run their jobs on an empty stack.
        for input in [
            "scheduled-five-minutes.json",
            "scheduled-purge-expired.json",
        ] {
            let reports = scheduled.invoke(event(input)).await.response();
            assert!(
                reports.as_array().is_some_and(|r| !r.is_empty()),
                "{input}: {reports}\n{}",
                scheduled.stderr()
            );
        }
        // An unknown schedule is the function's error, reported to the Runtime API.
        match scheduled.invoke(json!({"schedule": "hourly"})).await {
            voyage_tests::lambda::Outcome::Error(e) => {
                assert!(e["errorMessage"].is_string(), "{e}")
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
}
