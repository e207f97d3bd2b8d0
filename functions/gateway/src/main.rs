//! The API Gateway Lambda authorizer.

use aws_lambda_events::apigw::ApiGatewayV2CustomAuthorizerV2Request;
use lambda_runtime::{service_fn, LambdaEvent};
use voyage_core::config::Config;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let config = Config::from_env()?;
    voyage_http::logging::init(config.log_format);
    let deps = voyage_aws::deps_from_config(config).await?;
    let store = &deps.store;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<ApiGatewayV2CustomAuthorizerV2Request>| async move {
            voyage_fn_gateway::authorizer::authorize(store, &event.payload.headers)
                .await
                .map_err(lambda_runtime::Error::from)
        },
    ))
    .await
}
