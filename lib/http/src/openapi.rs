//! The OpenAPI 3.1 description of the HTTP API, built from code: each function crate
//! declares its operations next to its router (`openapi::operations()`), and the local
//! system merges them into the document it serves at `GET /openapi.json`. The router test
//! (tests/tests/openapi.rs) compares the document's `(method, path)` set with the routes the
//! merged router serves, so a route without an entry (or an entry without a route) fails.
//!
//! Request and response bodies are JSON Schema (draft 2020-12, which OpenAPI 3.1 uses), built
//! with the small helpers of [`schema`]. Every operation answers errors in the shared shape
//! ([`ApiError`](crate::ApiError): `{"error": {"code", "message", "field"?}}`), declared once
//! as the `Error` component.

use serde_json::{json, Map, Value};

/// Which key an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No key (health, provider callbacks authenticated otherwise).
    Public,
    /// Any key of the company (`Authorization: Bearer <key>`).
    Tenant,
    /// A key with the `internal` scope (the platform).
    Internal,
}

/// One documented response.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub description: &'static str,
    /// `(content type, schema)`; `None` for an empty body.
    pub content: Option<(&'static str, Value)>,
}

/// One query parameter.
#[derive(Debug, Clone)]
pub struct QueryParam {
    pub name: &'static str,
    pub description: &'static str,
    pub required: bool,
    pub schema: Value,
}

/// One operation: a method on a path template (axum's `{param}` syntax, which is also
/// OpenAPI's).
#[derive(Debug, Clone)]
pub struct Operation {
    /// Upper case: `GET`, `POST`, ...
    pub method: &'static str,
    pub path: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    pub access: Access,
    pub query: Vec<QueryParam>,
    /// The JSON body's schema, when the operation takes one.
    pub body: Option<Value>,
    pub answers: Vec<Answer>,
    /// OpenAPI links from an answer to operations that take a value of it:
    /// `(status, target operationId, target parameter, runtime expression)`. Property-based
    /// testers (schemathesis' stateful phase) follow them to reach real records.
    pub links: Vec<(u16, String, &'static str, &'static str)>,
}

impl Operation {
    pub fn new(method: &'static str, path: &'static str, tag: &'static str) -> Operation {
        Operation {
            method,
            path,
            tag,
            summary: "",
            access: Access::Tenant,
            query: Vec::new(),
            body: None,
            answers: Vec::new(),
            links: Vec::new(),
        }
    }

    /// Links answer `status` to the operations `(method, path)`, passing `expression`
    /// (e.g. `$response.body#/id`) as their path parameter `parameter`.
    pub fn links_to(
        mut self,
        status: u16,
        targets: &[(&str, &str)],
        parameter: &'static str,
        expression: &'static str,
    ) -> Operation {
        for (method, path) in targets {
            self.links
                .push((status, operation_id(method, path), parameter, expression));
        }
        self
    }

    pub fn get(path: &'static str, tag: &'static str) -> Operation {
        Operation::new("GET", path, tag)
    }
    pub fn post(path: &'static str, tag: &'static str) -> Operation {
        Operation::new("POST", path, tag)
    }
    pub fn put(path: &'static str, tag: &'static str) -> Operation {
        Operation::new("PUT", path, tag)
    }
    pub fn patch(path: &'static str, tag: &'static str) -> Operation {
        Operation::new("PATCH", path, tag)
    }
    pub fn delete(path: &'static str, tag: &'static str) -> Operation {
        Operation::new("DELETE", path, tag)
    }

