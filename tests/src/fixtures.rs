use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::config::Credentials;
use voyage_core::ports::memory::MemoryTable;
use voyage_core::ports::{EventBus, Queue, Table};
use voyage_store_sqlite::{Db, SqliteBus, SqliteQueue, SqliteTable};

/// An adapter under test and whatever must outlive it (a temporary directory).
pub struct Fixture<T: ?Sized> {
    pub it: Arc<T>,
    _keep: Option<Box<dyn Any + Send + Sync>>,
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        voyage_core::ids::new_id("t").replace('_', "-")
    )
}

/// The emulator's endpoint. Panics (failing the test) when no emulator was started.
pub fn aws_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| {
        panic!(
            "AWS_ENDPOINT_URL is not set: the AWS adapter tests need moto server. \
             Run ./scripts/test, which starts it, or start `moto_server -p PORT` and export \
             AWS_ENDPOINT_URL=http://127.0.0.1:PORT"
        )
    })
}

/// SDK configuration for the emulator: fixed region and dummy credentials.
pub async fn aws() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .endpoint_url(aws_endpoint())
        .load()
        .await
}

pub fn memory_table() -> Fixture<dyn Table> {
    Fixture {
        it: Arc::new(MemoryTable::new()),
        _keep: None,
    }
}

pub fn sqlite_db() -> (Arc<Db>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = Db::open(dir.path()).expect("open sqlite");
    (db, dir)
}

pub fn sqlite_table() -> Fixture<dyn Table> {
    let (db, dir) = sqlite_db();
    Fixture {
        it: Arc::new(SqliteTable::new(db)),
        _keep: Some(Box::new(dir)),
    }
}

pub async fn dynamo_table() -> Fixture<dyn Table> {
    let client = aws_sdk_dynamodb::Client::new(&aws().await);
    let name = unique("voyage");
    voyage_aws::create_table(&client, &name)
        .await
        .expect("create table on the emulator");
    Fixture {
        it: Arc::new(voyage_aws::DynamoTable::new(client, name)),
        _keep: None,
    }
}

/// A queue and a way to read its dead letters.
pub struct QueueFixture {
    pub queue: Arc<dyn Queue>,
    pub dead_letters: Box<dyn Fn() -> futures_dead::DeadLetters + Send + Sync>,
    _keep: Option<Box<dyn Any + Send + Sync>>,
}

pub mod futures_dead {
    use std::future::Future;
    use std::pin::Pin;
    pub type DeadLetters = Pin<Box<dyn Future<Output = Vec<String>> + Send>>;
}

/// Receives after which both queue fixtures dead-letter a message.
pub const MAX_RECEIVES: u32 = 2;
/// Visibility timeout of both queue fixtures.
pub const VISIBILITY: Duration = Duration::from_secs(30);

pub fn sqlite_queue() -> QueueFixture {
    let (db, dir) = sqlite_db();
    let queue = SqliteQueue::new(db, "contract", VISIBILITY, MAX_RECEIVES);
    let q2 = queue.clone();
    QueueFixture {
        queue: Arc::new(queue),
        dead_letters: Box::new(move || {
            let q = q2.clone();
            Box::pin(async move { q.dead_letters().await.expect("dead letters") })
        }),
        _keep: Some(Box::new(dir)),
    }
}

/// Creates an SQS queue with a dead-letter queue after [`MAX_RECEIVES`]; returns both URLs.
pub async fn create_sqs_pair(client: &aws_sdk_sqs::Client) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let name = unique("voyage");
    let dlq = client
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .expect("create dlq");
    let dlq_url = dlq.queue_url.expect("dlq url");
    let attrs = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("dlq attributes");
    let dlq_arn = attrs
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .expect("dlq arn");
    let policy =
        serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVES})
            .to_string();
    let main = client
        .create_queue()
        .queue_name(&name)
        .attributes(QueueAttributeName::RedrivePolicy, policy)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            VISIBILITY.as_secs().to_string(),
        )
        .send()
        .await
        .expect("create queue");
    (main.queue_url.expect("queue url"), dlq_url)
}

pub async fn sqs_queue() -> QueueFixture {
    let client = aws_sdk_sqs::Client::new(&aws().await);
    let (url, dlq_url) = create_sqs_pair(&client).await;
    let dlq = voyage_aws::SqsQueue::new(client.clone(), dlq_url);
    QueueFixture {
        queue: Arc::new(voyage_aws::SqsQueue::new(client, url)),
        dead_letters: Box::new(move || {
            let dlq = dlq.clone();
            Box::pin(async move {
                let mut out = Vec::new();
                loop {
                    let got = dlq
                        .receive(10, Duration::from_secs(1))
                        .await
                        .expect("dlq receive");
                    if got.is_empty() {
                        return out;
                    }
                    for m in got {
                        dlq.ack(&m.receipt).await.expect("dlq ack");
                        out.push(m.body);
                    }
                }
            })
        }),
        _keep: None,
    }
}

/// A bus and the queue its events land in (an EventBridge rule's SQS target on AWS).
pub struct BusFixture {
    pub bus: Arc<dyn EventBus>,
    pub target: Arc<dyn Queue>,
    _keep: Option<Box<dyn Any + Send + Sync>>,
}

pub fn sqlite_bus() -> BusFixture {
    let (db, dir) = sqlite_db();
    let target = SqliteQueue::new(db, "platform-events", VISIBILITY, 5);
    BusFixture {
        bus: Arc::new(SqliteBus::new(target.clone())),
        target: Arc::new(target),
        _keep: Some(Box::new(dir)),
    }
}

pub async fn eventbridge_bus() -> BusFixture {
    use aws_sdk_eventbridge::types::Target;
    use aws_sdk_sqs::types::QueueAttributeName;
    let sdk = aws().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let events = aws_sdk_eventbridge::Client::new(&sdk);
    let (url, _) = create_sqs_pair(&sqs).await;
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("queue attributes")
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .expect("queue arn");
    let bus = unique("voyage-bus");
    events
        .create_event_bus()
        .name(&bus)
        .send()
        .await
        .expect("create bus");
    let rule = unique("to-queue");
    events
        .put_rule()
        .name(&rule)
        .event_bus_name(&bus)
        .event_pattern(serde_json::json!({"source": [voyage_core::ports::bus::SOURCE]}).to_string())
        .send()
        .await
        .expect("put rule");
    events
        .put_targets()
        .rule(&rule)
        .event_bus_name(&bus)
        .targets(
            Target::builder()
                .id("queue")
                .arn(arn)
                .build()
                .expect("target"),
        )
        .send()
        .await
        .expect("put targets");
    BusFixture {
        bus: Arc::new(voyage_aws::EventBridgeBus::new(events, bus)),
        target: Arc::new(voyage_aws::SqsQueue::new(sqs, url)),
        _keep: None,
    }
}
