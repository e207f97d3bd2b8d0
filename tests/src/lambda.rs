//! The deployed shape without AWS: a stand-in of the Lambda Runtime API, and the function
//! binaries started against it as Lambda starts a `provided.al2023` bootstrap.
//!
//! [`RuntimeApi`] serves the four routes a custom runtime uses
//! (`GET /2018-06-01/runtime/invocation/next` with the `Lambda-Runtime-*` headers, `POST
//! .../invocation/{id}/response` and `.../error`, `POST .../init/error`) on a loopback port.
//! [`Function::start`] runs a binary of this workspace (from the `target/<profile>/` directory
//! the test itself runs from; `scripts/test` builds them first with `cargo build --workspace
//! --bins`, since `cargo test` builds only other packages' unit-test harnesses) with
//! `AWS_LAMBDA_RUNTIME_API` pointing at it, Lambda's own variables, and the function's
//! variables from template.yaml (given by the caller), and nothing else of the test's
//! environment. [`Function::invoke`] hands it one event and returns its answer.
//! [`Stack`] makes, on moto, what the template's resources would be: the table, the queues
//! and their DLQs, the bus, the SSM parameter and the credentials key secret.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{oneshot, Notify};

/// What a function answered to one invocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `POST .../response`: the body, parsed as JSON (a JSON string when it is not JSON).
    Response(Value),
    /// `POST .../error`: the error document.
    Error(Value),
}

impl Outcome {
    /// The response, or a panic naming the error.
    pub fn response(self) -> Value {
        match self {
            Outcome::Response(v) => v,
            Outcome::Error(e) => panic!("the function answered an error: {e}"),
        }
    }
}

#[derive(Default)]
struct Inner {
    pending: Mutex<VecDeque<(String, Value)>>,
    arrived: Notify,
    waiting: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    first_poll: Mutex<Option<Instant>>,
    init_error: Mutex<Option<Value>>,
    /// The invocation timeout the next events carry (`Lambda-Runtime-Deadline-Ms`); 30 s,
    /// the template's, when unset.
    timeout: Mutex<Option<Duration>>,
}

fn parse(body: &Bytes) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

async fn next(State(inner): State<Arc<Inner>>) -> impl IntoResponse {
    inner
        .first_poll
        .lock()
        .unwrap()
        .get_or_insert_with(Instant::now);
    loop {
        // Register before looking, so an event queued in between is not missed.
        let arrived = inner.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        if let Some((id, event)) = inner.pending.lock().unwrap().pop_front() {
            let timeout = inner
                .timeout
                .lock()
                .unwrap()
                .unwrap_or(Duration::from_secs(30));
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                + timeout.as_millis();
            let mut headers = HeaderMap::new();
            headers.insert("lambda-runtime-aws-request-id", id.parse().unwrap());
            headers.insert(
                "lambda-runtime-deadline-ms",
                deadline.to_string().parse().unwrap(),
            );
            headers.insert(
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:123456789012:function:voyage-dry-run"
                    .parse()
                    .unwrap(),
            );
            headers.insert(
                "lambda-runtime-trace-id",
                "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0"
                    .parse()
                    .unwrap(),
            );
            headers.insert("content-type", "application/json".parse().unwrap());
            return (StatusCode::OK, headers, event.to_string());
        }
        // Lambda holds the poll open until there is an event.
        arrived.await;
    }
}

async fn respond(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    settle(&inner, &id, Outcome::Response(parse(&body)))
}

async fn fail(State(inner): State<Arc<Inner>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    settle(&inner, &id, Outcome::Error(parse(&body)))
}