    pub fn summary(mut self, text: &'static str) -> Operation {
        self.summary = text;
        self
    }
    pub fn public(mut self) -> Operation {
        self.access = Access::Public;
        self
    }
    pub fn internal(mut self) -> Operation {
        self.access = Access::Internal;
        self
    }
    pub fn query(
        mut self,
        name: &'static str,
        description: &'static str,
        schema: Value,
    ) -> Operation {
        self.query.push(QueryParam {
            name,
            description,
            required: false,
            schema,
        });
        self
    }
    pub fn required_query(
        mut self,
        name: &'static str,
        description: &'static str,
        schema: Value,
    ) -> Operation {
        self.query.push(QueryParam {
            name,
            description,
            required: true,
            schema,
        });
        self
    }
    /// `limit` and `cursor`, as every paged list takes them.
    pub fn paged(self) -> Operation {
        self.query(
            "limit",
            "Most items per page (default 50).",
            json!({"type": "integer", "minimum": 1, "maximum": voyage_core::store::MAX_PAGE, "default": 50}),
        )
        .query(
            "cursor",
            "The previous page's `next_cursor`.",
            json!({"type": "string"}),
        )
    }
    pub fn body(mut self, schema: Value) -> Operation {
        self.body = Some(schema);
        self
    }
    /// A JSON answer.
    pub fn answers(mut self, status: u16, description: &'static str, schema: Value) -> Operation {
        self.answers.push(Answer {
            status,
            description,
            content: Some(("application/json", schema)),
        });
        self
    }
    /// An answer with another content type.
    pub fn answers_as(
        mut self,
        status: u16,
        description: &'static str,
        content_type: &'static str,
        schema: Value,
    ) -> Operation {
        self.answers.push(Answer {
            status,
            description,
            content: Some((content_type, schema)),
        });
        self
    }
    /// An answer without a body.
    pub fn empty(mut self, status: u16, description: &'static str) -> Operation {
        self.answers.push(Answer {
            status,
            description,
            content: None,
        });
        self
    }

    /// The path's `{param}` names, in order.
    pub fn path_params(&self) -> Vec<&'static str> {
        self.path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect()
    }

    fn to_json(&self) -> Value {
        let mut parameters: Vec<Value> = self
            .path_params()
            .into_iter()
            .map(|name| {
                json!({"name": name, "in": "path", "required": true,
                       "schema": schema::identifier()})
            })
            .collect();
        for q in &self.query {
            parameters.push(json!({
                "name": q.name, "in": "query", "required": q.required,
                "description": q.description, "schema": q.schema,
            }));
        }
        let mut responses = Map::new();
        for a in &self.answers {
            let mut r = json!({"description": a.description});
            if let Some((content_type, schema)) = &a.content {
                r["content"] = json!({ *content_type: {"schema": schema} });
            }
            let links: Map<String, Value> = self
                .links
                .iter()
                .filter(|(status, ..)| *status == a.status)
                .map(|(_, target, parameter, expression)| {
                    (
                        target.clone(),
                        json!({"operationId": target, "parameters": {*parameter: expression}}),
                    )
                })
                .collect();
            if !links.is_empty() {
                r["links"] = Value::Object(links);
            }
            responses.insert(a.status.to_string(), r);
        }
        let error = |description: &str| {
            json!({"description": description,
                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
        };
        let mut add = |status: &str, description: &str| {
            responses
                .entry(status.to_string())
                .or_insert_with(|| error(description));
        };
        if self.body.is_some() || !self.path_params().is_empty() {
            add("400", "Malformed JSON or an undecodable path segment");
        }
        match self.access {
            Access::Public => {}
            Access::Tenant => add("401", "Missing, unknown or revoked key"),
            Access::Internal => {
                add("401", "Missing, unknown or revoked key");
                add("403", "The key lacks the internal scope");
            }
        }
        if self.body.is_some() {
            add("413", "The body exceeds 256 KiB");
            add("415", "The body is not application/json");
        }
        if self.body.is_some() || !self.query.is_empty() || !self.path_params().is_empty() {
            add("422", "A missing, unknown or bad field (`field` names it)");
        }
        add("503", "A dependency failed; retry");
        responses.insert(
            "default".into(),
            error("Any other error, in the same shape"),
        );
        let mut op = json!({
            "operationId": operation_id(self.method, self.path),
            "summary": self.summary,
            "tags": [self.tag],
            "responses": responses,
        });
        if !parameters.is_empty() {
            op["parameters"] = Value::Array(parameters);
        }
        if let Some(body) = &self.body {
            op["requestBody"] = json!({"required": true,
                                        "content": {"application/json": {"schema": body}}});
        }
        op["security"] = match self.access {
            Access::Public => json!([]),
            Access::Tenant => json!([{"tenantKey": []}]),
            Access::Internal => json!([{"internalKey": []}]),
        };
        op
    }
}

/// `GET /v1/webhooks/{id}` -> `get_v1_webhooks_id`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        id.push('_');
        id.extend(part.chars().map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' => c,
            _ => '_',
        }));
    }
    id.replace("__", "_").trim_end_matches('_').to_string()
}

/// The error every route answers with.
pub fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "additionalProperties": false,
        "properties": {"error": {
            "type": "object",
            "required": ["code", "message"],
            "additionalProperties": false,
            "properties": {
                "code": {"type": "string", "description": "Stable, machine-readable (README, Errors)"},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "The offending field's JSON path"}
            }
        }}
    })
}

