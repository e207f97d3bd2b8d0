use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use voyage_core::Error;

use crate::ApiError;

/// Largest request body any route accepts.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// A JSON body, strictly decoded. Each way of getting it wrong has its own code:
/// `unsupported_media_type` (415), `payload_too_large` (413), `malformed_json` (400),
/// `unknown_field` (422, for types that deny unknown fields) and `validation_failed` (422,
/// a missing field or a value of the wrong type); the 422s name the field by its JSON path.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

fn bad(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError(Error::BadRequest {
        status,
        code,
        message: message.into(),
    })
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn too_large() -> ApiError {
    bad(
        413,
        "payload_too_large",
        format!("the body exceeds {MAX_BODY_BYTES} bytes"),
    )
}

/// Decodes `bytes` as `T`, classifying the failure.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(bad(
            400,
            "malformed_json",
            "the body is empty; a JSON object is expected",
        ));
    }
    // Every route's body is an object: serde would also read a struct from an array of its
    // fields in order (`[null, null]`), which no client means.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(_) => ApiError(Error::validation("body", "must be a JSON object")),
            Err(e) => bad(
                400,
                "malformed_json",
                format!("the body is not valid JSON: {e}"),
            ),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => v,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            return Err(match inner.classify() {
                serde_json::error::Category::Data => data_error(&path, &inner),
                // Valid JSON all the same: serde_json's enum reader answers a `null`, a
                // number or a boolean where a variant's name belongs as a syntax error
                // ("expected value"); it is a bad value of that field.
                // (Read as a `Value`, which keeps serde_json's nesting limit and string
                // checks: a body nested too deep or with a lone surrogate stays malformed.)
                _ if serde_json::from_slice::<serde_json::Value>(bytes).is_ok() => {
                    let field = if path.is_empty() || path == "." {
                        "body".to_string()
                    } else {
                        path
                    };
                    ApiError(Error::validation(
                        field,
                        "has the wrong type or is not one of the accepted values",
                    ))
                }
                _ => bad(
                    400,
                    "malformed_json",
                    format!("the body is not valid JSON: {inner}"),
                ),
            });
        }
    };
    de.end().map_err(|e| {
        bad(
            400,
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    Ok(value)
}

/// A data error: an unknown field, or a field with a missing or wrong value.
fn data_error(path: &str, inner: &serde_json::Error) -> ApiError {
    let message = inner.to_string();
    // serde's messages name the field in backticks: "unknown field `x`, expected ...",
    // "missing field `x`". The path points at the containing object for those two.
    let quoted = message
        .split('`')
        .nth(1)
        .map(str::to_string)
        .unwrap_or_default();
    let join = |name: &str| {
        if path.is_empty() || path == "." {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    let short = message
        .split(" at line ")
        .next()
        .unwrap_or(&message)
        .to_string();
    if message.starts_with("unknown field") {
        // Here the path already ends at the unknown field itself.
        let field = if path.is_empty() || path == "." {
            quoted
        } else {
            path.to_string()
        };
        return ApiError(Error::UnknownField { field });
    }
    let field = if message.starts_with("missing field") {
        join(&quoted)
    } else if path.is_empty() || path == "." {
        "body".to_string()
    } else {
        path.to_string()
    };
    ApiError(Error::validation(field, short))
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !is_json(content_type) {
            return Err(bad(
                415,
                "unsupported_media_type",
                "the body must be JSON (Content-Type: application/json)",
            ));
        }
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        let body = http_body_util::Limited::new(req.into_body(), MAX_BODY_BYTES);
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Err(_) => return Err(bad(400, "unreadable_body", "the body could not be read")),
        };
        decode_json(&bytes).map(ApiJson)
    }
}

/// Query parameters, decoded like [`ApiJson`]: a bad value is a 422 naming the parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|e| {
                let path = e.path().to_string();
                let message = e.into_inner().to_string();
                let field = if path.is_empty() || path == "." {
                    message.split('`').nth(1).unwrap_or("query").to_string()
                } else {
                    path
                };
                if message.starts_with("unknown field") {
                    // A parameter the route does not read: the same code as a body's.
                    return ApiError(Error::UnknownField { field });
                }
                ApiError(Error::validation(field, message))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        tags: Vec<u32>,
    }

    fn code(r: Result<Body, ApiError>) -> (&'static str, Option<String>) {
        let e = r.unwrap_err().0;
        (e.code(), e.field().map(String::from))
    }

    #[test]
    fn each_failure_has_its_code_and_field() {
        assert_eq!(code(decode_json(b"{")).0, "malformed_json");
        assert_eq!(code(decode_json(b"")).0, "malformed_json");
        assert_eq!(
            code(decode_json(br#"{"name":"a","tags":[]} x"#)).0,
            "malformed_json"
        );
        assert_eq!(
            code(decode_json(br#"{"name":"a","tags":[],"zap":1}"#)),
            ("unknown_field", Some("zap".into()))
        );
        assert_eq!(
            code(decode_json(br#"{"tags":[]}"#)),
            ("validation_failed", Some("name".into()))
        );
        assert_eq!(
            code(decode_json(br#"{"name":"a","tags":[1,"x"]}"#)),
            ("validation_failed", Some("tags[1]".into()))
        );
        assert_eq!(code(decode_json(b"[1]")).0, "validation_failed");
        // A struct is never read from an array of its fields, nor from a bare value.
        assert_eq!(
            code(decode_json(br#"["a", []]"#)),
            ("validation_failed", Some("body".into()))
        );
        assert_eq!(
            code(decode_json(b" null")),
            ("validation_failed", Some("body".into()))
        );
        assert_eq!(code(decode_json(b"[1")).0, "malformed_json");
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Outer {
            inner: Body,
        }
        let e = decode_json::<Outer>(br#"{"inner":{"name":"a","tags":[],"zz":0}}"#).unwrap_err();
        assert_eq!(e.0.field(), Some("inner.zz"));
        assert!(decode_json::<Body>(br#"{"name":"a","tags":[1]}"#).is_ok());
    }

    #[test]
    fn an_enum_field_given_null_a_number_or_a_boolean_is_a_bad_field_not_malformed_json() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        enum Kind {
            Busy,
            Free,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct WithKind {
            kind: Kind,
        }
        for body in [
            &br#"{"kind":null}"#[..],
            br#"{"kind":1}"#,
            br#"{"kind":true}"#,
        ] {
            let e = decode_json::<WithKind>(body).unwrap_err().0;
            assert_eq!(
                (e.code(), e.field()),
                ("validation_failed", Some("kind")),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let e = decode_json::<WithKind>(br#"{"kind":nul"#).unwrap_err().0;
        assert_eq!(e.code(), "malformed_json");
        // Too deep for any reader, with an enum somewhere inside: still malformed.
        let deep = format!(
            r#"{{"kind":null,"x":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let e = decode_json::<WithKind>(deep.as_bytes()).unwrap_err().0;
        assert_eq!(e.code(), "malformed_json");
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
    }
}

/// Path parameters; a segment that cannot be decoded (bad percent-encoding, invalid UTF-8)
/// is a JSON 400 rather than axum's plain-text rejection.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| ApiPath(v))
            .map_err(|e| bad(400, "invalid_path", e.body_text()))
    }
}
