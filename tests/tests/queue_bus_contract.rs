//! The queue and event-bus contracts, run against the in-process and the AWS adapters.

use voyage_tests::contract_tests;
use voyage_tests::fixtures;

macro_rules! every_queue_case {
    ($adapter:ident, $fixture:expr) => {
        contract_tests!(
            $adapter,
            $fixture,
            voyage_tests::contract::queue,
            [
                a_message_is_delivered_until_acked,
                a_delayed_message_waits_its_delay,
                a_released_message_returns_then_dead_letters,
                waits_beyond_the_queue_limit_are_chained,
                delays_beyond_the_limit_are_refused,
            ]
        );
    };
}

every_queue_case!(sqlite_queue, fixtures::sqlite_queue());
every_queue_case!(sqs_queue, fixtures::sqs_queue().await);

contract_tests!(
    sqlite_bus,
    fixtures::sqlite_bus(),
    voyage_tests::contract::bus,
    [every_published_event_reaches_the_target,]
);

contract_tests!(
    eventbridge_bus,
    fixtures::eventbridge_bus().await,
    voyage_tests::contract::bus,
    [every_published_event_reaches_the_target,]
);

/// `voyage dlq`: dead letters listed and moved back to their queue, locally and on SQS.
mod dead_letter_redrive {
    use std::time::Duration;

    use voyage_core::deps::QueueName;
    use voyage_core::ports::Queue;
    use voyage_store_sqlite::{Db, SqliteQueue};
    use voyage_tests::fixtures;

    /// Receives and releases `body` until its queue dead-letters it.
    async fn fail_until_dead(q: &dyn Queue, body: &str, max_receives: u32) {
        q.send(body, Duration::ZERO).await.unwrap();
        for _ in 0..max_receives {
            let got = q.receive(1, Duration::from_secs(5)).await.unwrap();
            assert_eq!(got.len(), 1, "{body} offered");
            q.release(&got[0].receipt, Duration::ZERO).await.unwrap();
        }
        assert!(q
            .receive(1, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty());
    }

    async fn drain(q: &dyn Queue) -> Vec<String> {
        let mut bodies = Vec::new();
        loop {
            let got = q.receive(10, Duration::from_secs(1)).await.unwrap();
            if got.is_empty() {
                bodies.sort();
                return bodies;
            }
            for m in got {
                q.ack(&m.receipt).await.unwrap();
                bodies.push(m.body);
            }
        }
    }

    #[tokio::test]
    async fn a_local_redrive_moves_every_dead_letter_of_that_queue_back_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let queue = |name: QueueName| {
            SqliteQueue::new(
                db.clone(),
                name.as_str(),
                voyage::VISIBILITY_TIMEOUT,
                voyage::MAX_RECEIVES,
            )
        };
        let google = queue(QueueName::GoogleSync);
        let webhooks = queue(QueueName::WebhookDeliveries);
        // GIVEN two dead letters in google-sync and one in webhook-deliveries
        for body in ["g1", "g2"] {
            fail_until_dead(&google, body, voyage::MAX_RECEIVES).await;
        }
        fail_until_dead(&webhooks, "w1", voyage::MAX_RECEIVES).await;
        let listed = voyage::dlq::list_local(dir.path(), QueueName::GoogleSync)
            .await
            .unwrap();
        assert_eq!(listed.count, 2);
        assert_eq!(listed.first_ids.len(), 2);
        // WHEN google-sync is redriven
        let moved = voyage::dlq::redrive_local(dir.path(), QueueName::GoogleSync)
            .await
            .unwrap();
        // THEN both are offered again, afresh, and webhook-deliveries' dead letter stays
        assert_eq!(moved, 2);
        let again = google.receive(10, Duration::from_secs(1)).await.unwrap();
        let mut bodies: Vec<_> = again.iter().map(|m| m.body.as_str()).collect();
        bodies.sort();
        assert_eq!(bodies, ["g1", "g2"]);
        assert!(again.iter().all(|m| m.receive_count == 1));
        assert_eq!(google.dead_letters().await.unwrap().len(), 0);
        assert_eq!(webhooks.dead_letters().await.unwrap(), ["w1"]);
        // AND a second redrive finds nothing
        assert_eq!(
            voyage::dlq::redrive_local(dir.path(), QueueName::GoogleSync)
                .await
                .unwrap(),
            0
        );
    }

    #[tokio::test]
    async fn an_sqs_redrive_finds_the_dead_letter_queue_and_moves_every_message_back() {
        let client = aws_sdk_sqs::Client::new(&fixtures::aws().await);
        let (url, dlq_url) = fixtures::create_sqs_pair(&client).await;
        let q = voyage_aws::SqsQueue::new(client.clone(), url.clone());
        // GIVEN twelve dead letters (more than one batch of ten)
        let expected: Vec<String> = (0..12).map(|i| format!("m{i:02}")).collect();
        for body in &expected {
            q.send(body, Duration::ZERO).await.unwrap();
        }
        // Each failed handling releases it; past the maximum receives SQS dead-letters it.
        let mut rounds = 0;
        loop {
            let got = q.receive(10, Duration::from_secs(1)).await.unwrap();
            if got.is_empty() {
                break;
            }
            for m in got {
                q.release(&m.receipt, Duration::ZERO).await.unwrap();
            }
            rounds += 1;
            assert!(rounds < 100, "messages never dead-lettered");
        }
        // WHEN the DLQ is found from the queue's redrive policy and listed, then redriven
        assert_eq!(
            voyage_aws::redrive::dead_letter_queue_url(&client, &url)
                .await
                .unwrap(),
            dlq_url
        );
        let listed = voyage::dlq::list_aws(&client, &url, None).await.unwrap();
        assert_eq!(listed.count, 12);
        assert!(!listed.first_ids.is_empty());
        let moved = voyage::dlq::redrive_aws(&client, &url, None, 1_000)
            .await
            .unwrap();
        // THEN all twelve are back in the queue, once each, and the DLQ is empty
        assert_eq!(moved, 12);
        assert_eq!(drain(&q).await, expected);
        let dlq = voyage_aws::SqsQueue::new(client.clone(), dlq_url);
        assert!(drain(&dlq).await.is_empty());
    }

    #[tokio::test]
    async fn an_sqs_redrive_stops_at_its_limit() {
        let client = aws_sdk_sqs::Client::new(&fixtures::aws().await);
        let (url, dlq_url) = fixtures::create_sqs_pair(&client).await;
        let dlq = voyage_aws::SqsQueue::new(client.clone(), dlq_url.clone());
        for i in 0..3 {
            dlq.send(&format!("d{i}"), Duration::ZERO).await.unwrap();
        }
        let moved = voyage::dlq::redrive_aws(&client, &url, Some(dlq_url), 2)
            .await
            .unwrap();
        assert_eq!(moved, 2);
        let q = voyage_aws::SqsQueue::new(client, url);
        assert_eq!(drain(&q).await.len(), 2);
    }
}
