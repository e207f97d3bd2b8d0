//! The scheduled-jobs Lambda, invoked by EventBridge rules with `{"job": "<name>"}`.

use lambda_runtime::{service_fn, LambdaEvent};
use voyage_core::config::Config;
use voyage_fn_scheduled::{run, Job, ScheduledInput};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let config = Config::from_env()?;
    voyage_http::logging::init(config.log_format);
    let deps = voyage_aws::deps_from_config(config).await?;
    let deps = &deps;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<ScheduledInput>| async move {
            let job = Job::parse(&event.payload.job)?;
            let report = run(job, deps).await?;
            Ok::<_, lambda_runtime::Error>(report)
        },
    ))
    .await
}
