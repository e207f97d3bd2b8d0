//! Configuration from environment variables, validated once at start. A bad value stops the
//! process with a message naming the variable, instead of failing on the first request.

use std::time::Duration;

use crate::retry::{parse_duration, RetryPolicy};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("configuration: {var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Every setting, with its variable. See the README's configuration table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `VOYAGE_LOG_FORMAT`: `json` (default on Lambda) or `text` (default locally).
    pub log_format: Option<LogFormat>,
    /// `VOYAGE_PUBLIC_BASE_URL`: the public root under which provider callbacks are built.
    pub public_base_url: Option<String>,
    /// `VOYAGE_PUBLIC_BASE_URL_PARAMETER`: the name of an SSM parameter holding the public
    /// root, read at start when `VOYAGE_PUBLIC_BASE_URL` is unset (AWS only).
    pub public_base_url_parameter: Option<String>,
    /// `VOYAGE_TABLE_NAME`: the DynamoDB table (AWS only).
    pub table_name: Option<String>,
    /// `VOYAGE_WEBHOOK_QUEUE_URL`: the SQS queue that carries webhook retries (AWS only).
    pub webhook_queue_url: Option<String>,
    /// `VOYAGE_INBOUND_QUEUE_URL`: the SQS queue of Graph notifications (AWS only).
    pub inbound_queue_url: Option<String>,
    /// `VOYAGE_OUTBOUND_QUEUE_URL`: the SQS queue of session changes for Exchange (AWS only).
    pub outbound_queue_url: Option<String>,
    /// `VOYAGE_GOOGLE_SYNC_QUEUE_URL`: the SQS queue of Google push wake-ups (AWS only).
    pub google_sync_queue_url: Option<String>,
    /// `VOYAGE_EVENT_BUS_NAME`: the EventBridge bus platform events go to (AWS only).
    pub event_bus_name: Option<String>,
    /// `VOYAGE_WEBHOOK_RETRY_DELAYS`: default `30s,5m,30m`.
    pub webhook_retry: RetryPolicy,
    /// `VOYAGE_PENDING_CANCELLATION_GRACE`: default `10m`.
    pub pending_cancellation_grace: Duration,
    /// `VOYAGE_FOLLOW_UP_CHECK`: default `2m`, at most `15m` (SQS's longest delay). When a
    /// staff member's change is to be written to their other calendars, a follow-up is
    /// queued first with this delay: if the process stops between the booking's change and
    /// those writes, the follow-up makes them ([`crate::calendar::insure`]).
    pub follow_up_check: Duration,
    /// `VOYAGE_ALLOW_PRIVATE_WEBHOOK_TARGETS`: `true` lets webhooks reach private addresses.
    pub allow_private_webhook_targets: bool,
    /// `VOYAGE_ALLOW_HTTP_WEBHOOKS`: `true` accepts plain `http://` endpoint URLs.
    pub allow_http_webhooks: bool,
    /// `VOYAGE_GRAPH_BASE_URL`, default `https://graph.microsoft.com`.
    pub graph_base_url: String,
    /// `VOYAGE_MS_LOGIN_BASE_URL`, default `https://login.microsoftonline.com`.
    pub ms_login_base_url: String,
    /// `VOYAGE_GOOGLE_CALENDAR_BASE_URL`, default `https://www.googleapis.com`.
    pub google_calendar_base_url: String,
    /// `VOYAGE_GOOGLE_TOKEN_URL`, default `https://oauth2.googleapis.com/token`.
    pub google_token_url: String,
    /// `VOYAGE_CREDENTIALS_KEY`: base64 of 32 random bytes, the key that seals tenants'
    /// provider secrets at rest. Locally, when unset, a key file in the data directory.
    pub credentials_key: Option<[u8; 32]>,
    /// `VOYAGE_CREDENTIALS_PREVIOUS_KEYS`: keys the credentials key replaced, separated by
    /// commas; they still open what they sealed (see docs/DEPLOY.md, "Rotating the key").
    pub previous_credentials_keys: Vec<[u8; 32]>,
    /// `VOYAGE_CREDENTIALS_KEY_SECRET_ARN`: a Secrets Manager secret holding the credentials
    /// key ring, read at start when `VOYAGE_CREDENTIALS_KEY` is unset (AWS only).
    pub credentials_key_secret_arn: Option<String>,
    /// `VOYAGE_GRAPH_TIMEOUT`: per-request timeout of Graph calls, default `10s`.
    pub graph_timeout: Duration,
    /// `VOYAGE_SYNC_BUDGET`: how long one invocation may spend paging one connection's sync
    /// (a Graph delta round or a Google sync) before it checkpoints its paging progress and
    /// queues the rest; default `20s`, well inside the functions' 30 s timeout (the rest of
    /// the time covers the last page and the checkpoint).
    pub sync_budget: Duration,
    /// `VOYAGE_GRAPH_MAILBOX_BUDGET` (Graph requests per app and mailbox per 10 minutes,
    /// default 9000, under Outlook's 10,000; counted per minute, a tenth each) and
    /// `VOYAGE_GOOGLE_USER_BUDGET` (Google requests
    /// per service account and user per minute, default 500): see [`crate::throttle`].
    pub limits: crate::throttle::Limits,
}

