//! Delivery rules that depend on time, driven by a manual clock and a scripted transport
//! instead of sleeping.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::Duration;
use voyage_core::config::Config;
use voyage_core::deps::Deps;
use voyage_core::model::{DeliveryStatus, EndpointStatus, SigningSecret, WebhookEndpoint};
use voyage_core::ports::memory::MemoryTable;
use voyage_core::ports::ManualClock;
use voyage_core::store::Store;
use voyage_core::webhooks::engine::AttemptOutcome;
use voyage_core::webhooks::{
    Dispatch, OutgoingRequest, Transport, TransportError, TransportResponse, WebhookEngine,
};

/// Answers every request with `status` and records the URLs called.
struct Scripted {
    status: u16,
    calls: Mutex<Vec<String>>,
}

#[async_trait]
impl Transport for Scripted {
    async fn send(&self, r: OutgoingRequest) -> Result<TransportResponse, TransportError> {
        self.calls.lock().unwrap().push(r.url);
        Ok(TransportResponse {
            status: self.status,
            body: String::new(),
            retry_after: None,
        })
    }
}

fn endpoint(id: &str, url: &str, events: &[&str], clock: &ManualClock) -> WebhookEndpoint {
    use voyage_core::ports::Clock;
    WebhookEndpoint {
        id: id.into(),
        company_id: "acme".into(),
        url: url.into(),
        events: events.iter().map(|e| e.to_string()).collect(),
        description: None,
        status: EndpointStatus::Active,
        secrets: vec![SigningSecret {
            secret: voyage_core::signing::generate_secret(),
            expires_at: None,
        }],
        // No retries: each delivery fails on its one attempt.
        retry_delays_secs: Some(vec![]),
        disabled_reason: None,
        failing_since: None,
        failed_deliveries: 0,
        headers: Default::default(),
        rate_limit: None,
        failing_event_at: None,
        announced_failing_since: None,
        created_at: clock.now(),
        updated_at: clock.now(),
        version: 0,
    }
}

