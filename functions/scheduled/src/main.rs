//! The scheduled-jobs Lambda, invoked by EventBridge rules with `{"schedule": "<name>"}`.

use lambda_runtime::{service_fn, LambdaEvent};
use voyage_core::config::Config;
use voyage_fn_scheduled::{run_input, ScheduledInput};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let config = Config::from_env()?;
    voyage_http::logging::init(config.log_format);
    let deps = voyage_providers::attach(voyage_aws::deps_from_config(config).await?)?;
    let deps = &deps;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<ScheduledInput>| async move {
            let reports = run_input(&event.payload, deps).await;
            voyage_core::metrics::flush_emf();
            Ok::<_, lambda_runtime::Error>(reports?)
        },
    ))
    .await
}