impl Config {
    /// [`Config::pending_cancellation_grace`] as the booking commands take it (one too long
    /// for a date counts as the default 10 minutes).
    pub fn pending_grace(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.pending_cancellation_grace)
            .unwrap_or_else(|_| chrono::Duration::minutes(10))
    }

    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Ok(Config {
            log_format: match get("VOYAGE_LOG_FORMAT").as_deref() {
                None => None,
                Some("json") => Some(LogFormat::Json),
                Some("text") => Some(LogFormat::Text),
                Some(other) => {
                    return Err(ConfigError {
                        var: "VOYAGE_LOG_FORMAT",
                        message: format!("`{other}` is not `json` or `text`"),
                    })
                }
            },
            public_base_url: get("VOYAGE_PUBLIC_BASE_URL")
                .map(|v| base_url("VOYAGE_PUBLIC_BASE_URL", &v))
                .transpose()?,
            public_base_url_parameter: get("VOYAGE_PUBLIC_BASE_URL_PARAMETER"),
            table_name: get("VOYAGE_TABLE_NAME"),
            webhook_queue_url: get("VOYAGE_WEBHOOK_QUEUE_URL"),
            inbound_queue_url: get("VOYAGE_INBOUND_QUEUE_URL"),
            outbound_queue_url: get("VOYAGE_OUTBOUND_QUEUE_URL"),
            google_sync_queue_url: get("VOYAGE_GOOGLE_SYNC_QUEUE_URL"),
            event_bus_name: get("VOYAGE_EVENT_BUS_NAME"),
            webhook_retry: match get("VOYAGE_WEBHOOK_RETRY_DELAYS") {
                None => RetryPolicy::default(),
                Some(v) => RetryPolicy::parse(&v).map_err(|message| ConfigError {
                    var: "VOYAGE_WEBHOOK_RETRY_DELAYS",
                    message,
                })?,
            },
            pending_cancellation_grace: match get("VOYAGE_PENDING_CANCELLATION_GRACE") {
                None => Duration::from_secs(600),
                Some(v) => parse_duration(&v).map_err(|message| ConfigError {
                    var: "VOYAGE_PENDING_CANCELLATION_GRACE",
                    message,
                })?,
            },
            follow_up_check: match get("VOYAGE_FOLLOW_UP_CHECK") {
                None => Duration::from_secs(120),
                Some(v) => parse_duration(&v)
                    .and_then(|d| {
                        if d <= Duration::from_secs(900) {
                            Ok(d)
                        } else {
                            Err(
                                "must be at most 15m (the longest delay SQS gives a message)"
                                    .to_string(),
                            )
                        }
                    })
                    .map_err(|message| ConfigError {
                        var: "VOYAGE_FOLLOW_UP_CHECK",
                        message,
                    })?,
            },
            allow_private_webhook_targets: flag(
                "VOYAGE_ALLOW_PRIVATE_WEBHOOK_TARGETS",
                get("VOYAGE_ALLOW_PRIVATE_WEBHOOK_TARGETS"),
            )?,
            allow_http_webhooks: flag(
                "VOYAGE_ALLOW_HTTP_WEBHOOKS",
                get("VOYAGE_ALLOW_HTTP_WEBHOOKS"),
            )?,
            graph_base_url: base_url(
                "VOYAGE_GRAPH_BASE_URL",
                &get("VOYAGE_GRAPH_BASE_URL").unwrap_or("https://graph.microsoft.com".into()),
            )?,
            ms_login_base_url: base_url(
                "VOYAGE_MS_LOGIN_BASE_URL",
                &get("VOYAGE_MS_LOGIN_BASE_URL")
                    .unwrap_or("https://login.microsoftonline.com".into()),
            )?,
            google_calendar_base_url: base_url(
                "VOYAGE_GOOGLE_CALENDAR_BASE_URL",
                &get("VOYAGE_GOOGLE_CALENDAR_BASE_URL")
                    .unwrap_or("https://www.googleapis.com".into()),
            )?,
            google_token_url: base_url(
                "VOYAGE_GOOGLE_TOKEN_URL",
                &get("VOYAGE_GOOGLE_TOKEN_URL")
                    .unwrap_or("https://oauth2.googleapis.com/token".into()),
            )?,
            graph_timeout: match get("VOYAGE_GRAPH_TIMEOUT") {
                None => Duration::from_secs(10),
                Some(v) => parse_duration(&v).map_err(|message| ConfigError {
                    var: "VOYAGE_GRAPH_TIMEOUT",
                    message,
                })?,
            },
            credentials_key: get("VOYAGE_CREDENTIALS_KEY")
                .map(|v| crate::sealing::parse_key(&v))
                .transpose()
                .map_err(|message| ConfigError {
                    var: "VOYAGE_CREDENTIALS_KEY",
                    message,
                })?,
            previous_credentials_keys: get("VOYAGE_CREDENTIALS_PREVIOUS_KEYS")
                .map(|v| crate::sealing::parse_keys(&v))
                .transpose()
                .map_err(|message| ConfigError {
                    var: "VOYAGE_CREDENTIALS_PREVIOUS_KEYS",
                    message,
                })?
                .unwrap_or_default(),
            credentials_key_secret_arn: get("VOYAGE_CREDENTIALS_KEY_SECRET_ARN"),
            limits: {
                let mut limits = crate::throttle::Limits::default();
                for (var, limit) in [
                    ("VOYAGE_GRAPH_MAILBOX_BUDGET", &mut limits.graph),
                    ("VOYAGE_GOOGLE_USER_BUDGET", &mut limits.google),
                ] {
                    if let Some(v) = get(var) {
                        // Graph's is given per 10 minutes and counted per minute, a tenth
                        // each (at least one).
                        let per_window = |n: u64| {
                            if var.starts_with("VOYAGE_GRAPH") {
                                (n / 10).max(1)
                            } else {
                                n
                            }
                        };
                        limit.requests = v
                            .parse::<u64>()
                            .ok()
                            .filter(|n| *n >= 1)
                            .map(per_window)
                            .ok_or_else(|| ConfigError {
                                var: if var.starts_with("VOYAGE_GRAPH") {
                                    "VOYAGE_GRAPH_MAILBOX_BUDGET"
                                } else {
                                    "VOYAGE_GOOGLE_USER_BUDGET"
                                },
                                message: format!("`{v}` is not a whole number of requests >= 1"),
                            })?;
                    }
                }
                limits
            },
            sync_budget: match get("VOYAGE_SYNC_BUDGET") {
                None => Duration::from_secs(20),
                Some(v) => parse_duration(&v).map_err(|message| ConfigError {
                    var: "VOYAGE_SYNC_BUDGET",
                    message,
                })?,
            },
        })
    }

    /// A setting that the AWS deployment must have.
    pub fn require<'a>(
        value: &'a Option<String>,
        var: &'static str,
    ) -> Result<&'a str, ConfigError> {
        value.as_deref().ok_or(ConfigError {
            var,
            message: "must be set".into(),
        })
    }
}

