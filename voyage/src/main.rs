//! `voyage`: the whole integrations system on one machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use voyage::Local;
use voyage_core::config::Config;
use voyage_fn_scheduled::Job;

#[derive(Parser)]
#[command(
    name = "voyage",
    version,
    about = "Voyage integrations: webhooks and calendar sync"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every route, queue and schedule in this process.
    Serve {
        #[arg(long, default_value = "127.0.0.1:3000")]
        addr: SocketAddr,
        /// Where the durable store lives.
        #[arg(long, env = "VOYAGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Let webhooks reach loopback and private addresses (for receivers on this machine).
        #[arg(long)]
        allow_private_webhook_targets: bool,
        /// Serve stateful provider simulators (Microsoft Graph under `/sim/graph`, Google
        /// Calendar under `/sim/google`) in this process and point the provider clients at
        /// them: a sandbox with no cloud accounts (its calendars kept in the data directory).
        #[arg(long)]
        simulate_providers: bool,
    },
    /// Manage tenant API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Run scheduled jobs by hand.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Dead letters: list them, move them back to their queue after a fix.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Print the OpenAPI 3.1 document of every public route (what `GET /openapi.json`
    /// serves; `schemas/openapi.json` is this output, served by the gateway Lambda on AWS).
    Openapi,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Move every dead letter of QUEUE back to it and print how many moved.
    Redrive {
        /// webhook-deliveries, exchange-inbound, exchange-outbound, google-sync or
        /// platform-events.
        queue: String,
        #[command(flatten)]
        place: DlqPlace,
        /// On AWS, move at most this many.
        #[arg(long, default_value_t = 100_000)]
        max: u64,
    },
    /// Count QUEUE's dead letters and show the first ids.
    List {
        queue: String,
        #[command(flatten)]
        place: DlqPlace,
    },
}

#[derive(Args)]
struct DlqPlace {
    /// The local store (default; ignored with --aws).
    #[arg(long, env = "VOYAGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The deployed queue on SQS instead (the usual AWS credentials and region).
    #[arg(long)]
    aws: bool,
    /// With --aws: the source queue's URL; default: the variable the functions read it from
    /// (VOYAGE_WEBHOOK_QUEUE_URL, VOYAGE_INBOUND_QUEUE_URL, VOYAGE_OUTBOUND_QUEUE_URL,
    /// VOYAGE_GOOGLE_SYNC_QUEUE_URL, VOYAGE_PLATFORM_EVENTS_QUEUE_URL).
    #[arg(long, requires = "aws")]
    queue_url: Option<String>,
    /// With --aws: the dead-letter queue's URL; default: the one the source queue's
    /// RedrivePolicy names.
    #[arg(long, requires = "aws")]
    dlq_url: Option<String>,
}

