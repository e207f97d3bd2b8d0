//! The SQS edge of worker Lambdas: a batch in, partial batch failures out, so only the
//! messages that failed are offered again (the function's event source mapping sets
//! `ReportBatchItemFailures`).

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::{service_fn, LambdaEvent};

/// How long before the invocation's deadline a batch is cut: time to answer the Runtime API
/// and print the invocation's metrics.
pub const REPLY_MARGIN: Duration = Duration::from_millis(1500);

/// When a batch handed over with `deadline` must stop: [`REPLY_MARGIN`] before it, or now
/// when less than that is left.
pub fn cut_at(deadline: SystemTime) -> Instant {
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now() + left.saturating_sub(REPLY_MARGIN)
}

/// Runs `handle` on every batch. It receives `(message id, body)` pairs and the instant it
/// must be done by ([`cut_at`] of the invocation's deadline: past the deadline Lambda ends
/// the invocation and offers the whole batch again), and returns the ids of the messages
/// that failed or were not finished.
pub async fn serve_sqs<F, Fut>(handle: F) -> Result<(), lambda_runtime::Error>
where
    F: Fn(Vec<(String, String)>, Instant) -> Fut,
    Fut: Future<Output = Vec<String>>,
{
    let handle = &handle;
    lambda_runtime::run(service_fn(|event: LambdaEvent<SqsEvent>| async move {
        let cut_at = cut_at(event.context.deadline());
        let messages = event
            .payload
            .records
            .into_iter()
            .filter_map(|r| Some((r.message_id?, r.body.unwrap_or_default())))
            .collect();
        let failed = handle(messages, cut_at).await;
        // One invocation's metrics, as EMF log lines (voyage_core::metrics).
        voyage_core::metrics::flush_emf();
        let mut response = SqsBatchResponse::default();
        response.batch_item_failures = failed
            .into_iter()
            .map(|id| {
                let mut f = BatchItemFailure::default();
                f.item_identifier = id;
                f
            })
            .collect();
        Ok::<_, lambda_runtime::Error>(response)
    }))
    .await
}
