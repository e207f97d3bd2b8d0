//! The google-sync worker Lambda: queued syncs (pushes, the five-minute job's fan-out,
//! follow-ups), with partial batch failures.

use voyage_core::config::Config;
use voyage_fn_google_sync::worker;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let config = Config::from_env()?;
    voyage_http::logging::init(config.log_format);
    let deps = voyage_providers::attach(voyage_aws::deps_from_config(config).await?)?;
    let deps = &deps;
    voyage_http::serve_sqs(|messages, cut_at| {
        worker::handle_batch_until(deps, messages, Some(cut_at))
    })
    .await
}
