//! The [`EventBus`] contract: every published event reaches the bus's target queue in
//! EventBridge's envelope shape, more than one `PutEvents` batch at a time.

use std::collections::BTreeSet;
use std::time::Duration;

use voyage_core::ports::BusEvent;

use crate::fixtures::BusFixture;

pub async fn every_published_event_reaches_the_target(f: &BusFixture) {
    // GIVEN 23 events (three PutEvents batches)
    let events: Vec<BusEvent> = (0..23)
        .map(|i| {
            BusEvent::new(
                "session.updated",
                serde_json::json!({"session_id": format!("s{i}")}),
            )
        })
        .collect();
    // WHEN they are published
    f.bus.publish(&events).await.unwrap();
    // THEN each arrives once at the target, as {source, detail-type, detail}
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < events.len() && tokio::time::Instant::now() < deadline {
        for m in f.target.receive(10, Duration::from_secs(1)).await.unwrap() {
            let v: serde_json::Value = serde_json::from_str(&m.body).unwrap();
            assert_eq!(v["source"], voyage_core::ports::bus::SOURCE);
            assert_eq!(v["detail-type"], "session.updated");
            let id = v["detail"]["session_id"].as_str().unwrap().to_string();
            assert!(seen.insert(id), "delivered twice");
            f.target.ack(&m.receipt).await.unwrap();
        }
    }
    let want: BTreeSet<String> = (0..23).map(|i| format!("s{i}")).collect();
    assert_eq!(seen, want);
}
