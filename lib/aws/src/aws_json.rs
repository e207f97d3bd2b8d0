//! One signed call to an AWS service that speaks the AWS JSON 1.1 protocol (SSM, Secrets
//! Manager), without that service's SDK crate.
//!
//! A function reads two settings at start, one SSM parameter and one secret; their SDK crates
//! were a fifth of the workspace's compile time (`aws-sdk-ssm` alone 320 s of CPU in a cold
//! build) for two calls. This module signs the same request the SDK would (SigV4, through
//! `aws-sigv4`, the SDK's own signer, with the credentials and region of the shared
//! [`SdkConfig`], cached for the call) and posts it with reqwest, following no redirect. The
//! endpoint is chosen as the SDK chooses it: the service's configured endpoint
//! (`AWS_ENDPOINT_URL_SSM`, `AWS_ENDPOINT_URL_SECRETS_MANAGER` or the profile's `[services]`
//! section, unless `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`), else `AWS_ENDPOINT_URL`, else the
//! regional endpoint (`-fips` when `AWS_USE_FIPS_ENDPOINT` is set; the aws and aws-cn
//! partitions; dual-stack is not chosen: name such an endpoint in `AWS_ENDPOINT_URL_<SERVICE>`).
//! Throttling, 5xx answers and failed connections are tried three times in all.

use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use aws_types::service_config::ServiceConfigKey;
use serde_json::Value;

/// An AWS JSON 1.1 service: its signing name, its `X-Amz-Target` prefix, its host name and
/// the suffix of its endpoint variable.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    pub signing_name: &'static str,
    pub target_prefix: &'static str,
    pub host: &'static str,
    /// The SDK's service id: `AWS_ENDPOINT_URL_<ID>` and the profile's `[services]` key.
    pub service_id: &'static str,
    pub endpoint_var: &'static str,
}

pub const SSM: Service = Service {
    signing_name: "ssm",
    target_prefix: "AmazonSSM",
    host: "ssm",
    service_id: "SSM",
    endpoint_var: "AWS_ENDPOINT_URL_SSM",
};

pub const SECRETS_MANAGER: Service = Service {
    signing_name: "secretsmanager",
    target_prefix: "secretsmanager",
    host: "secretsmanager",
    service_id: "Secrets Manager",
    endpoint_var: "AWS_ENDPOINT_URL_SECRETS_MANAGER",
};

/// Why a call failed: a message that names the operation and AWS's error type, never the
/// request's body or credentials.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {message}")]
pub struct CallError {
    pub operation: &'static str,
    pub message: String,
    /// AWS's error type (`ParameterNotFound`, `ResourceNotFoundException`, ...), when it said.
    pub code: Option<String>,
}

const TRIES: u32 = 3;

/// Calls `operation` of `service` with `body`; answers the response's JSON.
pub async fn call(
    sdk: &SdkConfig,
    service: Service,
    operation: &'static str,
    body: &Value,
) -> Result<Value, CallError> {
    let fail = |message: String, code: Option<String>| CallError {
        operation,
        message,
        code,
    };
    let region = sdk
        .region()
        .map(|r| r.to_string())
        .ok_or_else(|| fail("no AWS region is configured".into(), None))?;
    let configured = endpoint(sdk, service, &region);
    // The signer needs a host (it panics without one): a configured endpoint such as
    // `localhost:4566` (no scheme) is refused here instead. The URL is normalised once, and
    // the same text is signed and sent.
    let url = match reqwest::Url::parse(&format!("{configured}/")) {
        Ok(url) if url.host_str().is_some() && matches!(url.scheme(), "http" | "https") => url,
        _ => {
            return Err(fail(
                format!(
                    "the endpoint {configured} (from {} or AWS_ENDPOINT_URL) is not an http(s) URL with a host",
                    service.endpoint_var
                ),
                None,
            ))
        }
    };
    // Credentials once per call, not once per attempt (the SDK caches them likewise).
    let identity = identity(sdk).await.map_err(|m| fail(m, None))?;
    let body = serde_json::to_vec(body).map_err(|e| fail(e.to_string(), None))?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        // The SDK follows none, and a redirect elsewhere would carry the session token.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| fail(format!("http client: {e}"), None))?;
    let mut tried = 0;
    loop {
        tried += 1;
        let answer = attempt(&identity, &client, service, operation, &url, &region, &body).await;
        match answer {
            Err(Failure::Passing(message, _)) if tried < TRIES => {
                tracing::warn!(operation, %message, "AWS call failed; trying again");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(tried))).await;
            }
            Err(Failure::Passing(message, code) | Failure::ForGood(message, code)) => {
                return Err(fail(message, code))
            }
            Ok(value) => return Ok(value),
        }
    }
}

enum Failure {
    Passing(String, Option<String>),
    ForGood(String, Option<String>),
}

fn endpoint(sdk: &SdkConfig, service: Service, region: &str) -> String {
    let configured = ServiceConfigKey::builder()
        .service_id(service.service_id)
        .env("AWS_ENDPOINT_URL")
        .profile("endpoint_url")
        .build()
        .ok()
        .and_then(|key| sdk.service_config().and_then(|c| c.load_config(key)))
        .filter(|v| !v.trim().is_empty())
        .or_else(|| sdk.endpoint_url().map(str::to_string));
    match configured {
        Some(url) => url.trim().trim_end_matches('/').to_string(),
        None => {
            let suffix = if region.starts_with("cn-") {
                "amazonaws.com.cn"
            } else {
                "amazonaws.com"
            };
            let fips = if sdk.use_fips() == Some(true) {
                "-fips"
            } else {
                ""
            };
            format!("https://{}{fips}.{region}.{suffix}", service.host)
        }
    }
}

