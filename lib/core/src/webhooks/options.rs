//! An endpoint's delivery options: static headers sent with every delivery, and a rate limit.

use std::collections::BTreeMap;

use crate::{Error, Result};

/// Most static headers per endpoint.
pub const MAX_HEADERS: usize = 20;
/// Longest header name.
pub const MAX_HEADER_NAME: usize = 64;
/// Longest header value, in bytes.
pub const MAX_HEADER_VALUE: usize = 1024;
/// Highest rate limit, deliveries per second.
pub const MAX_RATE_LIMIT: u32 = 1000;

/// Headers the platform sets itself (the envelope, the delivery id and both signatures) or
/// the HTTP transport owns (framing, connection management): a tenant cannot set them.
pub const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "user-agent",
    "x-webhook-event",
    "x-webhook-delivery",
    "x-webhook-signature-256",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "host",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "upgrade",
    "te",
    "trailer",
    "expect",
];

/// Name prefixes kept for the platform's own headers, present and future.
pub const RESERVED_PREFIXES: &[&str] = &["webhook-", "x-webhook-"];

/// Whether `name` (lower case) is one a tenant may not set.
pub fn is_reserved(name: &str) -> bool {
    RESERVED_HEADERS.contains(&name) || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// An HTTP token character (RFC 9110 `tchar`).
fn tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Validates static headers: valid HTTP names and values, none reserved, no name twice
/// (names are case-insensitive), at most [`MAX_HEADERS`]. Answers them with lower-case names.
/// Errors name the field `headers.<name>` (or `headers` for the count).
pub fn validate_headers(headers: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
    if headers.len() > MAX_HEADERS {
        return Err(Error::validation(
            "headers",
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    let mut out = BTreeMap::new();
    for (name, value) in headers {
        let field = format!("headers.{name}");
        if name.is_empty() || name.len() > MAX_HEADER_NAME || !name.chars().all(tchar) {
            return Err(Error::validation(
                field,
                format!("not a valid HTTP header name (1-{MAX_HEADER_NAME} token characters)"),
            ));
        }
        let lower = name.to_ascii_lowercase();
        if is_reserved(&lower) {
            return Err(Error::validation(
                field,
                "reserved: the platform sets this header (signatures, delivery id, timestamp, \
                 content type, user agent, transport headers, webhook-*/x-webhook-*)",
            ));
        }
        let value_ok = value.len() <= MAX_HEADER_VALUE
            && value == value.trim_matches([' ', '\t'])
            && value
                .chars()
                .all(|c| c == ' ' || c == '\t' || c.is_ascii_graphic());
        if !value_ok {
            return Err(Error::validation(
                field,
                format!(
                    "not a valid header value (visible ASCII and spaces, no leading or trailing \
                     space, at most {MAX_HEADER_VALUE} bytes)"
                ),
            ));
        }
        if out.insert(lower, value.clone()).is_some() {
            return Err(Error::validation(
                field,
                "the same header is named twice (names are case-insensitive)",
            ));
        }
    }
    Ok(out)
}

/// A rate limit: a whole number of deliveries per second, 1 to [`MAX_RATE_LIMIT`].
pub fn validate_rate_limit(field: &str, value: &serde_json::Value) -> Result<u32> {
    match value.as_u64() {
        Some(n) if (1..=MAX_RATE_LIMIT as u64).contains(&n) => Ok(n as u32),
        _ => Err(Error::validation(
            field,
            format!("must be a whole number of deliveries per second, 1 to {MAX_RATE_LIMIT}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn headers_are_checked_and_lower_cased() {
        let ok =
            validate_headers(&map(&[("X-Tenant", "acme"), ("Authorization", "Bearer t")])).unwrap();
        assert_eq!(ok.get("x-tenant").map(String::as_str), Some("acme"));
        assert_eq!(ok.len(), 2);
        for (name, value, field) in [
            ("Webhook-Signature", "v1,x", "headers.Webhook-Signature"),
            ("webhook-id", "x", "headers.webhook-id"),
            ("X-Webhook-Anything", "x", "headers.X-Webhook-Anything"),
            ("Content-Type", "text/plain", "headers.Content-Type"),
            ("Host", "evil", "headers.Host"),
            ("bad name", "x", "headers.bad name"),
            ("", "x", "headers."),
            ("x-ok", "line\r\nbreak", "headers.x-ok"),
            ("x-ok", " padded", "headers.x-ok"),
            ("x-ok", "é", "headers.x-ok"),
        ] {
            let e = validate_headers(&map(&[(name, value)])).unwrap_err();
            assert_eq!(e.field(), Some(field), "{name}: {value}");
        }
        let dup = validate_headers(&map(&[("X-A", "1"), ("x-a", "2")])).unwrap_err();
        assert!(dup.field().is_some_and(|f| f.starts_with("headers.")));
        let many: BTreeMap<String, String> =
            (0..21).map(|i| (format!("x-{i}"), "v".into())).collect();
        assert_eq!(
            validate_headers(&many).unwrap_err().field(),
            Some("headers")
        );
    }

    #[test]
    fn rate_limits() {
        assert_eq!(
            validate_rate_limit("rate_limit", &serde_json::json!(5)).unwrap(),
            5
        );
        for bad in [
            serde_json::json!(0),
            serde_json::json!(-1),
            serde_json::json!(1.5),
            serde_json::json!("5"),
            serde_json::json!(1001),
        ] {
            assert_eq!(
                validate_rate_limit("rate_limit", &bad).unwrap_err().field(),
                Some("rate_limit")
            );
        }
    }
}