fn settle(inner: &Inner, id: &str, outcome: Outcome) -> StatusCode {
    match inner.waiting.lock().unwrap().remove(id) {
        Some(tx) => {
            let _ = tx.send(outcome);
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

async fn init_error(State(inner): State<Arc<Inner>>, body: Bytes) -> StatusCode {
    *inner.init_error.lock().unwrap() = Some(parse(&body));
    StatusCode::ACCEPTED
}

/// A Lambda Runtime API stand-in for one function (one sandbox: one invocation at a time).
#[derive(Clone)]
pub struct RuntimeApi {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
}

impl RuntimeApi {
    pub async fn start() -> RuntimeApi {
        let inner = Arc::new(Inner::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(respond),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(fail))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        RuntimeApi { inner, addr }
    }

    /// When the function first asked for an event (its init was over), if it did.
    pub fn first_poll(&self) -> Option<Instant> {
        *self.inner.first_poll.lock().unwrap()
    }

    /// What the function reported through `init/error`, if anything.
    pub fn init_error(&self) -> Option<Value> {
        self.inner.init_error.lock().unwrap().clone()
    }

    /// Sets the timeout the next invocations run under (their deadline is this long after
    /// the function takes them).
    pub fn set_timeout(&self, timeout: Duration) {
        *self.inner.timeout.lock().unwrap() = Some(timeout);
    }

    /// Queues `event` for the next `next` poll and waits up to `within` for the answer.
    pub async fn invoke(&self, event: Value, within: Duration) -> Option<Outcome> {
        let id = voyage_core::ids::new_id("req");
        let (tx, rx) = oneshot::channel();
        self.inner.waiting.lock().unwrap().insert(id.clone(), tx);
        self.inner.pending.lock().unwrap().push_back((id, event));
        self.inner.arrived.notify_waiters();
        tokio::time::timeout(within, rx).await.ok()?.ok()
    }
}

/// The directory cargo put this test's binaries in (`target/debug/` for `cargo test`):
/// the test runs from its `deps/` subdirectory.
pub fn binaries_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    deps.parent().unwrap().to_path_buf()
}

/// One function binary running as Lambda runs it, against its own [`RuntimeApi`].
pub struct Function {
    pub name: String,
    pub api: RuntimeApi,
    pub started: Instant,
    child: tokio::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn collect(
    stream: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>,
) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    if let Some(mut stream) = stream {
        let out = out.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                out.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    out
}

impl Function {
    /// Starts the workspace binary `binary` with Lambda's variables, the moto endpoint and
    /// credentials, and `env` (the function's variables from template.yaml).
    pub async fn start(binary: &str, env: &[(&str, String)]) -> Function {
        let path = binaries_dir().join(binary);
        assert!(
            path.exists(),
            "{} is missing: build the function binaries first (`cargo build --workspace --bins`, \
             as scripts/test does)",
            path.display()
        );
        let api = RuntimeApi::start().await;
        let endpoint = crate::fixtures::aws_endpoint();
        let mut command = tokio::process::Command::new(&path);
        command
            .env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", api.addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", format!("voyage-{binary}"))
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/voyage-{binary}"),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "2026/11/30/[$LATEST]dryrun")
            .env("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("RUST_LOG", "info")
            .env("VOYAGE_LOG_FORMAT", "json")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let started = Instant::now();
        let mut child = command.spawn().unwrap();
        let stdout = collect(child.stdout.take());
        let stderr = collect(child.stderr.take());
        Function {
            name: binary.to_string(),
            api,
            started,
            child,
            stdout,
            stderr,
        }
    }

    /// Hands the function `event` and returns its answer; panics with its output when it
    /// does not answer within 20 s (it crashed, or failed its init).
    pub async fn invoke(&mut self, event: Value) -> Outcome {
        match self.api.invoke(event, Duration::from_secs(20)).await {
            Some(outcome) => outcome,
            None => panic!(
                "{} did not answer (exit: {:?}, init error: {:?})\nstdout:\n{}\nstderr:\n{}",
                self.name,
                self.child.try_wait(),
                self.api.init_error(),
                self.stdout(),
                self.stderr()
            ),
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

fn event_file(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../events")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// An event of the repository's `events/` directory.
pub fn event(name: &str) -> Value {
    event_file(name)
}

/// An API Gateway HTTP API (payload 2.0) event for `method path`, shaped like
/// `events/apigw-v2-get-me.json`, with `authorizer` as the Lambda authorizer's context
/// (`None`: a route without the authorizer), a JSON body and extra headers.
pub fn http_event(
    method: &str,
    path: &str,
    authorizer: Option<Value>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Value {
    let mut e = event_file("apigw-v2-get-me.json");
    e["routeKey"] = json!(format!("{method} {path}"));
    e["rawPath"] = json!(path);
    e["requestContext"]["routeKey"] = e["routeKey"].clone();
    e["requestContext"]["http"]["method"] = json!(method);
    e["requestContext"]["http"]["path"] = json!(path);
    match authorizer {
        Some(context) => e["requestContext"]["authorizer"] = json!({"lambda": context}),
        None => {
            if let Some(ctx) = e["requestContext"].as_object_mut() {
                ctx.remove("authorizer");
            }
        }
    }
    if let Some(body) = body {
        e["body"] = json!(body.to_string());
        e["headers"]["content-type"] = json!("application/json");
    }
    for (k, v) in headers {
        e["headers"][k.to_ascii_lowercase()] = json!(v);
    }
    e
}

/// An SQS event (as the event source mapping sends it) of `(message id, body)` records.
pub fn sqs_event(queue_arn: &str, records: &[(&str, &str)]) -> Value {
    let template = event_file("sqs-exchange-inbound.json")["Records"][0].clone();
    let records: Vec<Value> = records
        .iter()
        .map(|(id, body)| {
            let mut r = template.clone();
            r["messageId"] = json!(id);
            r["body"] = json!(body);
            r["eventSourceARN"] = json!(queue_arn);
            r
        })
        .collect();
    json!({ "Records": records })
}

/// The parts of a response of an API Gateway function: status and JSON (or text) body.
pub fn http_answer(response: &Value) -> (u16, Value) {
    let status = response["statusCode"].as_u64().unwrap_or(0) as u16;
    let body = response["body"].as_str().unwrap_or("");
    // lambda_http encodes only binary content types; every answer here is JSON or text.
    assert_ne!(response["isBase64Encoded"], json!(true), "{response}");
    let body = body.to_string();
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// One SQS queue of the stack and its dead-letter queue.
#[derive(Debug, Clone)]
pub struct StackQueue {
    pub url: String,
    pub arn: String,
    pub dlq_url: String,
}

/// What template.yaml's resources would be, made on moto: the table, the four queues the
/// functions name, the bus, the public base URL parameter and the credentials key secret.
#[derive(Debug, Clone)]
pub struct Stack {
    pub table: String,
    pub webhooks: StackQueue,
    pub inbound: StackQueue,
    pub outbound: StackQueue,
    pub google: StackQueue,
    pub bus: String,
    pub parameter: String,
    pub secret_arn: String,
}

async fn stack_queue(sqs: &aws_sdk_sqs::Client) -> StackQueue {
    use aws_sdk_sqs::types::QueueAttributeName;
    let (url, dlq_url) = crate::fixtures::create_sqs_pair(sqs).await;
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap();
    StackQueue { url, arn, dlq_url }
}

impl Stack {
    pub async fn create() -> Stack {
        let sdk = crate::fixtures::aws().await;
        let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
        let table = crate::fixtures::unique("voyage-dry");
        voyage_aws::create_table(&dynamo, &table).await.unwrap();
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let bus = crate::fixtures::unique("voyage-platform");
        aws_sdk_eventbridge::Client::new(&sdk)
            .create_event_bus()
            .name(&bus)
            .send()
            .await
            .unwrap();
        let parameter = format!("/{}/public-base-url", crate::fixtures::unique("voyage"));
        use voyage_aws::aws_json::{call, SECRETS_MANAGER, SSM};
        call(
            &sdk,
            SSM,
            "PutParameter",
            &json!({ "Name": parameter, "Value": "https://api.voyage.example", "Type": "String" }),
        )
        .await
        .unwrap();
        let key = voyage_core::sealing::generate_key().unwrap();
        let created = call(
            &sdk,
            SECRETS_MANAGER,
            "CreateSecret",
            &json!({
                "Name": crate::fixtures::unique("voyage-credentials-key"),
                // The SDK fills it in: a retried create is then the same create.
                "ClientRequestToken": crate::fixtures::unique("voyage-dry-run-credentials-key"),
                "SecretString": json!({ "current": key }).to_string(),
            }),
        )
        .await
        .unwrap();
        let secret_arn = created["ARN"].as_str().unwrap().to_string();
        Stack {
            table,
            webhooks: stack_queue(&sqs).await,
            inbound: stack_queue(&sqs).await,
            outbound: stack_queue(&sqs).await,
            google: stack_queue(&sqs).await,
            bus,
            parameter,
            secret_arn,
        }
    }

    /// The store on the stack's table, as `voyage keys create --table` uses it.
    pub async fn store(&self) -> voyage_core::store::Store {
        let client = aws_sdk_dynamodb::Client::new(&crate::fixtures::aws().await);
        voyage_core::store::Store::new(
            Arc::new(voyage_aws::DynamoTable::new(client, self.table.clone())),
            Arc::new(voyage_core::ports::SystemClock),
        )
    }

    /// The environment template.yaml gives the function `binary`: the Globals, then its own.
    pub fn env(&self, binary: &str) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("VOYAGE_TABLE_NAME", self.table.clone()),
            ("VOYAGE_WEBHOOK_RETRY_DELAYS", "30s,5m,30m".to_string()),
            ("VOYAGE_PENDING_CANCELLATION_GRACE", "10m".to_string()),
            ("VOYAGE_CREDENTIALS_KEY_RING_REVISION", "1".to_string()),
        ];
        let parameter = ("VOYAGE_PUBLIC_BASE_URL_PARAMETER", self.parameter.clone());
        let secret = ("VOYAGE_CREDENTIALS_KEY_SECRET_ARN", self.secret_arn.clone());
        let bus = ("VOYAGE_EVENT_BUS_NAME", self.bus.clone());
        let webhooks = ("VOYAGE_WEBHOOK_QUEUE_URL", self.webhooks.url.clone());
        env.extend(match binary {
            "gateway" => vec![],
            "gateway-api" => vec![
                parameter,
                secret,
                ("VOYAGE_INBOUND_QUEUE_URL", self.inbound.url.clone()),
                ("VOYAGE_GOOGLE_SYNC_QUEUE_URL", self.google.url.clone()),
            ],
            "webhooks" | "webhooks-worker" => vec![webhooks],
            "google-sync" => vec![
                secret,
                ("VOYAGE_GOOGLE_SYNC_QUEUE_URL", self.google.url.clone()),
            ],
            "google-sync-worker" => vec![secret],
            "exchange-inbound" => vec![("VOYAGE_INBOUND_QUEUE_URL", self.inbound.url.clone())],
            "exchange-inbound-worker" => vec![parameter, secret, bus],
            "exchange-outbound" => vec![
                secret,
                ("VOYAGE_OUTBOUND_QUEUE_URL", self.outbound.url.clone()),
            ],
            "exchange-outbound-worker" => vec![secret],
            "scheduled" => vec![parameter, secret, webhooks, bus],
            other => panic!("no function {other} in template.yaml"),
        });
        env
    }
}