/// `voyage dlq ...`: prints a count (redrive) or a count and ids (list).
async fn dlq(command: DlqCommand) -> Result<(), String> {
    use voyage::dlq;
    let (queue, place) = match &command {
        DlqCommand::Redrive { queue, place, .. } | DlqCommand::List { queue, place } => {
            (dlq::parse_queue(queue).map_err(|e| e.to_string())?, place)
        }
    };
    let where_ = if place.aws {
        let url = dlq::queue_url(queue, place.queue_url.clone()).map_err(|e| e.to_string())?;
        let client = voyage_aws::sqs_client(&voyage_aws::sdk_config().await);
        Some((client, url))
    } else {
        None
    };
    let dir = voyage::data_dir(place.data_dir.clone());
    match command {
        DlqCommand::Redrive { max, place, .. } => {
            let moved = match where_ {
                Some((client, url)) => dlq::redrive_aws(&client, &url, place.dlq_url, max).await,
                None => dlq::redrive_local(&dir, queue).await,
            }
            .map_err(|e| e.to_string())?;
            println!("{moved}");
            eprintln!(
                "voyage: moved {moved} dead letter{} back to {}",
                if moved == 1 { "" } else { "s" },
                queue.as_str()
            );
        }
        DlqCommand::List { place, .. } => {
            let listing = match where_ {
                Some((client, url)) => dlq::list_aws(&client, &url, place.dlq_url).await,
                None => dlq::list_local(&dir, queue).await,
            }
            .map_err(|e| e.to_string())?;
            println!(
                "{}{} dead letter{} in {}",
                if listing.approximate { "~" } else { "" },
                listing.count,
                if listing.count == 1 { "" } else { "s" },
                queue.as_str()
            );
            for id in listing.first_ids {
                println!("{id}");
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key for a company and print it (shown only this once).
    Create {
        #[arg(long)]
        company: String,
        /// Grant the `internal` scope (platform-to-integrations routes).
        #[arg(long)]
        internal: bool,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, env = "VOYAGE_DATA_DIR", conflicts_with = "table")]
        data_dir: Option<PathBuf>,
        /// Write the key into this deployed DynamoDB table instead of the local store (uses
        /// the usual AWS credentials and region).
        #[arg(long)]
        table: Option<String>,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Run one job now, even while `serve` runs on the same data.
    Run {
        job: String,
        #[arg(long, env = "VOYAGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// List the jobs.
    List,
}

fn open(data_dir: Option<PathBuf>, config: Config) -> Result<(Local, PathBuf), String> {
    let dir = voyage::data_dir(data_dir);
    Ok((Local::open(&dir, config)?, dir))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

async fn run(cli: Cli) -> Result<(), String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    voyage_http::logging::init(config.log_format);
    match cli.command {
        Command::Openapi => {
            use std::io::Write;
            let text = serde_json::to_string_pretty(&voyage::openapi())
                .map_err(|e| format!("the document: {e}"))?;
            // A reader that stops early (`| head`) is no error of ours.
            match writeln!(std::io::stdout(), "{text}") {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("stdout: {e}")),
                _ => Ok(()),
            }
        }
        Command::Serve {
            addr,
            data_dir,
            allow_private_webhook_targets,
            simulate_providers,
        } => {
            let mut config = config;
            config.allow_private_webhook_targets |= allow_private_webhook_targets;
            let dir = voyage::data_dir(data_dir);
            voyage::serve(&dir, config, addr, simulate_providers, shutdown_signal()).await
        }
        Command::Keys {
            command:
                KeysCommand::Create {
                    company,
                    internal,
                    description,
                    data_dir,
                    table,
                },
        } => {
            let store = match table {
                Some(table) => {
                    let sdk = voyage_aws::sdk_config().await;
                    voyage_core::store::Store::new(
                        std::sync::Arc::new(voyage_aws::DynamoTable::new(
                            voyage_aws::dynamodb_client(&sdk),
                            table,
                        )),
                        std::sync::Arc::new(voyage_core::ports::SystemClock),
                    )
                }
                None => open(data_dir, config)?.0.deps.store.clone(),
            };
            let key = voyage_core::auth::create_key(&store, &company, internal, description)
                .await
                .map_err(|e| e.to_string())?;
            // The key alone on stdout, so `KEY=$(voyage keys create ...)` works.
            println!("{}", key.plaintext);
            eprintln!(
                "voyage: key {} for company {}{} (shown once; store it now)",
                key.record.id,
                company,
                if internal {
                    " with the internal scope"
                } else {
                    ""
                }
            );
            Ok(())
        }
        Command::Jobs {
            command: JobsCommand::Run { job, data_dir },
        } => {
            let job = Job::parse(&job).map_err(|e| e.to_string())?;
            let (local, _) = open(data_dir, config)?;
            let report = voyage_fn_scheduled::run(job, &local.deps)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "{}",
                serde_json::to_string(&report).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        Command::Dlq { command } => dlq(command).await,
        Command::Jobs {
            command: JobsCommand::List,
        } => {
            for job in Job::ALL {
                println!("{}", job.name());
            }
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voyage: {e}");
            ExitCode::from(2)
        }
    }
}
