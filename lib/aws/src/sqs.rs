use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use aws_sdk_sqs::Client;
use voyage_core::ports::queue::MAX_DELAY;
use voyage_core::ports::{Queue, QueueError, ReceivedMessage};

/// The [`Queue`] port on one SQS standard queue. Dead-lettering is the queue's redrive
/// policy (template.yaml), not code.
#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
}

fn unavailable<E, R>(e: aws_sdk_sqs::error::SdkError<E, R>) -> QueueError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    QueueError::Unavailable(format!("{}", aws_sdk_sqs::error::DisplayErrorContext(&e)))
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        SqsQueue {
            client,
            url: url.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, body: &str, delay: Duration) -> Result<(), QueueError> {
        if delay > MAX_DELAY {
            return Err(QueueError::Rejected(format!(
                "delay {delay:?} exceeds SQS's {MAX_DELAY:?}"
            )));
        }
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            // Round up, so a message is never handled before its time.
            .delay_seconds(delay.as_secs_f64().ceil() as i32)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let count = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1);
                Some(ReceivedMessage {
                    id: m.message_id?,
                    receipt: m.receipt_handle?,
                    body: m.body.unwrap_or_default(),
                    receive_count: count,
                })
            })
            .collect())
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn release(&self, receipt: &str, delay: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(delay.min(MAX_DELAY).as_secs() as i32)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
