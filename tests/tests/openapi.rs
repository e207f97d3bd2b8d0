//! `GET /openapi.json` against the routes `voyage serve` actually serves. The document is
//! built from each function's operation registry; these tests make a route without an
//! entry, an entry without a route, or a method that differs, fail:
//! - every documented `(method, path)` reaches a handler of the merged router (not the
//!   router's own 404 `route_not_found` / 405 `method_not_allowed`);
//! - every other method on a documented path is 405;
//! - every path a router registers in the source (`.route("...")`) is documented.
//!
//! The provider simulators (`--simulate-providers`, under `/sim/`) are not part of the API
//! and not documented: they mimic Microsoft Graph and Google Calendar, whose own references
//! apply.

use std::collections::BTreeSet;

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use voyage_tests::app::TestApp;

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            out.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    out
}

/// The path with every `{param}` filled in.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "x1" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// The error code the merged router answers `method path` with, if any.
async fn code(app: &TestApp, method: &str, path: &str) -> (u16, Option<String>) {
    let req = Request::builder()
        .method(method)
        .uri(concrete(path))
        .body(Body::empty())
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().map(String::from))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_served_without_a_key_and_matches_the_registry() {
    let app = TestApp::start_idle(&[]);
    let req = Request::get("/openapi.json").body(Body::empty()).unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc, voyage::openapi());
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["tenantKey"]["scheme"],
        "bearer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_and_nothing_else_on_its_path() {
    let app = TestApp::start_idle(&[]);
    let doc = voyage::openapi();
    let ops = documented(&doc);
    let mut missing = Vec::new();
    let mut undocumented = Vec::new();
    let paths: BTreeSet<&String> = ops.iter().map(|(_, p)| p).collect();
    for path in paths {
        for method in METHODS {
            let (status, code) = code(&app, method, path).await;
            let routed = !matches!(
                code.as_deref(),
                Some("route_not_found") | Some("method_not_allowed")
            );
            let listed = ops.contains(&(method.to_string(), path.clone()));
            if listed && !routed {
                missing.push(format!("{method} {path} ({status} {code:?})"));
            }
            if !listed && routed {
                undocumented.push(format!("{method} {path} ({status} {code:?})"));
            }
        }
    }
    assert!(missing.is_empty(), "documented but not served: {missing:?}");
    assert!(
        undocumented.is_empty(),
        "served but not documented: {undocumented:?}"
    );
}

/// Every `.route("<path>", ...)` literal of the crates whose routers `voyage serve` merges.
fn source_routes() -> BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut dirs: Vec<std::path::PathBuf> =
        vec![root.join("voyage/src"), root.join("lib/http/src")];
    for entry in std::fs::read_dir(root.join("functions")).unwrap() {
        dirs.push(entry.unwrap().path().join("src"));
    }
    let mut out = BTreeSet::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for piece in text.split(".route(").skip(1) {
                let literal = piece.trim_start();
                if let Some(rest) = literal.strip_prefix('"') {
                    if let Some(end) = rest.find('"') {
                        out.insert(rest[..end].to_string());
                    }
                }
            }
        }
    }
    out
}

#[test]
fn every_route_in_the_source_is_documented() {
    let doc = voyage::openapi();
    let paths: BTreeSet<String> = documented(&doc).into_iter().map(|(_, p)| p).collect();
    let routes = source_routes();
    assert!(routes.len() > 20, "the scan found too little: {routes:?}");
    let undocumented: Vec<&String> = routes.difference(&paths).collect();
    assert!(
        undocumented.is_empty(),
        "routes without an OpenAPI entry: {undocumented:?}"
    );
    let unrouted: Vec<&String> = paths.difference(&routes).collect();
    assert!(unrouted.is_empty(), "entries without a route: {unrouted:?}");
}

#[test]
fn the_document_is_well_formed() {
    let doc = voyage::openapi();
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let at = format!("{method} {path}");
            assert!(
                ids.insert(op["operationId"].to_string()),
                "{at}: duplicate id"
            );
            assert!(
                !op["summary"].as_str().unwrap_or("").is_empty(),
                "{at}: summary"
            );
            // Every path parameter is declared.
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| p["name"].as_str().unwrap())
                        .collect()
                })
                .unwrap_or_default();
            let in_path: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .collect();
            assert_eq!(declared, in_path, "{at}");
            // Errors in the shared shape; security named.
            assert_eq!(
                op["responses"]["default"]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/Error",
                "{at}"
            );
            assert!(op["security"].is_array(), "{at}");
            // Every schema in it is valid JSON Schema 2020-12 (with the Error ref resolved).
            let mut schemas: Vec<&Value> = Vec::new();
            if let Some(body) =
                op["requestBody"]["content"]["application/json"]["schema"].as_object()
            {
                let _ = body;
                schemas.push(&op["requestBody"]["content"]["application/json"]["schema"]);
            }
            for (_, r) in op["responses"].as_object().unwrap() {
                if let Some(content) = r["content"].as_object() {
                    for (_, c) in content {
                        schemas.push(&c["schema"]);
                    }
                }
            }
            for s in schemas {
                if s.get("$ref").is_some() {
                    continue;
                }
                assert!(
                    jsonschema::meta::validate(s).is_ok(),
                    "{at}: not a JSON Schema: {s}"
                );
            }
        }
    }
    assert!(jsonschema::meta::validate(&doc["components"]["schemas"]["Error"]).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_have_the_documented_shape() {
    let app = TestApp::start_idle(&[]);
    let doc = voyage::openapi();
    let error = jsonschema::validator_for(&doc["components"]["schemas"]["Error"]).unwrap();
    let key = app.key("acme", false).await;
    for (method, path, body) in [
        ("GET", "/v1/webhooks/whk_nope", None),
        ("GET", "/v1/nowhere", None),
        ("POST", "/v1/webhooks", Some(serde_json::json!({"url": 3}))),
        ("POST", "/v1/webhooks/dispatch", Some(serde_json::json!({}))),
    ] {
        let (status, answer) = app.call(method, path, &key, body).await;
        assert!(status.is_client_error(), "{method} {path}: {status}");
        assert!(error.is_valid(&answer), "{method} {path}: {answer}");
    }
}

#[test]
fn the_document_in_the_repository_is_the_one_the_code_builds() {
    // Arrange: what `voyage openapi` prints, and the file the gateway Lambda serves on AWS
    let built = format!(
        "{}\n",
        serde_json::to_string_pretty(&voyage::openapi()).expect("the document")
    );

    // Act
    let stored = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schemas/openapi.json"
    ))
    .expect("schemas/openapi.json");

    // Assert
    assert!(
        stored == built,
        "schemas/openapi.json is not the document the code builds: \
         run `cargo run -q -p voyage -- openapi > schemas/openapi.json`"
    );
}
