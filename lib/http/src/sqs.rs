//! The SQS edge of worker Lambdas: a batch in, partial batch failures out, so only the
//! messages that failed are offered again (the function's event source mapping sets
//! `ReportBatchItemFailures`).

use std::future::Future;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::{service_fn, LambdaEvent};

/// Runs `handle` on every batch. It receives `(message id, body)` pairs and returns the
/// ids of the messages that failed.
pub async fn serve_sqs<F, Fut>(handle: F) -> Result<(), lambda_runtime::Error>
where
    F: Fn(Vec<(String, String)>) -> Fut,
    Fut: Future<Output = Vec<String>>,
{
    let handle = &handle;
    lambda_runtime::run(service_fn(|event: LambdaEvent<SqsEvent>| async move {
        let messages = event
            .payload
            .records
            .into_iter()
            .filter_map(|r| Some((r.message_id?, r.body.unwrap_or_default())))
            .collect();
        let failed = handle(messages).await;
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
