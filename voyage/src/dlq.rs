//! `voyage dlq`: dead letters, listed and moved back to their queue once their cause is fixed
//! (README, "Dead letters and redrive").
//!
//! Locally a queue's dead letters are rows of the SQLite store beside its messages
//! ([`SqliteQueue`]). On AWS each queue of template.yaml has its own dead-letter queue
//! (`<Name>Dlq`, named by the queue's `RedrivePolicy`): the command is given the source
//! queue's URL (`--queue-url`, or the variable the functions read it from, see
//! [`queue_url_var`]) and finds the DLQ from the policy, or is given both URLs.

use std::path::Path;

use voyage_aws::redrive::{self, RedriveError};
use voyage_core::deps::QueueName;
use voyage_store_sqlite::{Db, SqliteQueue};

use crate::{MAX_RECEIVES, VISIBILITY_TIMEOUT};

/// How many dead-letter ids `list` shows.
pub const LIST_IDS: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("no queue `{0}`: one of webhook-deliveries, exchange-inbound, exchange-outbound, google-sync, platform-events")]
    UnknownQueue(String),
    #[error("no data directory at {0} (give --data-dir, or VOYAGE_DATA_DIR)")]
    NoDataDir(String),
    #[error("local store: {0}")]
    Local(String),
    #[error("the URL of queue {queue} is unknown: give --queue-url or set {var}")]
    NoQueueUrl {
        queue: &'static str,
        var: &'static str,
    },
    #[error(transparent)]
    Aws(#[from] RedriveError),
}

/// A queue by its name in [`QueueName::as_str`].
pub fn parse_queue(name: &str) -> Result<QueueName, DlqError> {
    QueueName::ALL
        .into_iter()
        .find(|q| q.as_str() == name)
        .ok_or_else(|| DlqError::UnknownQueue(name.to_string()))
}

/// The environment variable holding a deployed queue's URL: the functions' own
/// (template.yaml), and `VOYAGE_PLATFORM_EVENTS_QUEUE_URL` for the queue only EventBridge
/// writes to.
pub fn queue_url_var(queue: QueueName) -> &'static str {
    match queue {
        QueueName::WebhookDeliveries => "VOYAGE_WEBHOOK_QUEUE_URL",
        QueueName::ExchangeInbound => "VOYAGE_INBOUND_QUEUE_URL",
        QueueName::ExchangeOutbound => "VOYAGE_OUTBOUND_QUEUE_URL",
        QueueName::GoogleSync => "VOYAGE_GOOGLE_SYNC_QUEUE_URL",
        QueueName::PlatformEvents => "VOYAGE_PLATFORM_EVENTS_QUEUE_URL",
    }
}

/// The source queue's URL: the flag, else [`queue_url_var`].
pub fn queue_url(queue: QueueName, flag: Option<String>) -> Result<String, DlqError> {
    let var = queue_url_var(queue);
    flag.or_else(|| std::env::var(var).ok())
        .filter(|u| !u.trim().is_empty())
        .ok_or(DlqError::NoQueueUrl {
            queue: queue.as_str(),
            var,
        })
}

/// What waits in a dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub count: u64,
    /// SQS's count is approximate; the local one exact.
    pub approximate: bool,
    pub first_ids: Vec<String>,
}

fn local_queue(data_dir: &Path, queue: QueueName) -> Result<SqliteQueue, DlqError> {
    if !data_dir.is_dir() {
        return Err(DlqError::NoDataDir(data_dir.display().to_string()));
    }
    let db = Db::open(data_dir).map_err(|e| DlqError::Local(e.to_string()))?;
    Ok(SqliteQueue::new(
        db,
        queue.as_str(),
        VISIBILITY_TIMEOUT,
        MAX_RECEIVES,
    ))
}

/// The dead letters of `queue` in the local store at `data_dir`.
pub async fn list_local(data_dir: &Path, queue: QueueName) -> Result<Listing, DlqError> {
    let (count, first_ids) = local_queue(data_dir, queue)?
        .dead_letter_summary(LIST_IDS)
        .await
        .map_err(|e| DlqError::Local(e.to_string()))?;
    Ok(Listing {
        count,
        approximate: false,
        first_ids,
    })
}

/// Moves every dead letter of `queue` in the local store back to the queue; a running
/// `voyage serve` on the same data picks them up at once. Returns how many moved.
pub async fn redrive_local(data_dir: &Path, queue: QueueName) -> Result<u64, DlqError> {
    local_queue(data_dir, queue)?
        .redrive_dead_letters()
        .await
        .map_err(|e| DlqError::Local(e.to_string()))
}

async fn dlq_url(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    given: Option<String>,
) -> Result<String, DlqError> {
    match given {
        Some(url) => Ok(url),
        None => Ok(redrive::dead_letter_queue_url(client, queue_url).await?),
    }
}

/// The dead letters of the SQS queue `queue_url` (its DLQ: `dlq_url`, or the one its redrive
/// policy names).
pub async fn list_aws(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    dlq: Option<String>,
) -> Result<Listing, DlqError> {
    let dlq = dlq_url(client, queue_url, dlq).await?;
    let summary = redrive::summary(client, &dlq).await?;
    Ok(Listing {
        count: summary.approximate_count,
        approximate: true,
        first_ids: summary.first_ids,
    })
}

/// Moves up to `limit` dead letters of the SQS queue `queue_url` back to it.
pub async fn redrive_aws(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    dlq: Option<String>,
    limit: u64,
) -> Result<u64, DlqError> {
    let dlq = dlq_url(client, queue_url, dlq).await?;
    Ok(redrive::redrive(client, &dlq, queue_url, limit).await?)
}
