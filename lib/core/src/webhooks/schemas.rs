//! The JSON Schema (draft 2020-12) of every event type's payload (the envelope's `data`),
//! with its description. The schemas are the files under `schemas/events/` in the repository,
//! compiled in, so `GET /v1/webhooks/event-types` and the repository never differ.

use serde_json::Value;

use super::catalogue::EVENT_TYPES;

/// `(event type, its schema file)`, in [`EVENT_TYPES`] order.
const SCHEMAS: &[(&str, &str)] = &[
    (
        "session.created",
        include_str!("../../../../schemas/events/session.created.json"),
    ),
    (
        "session.updated",
        include_str!("../../../../schemas/events/session.updated.json"),
    ),
    (
        "session.cancelled",
        include_str!("../../../../schemas/events/session.cancelled.json"),
    ),
    (
        "session.cancellation_pending",
        include_str!("../../../../schemas/events/session.cancellation_pending.json"),
    ),
    (
        "session.restored",
        include_str!("../../../../schemas/events/session.restored.json"),
    ),
    (
        "session.rescheduled",
        include_str!("../../../../schemas/events/session.rescheduled.json"),
    ),
    (
        "session.reschedule_rejected",
        include_str!("../../../../schemas/events/session.reschedule_rejected.json"),
    ),
    (
        "session.declined",
        include_str!("../../../../schemas/events/session.declined.json"),
    ),
    (
        "connection.error",
        include_str!("../../../../schemas/events/connection.error.json"),
    ),
    (
        "connection.active",
        include_str!("../../../../schemas/events/connection.active.json"),
    ),
    (
        "webhook.test",
        include_str!("../../../../schemas/events/webhook.test.json"),
    ),
    (
        "webhook.endpoint.disabled",
        include_str!("../../../../schemas/events/webhook.endpoint.disabled.json"),
    ),
    (
        "webhook.endpoint.failing",
        include_str!("../../../../schemas/events/webhook.endpoint.failing.json"),
    ),
    (
        "webhook.endpoint.recovered",
        include_str!("../../../../schemas/events/webhook.endpoint.recovered.json"),
    ),
];

/// One event type as `GET /v1/webhooks/event-types` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EventTypeDoc {
    #[serde(rename = "type")]
    pub name: &'static str,
    pub description: String,
    pub schema: Value,
}

/// Checks a payload the platform dispatches against its type's schema: every required field
/// present, and every field the schema declares held to what it declares of it: its `type`
/// (`string`, `integer`, `number`, `boolean`, `object`, `array`, `null`, or a list of them),
/// `enum`, `format` (`date-time`: RFC 3339; `uri`: a scheme and a rest), `minLength`,
/// `minimum` and `maximum` (the keywords the published schemas use on their fields). A 422
/// names the field (`payload.<field>`), so no event goes out that its published schema
/// rejects.
pub fn check_payload(
    event_type: &str,
    payload: &serde_json::Map<String, Value>,
) -> crate::Result<()> {
    let Some(schema) = parsed(event_type) else {
        return Ok(());
    };
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for field in required.iter().filter_map(Value::as_str) {
            if !payload.contains_key(field) {
                return Err(crate::Error::validation(
                    format!("payload.{field}"),
                    format!("is required for {event_type} events"),
                ));
            }
        }
    }
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (field, value) in payload {
            let Some(declared) = properties.get(field) else {
                continue;
            };
            if let Err(message) = check_field(value, declared) {
                return Err(crate::Error::validation(
                    format!("payload.{field}"),
                    message,
                ));
            }
        }
    }
    Ok(())
}

/// One field's value against what its schema declares of it (see [`check_payload`]).
fn check_field(value: &Value, declared: &Value) -> std::result::Result<(), String> {
    let allowed: Vec<&str> = match declared.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let fits = |t: &str| match t {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "null" => value.is_null(),
        _ => true,
    };
    if !allowed.is_empty() && !allowed.iter().any(|t| fits(t)) {
        return Err(format!("must be of type {}", allowed.join(" or ")));
    }
    if let Some(options) = declared.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            let names: Vec<String> = options.iter().map(Value::to_string).collect();
            return Err(format!("must be one of {}", names.join(", ")));
        }
    }
    if let Some(text) = value.as_str() {
        match declared.get("format").and_then(Value::as_str) {
            Some("date-time") if chrono::DateTime::parse_from_rfc3339(text).is_err() => {
                return Err("must be an RFC 3339 date-time".into());
            }
            Some("uri") if !is_uri(text) => return Err("must be an absolute URI".into()),
            _ => {}
        }
        if let Some(min) = declared.get("minLength").and_then(Value::as_u64) {
            if (text.chars().count() as u64) < min {
                return Err(format!("must be at least {min} characters long"));
            }
        }
    }
    if let Some(n) = value.as_f64().filter(|_| value.is_number()) {
        if let Some(min) = declared.get("minimum").and_then(Value::as_f64) {
            if n < min {
                return Err(format!("must be at least {min}"));
            }
        }
        if let Some(max) = declared.get("maximum").and_then(Value::as_f64) {
            if n > max {
                return Err(format!("must be at most {max}"));
            }
        }
    }
    Ok(())
}

/// An absolute URI as RFC 3986 has it: a scheme (a letter, then letters, digits, `+`, `-`,
/// `.`), a colon, and no whitespace.
fn is_uri(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && !text.chars().any(char::is_whitespace)
}

/// The parsed schema of `event_type`, parsed once.
fn parsed(event_type: &str) -> Option<&'static Value> {
    static PARSED: std::sync::OnceLock<std::collections::HashMap<&'static str, Value>> =
        std::sync::OnceLock::new();
    PARSED
        .get_or_init(|| {
            SCHEMAS
                .iter()
                .filter_map(|(name, text)| serde_json::from_str(text).ok().map(|v| (*name, v)))
                .collect()
        })
        .get(event_type)
}

/// The schema of `event_type`'s payload, if it is a known type.
pub fn schema(event_type: &str) -> Option<Value> {
    SCHEMAS
        .iter()
        .find(|(name, _)| *name == event_type)
        .and_then(|(_, text)| serde_json::from_str(text).ok())
}

/// Every event type of [`EVENT_TYPES`] with its description and schema. A type without a
/// schema file (a new one whose file was forgotten) is listed with an empty description and
/// schema, and a unit test fails on it.
pub fn catalogue() -> Vec<EventTypeDoc> {
    EVENT_TYPES
        .iter()
        .map(|name| {
            let schema = schema(name).unwrap_or(Value::Null);
            EventTypeDoc {
                name,
                description: schema["description"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                schema,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_has_a_schema_file_and_every_file_a_type() {
        let files: Vec<&str> = SCHEMAS.iter().map(|(n, _)| *n).collect();
        assert_eq!(files, EVENT_TYPES, "schemas/events/ and EVENT_TYPES differ");
        for doc in catalogue() {
            assert_eq!(doc.schema["title"], doc.name, "{}", doc.name);
            assert_eq!(
                doc.schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
                "{}",
                doc.name
            );
            assert!(!doc.description.is_empty(), "{}", doc.name);
            assert_eq!(doc.schema["type"], "object", "{}", doc.name);
        }
    }

    #[test]
    fn session_events_require_their_session_and_sequence() {
        for name in EVENT_TYPES.iter().filter(|t| t.starts_with("session.")) {
            let required = schema(name).unwrap()["required"].clone();
            assert!(
                required.as_array().unwrap().contains(&"sequence".into()),
                "{name}"
            );
            assert!(
                required.as_array().unwrap().contains(&"session_id".into()),
                "{name}"
            );
        }
    }
}