/// The document for these operations (sorted by path, then method).
pub fn document(title: &str, version: &str, operations: &[Operation]) -> Value {
    let mut paths = Map::new();
    let mut sorted: Vec<&Operation> = operations.iter().collect();
    sorted.sort_by(|a, b| (a.path, a.method).cmp(&(b.path, b.method)));
    for op in sorted {
        let entry = paths
            .entry(op.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[op.method.to_ascii_lowercase()] = op.to_json();
    }
    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": title,
            "version": version,
            "description": "Voyage Integrations: outbound webhooks, Google Calendar and Microsoft Exchange sync. Errors are always `{\"error\": {\"code\", \"message\", \"field\"?}}`. Webhook payloads: `GET /v1/webhooks/event-types`.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "tenantKey": {"type": "http", "scheme": "bearer",
                              "description": "An API key of the company (`voyage keys create --company <id>` or `POST /v1/keys`)"},
                "internalKey": {"type": "http", "scheme": "bearer",
                                "description": "An API key with the internal scope (the platform's)"},
            },
            "schemas": {"Error": error_schema()},
        },
    })
}

/// Small JSON Schema builders for the operation registries.
pub mod schema {
    use serde_json::{json, Map, Value};

    /// A closed object (`additionalProperties: false`), as the routes' strict decoding
    /// refuses unknown fields and the views show exactly their fields.
    pub fn object(properties: &[(&str, Value)], required: &[&str]) -> Value {
        let props: Map<String, Value> = properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        json!({"type": "object", "properties": props, "required": required,
               "additionalProperties": false})
    }
    /// An object that may carry more than these properties.
    pub fn open_object(properties: &[(&str, Value)], required: &[&str]) -> Value {
        let mut o = object(properties, required);
        o["additionalProperties"] = json!(true);
        o
    }
    pub fn any_object() -> Value {
        json!({"type": "object"})
    }
    pub fn string() -> Value {
        json!({"type": "string"})
    }
    pub fn text(max: usize) -> Value {
        json!({"type": "string", "maxLength": max})
    }
    /// An identifier as `validate::identifier` accepts it.
    pub fn identifier() -> Value {
        json!({"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9._:@-]+$"})
    }
    pub fn date_time() -> Value {
        json!({"type": "string", "format": "date-time"})
    }
    pub fn integer() -> Value {
        json!({"type": "integer"})
    }
    pub fn integer_min(min: i64) -> Value {
        json!({"type": "integer", "minimum": min})
    }
    pub fn boolean() -> Value {
        json!({"type": "boolean"})
    }
    pub fn array(items: Value) -> Value {
        json!({"type": "array", "items": items})
    }
    pub fn one_of_strings(values: &[&str]) -> Value {
        json!({"type": "string", "enum": values})
    }
    /// `schema` or `null`.
    pub fn nullable(schema: Value) -> Value {
        json!({"anyOf": [schema, {"type": "null"}]})
    }
    /// A page of `items`: `{"data": [...], "next_cursor": string|null}`.
    pub fn page(items: Value) -> Value {
        object(
            &[("data", array(items)), ("next_cursor", nullable(string()))],
            &["data", "next_cursor"],
        )
    }
    /// The shared error shape.
    pub fn error_ref() -> Value {
        json!({"$ref": "#/components/schemas/Error"})
    }
    /// `{"data": [...]}`.
    pub fn list(items: Value) -> Value {
        object(&[("data", array(items))], &["data"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_become_a_document_with_errors_and_security() {
        let ops = vec![
            Operation::get("/v1/things/{id}", "things").summary("one thing"),
            Operation::post("/v1/things", "things")
                .internal()
                .body(schema::object(&[("name", schema::string())], &["name"]))
                .answers(201, "made", schema::any_object()),
        ];
        let doc = document("t", "1", &ops);
        assert_eq!(doc["openapi"], "3.1.0");
        let get = &doc["paths"]["/v1/things/{id}"]["get"];
        assert_eq!(get["operationId"], "get_v1_things_id");
        assert_eq!(get["parameters"][0]["name"], "id");
        assert_eq!(get["security"], json!([{"tenantKey": []}]));
        assert!(get["responses"]["401"].is_object());
        let post = &doc["paths"]["/v1/things"]["post"];
        assert_eq!(post["security"], json!([{"internalKey": []}]));
        assert!(post["responses"]["403"].is_object());
        assert!(post["responses"]["415"].is_object());
        assert_eq!(
            post["responses"]["default"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Error"
        );
    }
}