async fn attempt(
    identity: &Identity,
    client: &reqwest::Client,
    service: Service,
    operation: &'static str,
    url: &reqwest::Url,
    region: &str,
    body: &[u8],
) -> Result<Value, Failure> {
    let target = format!("{}.{operation}", service.target_prefix);
    let headers = signed_headers(identity, service, url, region, &target, body)?;
    let mut request = client
        .post(url.clone())
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", &target)
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request
        .send()
        .await
        .map_err(|e| Failure::Passing(format!("request failed: {}", chain(&e)), None))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| Failure::Passing(format!("reading the answer: {}", chain(&e)), None))?;
    let json: Option<Value> = serde_json::from_str(&text).ok();
    if status.is_success() {
        return json.ok_or_else(|| {
            Failure::Passing(format!("{status} with a body that is not JSON"), None)
        });
    }
    let json = json.unwrap_or(Value::Null);
    // `__type` is `ParameterNotFound` or `com.amazonaws...#ResourceNotFoundException`,
    // sometimes with a `:http://...` suffix.
    let code = json.get("__type").and_then(Value::as_str).map(|t| {
        let t = t.rsplit('#').next().unwrap_or(t);
        t.split(':').next().unwrap_or(t).to_string()
    });
    let message = json
        .get("message")
        .or_else(|| json.get("Message"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let said = format!(
        "{status} {} {message}",
        code.as_deref().unwrap_or("(no error type)")
    );
    // The SDK's throttling and transient error codes.
    let throttled = code.as_deref().is_some_and(|c| {
        c.contains("Throttl")
            || matches!(
                c,
                "TooManyRequestsException"
                    | "RequestLimitExceeded"
                    | "LimitExceededException"
                    | "PriorRequestNotComplete"
                    | "RequestTimeout"
                    | "RequestTimeoutException"
                    | "SlowDown"
                    | "EC2ThrottledException"
            )
    });
    if status.is_server_error() || status.as_u16() == 429 || throttled {
        Err(Failure::Passing(said, code))
    } else {
        Err(Failure::ForGood(said, code))
    }
}

/// The caller's identity from the SDK configuration's credentials provider.
async fn identity(sdk: &SdkConfig) -> Result<Identity, String> {
    let provider = sdk
        .credentials_provider()
        .ok_or("no AWS credentials are configured")?;
    let credentials = provider
        .provide_credentials()
        .await
        .map_err(|e| format!("loading AWS credentials: {e}"))?;
    Ok(Identity::from(credentials))
}

/// The SigV4 headers (authorization, date, session token) for this request.
fn signed_headers(
    identity: &Identity,
    service: Service,
    url: &reqwest::Url,
    region: &str,
    target: &str,
    body: &[u8],
) -> Result<Vec<(String, String)>, Failure> {
    let params = v4::SigningParams::builder()
        .identity(identity)
        .region(region)
        .name(service.signing_name)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| Failure::ForGood(format!("signing: {e}"), None))?
        .into();
    let request = SignableRequest::new(
        "POST",
        url.as_str(),
        [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", target),
        ]
        .into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| Failure::ForGood(format!("signing: {e}"), None))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| Failure::ForGood(format!("signing: {e}"), None))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect())
}

/// An error with its causes (reqwest's own text leaves out why a connection failed).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_regional_endpoint_is_used_when_none_is_configured() {
        let sdk = SdkConfig::builder().build();
        assert_eq!(
            endpoint(&sdk, SECRETS_MANAGER, "eu-west-1"),
            "https://secretsmanager.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            endpoint(&sdk, SSM, "cn-north-1"),
            "https://ssm.cn-north-1.amazonaws.com.cn"
        );
    }

    #[test]
    fn fips_is_chosen_when_the_configuration_asks_for_it() {
        let sdk = SdkConfig::builder().use_fips(true).build();
        assert_eq!(
            endpoint(&sdk, SSM, "us-east-1"),
            "https://ssm-fips.us-east-1.amazonaws.com"
        );
    }

    /// Answers an endpoint for one service id only, as `AWS_ENDPOINT_URL_<SERVICE>` would.
    #[derive(Debug)]
    struct OneService(&'static str);

    impl aws_types::service_config::LoadServiceConfig for OneService {
        fn load_config(&self, key: ServiceConfigKey<'_>) -> Option<String> {
            (key.service_id() == self.0 && key.env() == "AWS_ENDPOINT_URL")
                .then(|| "http://secrets.local:4566/".to_string())
        }
    }

    #[test]
    fn a_service_endpoint_wins_over_the_global_one_for_that_service_only() {
        let sdk = SdkConfig::builder()
            .endpoint_url("http://everything.local:5599")
            .service_config(OneService("Secrets Manager"))
            .build();
        assert_eq!(
            endpoint(&sdk, SECRETS_MANAGER, "us-east-1"),
            "http://secrets.local:4566"
        );
        assert_eq!(
            endpoint(&sdk, SSM, "us-east-1"),
            "http://everything.local:5599"
        );
    }

    #[tokio::test]
    async fn an_endpoint_without_a_scheme_is_refused_not_signed() {
        let sdk = SdkConfig::builder()
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url("localhost:4566")
            .build();
        let e = call(&sdk, SSM, "GetParameter", &serde_json::json!({}))
            .await
            .unwrap_err();
        assert!(e.message.contains("not an http(s) URL"), "{e}");
    }
}