fn flag(var: &'static str, value: Option<String>) -> Result<bool, ConfigError> {
    match value.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("false") | Some("0") | Some("no") => Ok(false),
        Some("true") | Some("1") | Some("yes") => Ok(true),
        Some(other) => Err(ConfigError {
            var,
            message: format!("`{other}` is not true or false"),
        }),
    }
}

/// An absolute http(s) URL, returned without a trailing slash; an error names `var`.
pub fn base_url(var: &'static str, value: &str) -> Result<String, ConfigError> {
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    match rest {
        Some(host)
            if !host.is_empty()
                && !host.starts_with('/')
                && !value.contains(char::is_whitespace) =>
        {
            Ok(value.trim_end_matches('/').to_string())
        }
        _ => Err(ConfigError {
            var,
            message: format!("`{value}` is not an absolute http(s) URL"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = from(&[]).unwrap();
        assert_eq!(c.webhook_retry, RetryPolicy::default());
        assert_eq!(c.pending_cancellation_grace, Duration::from_secs(600));
        assert_eq!(c.graph_base_url, "https://graph.microsoft.com");
        assert!(!c.allow_private_webhook_targets);
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("VOYAGE_WEBHOOK_RETRY_DELAYS", "30s,soon"),
            ("VOYAGE_PENDING_CANCELLATION_GRACE", "ten"),
            ("VOYAGE_LOG_FORMAT", "xml"),
            ("VOYAGE_ALLOW_PRIVATE_WEBHOOK_TARGETS", "maybe"),
            ("VOYAGE_GRAPH_BASE_URL", "graph.local"),
            ("VOYAGE_PUBLIC_BASE_URL", "ftp://x"),
            ("VOYAGE_CREDENTIALS_KEY", "c2hvcnQ="),
            ("VOYAGE_CREDENTIALS_PREVIOUS_KEYS", "c2hvcnQ="),
        ] {
            let e = from(&[(var, value)]).unwrap_err();
            assert_eq!(e.var, var);
            assert!(e.to_string().contains(var));
        }
    }

    #[test]
    fn urls_lose_their_trailing_slash() {
        let c = from(&[("VOYAGE_PUBLIC_BASE_URL", "https://voyage.example/")]).unwrap();
        assert_eq!(c.public_base_url.as_deref(), Some("https://voyage.example"));
    }

    #[test]
    fn credentials_keys_and_where_to_find_them() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let b64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let c = from(&[
            ("VOYAGE_CREDENTIALS_KEY", hex),
            ("VOYAGE_CREDENTIALS_PREVIOUS_KEYS", &format!("{b64}, {hex}")),
            (
                "VOYAGE_CREDENTIALS_KEY_SECRET_ARN",
                "arn:aws:secretsmanager:x",
            ),
            ("VOYAGE_PUBLIC_BASE_URL_PARAMETER", "/stack/public-base-url"),
        ])
        .unwrap();
        assert_eq!(c.credentials_key.unwrap()[31], 0xff);
        assert_eq!(c.previous_credentials_keys.len(), 2);
        assert_eq!(
            c.credentials_key_secret_arn.as_deref(),
            Some("arn:aws:secretsmanager:x")
        );
        assert_eq!(
            c.public_base_url_parameter.as_deref(),
            Some("/stack/public-base-url")
        );
        assert!(from(&[]).unwrap().previous_credentials_keys.is_empty());
    }
}
