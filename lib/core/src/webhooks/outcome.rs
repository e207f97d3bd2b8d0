//! How an attempt's outcome is judged.

use std::time::Duration;

use super::request::{TransportError, TransportResponse};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx.
    Success,
    /// Worth another attempt on the schedule; the receiver may have asked for a wait.
    Retry { retry_after: Option<Duration> },
    /// 410 Gone: the receiver asks to be disabled.
    Gone,
    /// Will not succeed by retrying (an internal address).
    Fail,
}

/// What one attempt did, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    pub verdict: Verdict,
    pub status_code: Option<u16>,
    pub error_class: Option<&'static str>,
    pub response_body: Option<String>,
}

pub fn judge(result: Result<TransportResponse, TransportError>) -> AttemptResult {
    match result {
        Ok(r) => {
            let (verdict, class) = match r.status {
                200..=299 => (Verdict::Success, None),
                410 => (Verdict::Gone, Some("gone")),
                // Redirects are not followed: a receiver must give its final URL.
                300..=399 => (Verdict::Retry { retry_after: None }, Some("redirect")),
                _ => (
                    Verdict::Retry {
                        retry_after: r.retry_after,
                    },
                    Some("http_status"),
                ),
            };
            AttemptResult {
                verdict,
                status_code: Some(r.status),
                error_class: class,
                response_body: Some(r.body),
            }
        }
        Err(e) => AttemptResult {
            verdict: match e {
                TransportError::Blocked(_) => Verdict::Fail,
                _ => Verdict::Retry { retry_after: None },
            },
            status_code: None,
            error_class: Some(e.class()),
            response_body: Some(e.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Verdict {
        judge(Ok(TransportResponse {
            status: code,
            body: String::new(),
            retry_after: Some(Duration::from_secs(7)),
        }))
        .verdict
    }

    #[test]
    fn verdicts() {
        assert_eq!(status(200), Verdict::Success);
        assert_eq!(status(204), Verdict::Success);
        assert_eq!(status(410), Verdict::Gone);
        assert_eq!(status(302), Verdict::Retry { retry_after: None });
        assert_eq!(
            status(429),
            Verdict::Retry {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            status(500),
            Verdict::Retry {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            judge(Err(TransportError::Timeout)).error_class,
            Some("timeout")
        );
        assert_eq!(
            judge(Err(TransportError::Blocked("x".into()))).verdict,
            Verdict::Fail
        );
    }
}
