//! Outbound webhooks end to end through the local system: real HTTP receivers on loopback,
//! the in-process queue and worker, signatures checked by the GitHub vector's algorithm and
//! by the reference Standard Webhooks verifier (PyPI `standardwebhooks`).

use std::time::Duration;

use serde_json::{json, Value};
use voyage_core::signing;
use voyage_tests::app::TestApp;
use voyage_tests::receiver::{Answer, Receiver};

const PRIVATE_OK: (&str, &str) = ("VOYAGE_ALLOW_PRIVATE_WEBHOOK_TARGETS", "true");
const HTTP_OK: (&str, &str) = ("VOYAGE_ALLOW_HTTP_WEBHOOKS", "true");
const FAST_RETRIES: (&str, &str) = ("VOYAGE_WEBHOOK_RETRY_DELAYS", "1s,2s");

async fn endpoint(app: &TestApp, key: &str, url: &str, events: Value) -> Value {
    let (status, body) = app
        .call(
            "POST",
            "/v1/webhooks",
            key,
            Some(json!({"url": url, "events": events})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn dispatch(app: &TestApp, internal: &str, event: &str, extra: Value) -> Value {
    let mut body = json!({"company_id": "acme", "event": event, "payload": {"session_id": "s1"}});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            body[k] = v;
        }
    }
    let (status, answer) = app
        .call("POST", "/v1/webhooks/dispatch", internal, Some(body))
        .await;
    assert_eq!(status, 202, "{answer}");
    answer
}

/// Verifies with the reference implementation. Fails the test when Python or the package is
/// missing (scripts/test provides both).
fn standard_verify(secret: &str, headers: &[(&str, String)], body: &str) -> bool {
    let python = std::env::var("VOYAGE_STANDARDWEBHOOKS_PYTHON")
        .expect("VOYAGE_STANDARDWEBHOOKS_PYTHON is not set: run ./scripts/test");
    let input = json!({
        "secret": secret,
        "headers": headers.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "body": body,
    });
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
d = json.load(sys.stdin)
try:
    Webhook(d["secret"]).verify(d["body"], d["headers"])
    print("ok")
except Exception as e:
    print("fail", e)
"#;
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "ok"
}

fn std_headers(r: &voyage_tests::receiver::Received) -> Vec<(&'static str, String)> {
    vec![
        ("webhook-id", r.header("webhook-id").unwrap()),
        ("webhook-timestamp", r.header("webhook-timestamp").unwrap()),
        ("webhook-signature", r.header("webhook-signature").unwrap()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatched_event_arrives_signed_both_ways() {
    let receiver = Receiver::start().await;
    let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    let created = endpoint(&app, &tenant, &receiver.url("/hook"), json!(["session.*"])).await;
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(created["status"], "active");

    let answer = dispatch(&app, &internal, "session.cancelled", json!({})).await;
    assert_eq!(answer["deliveries"].as_array().unwrap().len(), 1);
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let r = &got[0];
    // The body is the contract's envelope.
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["id"], answer["event_id"]);
    assert_eq!(body["type"], "session.cancelled");
    assert_eq!(body["company_id"], "acme");
    assert_eq!(body["data"], json!({"session_id": "s1"}));
    assert!(body["created_at"].is_string());
    // Headers.
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(r
        .header("user-agent")
        .unwrap()
        .starts_with("Voyage-Webhooks/"));
    assert_eq!(
        r.header("x-webhook-event").as_deref(),
        Some("session.cancelled")
    );
    let delivery_id = answer["deliveries"][0]["id"].as_str().unwrap();
    assert_eq!(r.header("x-webhook-delivery").as_deref(), Some(delivery_id));
    assert_eq!(r.header("webhook-id").as_deref(), Some(delivery_id));
    // GitHub's convention: HMAC-SHA256 of the exact body, keyed with the secret as shown.
    assert_eq!(
        r.header("x-webhook-signature-256").unwrap(),
        signing::github_signature(&secret, r.body.as_bytes())
    );
    // Standard Webhooks: the reference verifier accepts it, and rejects a tampered body.
    assert!(standard_verify(&secret, &std_headers(r), &r.body));
    assert!(!standard_verify(
        &secret,
        &std_headers(r),
        &r.body.replace("s1", "s2")
    ));

    // The delivery log shows the successful attempt.
    let (status, log) = app
        .call(
            "GET",
            &format!("/v1/webhooks/deliveries/{delivery_id}"),
            &tenant,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(log["status"], "succeeded");
    assert_eq!(log["attempts"][0]["status_code"], 200);
    assert_eq!(log["attempts"][0]["response_body"], "receiver says hi");
    // The secret is never shown again.
    let (_, read) = app
        .call(
            "GET",
            &format!("/v1/webhooks/{}", created["id"].as_str().unwrap()),
            &tenant,
            None,
        )
        .await;
    assert!(read.get("secret").is_none() && !read.to_string().contains(&secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_is_retried_on_schedule_until_it_succeeds() {
    let receiver = Receiver::start().await;
    receiver.script([Answer::status(500), Answer::status(503)]);
    let app = TestApp::start(&[PRIVATE_OK, HTTP_OK, FAST_RETRIES]);
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    endpoint(&app, &tenant, &receiver.url("/hook"), json!(["*"])).await;
    let answer = dispatch(&app, &internal, "session.created", json!({})).await;
    let got = receiver.wait_for(3, Duration::from_secs(15)).await;
    // Waits follow the schedule (1 s, then 2 s), each at least as long as scheduled.
    let first_gap = got[1].at - got[0].at;
    let second_gap = got[2].at - got[1].at;
    assert!(first_gap >= Duration::from_millis(950), "{first_gap:?}");
    assert!(second_gap >= Duration::from_millis(1950), "{second_gap:?}");
    // Every retry carries the same delivery id.
    let ids: Vec<_> = got.iter().map(|r| r.header("x-webhook-delivery")).collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    let delivery_id = answer["deliveries"][0]["id"].as_str().unwrap();
    let mut log = Value::Null;
    for _ in 0..50 {
        log = app
            .call(
                "GET",
                &format!("/v1/webhooks/deliveries/{delivery_id}"),
                &tenant,
                None,
            )
            .await
            .1;
        if log["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(log["status"], "succeeded", "{log}");
    let codes: Vec<_> = log["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(codes, [json!(500), json!(503), json!(200)]);
    assert!(log["attempts"][0]["next_retry_at"].is_string());
    assert_eq!(log["attempts"][0]["error_class"], "http_status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_run_out_and_the_delivery_fails() {
    let receiver = Receiver::start().await;
    receiver.answer_always(Answer::status(500));
    let app = TestApp::start(&[PRIVATE_OK, HTTP_OK, ("VOYAGE_WEBHOOK_RETRY_DELAYS", "1s")]);
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    let ep = endpoint(&app, &tenant, &receiver.url("/hook"), json!(["*"])).await;
    dispatch(&app, &internal, "session.created", json!({})).await;
    receiver.wait_for(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, failed) = app
        .call(
            "GET",
            &format!(
                "/v1/webhooks/{}/deliveries?status=failed",
                ep["id"].as_str().unwrap()
            ),
            &tenant,
            None,
        )
        .await;
    assert_eq!(failed["data"].as_array().unwrap().len(), 1, "{failed}");
    assert_eq!(failed["data"][0]["attempt_count"], 2);
    // No third attempt.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.received().len(), 2);
    // Redelivery sends it again, as a new delivery of the same event.
    let old = failed["data"][0]["id"].as_str().unwrap();
    receiver.answer_always(Answer::status(200));
    let (status, again) = app
        .call(
            "POST",
            &format!("/v1/webhooks/deliveries/{old}/redeliver"),
            &tenant,
            None,
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(again["redelivery_of"], old);
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(
        got[2].header("x-webhook-delivery").as_deref(),
        again["id"].as_str()
    );
    // The log lists the newest delivery first.
    let (_, log) = app
        .call(
            "GET",
            &format!("/v1/webhooks/{}/deliveries", ep["id"].as_str().unwrap()),
            &tenant,
            None,
        )
        .await;
    let ids: Vec<&str> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [again["id"].as_str().unwrap(), old]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint_and_tells_the_others() {
    let gone = Receiver::start().await;
    gone.answer_always(Answer::status(410));
    let other = Receiver::start().await;
    let app = TestApp::start(&[PRIVATE_OK, HTTP_OK, FAST_RETRIES]);
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    let ep = endpoint(&app, &tenant, &gone.url("/gone"), json!(["session.*"])).await;
    endpoint(&app, &tenant, &other.url("/other"), json!(["webhook.*"])).await;
    dispatch(&app, &internal, "session.created", json!({})).await;
    let got = other.wait_for(1, Duration::from_secs(10)).await;
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["type"], "webhook.endpoint.disabled");
    assert_eq!(body["data"]["endpoint_id"], ep["id"]);
    let (_, read) = app
        .call(
            "GET",
            &format!("/v1/webhooks/{}", ep["id"].as_str().unwrap()),
            &tenant,
            None,
        )
        .await;
    assert_eq!(read["status"], "disabled");
    assert!(read["disabled_reason"].as_str().unwrap().contains("410"));
    // Exactly one attempt: 410 is not retried.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(gone.received().len(), 1);
    // Disabled endpoints receive nothing further.
    dispatch(&app, &internal, "session.updated", json!({})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gone.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_receive_only_what_they_subscribe_to() {
    let sessions = Receiver::start().await;
    let exact = Receiver::start().await;
    let everything = Receiver::start().await;
    let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    endpoint(&app, &tenant, &sessions.url("/s"), json!(["session.*"])).await;
    endpoint(
        &app,
        &tenant,
        &exact.url("/e"),
        json!(["session.cancelled"]),
    )
    .await;
    endpoint(&app, &tenant, &everything.url("/a"), json!(["*"])).await;
    // Another company's endpoint never sees acme's events.
    let other_tenant = app.key("zeta", false).await;
    let foreign = Receiver::start().await;
    endpoint(&app, &other_tenant, &foreign.url("/z"), json!(["*"])).await;
    let a = dispatch(&app, &internal, "session.created", json!({})).await;
    assert_eq!(a["deliveries"].as_array().unwrap().len(), 2);
    let b = dispatch(&app, &internal, "session.cancelled", json!({})).await;
    assert_eq!(b["deliveries"].as_array().unwrap().len(), 3);
    let c = dispatch(&app, &internal, "connection.error", json!({})).await;
    assert_eq!(c["deliveries"].as_array().unwrap().len(), 1);
    everything.wait_for(3, Duration::from_secs(10)).await;
    sessions.wait_for(2, Duration::from_secs(10)).await;
    exact.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((sessions.received().len(), exact.received().len()), (2, 1));
    assert!(foreign.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_addresses_are_refused_after_resolution() {
    let receiver = Receiver::start().await;
    // Private targets NOT allowed here.
    let app = TestApp::start(&[HTTP_OK]);
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    let port = receiver.addr.port();
    for url in [
        "http://169.254.169.254/latest/meta-data".to_string(),
        format!("http://localhost:{port}/hook"),
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
    ] {
        endpoint(&app, &tenant, &url, json!(["*"])).await;
    }
    let answer = dispatch(&app, &internal, "session.created", json!({})).await;
    for d in answer["deliveries"].as_array().unwrap() {
        let id = d["id"].as_str().unwrap();
        let mut log = Value::Null;
        for _ in 0..100 {
            log = app
                .call(
                    "GET",
                    &format!("/v1/webhooks/deliveries/{id}"),
                    &tenant,
                    None,
                )
                .await
                .1;
            if log["status"] != "pending" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(log["status"], "failed", "{log}");
        assert_eq!(log["attempts"][0]["error_class"], "ssrf_blocked", "{log}");
    }
    assert!(
        receiver.received().is_empty(),
        "an internal address was reached"
    );
}

/// A DNS name that resolves to loopback is refused like the address itself.
#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused() {
    use std::sync::Arc;
    use voyage_core::webhooks::{OutgoingRequest, Transport, TransportError};
    let receiver = Receiver::start().await;
    let lookup: voyage_fn_webhooks::transport::Lookup = Arc::new(|name: String| {
        Box::pin(async move {
            assert_eq!(name, "rebind.attacker.example");
            Ok(vec!["127.0.0.1".parse().unwrap()])
        })
    });
    let request = OutgoingRequest {
        url: format!(
            "http://rebind.attacker.example:{}/hook",
            receiver.addr.port()
        ),
        headers: vec![],
        body: "{}".into(),
        timeout: Duration::from_secs(5),
    };
    let guarded = voyage_fn_webhooks::HttpTransport::with_lookup(false, lookup.clone()).unwrap();
    assert!(matches!(
        guarded.send(request.clone()).await,
        Err(TransportError::Blocked(_))
    ));
    assert!(receiver.received().is_empty());
    // With private targets allowed the same name is reached: the refusal was the guard's.
    let open = voyage_fn_webhooks::HttpTransport::with_lookup(true, lookup).unwrap();
    assert_eq!(open.send(request).await.unwrap().status, 200);
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_rotation_both_secrets_sign_for_the_overlap() {
    let receiver = Receiver::start().await;
    let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
    let tenant = app.key("acme", false).await;
    let created = endpoint(&app, &tenant, &receiver.url("/hook"), json!(["*"])).await;
    let old = created["secret"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap();
    let (status, rotated) = app
        .call(
            "POST",
            &format!("/v1/webhooks/{id}/rotate-secret"),
            &tenant,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(old, new);
    let (status, _) = app
        .call("POST", &format!("/v1/webhooks/{id}/test"), &tenant, None)
        .await;
    assert_eq!(status, 202);
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let r = &got[0];
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["type"], "webhook.test");
    // Receivers holding either secret verify the delivery.
    assert!(standard_verify(&old, &std_headers(r), &r.body));
    assert!(standard_verify(&new, &std_headers(r), &r.body));
    let github = r.header("x-webhook-signature-256").unwrap();
    assert_eq!(
        github,
        format!(
            "{}, {}",
            signing::github_signature(&new, r.body.as_bytes()),
            signing::github_signature(&old, r.body.as_bytes())
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_sends_nothing_new() {
    let receiver = Receiver::start().await;
    let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    endpoint(&app, &tenant, &receiver.url("/hook"), json!(["*"])).await;
    let first = dispatch(
        &app,
        &internal,
        "session.created",
        json!({"idempotency_key": "k-1"}),
    )
    .await;
    let again = dispatch(
        &app,
        &internal,
        "session.created",
        json!({"idempotency_key": "k-1"}),
    )
    .await;
    assert_eq!(first, again);
    let other = dispatch(
        &app,
        &internal,
        "session.created",
        json!({"idempotency_key": "k-2"}),
    )
    .await;
    assert_ne!(first["event_id"], other["event_id"]);
    receiver.wait_for(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 2);
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_stored() {
    let app = TestApp::start(&[]);
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    let cases = [
        (
            json!({"url": "http://example.com/x", "events": ["*"]}),
            "url",
        ),
        (json!({"url": "ftp://example.com", "events": ["*"]}), "url"),
        (
            json!({"url": format!("https://example.com/{}", "a".repeat(2100)), "events": ["*"]}),
            "url",
        ),
        (
            json!({"url": "https://example.com", "events": []}),
            "events",
        ),
        (
            json!({"url": "https://example.com", "events": ["session.*", "sesion.*"]}),
            "events[1]",
        ),
        (
            json!({"url": "https://example.com", "events": ["*"], "secret": "hunter2"}),
            "secret",
        ),
        (
            json!({"url": "https://example.com", "events": ["*"], "retry_schedule": "soon"}),
            "retry_schedule",
        ),
        (json!({"url": "https://example.com"}), "events"),
    ];
    for (body, field) in cases {
        let (status, answer) = app
            .call("POST", "/v1/webhooks", &tenant, Some(body.clone()))
            .await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }
    let (_, listed) = app.call("GET", "/v1/webhooks", &tenant, None).await;
    assert_eq!(listed["data"], json!([]));
    // Dispatch: only internal keys, a known event, an object payload.
    let ok = json!({"company_id": "acme", "event": "session.created", "payload": {}});
    assert_eq!(
        app.call("POST", "/v1/webhooks/dispatch", &tenant, Some(ok))
            .await
            .0,
        403
    );
    for (body, field) in [
        (
            json!({"company_id": "acme", "event": "session.exploded", "payload": {}}),
            "event",
        ),
        (
            json!({"company_id": "acme", "event": "session.created", "payload": [1]}),
            "payload",
        ),
        (
            json!({"company_id": "a#b", "event": "session.created", "payload": {}}),
            "company_id",
        ),
    ] {
        let (status, answer) = app
            .call("POST", "/v1/webhooks/dispatch", &internal, Some(body))
            .await;
        assert_eq!(
            (status.as_u16(), answer["error"]["field"].as_str()),
            (422, Some(field)),
            "{answer}"
        );
    }
    // A caller-chosen secret is accepted and echoed once.
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (status, created) = app
        .call(
            "POST",
            "/v1/webhooks",
            &tenant,
            Some(json!({"url": "https://example.com/h", "events": ["*"], "secret": secret})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), created["secret"].as_str()),
        (201, Some(secret))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_wake_up_was_lost_is_redriven_by_the_sweep() {
    use voyage_core::deps::QueueName;
    let receiver = Receiver::start().await;
    let app = TestApp::start_idle(&[PRIVATE_OK, HTTP_OK]);
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    endpoint(&app, &tenant, &receiver.url("/hook"), json!(["*"])).await;
    dispatch(&app, &internal, "session.created", json!({})).await;
    // Lose the wake-up.
    let queue = app.local.deps.queue(QueueName::WebhookDeliveries).unwrap();
    let lost = queue.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(lost.len(), 1);
    queue.ack(&lost[0].receipt).await.unwrap();
    app.local.spawn_consumers().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.received().is_empty());
    // The sweep finds the record and wakes it again.
    let redriven = voyage_core::webhooks::redrive_due(&app.local.deps, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(redriven, 1);
    receiver.wait_for(1, Duration::from_secs(10)).await;
    // Nothing is due any more.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        voyage_core::webhooks::redrive_due(&app.local.deps, Duration::ZERO)
            .await
            .unwrap(),
        0
    );
}

/// The Lambda path: DynamoDB and SQS on moto, the worker's batch handler as the
/// `webhooks-worker` Lambda calls it, a poison message failing alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_worker_delivers_from_sqs_with_partial_batch_failures() {
    use std::sync::Arc;
    use voyage_core::deps::{Deps, QueueName};
    use voyage_core::ports::{Queue, SystemClock};
    use voyage_core::store::Store;
    use voyage_core::webhooks::{Dispatch, WebhookEngine};
    let receiver = Receiver::start().await;
    let table = voyage_tests::fixtures::dynamo_table().await;
    let sqs = aws_sdk_sqs::Client::new(&voyage_tests::fixtures::aws().await);
    let (url, _) = voyage_tests::fixtures::create_sqs_pair(&sqs).await;
    let queue: Arc<dyn Queue> = Arc::new(voyage_aws::SqsQueue::new(sqs, url));
    let config = voyage_core::config::Config::from_lookup(|k| match k {
        "VOYAGE_ALLOW_PRIVATE_WEBHOOK_TARGETS" | "VOYAGE_ALLOW_HTTP_WEBHOOKS" => {
            Some("true".into())
        }
        _ => None,
    })
    .unwrap();
    let store = Store::new(table.it.clone(), Arc::new(SystemClock));
    let deps =
        Arc::new(Deps::new(store, config).with_queue(QueueName::WebhookDeliveries, queue.clone()));
    let engine = WebhookEngine::new(
        deps.clone(),
        Arc::new(voyage_fn_webhooks::HttpTransport::new(true).unwrap()),
    );
    // The API through the same router the Lambda serves, keys resolved on DynamoDB.
    let router = voyage_http::finish(
        voyage_fn_webhooks::router(engine.clone()),
        voyage_http::Auth::Keys(deps.store.clone()),
    );
    let key = voyage_core::auth::create_key(&deps.store, "acme", false, None)
        .await
        .unwrap()
        .plaintext;
    let req = http::Request::post("/v1/webhooks")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            json!({"url": receiver.url("/hook"), "events": ["*"]}).to_string(),
        ))
        .unwrap();
    use tower::ServiceExt;
    assert_eq!(router.oneshot(req).await.unwrap().status(), 201);
    let mut payload = serde_json::Map::new();
    payload.insert("session_id".into(), json!("s1"));
    let out = engine
        .dispatch(Dispatch {
            company_id: "acme".into(),
            event_type: "session.created".into(),
            payload,
            idempotency_key: None,
            only_endpoint: None,
        })
        .await
        .unwrap();
    // What SQS hands the Lambda: the wake-up, plus a poison message.
    let mut batch: Vec<(String, String)> = Vec::new();
    for m in queue.receive(10, Duration::from_secs(2)).await.unwrap() {
        batch.push((m.id, m.body));
    }
    assert_eq!(batch.len(), 1);
    batch.push(("poison-1".into(), "{not json".into()));
    let failed = voyage_fn_webhooks::worker::handle_batch(&engine, batch).await;
    assert_eq!(failed, ["poison-1"]);
    let got = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(
        got[0].header("x-webhook-delivery").as_deref(),
        out.deliveries[0].id.as_str().into()
    );
    let (d, attempts) = deps
        .store
        .delivery_with_attempts("acme", &out.deliveries[0].id)
        .await
        .unwrap();
    assert_eq!(d.status, voyage_core::model::DeliveryStatus::Succeeded);
    assert_eq!(attempts.len(), 1);
    // A platform event from EventBridge, as the rule's SQS target delivers it.
    let event = json!({
        "version": "0", "id": "e1", "source": "voyage.platform", "detail-type": "session.cancelled",
        "account": "123456789012", "time": "2026-11-29T18:00:00Z", "region": "us-east-1", "resources": [],
        "detail": {"company_id": "acme", "payload": {"session_id": "s2"}}
    });
    let failed =
        voyage_fn_webhooks::worker::handle_batch(&engine, vec![("m2".into(), event.to_string())])
            .await;
    assert!(failed.is_empty());
    let wake = queue.receive(10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(wake.len(), 1);
    let failed = voyage_fn_webhooks::worker::handle_batch(
        &engine,
        vec![(wake[0].id.clone(), wake[0].body.clone())],
    )
    .await;
    assert!(failed.is_empty());
    let got = receiver.wait_for(2, Duration::from_secs(5)).await;
    assert!(got[1].body.contains("\"s2\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_over_a_shorter_schedule() {
    let receiver = Receiver::start().await;
    receiver.script([Answer {
        status: 429,
        headers: vec![("retry-after".into(), "3".into())],
        delay: Duration::ZERO,
    }]);
    let app = TestApp::start(&[PRIVATE_OK, HTTP_OK, ("VOYAGE_WEBHOOK_RETRY_DELAYS", "1s")]);
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    endpoint(&app, &tenant, &receiver.url("/hook"), json!(["*"])).await;
    dispatch(&app, &internal, "session.created", json!({})).await;
    let got = receiver.wait_for(2, Duration::from_secs(15)).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(2900),
        "retried after {gap:?}, before Retry-After"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_event_on_the_local_bus_is_dispatched() {
    use voyage_core::ports::BusEvent;
    let receiver = Receiver::start().await;
    let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
    let tenant = app.key("acme", false).await;
    endpoint(&app, &tenant, &receiver.url("/hook"), json!(["session.*"])).await;
    let bus = app.local.deps.bus.clone().unwrap();
    bus.publish(&[BusEvent::new(
        "session.restored",
        json!({"company_id": "acme", "payload": {"session_id": "s9"}, "idempotency_key": "bus-1"}),
    )])
    .await
    .unwrap();
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(
        (body["type"].as_str(), body["data"]["session_id"].as_str()),
        (Some("session.restored"), Some("s9"))
    );
    // The same event again (same idempotency key) sends nothing new.
    bus.publish(&[BusEvent::new(
        "session.restored",
        json!({"company_id": "acme", "payload": {"session_id": "s9"}, "idempotency_key": "bus-1"}),
    )])
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.received().len(), 1);
}

/// `GET /metrics` on the local system: the Prometheus text shows the delivery that happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_a_delivered_webhook_in_prometheus_text() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let receiver = Receiver::start().await;
    let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    endpoint(&app, &tenant, &receiver.url("/hook"), json!(["session.*"])).await;
    dispatch(&app, &internal, "session.created", json!({})).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    // The counter is recorded once the attempt is stored, just after the receiver answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        // No key: /metrics is open (it shows counts only).
        let resp = app
            .router
            .clone()
            .oneshot(
                http::Request::get("/metrics")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let text = String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        let delivered = text.lines().find_map(|l| {
            l.strip_prefix("voyage_webhook_deliveries_total{outcome=\"succeeded\"} ")
                .and_then(|n| n.parse::<u64>().ok())
        });
        if delivered.is_some_and(|n| n >= 1) {
            assert!(
                text.contains("# TYPE voyage_webhook_attempts_total counter"),
                "{text}"
            );
            assert!(
                text.contains(
                    "voyage_webhook_attempt_ms_bucket{outcome=\"delivered\",le=\"+Inf\"}"
                ),
                "{text}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no delivery counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