/// Dispatches one `session.created` event for acme.
async fn created(engine: &WebhookEngine) -> voyage_core::webhooks::Dispatched {
    engine
        .dispatch(Dispatch {
            company_id: "acme".into(),
            event_type: "session.created".into(),
            payload: serde_json::Map::new(),
            idempotency_key: None,
            only_endpoint: None,
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn an_endpoint_failing_every_delivery_for_five_days_is_disabled() {
    let clock = Arc::new(ManualClock::new(voyage_tests::contract::store::t0()));
    let store = Store::new(Arc::new(MemoryTable::new()), clock.clone());
    // No queues: wake-ups are only logged, and this test drives the attempts itself.
    let config = Config::from_lookup(|_| None).unwrap();
    let deps = Arc::new(Deps::new(store.clone(), config));
    let transport = Arc::new(Scripted {
        status: 500,
        calls: Mutex::new(vec![]),
    });
    let engine = WebhookEngine::new(deps, transport.clone());
    store
        .create_endpoint(&endpoint(
            "whk_bad",
            "https://bad.example/h",
            &["session.*"],
            &clock,
        ))
        .await
        .unwrap();
    store
        .create_endpoint(&endpoint(
            "whk_ops",
            "https://ops.example/h",
            &["webhook.*"],
            &clock,
        ))
        .await
        .unwrap();

    // GIVEN 12 deliveries, one every half day, every one failing
    let mut disabled_after = None;
    for i in 0..12 {
        let out = created(&engine).await;
        if disabled_after.is_some() {
            // Disabled: it is no longer a target.
            assert!(out.deliveries.is_empty());
            continue;
        }
        assert_eq!(out.deliveries.len(), 1);
        let outcome = engine.attempt("acme", &out.deliveries[0].id).await.unwrap();
        assert_eq!(outcome, AttemptOutcome::Failed);
        let e = store.get_endpoint("acme", "whk_bad").await.unwrap();
        if e.status == EndpointStatus::Disabled && disabled_after.is_none() {
            disabled_after = Some(i + 1);
        }
        clock.advance(Duration::hours(12));
    }
    // THEN it is disabled at the first failure that is both >= 10th and >= 5 days into the run
    // (failure 11, at day 5), not before.
    assert_eq!(disabled_after, Some(11));
    let e = store.get_endpoint("acme", "whk_bad").await.unwrap();
    assert!(e.disabled_reason.unwrap().contains("5 days"));
    // AND the company's other endpoint was told: failing at the first failure (once: the run
    // never recovered), disabled at the end.
    let told = store
        .list_deliveries("acme", "whk_ops", None, None, None)
        .await
        .unwrap();
    let types: Vec<&str> = told.items.iter().map(|d| d.event_type.as_str()).collect();
    assert_eq!(
        types,
        ["webhook.endpoint.disabled", "webhook.endpoint.failing"]
    );
    // AND the disabled endpoint got nothing after it was disabled.
    let calls = transport
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|u| u.contains("bad.example"))
        .count();
    assert_eq!(calls, 11);
}

#[tokio::test]
async fn a_success_ends_a_run_of_failures() {
    let clock = Arc::new(ManualClock::new(voyage_tests::contract::store::t0()));
    let store = Store::new(Arc::new(MemoryTable::new()), clock.clone());
    let config = Config::from_lookup(|_| None).unwrap();
    let deps = Arc::new(Deps::new(store.clone(), config));
    store
        .create_endpoint(&endpoint("whk_1", "https://a.example/h", &["*"], &clock))
        .await
        .unwrap();
    for status in [500, 500, 200] {
        let engine = WebhookEngine::new(
            deps.clone(),
            Arc::new(Scripted {
                status,
                calls: Mutex::new(vec![]),
            }),
        );
        let out = created(&engine).await;
        engine.attempt("acme", &out.deliveries[0].id).await.unwrap();
        clock.advance(Duration::days(3));
    }
    let e = store.get_endpoint("acme", "whk_1").await.unwrap();
    assert_eq!(
        (e.failed_deliveries, e.failing_since, e.status),
        (0, None, EndpointStatus::Active)
    );
    // A delivery that finished is not attempted again by a duplicate message.
    let d = store
        .list_deliveries("acme", "whk_1", Some(DeliveryStatus::Succeeded), None, None)
        .await
        .unwrap();
    let engine = WebhookEngine::new(
        deps.clone(),
        Arc::new(Scripted {
            status: 200,
            calls: Mutex::new(vec![]),
        }),
    );
    assert_eq!(
        engine.attempt("acme", &d.items[0].id).await.unwrap(),
        AttemptOutcome::Skipped("finished")
    );
}

/// Answers every request with the status currently set.
struct Switchable(std::sync::atomic::AtomicU16);

#[async_trait]
impl Transport for Switchable {
    async fn send(&self, _r: OutgoingRequest) -> Result<TransportResponse, TransportError> {
        Ok(TransportResponse {
            status: self.0.load(std::sync::atomic::Ordering::SeqCst),
            body: String::new(),
            retry_after: None,
        })
    }
}

#[tokio::test]
async fn failing_is_told_once_a_day_and_recovered_once_after_it() {
    use std::sync::atomic::Ordering;
    use voyage_core::ports::Clock;
    let clock = Arc::new(ManualClock::new(voyage_tests::contract::store::t0()));
    let store = Store::new(Arc::new(MemoryTable::new()), clock.clone());
    let config = Config::from_lookup(|_| None).unwrap();
    let deps = Arc::new(Deps::new(store.clone(), config));
    let transport = Arc::new(Switchable(std::sync::atomic::AtomicU16::new(500)));
    let engine = WebhookEngine::new(deps, transport.clone());
    // The failing endpoint subscribes to everything: its own health events must not reach it.
    store
        .create_endpoint(&endpoint(
            "whk_bad",
            "https://bad.example/h",
            &["*"],
            &clock,
        ))
        .await
        .unwrap();
    store
        .create_endpoint(&endpoint(
            "whk_ops",
            "https://ops.example/h",
            &["webhook.*"],
            &clock,
        ))
        .await
        .unwrap();
    let told = || async {
        let mut items = store
            .list_deliveries("acme", "whk_ops", None, None, None)
            .await
            .unwrap()
            .items;
        // Ids order by wall time only to the millisecond: order by the manual clock.
        items.sort_by_key(|d| d.created_at);
        items
            .into_iter()
            .map(|d| {
                let body: serde_json::Value = serde_json::from_str(d.body.get()).unwrap();
                (d.event_type, body["data"].clone())
            })
            .collect::<Vec<_>>()
    };
    let attempt = |status: u16| {
        transport.0.store(status, Ordering::SeqCst);
        let engine = engine.clone();
        async move {
            let out = created(&engine).await;
            let id = out
                .deliveries
                .iter()
                .find(|d| d.endpoint_id == "whk_bad")
                .unwrap()
                .id
                .clone();
            engine.attempt("acme", &id).await.unwrap();
            id
        }
    };

    // GIVEN a delivery that runs out of retries
    let first_failure = attempt(500).await;
    let failed_at = clock.now();
    // THEN the other endpoint is told, with the delivery and its last error
    let events = told().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "webhook.endpoint.failing");
    let data = &events[0].1;
    assert_eq!(data["endpoint_id"], "whk_bad");
    assert_eq!(data["url"], "https://bad.example/h");
    assert_eq!(data["delivery_id"], first_failure.as_str());
    assert_eq!(data["event_type"], "session.created");
    assert_eq!(data["last_error"], "HTTP 500");
    let at: chrono::DateTime<chrono::Utc> = data["failed_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(at, failed_at);
    // AND the failing endpoint itself got none of its own health events
    let own = store
        .list_deliveries("acme", "whk_bad", None, None, None)
        .await
        .unwrap();
    assert!(own.items.iter().all(|d| d.event_type == "session.created"));

    // WHEN more deliveries fail within the day: nothing new
    clock.advance(Duration::hours(1));
    attempt(500).await;
    assert_eq!(told().await.len(), 1);
    // WHEN one succeeds: recovered, once, naming when the failing run began
    clock.advance(Duration::hours(1));
    let success = attempt(200).await;
    let events = told().await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1].0, "webhook.endpoint.recovered");
    let data = &events[1].1;
    assert_eq!(data["endpoint_id"], "whk_bad");
    assert_eq!(data["delivery_id"], success.as_str());
    let since: chrono::DateTime<chrono::Utc> =
        data["failing_since"].as_str().unwrap().parse().unwrap();
    assert_eq!(since, failed_at);
    let recovered_at: chrono::DateTime<chrono::Utc> =
        data["recovered_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(recovered_at, clock.now());
    attempt(200).await;
    assert_eq!(told().await.len(), 2);

    // WHEN it fails again within a day of the failing event: not told twice that day
    clock.advance(Duration::hours(2));
    attempt(500).await;
    attempt(200).await;
    assert_eq!(told().await.len(), 2);
    // AND a day after the first failing event, a new failing run is told again
    clock.advance(Duration::hours(21));
    attempt(500).await;
    let events = told().await;
    assert_eq!(
        events.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        [
            "webhook.endpoint.failing",
            "webhook.endpoint.recovered",
            "webhook.endpoint.failing"
        ]
    );
}
