//! Dead-letter redrive on SQS, for `voyage dlq`: find a queue's dead-letter queue from its
//! `RedrivePolicy`, count and peek at what waits there, and move it back.
//!
//! The move is receive from the DLQ, send to the source queue, delete from the DLQ, ten at a
//! time (SQS's `StartMessageMoveTask` does the same server-side, but emulators lack it and it
//! runs asynchronously). A message is deleted from the DLQ only once the source queue took
//! it, so a failure part-way leaves it in the DLQ (visible again after the receive's
//! visibility timeout) or, at worst, in both queues: messages are wake-ups with idempotent
//! handlers (lib/core `ports::queue`), so a duplicate does no harm and a loss cannot happen.

use std::time::Duration;

use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, QueueAttributeName, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;

/// How long a received dead letter stays hidden while it is being moved.
const MOVE_VISIBILITY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error("SQS: {0}")]
    Sqs(String),
    #[error("queue {0} has no dead-letter queue (no RedrivePolicy attribute)")]
    NoDeadLetterQueue(String),
    #[error("queue {queue}: unreadable RedrivePolicy: {reason}")]
    BadPolicy { queue: String, reason: String },
}

fn sqs<E, R>(e: aws_sdk_sqs::error::SdkError<E, R>) -> RedriveError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    RedriveError::Sqs(format!("{}", aws_sdk_sqs::error::DisplayErrorContext(&e)))
}

/// The URL of the dead-letter queue `queue_url`'s redrive policy names.
pub async fn dead_letter_queue_url(
    client: &Client,
    queue_url: &str,
) -> Result<String, RedriveError> {
    let attributes = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .map_err(sqs)?
        .attributes
        .unwrap_or_default();
    let policy = attributes
        .get(&QueueAttributeName::RedrivePolicy)
        .ok_or_else(|| RedriveError::NoDeadLetterQueue(queue_url.to_string()))?;
    let bad = |reason: String| RedriveError::BadPolicy {
        queue: queue_url.to_string(),
        reason,
    };
    let policy: serde_json::Value = serde_json::from_str(policy).map_err(|e| bad(e.to_string()))?;
    let arn = policy
        .get("deadLetterTargetArn")
        .and_then(|a| a.as_str())
        .ok_or_else(|| bad("no deadLetterTargetArn".into()))?;
    // arn:<partition>:sqs:<region>:<account>:<name>
    let parts: Vec<&str> = arn.split(':').collect();
    let [_, _, _, _, account, name] = parts.as_slice() else {
        return Err(bad(format!("`{arn}` is not an SQS queue ARN")));
    };
    client
        .get_queue_url()
        .queue_name(*name)
        .queue_owner_aws_account_id(*account)
        .send()
        .await
        .map_err(sqs)?
        .queue_url
        .ok_or_else(|| bad(format!("no URL for {arn}")))
}

/// What waits in a dead-letter queue: SQS's approximate count, and the ids of up to ten
/// messages (peeked at with a zero visibility timeout, so they stay where they are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterSummary {
    pub approximate_count: u64,
    pub first_ids: Vec<String>,
}

pub async fn summary(client: &Client, dlq_url: &str) -> Result<DeadLetterSummary, RedriveError> {
    let attributes = client
        .get_queue_attributes()
        .queue_url(dlq_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .map_err(sqs)?
        .attributes
        .unwrap_or_default();
    let approximate_count = attributes
        .get(&QueueAttributeName::ApproximateNumberOfMessages)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let peeked = client
        .receive_message()
        .queue_url(dlq_url)
        .max_number_of_messages(10)
        .visibility_timeout(0)
        .send()
        .await
        .map_err(sqs)?;
    Ok(DeadLetterSummary {
        approximate_count,
        first_ids: peeked
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| m.message_id)
            .collect(),
    })
}

/// Moves up to `limit` messages from `dlq_url` to `queue_url`, ten at a time, and returns how
/// many moved. It stops when the DLQ answers a receive with nothing, after `limit` messages,
/// or after `limit / 10 + 1` batches, whichever comes first (a consumer failing them straight
/// back cannot keep it running).
pub async fn redrive(
    client: &Client,
    dlq_url: &str,
    queue_url: &str,
    limit: u64,
) -> Result<u64, RedriveError> {
    let mut moved = 0u64;
    let batches = limit.div_ceil(10) + 1;
    for _ in 0..batches {
        if moved >= limit {
            break;
        }
        let want = (limit - moved).min(10) as i32;
        let received = client
            .receive_message()
            .queue_url(dlq_url)
            .max_number_of_messages(want)
            .visibility_timeout(MOVE_VISIBILITY.as_secs() as i32)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(sqs)?
            .messages
            .unwrap_or_default();
        if received.is_empty() {
            break;
        }
        let mut entries = Vec::new();
        let mut receipts = Vec::new();
        for (i, m) in received.into_iter().enumerate() {
            let (Some(receipt), Some(body)) = (m.receipt_handle, m.body) else {
                continue;
            };
            let entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(body)
                .set_message_attributes(m.message_attributes)
                .build()
                .map_err(|e| RedriveError::Sqs(e.to_string()))?;
            entries.push(entry);
            receipts.push((i.to_string(), receipt));
        }
        if entries.is_empty() {
            continue;
        }
        let sent = client
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(sqs)?;
        for failed in &sent.failed {
            tracing::warn!(entry = %failed.id, code = %failed.code, "redrive: the source queue refused a message; it stays in the dead-letter queue");
        }
        let deletes = sent
            .successful
            .iter()
            .filter_map(|ok| receipts.iter().find(|(id, _)| *id == ok.id))
            .map(|(id, receipt)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(id)
                    .receipt_handle(receipt)
                    .build()
                    .map_err(|e| RedriveError::Sqs(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if deletes.is_empty() {
            return Err(RedriveError::Sqs(
                "the source queue refused every message of a batch".into(),
            ));
        }
        let deleted = client
            .delete_message_batch()
            .queue_url(dlq_url)
            .set_entries(Some(deletes))
            .send()
            .await
            .map_err(sqs)?;
        for failed in &deleted.failed {
            tracing::warn!(entry = %failed.id, code = %failed.code, "redrive: a moved message could not be deleted from the dead-letter queue (it may be moved twice)");
        }
        moved += sent.successful.len() as u64;
    }
    Ok(moved)
}
