//! The event types tenants can subscribe to, and subscription patterns.

use crate::{Error, Result};

/// Every event type the platform emits. Endpoints subscribe to these, to `prefix.*`, or `*`.
pub const EVENT_TYPES: &[&str] = &[
    "session.created",
    "session.updated",
    "session.cancelled",
    "session.cancellation_pending",
    "session.restored",
    "session.rescheduled",
    "session.reschedule_rejected",
    "session.declined",
    "connection.error",
    "connection.active",
    "webhook.test",
    "webhook.endpoint.disabled",
    "webhook.endpoint.failing",
    "webhook.endpoint.recovered",
];

/// Whether `pattern` (`*`, `prefix.*` or an exact type) matches `event`.
pub fn matches(pattern: &str, event: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => event
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.')),
        None => pattern == event,
    }
}

pub fn matches_any(patterns: &[String], event: &str) -> bool {
    patterns.iter().any(|p| matches(p, event))
}

/// A subscription pattern: a known type, `*`, or `prefix.*` where some known type has the
/// prefix (so a typo like `sesion.*` is refused rather than silently matching nothing).
pub fn validate_pattern(field: &str, pattern: &str) -> Result<()> {
    let known = pattern == "*"
        || EVENT_TYPES.contains(&pattern)
        || (pattern.ends_with(".*") && EVENT_TYPES.iter().any(|t| matches(pattern, t)));
    if known {
        Ok(())
    } else {
        Err(Error::validation(
            field,
            format!("`{pattern}` is not a known event type, `prefix.*` or `*`"),
        ))
    }
}

/// An event type to dispatch: a known type.
pub fn validate_event_type(field: &str, event: &str) -> Result<()> {
    if EVENT_TYPES.contains(&event) {
        Ok(())
    } else {
        Err(Error::validation(
            field,
            format!("`{event}` is not a known event type"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches("*", "session.created"));
        assert!(matches("session.*", "session.created"));
        assert!(matches("webhook.*", "webhook.endpoint.disabled"));
        assert!(matches("session.created", "session.created"));
        assert!(!matches("session.*", "sessions.created"));
        assert!(!matches("session.*", "session"));
        assert!(!matches("session.created", "session.cancelled"));
    }

    #[test]
    fn pattern_validation() {
        for ok in ["*", "session.*", "webhook.endpoint.*", "session.created"] {
            assert!(validate_pattern("events[0]", ok).is_ok(), "{ok}");
        }
        for bad in ["", "sesion.*", "session.nope", "**", "session*", ".*"] {
            assert_eq!(
                validate_pattern("events[1]", bad).unwrap_err().field(),
                Some("events[1]"),
                "{bad}"
            );
        }
    }
}
