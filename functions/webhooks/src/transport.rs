//! The webhook [`Transport`] on reqwest (rustls): no redirects, a per-request timeout, and
//! SSRF protection applied to every connection after DNS resolution.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use voyage_core::webhooks::address::ip_allowed;
use voyage_core::webhooks::request::MAX_RESPONSE_BODY;
use voyage_core::webhooks::{OutgoingRequest, Transport, TransportError, TransportResponse};

type LookupFuture = Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;
/// Name resolution, replaceable in tests (a name that resolves to loopback without DNS).
pub type Lookup = Arc<dyn Fn(String) -> LookupFuture + Send + Sync>;

pub fn system_lookup() -> Lookup {
    Arc::new(|name: String| {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((name.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    })
}

/// Resolves, then refuses the name if any of its addresses is internal. Refusing on *any*
/// (not just filtering) keeps a name with one public and one internal address from being
/// used to reach the internal one on a retry.
struct GuardedResolver {
    lookup: Lookup,
    allow_private: bool,
}

#[derive(Debug)]
struct BlockedAddress(String);

impl std::fmt::Display for BlockedAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "blocked internal address for {}", self.0)
    }
}

impl std::error::Error for BlockedAddress {}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let lookup = self.lookup.clone();
        let allow_private = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let ips = lookup(host.clone()).await?;
            if ips.is_empty() {
                return Err(format!("{host} has no addresses").into());
            }
            if !allow_private && ips.iter().any(|ip| !ip_allowed(*ip)) {
                return Err(
                    Box::new(BlockedAddress(host)) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            let addrs: Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[derive(Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    allow_private: bool,
}

impl HttpTransport {
    pub fn new(allow_private: bool) -> Result<Self, String> {
        Self::with_lookup(allow_private, system_lookup())
    }

    pub fn with_lookup(allow_private: bool, lookup: Lookup) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            // As many as attempts run at once (the worker's concurrency): a smaller pool
            // closes and reopens connections to a busy receiver on every wave of attempts.
            .pool_max_idle_per_host(crate::worker::CONCURRENCY)
            .dns_resolver(Arc::new(GuardedResolver {
                lookup,
                allow_private,
            }))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(HttpTransport {
            client,
            allow_private,
        })
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Seconds; more than a u64 holds is "a very long time" (capped by the engine), not
        // no answer at all.
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

fn is_blocked(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if s.to_string().contains("blocked internal address") {
            return true;
        }
        source = s.source();
    }
    false
}

#[async_trait]
impl Transport for HttpTransport {
    async fn send(&self, request: OutgoingRequest) -> Result<TransportResponse, TransportError> {
        let url = reqwest::Url::parse(&request.url)
            .map_err(|e| TransportError::Other(format!("bad URL: {e}")))?;
        // A literal address never reaches the resolver: check it here.
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal {
            if !self.allow_private && !ip_allowed(ip) {
                return Err(TransportError::Blocked(format!(
                    "{ip} is an internal address"
                )));
            }
        }
        let mut builder = self.client.post(url).timeout(request.timeout);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        let mut response = builder.body(request.body).send().await.map_err(|e| {
            if is_blocked(&e) {
                TransportError::Blocked("the host resolves to an internal address".into())
            } else if e.is_timeout() {
                TransportError::Timeout
            } else if e.is_connect() {
                TransportError::Connect(e.to_string())
            } else {
                TransportError::Other(e.to_string())
            }
        })?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_RESPONSE_BODY - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if body.len() >= MAX_RESPONSE_BODY {
                        break;
                    }
                }
                Ok(None) => break,
                // The status arrived; a body cut short does not change the verdict.
                Err(_) => break,
            }
        }
        let mut text = String::from_utf8_lossy(&body).into_owned();
        while text.len() > MAX_RESPONSE_BODY {
            text.pop();
        }
        Ok(TransportResponse {
            status,
            body: text,
            retry_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: &str) -> reqwest::header::HeaderMap {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::RETRY_AFTER,
            reqwest::header::HeaderValue::from_str(value).expect("a header value"),
        );
        headers
    }

    #[test]
    fn a_retry_after_too_long_for_a_u64_is_a_very_long_wait_not_none() {
        assert_eq!(
            retry_after(&header("99999999999999999999")),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn a_retry_after_in_seconds_is_read_and_garbage_is_not() {
        assert_eq!(retry_after(&header(" 7 ")), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&header("-7")), None);
        assert_eq!(retry_after(&header("soon")), None);
    }
}
