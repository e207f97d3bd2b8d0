//! Outbound webhooks end to end through the local system: real HTTP receivers on loopback,
//! the in-process queue and worker, signatures checked by the GitHub vector's algorithm and
//! by the reference Standard Webhooks verifier (PyPI `standardwebhooks`).

use std::time::Duration;

use serde_json::{json, Value};
use voyage_core::signing;
use voyage_tests::app::TestApp;
use voyage_tests::receiver::{Answer, Receiver};

#[path = "webhooks/review.rs"]
mod review;

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
    // The least each type's schema requires (dispatches are checked against it).
    let payload = if event.starts_with("connection.") {
        json!({"connection_id": "c1"})
    } else {
        json!({"session_id": "s1"})
    };
    let mut body = json!({"company_id": "acme", "event": event, "payload": payload});
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
    // The platform sent no `sequence`: the session's first gets 1 (webhooks::sequence).
    assert_eq!(body["data"], json!({"session_id": "s1", "sequence": 1}));
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

/// The endpoint ids a dispatch answered with, sorted.
fn targets(answer: &Value) -> Vec<String> {
    let mut ids: Vec<String> = answer["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["endpoint_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// `voyage serve` keeps a company's endpoints in memory between dispatches
/// (`store::cache`): every change through it applies to the very next dispatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_null_clears_what_can_be_empty_and_is_refused_for_the_rest() {
    // Arrange: an endpoint with a description and its own retry schedule.
    let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
    let tenant = app.key("acme", false).await;
    let (status, ep) = app
        .call(
            "POST",
            "/v1/webhooks",
            &tenant,
            Some(
                json!({"url": "https://hooks.example.com/x", "events": ["*"],
                        "description": "ops", "retry_schedule": "5s,1m"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{ep}");
    let path = format!("/v1/webhooks/{}", ep["id"].as_str().unwrap());

    // Act: `null` for each field.
    let mut refused = Vec::new();
    for field in ["url", "events", "status", "headers"] {
        let (status, answer) = app
            .call("PATCH", &path, &tenant, Some(json!({ field: null })))
            .await;
        refused.push((status.as_u16(), answer["error"]["field"].clone(), field));
    }
    let (status, cleared) = app
        .call(
            "PATCH",
            &path,
            &tenant,
            Some(json!({"description": null, "retry_schedule": null})),
        )
        .await;

    // Assert: 422 naming each field that has no "none"; the others cleared.
    for (status, named, field) in refused {
        assert_eq!((status, named), (422, json!(field)), "{field}");
    }
    assert_eq!(status, 200, "{cleared}");
    assert_eq!(cleared["description"], Value::Null);
    assert_eq!(cleared["retry_schedule"], Value::Null);
    assert_eq!(cleared["url"], "https://hooks.example.com/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_changes_apply_to_the_very_next_dispatch() {
    let receiver = Receiver::start().await;
    let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    let first = endpoint(&app, &tenant, &receiver.url("/1"), json!(["*"])).await;
    let first = first["id"].as_str().unwrap().to_string();
    let a = dispatch(&app, &internal, "connection.active", json!({})).await;
    assert_eq!(targets(&a), vec![first.clone()]);
    // Made after the list was read: it has the next event.
    let second = endpoint(&app, &tenant, &receiver.url("/2"), json!(["*"])).await;
    let second = second["id"].as_str().unwrap().to_string();
    let b = dispatch(&app, &internal, "connection.active", json!({})).await;
    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    assert_eq!(targets(&b), both);
    // Subscribed elsewhere: the next event is not its.
    let (status, body) = app
        .call(
            "PATCH",
            &format!("/v1/webhooks/{first}"),
            &tenant,
            Some(json!({"events": ["session.*"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let c = dispatch(&app, &internal, "connection.active", json!({})).await;
    assert_eq!(targets(&c), vec![second.clone()]);
    // Deleted: nothing more.
    let (status, body) = app
        .call("DELETE", &format!("/v1/webhooks/{second}"), &tenant, None)
        .await;
    assert_eq!(status, 204, "{body}");
    let d = dispatch(&app, &internal, "connection.active", json!({})).await;
    assert!(targets(&d).is_empty(), "{d}");
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
async fn a_second_rotation_within_the_day_leaves_the_first_secret_its_24_hours() {
    // Arrange: an endpoint's secret rotated twice (S0 -> S1 -> S2)
    let receiver = Receiver::start().await;
    let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
    let tenant = app.key("acme", false).await;
    let created = endpoint(&app, &tenant, &receiver.url("/hook"), json!(["*"])).await;
    let id = created["id"].as_str().unwrap();
    let mut secrets = vec![created["secret"].as_str().unwrap().to_string()];
    for _ in 0..2 {
        let (status, rotated) = app
            .call(
                "POST",
                &format!("/v1/webhooks/{id}/rotate-secret"),
                &tenant,
                None,
            )
            .await;
        assert_eq!(status, 200);
        secrets.push(rotated["secret"].as_str().unwrap().to_string());
    }

    // Act
    let (status, _) = app
        .call("POST", &format!("/v1/webhooks/{id}/test"), &tenant, None)
        .await;
    assert_eq!(status, 202);
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;

    // Assert: a receiver holding any of the three verifies
    let r = &got[0];
    let verified: Vec<bool> = secrets
        .iter()
        .map(|s| standard_verify(s, &std_headers(r), &r.body))
        .collect();
    assert_eq!(verified, [true, true, true]);
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
            json!({"url": "https://example.com", "events": ["session.created", "*", "session.created"]}),
            "events[2]",
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
    // The sweep finds the record and wakes it again.
    let redriven = voyage_core::webhooks::redrive_due(&app.local.deps, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(redriven, 1);
    app.local.spawn_consumers().unwrap();
    receiver.wait_for(1, Duration::from_secs(10)).await;
    // Exactly once, although the start-up sweep of the consumers looked too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 1);
    // Nothing is due any more.
    assert_eq!(
        voyage_core::webhooks::redrive_due(&app.local.deps, Duration::ZERO)
            .await
            .unwrap(),
        0
    );
}

/// The local system hands due deliveries to its worker in process; the records are the
/// durable copy: a delivery left due when the process stopped (no worker ever saw it) is
/// found by the start-up sweep of the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_left_due_by_a_stopped_process_is_sent_by_the_next_one() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        voyage_core::config::Config::from_lookup(|k| match k {
            "VOYAGE_ALLOW_PRIVATE_WEBHOOK_TARGETS" | "VOYAGE_ALLOW_HTTP_WEBHOOKS" => {
                Some("true".into())
            }
            _ => None,
        })
        .unwrap()
    };
    let event_id;
    {
        // A process whose worker never runs: the answer is given, nothing is sent.
        let first = voyage::Local::open(dir.path(), config()).unwrap();
        let (sender, _never_read) = tokio::sync::mpsc::channel(16);
        assert!(first.webhooks.attach_local_worker(sender));
        let key = voyage_core::auth::create_key(&first.deps.store, "acme", false, None)
            .await
            .unwrap()
            .plaintext;
        let router = first.router();
        let app = |method: &str, path: &str, body: Value| {
            use tower::ServiceExt;
            let req = http::Request::builder()
                .method(method)
                .uri(path)
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.to_string()))
                .unwrap();
            router.clone().oneshot(req)
        };
        let created = app(
            "POST",
            "/v1/webhooks",
            json!({"url": receiver.url("/hook"), "events": ["*"]}),
        )
        .await
        .unwrap();
        assert_eq!(created.status(), 201);
        let mut payload = serde_json::Map::new();
        payload.insert("n".into(), json!(1));
        let out = first
            .webhooks
            .dispatch(voyage_core::webhooks::Dispatch {
                company_id: "acme".into(),
                event_type: "connection.active".into(),
                payload,
                idempotency_key: None,
                only_endpoint: None,
            })
            .await
            .unwrap();
        event_id = out.event_id;
        // No queue message was written for it: the record is the only copy.
        let queue = first
            .deps
            .queue(voyage_core::deps::QueueName::WebhookDeliveries)
            .unwrap();
        assert!(queue.receive(10, Duration::ZERO).await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(receiver.received().is_empty());
    }
    // The next process on the same data sends it.
    let second = voyage::Local::open(dir.path(), config()).unwrap();
    second.spawn_consumers().unwrap();
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["id"], event_id.as_str());
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
        ..Answer::status(429)
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
    let (receiver, app, internal) = session_hook().await;
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

/// Polls a delivery until it is no longer pending; answers its log.
async fn settled(app: &TestApp, key: &str, delivery_id: &str) -> Value {
    let mut log = Value::Null;
    for _ in 0..200 {
        log = app
            .call(
                "GET",
                &format!("/v1/webhooks/deliveries/{delivery_id}"),
                key,
                None,
            )
            .await
            .1;
        if log["status"] != "pending" {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("delivery {delivery_id} still pending: {log}");
}

fn rfc3339_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Bulk recovery, end to end: failures before, inside and after a window, one success
/// inside it; only the failures inside are sent again, as new deliveries of the same events.
mod recovery {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recover_resends_only_the_deliveries_that_failed_in_the_window() {
        let receiver = Receiver::start().await;
        let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
        let tenant = app.key("acme", false).await;
        let internal = app.key("platform", true).await;
        let (status, ep) = app
            .call(
                "POST",
                "/v1/webhooks",
                &tenant,
                Some(json!({"url": receiver.url("/hook"), "events": ["*"], "retry_schedule": ""})),
            )
            .await;
        assert_eq!(status, 201, "{ep}");
        let id = ep["id"].as_str().unwrap().to_string();
        // One delivery per answer, each settled before the next.
        let one = |status: u16| {
            receiver.script([Answer::status(status)]);
            let (app, tenant, internal) = (&app, &tenant, &internal);
            async move {
                let out = dispatch(app, internal, "session.created", json!({})).await;
                let d = out["deliveries"][0]["id"].as_str().unwrap().to_string();
                let log = settled(app, tenant, &d).await;
                (
                    d,
                    log["status"].as_str().unwrap().to_string(),
                    out["event_id"].clone(),
                )
            }
        };
        let (before, s, _) = one(500).await;
        assert_eq!(s, "failed");
        tokio::time::sleep(Duration::from_millis(30)).await;
        let since = rfc3339_now();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (inside_a, s, event_a) = one(500).await;
        assert_eq!(s, "failed");
        let (_ok, s, _) = one(200).await;
        assert_eq!(s, "succeeded");
        let (inside_b, s, event_b) = one(503).await;
        assert_eq!(s, "failed");
        tokio::time::sleep(Duration::from_millis(30)).await;
        let until = rfc3339_now();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let (after, s, _) = one(500).await;
        assert_eq!(s, "failed");
        let sent_so_far = receiver.received().len();
        assert_eq!(sent_so_far, 5);

        // A disabled endpoint refuses, naming why.
        let (status, _) = app
            .call(
                "PATCH",
                &format!("/v1/webhooks/{id}"),
                &tenant,
                Some(json!({"status": "disabled"})),
            )
            .await;
        assert_eq!(status, 200);
        let window = json!({"since": since, "until": until});
        let (status, refused) = app
            .call(
                "POST",
                &format!("/v1/webhooks/{id}/recover"),
                &tenant,
                Some(window.clone()),
            )
            .await;
        assert_eq!(status, 422, "{refused}");
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap()
                .contains("disabled"),
            "{refused}"
        );
        // Re-enabled: what failed before is recoverable.
        let (status, _) = app
            .call(
                "PATCH",
                &format!("/v1/webhooks/{id}"),
                &tenant,
                Some(json!({"status": "active"})),
            )
            .await;
        assert_eq!(status, 200);
        receiver.answer_always(Answer::status(200));
        let (status, answer) = app
            .call(
                "POST",
                &format!("/v1/webhooks/{id}/recover"),
                &tenant,
                Some(window),
            )
            .await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["count"], 2, "{answer}");
        assert_eq!(answer["truncated"], false);
        let got = receiver
            .wait_for(sent_so_far + 2, Duration::from_secs(10))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            receiver.received().len(),
            sent_so_far + 2,
            "only two re-sent"
        );
        // The same events, as new deliveries of the failed ones.
        let mut events: Vec<String> = got[sent_so_far..]
            .iter()
            .map(|r| {
                let body: Value = serde_json::from_str(&r.body).unwrap();
                body["id"].as_str().unwrap().to_string()
            })
            .collect();
        events.sort();
        let mut expected = vec![
            event_a.as_str().unwrap().to_string(),
            event_b.as_str().unwrap().to_string(),
        ];
        expected.sort();
        assert_eq!(events, expected);
        let (_, log) = app
            .call(
                "GET",
                &format!("/v1/webhooks/{id}/deliveries?limit=2"),
                &tenant,
                None,
            )
            .await;
        let mut of: Vec<&str> = log["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["redelivery_of"].as_str().unwrap())
            .collect();
        of.sort();
        let mut originals = vec![inside_a.as_str(), inside_b.as_str()];
        originals.sort();
        assert_eq!(of, originals);
        for r in &got[sent_so_far..] {
            let delivery = r.header("x-webhook-delivery").unwrap();
            assert!(![
                before.as_str(),
                after.as_str(),
                inside_a.as_str(),
                inside_b.as_str()
            ]
            .contains(&delivery.as_str()));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_lists_a_recovered_copy_by_when_it_was_made() {
        // Arrange: a failed delivery, its recovered copy, then a newer delivery
        let receiver = Receiver::start().await;
        let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
        let tenant = app.key("acme", false).await;
        let internal = app.key("platform", true).await;
        let (status, ep) = app
            .call(
                "POST",
                "/v1/webhooks",
                &tenant,
                Some(json!({"url": receiver.url("/hook"), "events": ["*"], "retry_schedule": ""})),
            )
            .await;
        assert_eq!(status, 201, "{ep}");
        let id = ep["id"].as_str().unwrap().to_string();
        let since = rfc3339_now();
        receiver.script([Answer::status(500)]);
        let out = dispatch(&app, &internal, "session.created", json!({})).await;
        let original = out["deliveries"][0]["id"].as_str().unwrap().to_string();
        assert_eq!(settled(&app, &tenant, &original).await["status"], "failed");
        receiver.answer_always(Answer::status(200));
        let (status, answer) = app
            .call(
                "POST",
                &format!("/v1/webhooks/{id}/recover"),
                &tenant,
                Some(json!({"since": since})),
            )
            .await;
        assert_eq!((status.as_u16(), &answer["count"]), (202, &json!(1)));
        receiver.wait_for(2, Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let out = dispatch(&app, &internal, "session.created", json!({})).await;
        let newest = out["deliveries"][0]["id"].as_str().unwrap().to_string();

        // Act
        let (_, log) = app
            .call(
                "GET",
                &format!("/v1/webhooks/{id}/deliveries"),
                &tenant,
                None,
            )
            .await;

        // Assert: newest first, the copy between the two
        let listed: Vec<(&str, Option<&str>)> = log["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["id"].as_str().unwrap(), d["redelivery_of"].as_str()))
            .collect();
        assert_eq!(listed.len(), 3, "{log}");
        assert_eq!(listed[0].0, newest, "{log}");
        assert_eq!(listed[1].1, Some(original.as_str()), "{log}");
        assert_eq!(listed[2].0, original, "{log}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovers_of_one_window_at_once_send_and_count_each_failure_once() {
        // Arrange: twenty failed deliveries of one endpoint
        let receiver = Receiver::start().await;
        let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
        let tenant = app.key("acme", false).await;
        let internal = app.key("platform", true).await;
        let (status, ep) = app
            .call(
                "POST",
                "/v1/webhooks",
                &tenant,
                Some(json!({"url": receiver.url("/hook"), "events": ["*"], "retry_schedule": ""})),
            )
            .await;
        assert_eq!(status, 201, "{ep}");
        let id = ep["id"].as_str().unwrap().to_string();
        let since = rfc3339_now();
        receiver.answer_always(Answer::status(500));
        let mut failed = Vec::new();
        for _ in 0..20 {
            let out = dispatch(&app, &internal, "session.created", json!({})).await;
            failed.push(out["deliveries"][0]["id"].as_str().unwrap().to_string());
        }
        for d in &failed {
            assert_eq!(settled(&app, &tenant, d).await["status"], "failed");
        }
        receiver.answer_always(Answer::status(200));

        // Act: six recovers of the window at once
        let path = format!("/v1/webhooks/{id}/recover");
        let calls = (0..6).map(|_| {
            app.call(
                "POST",
                &path,
                &tenant,
                Some(json!({"since": since.clone()})),
            )
        });
        let answers = futures_util::future::join_all(calls).await;

        // Assert: the counts add up to the failures, and each is sent once
        let total: u64 = answers
            .iter()
            .map(|(status, out)| {
                assert_eq!(status.as_u16(), 202, "{out}");
                out["count"].as_u64().unwrap()
            })
            .sum();
        assert_eq!(total, 20, "{answers:?}");
        receiver.wait_for(40, Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(receiver.received().len(), 40);
    }

    #[tokio::test]
    async fn recover_refuses_bad_windows_naming_the_field() {
        let app = TestApp::start(&[]);
        let tenant = app.key("acme", false).await;
        let ep = endpoint(&app, &tenant, "https://example.com/h", json!(["*"])).await;
        let path = format!("/v1/webhooks/{}/recover", ep["id"].as_str().unwrap());
        let now = chrono::Utc::now();
        let at = |d: chrono::Duration| (now + d).to_rfc3339();
        for (body, field) in [
            (json!({}), "since"),
            (json!({"until": at(chrono::Duration::zero())}), "since"),
            (json!({"since": "yesterday"}), "since"),
            (json!({"since": "2026-11-29T18:00:00"}), "since"),
            (json!({"since": 1_700_000_000}), "since"),
            (
                json!({"since": at(chrono::Duration::hours(-1)), "until": "soon"}),
                "until",
            ),
            // since after until
            (
                json!({"since": at(chrono::Duration::hours(-1)), "until": at(chrono::Duration::hours(-2))}),
                "since",
            ),
            // since in the future (until is now)
            (json!({"since": at(chrono::Duration::hours(1))}), "since"),
            // wider than 30 days
            (json!({"since": at(chrono::Duration::days(-31))}), "since"),
            (
                json!({"since": at(chrono::Duration::hours(-1)), "status": "failed"}),
                "status",
            ),
        ] {
            let (status, answer) = app.call("POST", &path, &tenant, Some(body.clone())).await;
            assert_eq!(status, 422, "{body}: {answer}");
            assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
        }
        // An empty window of a healthy endpoint recovers nothing.
        let (status, answer) = app
            .call(
                "POST",
                &path,
                &tenant,
                Some(json!({"since": at(chrono::Duration::days(-30) + chrono::Duration::minutes(1))})),
            )
            .await;
        assert_eq!((status.as_u16(), answer["count"].clone()), (202, json!(0)));
        // Another company's endpoint is not found.
        let other = app.key("zeta", false).await;
        let (status, _) = app
            .call(
                "POST",
                &path,
                &other,
                Some(json!({"since": at(chrono::Duration::hours(-1))})),
            )
            .await;
        assert_eq!(status, 404);
    }
}

/// `webhook.endpoint.failing` and `webhook.endpoint.recovered` through real receivers.
mod health_events {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_other_endpoints_hear_failing_once_and_recovered_once() {
        let bad = Receiver::start().await;
        bad.script([Answer::status(500), Answer::status(500)]);
        let ops = Receiver::start().await;
        let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
        let tenant = app.key("acme", false).await;
        let internal = app.key("platform", true).await;
        let (_, ep) = app
            .call(
                "POST",
                "/v1/webhooks",
                &tenant,
                Some(json!({"url": bad.url("/bad"), "events": ["*"], "retry_schedule": ""})),
            )
            .await;
        endpoint(
            &app,
            &tenant,
            &ops.url("/ops"),
            json!(["webhook.endpoint.*"]),
        )
        .await;
        for expected in ["failed", "failed", "succeeded", "succeeded"] {
            let out = dispatch(&app, &internal, "session.created", json!({})).await;
            let d = out["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["endpoint_id"] == ep["id"])
                .unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(settled(&app, &tenant, &d).await["status"], expected);
        }
        let got = ops.wait_for(2, Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(ops.received().len(), 2, "one of each");
        let bodies: Vec<Value> = got
            .iter()
            .map(|r| serde_json::from_str(&r.body).unwrap())
            .collect();
        let types: Vec<&str> = bodies.iter().map(|b| b["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            ["webhook.endpoint.failing", "webhook.endpoint.recovered"]
        );
        let failing = &bodies[0]["data"];
        assert_eq!(failing["endpoint_id"], ep["id"]);
        assert_eq!(failing["url"], bad.url("/bad"));
        assert_eq!(failing["event_type"], "session.created");
        assert_eq!(failing["last_error"], "HTTP 500");
        let keys: Vec<&String> = failing.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "delivery_id",
                "endpoint_id",
                "event_type",
                "failed_at",
                "last_error",
                "url"
            ]
        );
        let recovered = &bodies[1]["data"];
        let keys: Vec<&String> = recovered.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "delivery_id",
                "endpoint_id",
                "failing_since",
                "recovered_at",
                "url"
            ]
        );
        assert_eq!(recovered["failing_since"], failing["failed_at"]);
        // The failing endpoint never heard about itself.
        assert!(bad
            .received()
            .iter()
            .all(|r| r.header("x-webhook-event").as_deref() == Some("session.created")));
    }
}

/// Endpoint options: static headers and a rate limit.
mod endpoint_options {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn static_headers_are_sent_and_never_replace_the_signatures() {
        let receiver = Receiver::start().await;
        let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
        let tenant = app.key("acme", false).await;
        let internal = app.key("platform", true).await;
        // Reserved names are refused, each named.
        for name in [
            "webhook-signature",
            "Webhook-Id",
            "webhook-timestamp",
            "X-Webhook-Signature-256",
            "X-Webhook-Delivery",
            "Content-Type",
            "User-Agent",
            "Host",
            "Content-Length",
        ] {
            let (status, answer) = app
                .call(
                    "POST",
                    "/v1/webhooks",
                    &tenant,
                    Some(json!({"url": receiver.url("/hook"), "events": ["*"], "headers": {name: "forged"}})),
                )
                .await;
            assert_eq!(status, 422, "{name}: {answer}");
            assert_eq!(answer["error"]["field"], format!("headers.{name}"));
        }
        let (status, answer) = app
            .call(
                "POST",
                "/v1/webhooks",
                &tenant,
                Some(json!({"url": receiver.url("/hook"), "events": ["*"], "headers": {"X-Bad": "a\nb"}})),
            )
            .await;
        assert_eq!(
            (status.as_u16(), answer["error"]["field"].as_str()),
            (422, Some("headers.X-Bad"))
        );
        let (_, listed) = app.call("GET", "/v1/webhooks", &tenant, None).await;
        assert_eq!(listed["data"], json!([]), "nothing stored");

        let (status, ep) = app
            .call(
                "POST",
                "/v1/webhooks",
                &tenant,
                Some(json!({"url": receiver.url("/hook"), "events": ["*"],
                    "headers": {"X-Tenant-Token": "t-123", "Authorization": "Bearer abc"}})),
            )
            .await;
        assert_eq!(status, 201, "{ep}");
        let secret = ep["secret"].as_str().unwrap().to_string();
        let id = ep["id"].as_str().unwrap().to_string();
        assert_eq!(
            ep["headers"],
            json!({"authorization": "Bearer abc", "x-tenant-token": "t-123"})
        );
        let (_, read) = app
            .call("GET", &format!("/v1/webhooks/{id}"), &tenant, None)
            .await;
        assert_eq!(read["headers"], ep["headers"]);
        // A reserved name through PATCH is refused too, and changes nothing.
        let (status, answer) = app
            .call(
                "PATCH",
                &format!("/v1/webhooks/{id}"),
                &tenant,
                Some(json!({"headers": {"webhook-id": "forged"}})),
            )
            .await;
        assert_eq!(
            (status.as_u16(), answer["error"]["field"].as_str()),
            (422, Some("headers.webhook-id"))
        );

        let answer = dispatch(&app, &internal, "session.created", json!({})).await;
        let got = receiver.wait_for(1, Duration::from_secs(10)).await;
        let r = &got[0];
        assert_eq!(r.header("x-tenant-token").as_deref(), Some("t-123"));
        assert_eq!(r.header("authorization").as_deref(), Some("Bearer abc"));
        // Each platform header is there once, and the signatures verify.
        for name in [
            "webhook-id",
            "webhook-signature",
            "x-webhook-signature-256",
            "content-type",
        ] {
            assert_eq!(r.headers.get_all(name).iter().count(), 1, "{name}");
        }
        let delivery_id = answer["deliveries"][0]["id"].as_str().unwrap();
        assert_eq!(r.header("webhook-id").as_deref(), Some(delivery_id));
        assert_eq!(
            r.header("x-webhook-signature-256").unwrap(),
            signing::github_signature(&secret, r.body.as_bytes())
        );
        assert!(standard_verify(&secret, &std_headers(r), &r.body));

        // `{}` removes them.
        let (status, patched) = app
            .call(
                "PATCH",
                &format!("/v1/webhooks/{id}"),
                &tenant,
                Some(json!({"headers": {}})),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(patched["headers"], json!({}));
        dispatch(&app, &internal, "session.created", json!({})).await;
        let got = receiver.wait_for(2, Duration::from_secs(10)).await;
        assert!(got[1].header("x-tenant-token").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rate_limit_is_held_within_ten_percent_and_nothing_is_dropped() {
        const RATE: f64 = 10.0;
        const EVENTS: usize = 30;
        let receiver = Receiver::start().await;
        let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
        let tenant = app.key("acme", false).await;
        let internal = app.key("platform", true).await;
        for bad in [json!(0), json!(-3), json!(2.5), json!("10"), json!(100_000)] {
            let (status, answer) = app
                .call(
                    "POST",
                    "/v1/webhooks",
                    &tenant,
                    Some(json!({"url": receiver.url("/hook"), "events": ["*"], "rate_limit": bad})),
                )
                .await;
            assert_eq!(
                (status.as_u16(), answer["error"]["field"].as_str()),
                (422, Some("rate_limit")),
                "{bad}: {answer}"
            );
        }
        let (status, ep) = app
            .call(
                "POST",
                "/v1/webhooks",
                &tenant,
                Some(json!({"url": receiver.url("/hook"), "events": ["*"], "rate_limit": RATE as u32})),
            )
            .await;
        assert_eq!(status, 201, "{ep}");
        assert_eq!(ep["rate_limit"], 10);
        // A burst far above the limit.
        futures_util::future::join_all(
            (0..EVENTS).map(|_| dispatch(&app, &internal, "connection.active", json!({}))),
        )
        .await;
        let got = receiver.wait_for(EVENTS, Duration::from_secs(30)).await;
        let span = (got[EVENTS - 1].at - got[0].at).as_secs_f64();
        let rate = (EVENTS - 1) as f64 / span;
        assert!(
            (rate - RATE).abs() <= RATE * 0.1,
            "{rate:.2}/s over {span:.2} s, limit {RATE}/s"
        );
        // Never faster than the limit over any second.
        for (i, r) in got.iter().enumerate() {
            let in_a_second = got[i..]
                .iter()
                .take_while(|x| x.at - r.at < Duration::from_millis(1000))
                .count();
            assert!(
                in_a_second <= RATE as usize + 1,
                "{in_a_second} within a second"
            );
        }
        // Every event arrived exactly once.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut ids: Vec<String> = receiver
            .received()
            .iter()
            .map(|r| r.header("webhook-id").unwrap())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), EVENTS);
        // `null` lifts the limit; GET shows it.
        let id = ep["id"].as_str().unwrap();
        let (status, patched) = app
            .call(
                "PATCH",
                &format!("/v1/webhooks/{id}"),
                &tenant,
                Some(json!({"rate_limit": null})),
            )
            .await;
        assert_eq!(
            (status.as_u16(), patched["rate_limit"].clone()),
            (200, Value::Null)
        );
        let (_, read) = app
            .call("GET", &format!("/v1/webhooks/{id}"), &tenant, None)
            .await;
        assert_eq!(read["rate_limit"], Value::Null);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_dispatches_of_one_session_each_take_their_own_sequence() {
    let (receiver, app, internal) = session_hook().await;
    // The counter's write commits with each event's deliveries: dispatches that race for one
    // session lose, draw again and still each get a value of their own.
    let answers = futures_util::future::join_all(
        (0..20).map(|_| dispatch(&app, &internal, "session.updated", json!({}))),
    )
    .await;
    assert_eq!(answers.len(), 20);
    let got = receiver.wait_for(20, Duration::from_secs(20)).await;
    let mut sequences: Vec<u64> = got
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_str(&r.body).unwrap();
            body["data"]["sequence"].as_u64().unwrap()
        })
        .collect();
    sequences.sort_unstable();
    assert_eq!(sequences, (1..=20).collect::<Vec<u64>>());
}

/// A local system with one endpoint subscribed to `session.*` events on a loopback
/// receiver: the receiver, the system and the platform's internal key.
async fn session_hook() -> (Receiver, TestApp, String) {
    let receiver = Receiver::start().await;
    let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
    let tenant = app.key("acme", false).await;
    let internal = app.key("platform", true).await;
    endpoint(&app, &tenant, &receiver.url("/hook"), json!(["session.*"])).await;
    (receiver, app, internal)
}

/// The sequence of the one `session.*` event `receiver` got with this dispatch's event id.
async fn sequence_of(receiver: &Receiver, answer: &Value) -> u64 {
    let id = answer["event_id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = receiver.received();
        if let Some(r) = got.iter().find(|r| r.body.contains(&id)) {
            let body: Value = serde_json::from_str(&r.body).unwrap();
            return body["data"]["sequence"].as_u64().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "{id} never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_created_event_of_a_session_with_a_counter_is_drawn_above_it() {
    let (receiver, app, internal) = session_hook().await;
    // The counter is at 3, written outside this engine: the local system's guess for a
    // `session.created` event ("no counter yet") is wrong, and its commit must say so.
    let store = &app.local.deps.store;
    for _ in 0..3 {
        store.next_session_sequence("acme", "s1").await.unwrap();
    }
    let answer = dispatch(&app, &internal, "session.created", json!({})).await;
    assert_eq!(sequence_of(&receiver, &answer).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_counter_another_writer_moved_is_read_again() {
    let (receiver, app, internal) = session_hook().await;
    let first = dispatch(&app, &internal, "session.updated", json!({})).await;
    assert_eq!(sequence_of(&receiver, &first).await, 1);
    // Another writer takes 2 behind the engine's memory of the counter (at 1).
    let store = &app.local.deps.store;
    assert_eq!(store.next_session_sequence("acme", "s1").await.unwrap(), 2);
    let second = dispatch(&app, &internal, "session.updated", json!({})).await;
    assert_eq!(sequence_of(&receiver, &second).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_counter_is_checked_against_the_sessions_mirror() {
    let (receiver, app, internal) = session_hook().await;
    let first = dispatch(&app, &internal, "session.updated", json!({})).await;
    assert_eq!(sequence_of(&receiver, &first).await, 1);
    // The booking engine mirrors the session and moves it to version 2 (its events carry
    // 2 * STRIDE): the engine remembers "no mirror", which the commit's check refuses.
    let store = &app.local.deps.store;
    let mut s = store
        .create_session(&voyage_tests::contract::store::session(
            "acme",
            "s1",
            "staff1",
            chrono::Utc::now(),
        ))
        .await
        .unwrap();
    store.update_session(&mut s).await.unwrap();
    assert_eq!(s.version, 2);
    let second = dispatch(&app, &internal, "session.updated", json!({})).await;
    assert_eq!(
        sequence_of(&receiver, &second).await,
        voyage_core::webhooks::sequence::dispatch_floor(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_beyond_what_json_readers_hold_exactly_is_refused_naming_the_field() {
    let app = TestApp::start(&[PRIVATE_OK, HTTP_OK]);
    let internal = app.key("platform", true).await;
    let (status, answer) = app
        .call(
            "POST",
            "/v1/webhooks/dispatch",
            &internal,
            Some(json!({"company_id": "acme", "event": "session.updated",
                "payload": {"session_id": "s1", "sequence": 1u64 << 53}})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), answer["error"]["field"].as_str()),
        (422, Some("payload.sequence")),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_events_reached_the_largest_sequence_refuses_a_drawn_one() {
    let (_receiver, app, internal) = session_hook().await;
    let largest = voyage_core::webhooks::sequence::MAX_SEQUENCE;
    dispatch(&app, &internal, "session.updated", json!({})).await;
    let (status, answer) = app
        .call(
            "POST",
            "/v1/webhooks/dispatch",
            &internal,
            Some(json!({"company_id": "acme", "event": "session.updated",
                "payload": {"session_id": "s1", "sequence": largest}})),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    // No value above it exists: refused, not wrapped around to a lower one.
    let (status, answer) = app
        .call(
            "POST",
            "/v1/webhooks/dispatch",
            &internal,
            Some(json!({"company_id": "acme", "event": "session.updated",
                "payload": {"session_id": "s1"}})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), answer["error"]["field"].as_str()),
        (422, Some("payload.sequence")),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_refused_by_its_schema_takes_no_sequence() {
    let (receiver, app, internal) = session_hook().await;
    // `session.rescheduled` requires more than `session_id`: refused before anything is stored.
    let (status, answer) = app
        .call(
            "POST",
            "/v1/webhooks/dispatch",
            &internal,
            Some(json!({"company_id": "acme", "event": "session.rescheduled",
                "payload": {"session_id": "s1"}})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    dispatch(&app, &internal, "session.updated", json!({})).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["data"], json!({"session_id": "s1", "sequence": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_delivers_a_session_event_once_with_one_sequence() {
    let (receiver, app, internal) = session_hook().await;
    let key = json!({"idempotency_key": "k-1"});
    let first = dispatch(&app, &internal, "session.updated", key.clone()).await;
    let again = dispatch(&app, &internal, "session.updated", key).await;
    assert_eq!(first, again);
    // The replay took no value: the session's next event is numbered 2.
    dispatch(&app, &internal, "session.updated", json!({})).await;
    receiver.wait_for(2, Duration::from_secs(10)).await;
    // Nothing more arrives (the replay sent nothing).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = receiver.received();
    assert_eq!(got.len(), 2);
    let mut sequences: Vec<u64> = got
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_str(&r.body).unwrap();
            body["data"]["sequence"].as_u64().unwrap()
        })
        .collect();
    sequences.sort_unstable();
    assert_eq!(sequences, vec![1, 2]);
}

/// A platform payload is held to every keyword its published schema uses on its fields.
mod payload_schemas {
    use super::*;

    #[tokio::test]
    async fn a_dispatched_payload_its_schema_rejects_is_refused_naming_the_field() {
        // Arrange
        let app = TestApp::start(&[]);
        let internal = app.key("platform", true).await;
        let cancelled = |extra: Value| {
            let mut payload = json!({"session_id": "s1"});
            payload
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            json!({"company_id": "acme", "event": "session.cancelled", "payload": payload})
        };
        let cases = [
            (json!({"provider": "outlook"}), "payload.provider"),
            (json!({"start": "notadate"}), "payload.start"),
            (json!({"status": "gone"}), "payload.status"),
            (json!({"session_id": ""}), "payload.session_id"),
        ];

        // Act
        let mut fields = Vec::new();
        for (extra, _) in &cases {
            let (status, out) = app
                .call(
                    "POST",
                    "/v1/webhooks/dispatch",
                    &internal,
                    Some(cancelled(extra.clone())),
                )
                .await;
            fields.push((status.as_u16(), out["error"]["field"].clone()));
        }

        // Assert
        let expected: Vec<(u16, Value)> = cases.iter().map(|(_, f)| (422, json!(f))).collect();
        assert_eq!(fields, expected);
    }

    #[tokio::test]
    async fn a_payload_that_fits_its_schema_is_accepted() {
        let app = TestApp::start(&[]);
        let internal = app.key("platform", true).await;
        let (status, out) = app
            .call(
                "POST",
                "/v1/webhooks/dispatch",
                &internal,
                Some(
                    json!({"company_id": "acme", "event": "session.cancelled", "payload": {
                    "session_id": "s1", "provider": "google", "status": "cancelled",
                    "start": "2027-06-01T09:00:00Z", "end": "2027-06-01T10:00:00+02:00"}}),
                ),
            )
            .await;
        assert_eq!(status, 202, "{out}");
    }
}

/// List routes read only the query parameters they document.
mod list_queries {
    use super::*;

    #[tokio::test]
    async fn an_unknown_query_parameter_is_refused_naming_it() {
        // Arrange
        let app = TestApp::start(&[]);
        let tenant = app.key("acme", false).await;

        // Act: a filter the route does not have, and a misspelt one
        let mut answers = Vec::new();
        for path in [
            "/v1/webhooks?status=active",
            "/v1/connections?limt=5",
            "/v1/webhooks/whk_x/deliveries?state=failed",
        ] {
            let (status, out) = app.call("GET", path, &tenant, None).await;
            answers.push((
                status.as_u16(),
                out["error"]["code"].clone(),
                out["error"]["field"].clone(),
            ));
        }

        // Assert
        let unknown = |f: &str| (422, json!("unknown_field"), json!(f));
        assert_eq!(
            answers,
            [unknown("status"), unknown("limt"), unknown("state")]
        );
    }
}
