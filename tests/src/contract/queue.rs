//! The [`Queue`] contract: delay, visibility, receive counts, dead-lettering and the
//! chaining of waits longer than a queue allows.

use std::time::Duration;

use chrono::Utc;
use voyage_core::ports::queue::{on_arrival, Arrival, Envelope};
use voyage_core::ports::{Clock, ManualClock, Queue, ReceivedMessage};

use crate::fixtures::{QueueFixture, MAX_RECEIVES};

/// Receives until `want` messages arrived or `within` passed.
async fn receive_n(q: &dyn Queue, want: usize, within: Duration) -> Vec<ReceivedMessage> {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < want && tokio::time::Instant::now() < deadline {
        out.extend(
            q.receive(10, Duration::from_secs(1))
                .await
                .expect("receive"),
        );
    }
    out
}

pub async fn a_message_is_delivered_until_acked(f: &QueueFixture) {
    let q = f.queue.as_ref();
    q.send("hello", Duration::ZERO).await.unwrap();
    let got = receive_n(q, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].body.as_str(), got[0].receive_count), ("hello", 1));
    // Hidden while in flight.
    assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());
    q.ack(&got[0].receipt).await.unwrap();
}

pub async fn a_delayed_message_waits_its_delay(f: &QueueFixture) {
    let q = f.queue.as_ref();
    let sent = tokio::time::Instant::now();
    q.send("later", Duration::from_secs(2)).await.unwrap();
    assert!(
        q.receive(10, Duration::ZERO).await.unwrap().is_empty(),
        "delivered before its delay"
    );
    let got = receive_n(q, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "never delivered");
    assert!(
        sent.elapsed() >= Duration::from_millis(1900),
        "delivered after {:?}",
        sent.elapsed()
    );
    q.ack(&got[0].receipt).await.unwrap();
}

pub async fn a_released_message_returns_then_dead_letters(f: &QueueFixture) {
    let q = f.queue.as_ref();
    q.send("poison", Duration::ZERO).await.unwrap();
    // Each failed handling releases it; its receive count climbs.
    for attempt in 1..=MAX_RECEIVES {
        let got = receive_n(q, 1, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 1, "attempt {attempt}");
        assert_eq!(got[0].receive_count, attempt);
        q.release(&got[0].receipt, Duration::ZERO).await.unwrap();
    }
    // After the maximum it is no longer offered, and sits in the dead-letter queue.
    assert!(receive_n(q, 1, Duration::from_secs(3)).await.is_empty());
    assert_eq!((f.dead_letters)().await, ["poison"]);
}

pub async fn waits_beyond_the_queue_limit_are_chained(f: &QueueFixture) {
    let q = f.queue.as_ref();
    let clock = ManualClock::new(Utc::now());
    // GIVEN a message that may not be handled for another second of the clock
    let mut env = Envelope::new("webhook.attempt", serde_json::json!({"delivery": "d1"}));
    env.not_before = Some(clock.now() + chrono::Duration::seconds(1));
    // WHEN it arrives early THEN it is re-sent with the remaining wait, not handled
    let body = serde_json::to_string(&env).unwrap();
    assert_eq!(
        on_arrival(q, &clock, &body).await.unwrap(),
        Arrival::Rechained
    );
    let again = receive_n(q, 1, Duration::from_secs(10)).await;
    assert_eq!(again.len(), 1);
    q.ack(&again[0].receipt).await.unwrap();
    // AND once the clock has passed its time it is due
    clock.advance(chrono::Duration::seconds(2));
    match on_arrival(q, &clock, &again[0].body).await.unwrap() {
        Arrival::Due(e) => assert_eq!(e.payload["delivery"], "d1"),
        other => panic!("expected Due, got {other:?}"),
    }
    // A body that is not an envelope is reported as malformed, never retried into success.
    assert!(matches!(
        on_arrival(q, &clock, "{nope").await.unwrap(),
        Arrival::Malformed(_)
    ));
}

pub async fn delays_beyond_the_limit_are_refused(f: &QueueFixture) {
    let q = f.queue.as_ref();
    assert!(q.send("x", Duration::from_secs(901)).await.is_err());
}
