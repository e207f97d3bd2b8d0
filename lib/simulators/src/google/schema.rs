//! Checks of Google requests against the Calendar API's discovery document: query
//! parameters, and body fields of `Event` and `Channel` with their nested schemas.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value};

use super::{google_error, invalid};

const DISCOVERY: &str = include_str!("../../google-calendar-v3-discovery.json");

fn discovery() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::from_str(DISCOVERY).unwrap_or(Value::Null))
}

/// Checks a request's query parameters (and body fields) against the discovery document.
pub(super) fn check_request(
    resource: &str,
    method: &str,
    query: &HashMap<String, String>,
    body: Option<&Map<String, Value>>,
) -> Result<(), Response> {
    let doc = discovery();
    let spec = &doc["resources"][resource]["methods"][method];
    if spec.is_null() {
        return Err(invalid("unknown method"));
    }
    for (name, value) in query {
        let param = spec["parameters"]
            .get(name)
            .filter(|p| p["location"] == "query")
            .or_else(|| doc["parameters"].get(name));
        let Some(param) = param else {
            return Err(google_error(
                StatusCode::BAD_REQUEST,
                "invalidParameter",
                &format!("Invalid parameter: {name}"),
            ));
        };
        let bad = || {
            google_error(
                StatusCode::BAD_REQUEST,
                "invalidParameter",
                &format!("Invalid value for {name}: {value}"),
            )
        };
        match param["type"].as_str() {
            Some("integer") => {
                let n: i64 = value.parse().map_err(|_| bad())?;
                if let Some(min) = param["minimum"]
                    .as_str()
                    .and_then(|m| m.parse::<i64>().ok())
                {
                    if n < min {
                        return Err(bad());
                    }
                }
            }
            Some("boolean") if value != "true" && value != "false" => return Err(bad()),
            _ => {}
        }
        if let Some(allowed) = param["enum"].as_array() {
            if !allowed.iter().any(|a| a.as_str() == Some(value.as_str())) {
                return Err(bad());
            }
        }
    }
    if let (Some(body), Some(schema)) = (body, spec["request"]["$ref"].as_str()) {
        check_object(schema, body, 0)?;
    }
    Ok(())
}

/// Checks an object's fields against a discovery schema: names, scalar types, and the
/// values a field's description lists as its possible ones (`eventType`,
/// `attendees[].responseStatus`); nested objects and arrays of objects are checked against
/// their own schemas (`attendees` against `EventAttendee`).
fn check_object(schema: &str, body: &Map<String, Value>, depth: usize) -> Result<(), Response> {
    let doc = discovery();
    let properties = &doc["schemas"][schema]["properties"];
    let bad = |key: &str, why: &str| {
        google_error(
            StatusCode::BAD_REQUEST,
            "invalid",
            &format!("Invalid value for {schema}.{key}: {why}"),
        )
    };
    for (key, value) in body {
        let Some(property) = properties.get(key) else {
            return Err(google_error(
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!("Unknown field in {schema}: {key}"),
            ));
        };
        if value.is_null() || depth > 2 {
            continue;
        }
        match property["type"].as_str() {
            Some("string") => {
                let Some(text) = value.as_str() else {
                    return Err(bad(key, "a string is required"));
                };
                let allowed = described_values(property["description"].as_str().unwrap_or(""));
                if !allowed.is_empty() && !allowed.iter().any(|a| a == text) {
                    return Err(bad(key, &format!("`{text}` is not one of {allowed:?}")));
                }
            }
            Some("boolean") if !value.is_boolean() => {
                return Err(bad(key, "a boolean is required"))
            }
            Some("integer") if !value.is_i64() => return Err(bad(key, "an integer is required")),
            Some("array") => {
                let Some(items) = value.as_array() else {
                    return Err(bad(key, "an array is required"));
                };
                if let Some(item_schema) = property["items"]["$ref"].as_str() {
                    for item in items {
                        let Some(object) = item.as_object() else {
                            return Err(bad(key, "objects are required"));
                        };
                        check_object(item_schema, object, depth + 1)?;
                    }
                }
            }
            _ => {
                if let (Some(nested), Some(object)) = (property["$ref"].as_str(), value.as_object())
                {
                    check_object(nested, object, depth + 1)?;
                }
            }
        }
    }
    Ok(())
}

/// The values a discovery description lists as "Possible values are:" (lines
/// `- "value" - meaning`); empty when it lists none.
fn described_values(description: &str) -> Vec<String> {
    if !description.contains("Possible values are:") {
        return Vec::new();
    }
    description
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- \""))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}
