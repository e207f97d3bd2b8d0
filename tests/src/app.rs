//! The local system in-process, for tests that need its queues and workers running.

use std::collections::HashMap;

use axum::body::Body;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use voyage::Local;
use voyage_core::config::Config;

pub struct TestApp {
    pub local: Local,
    pub router: Router,
    _dir: tempfile::TempDir,
}

impl TestApp {
    /// A local system with these environment settings, consumers running.
    pub fn start(env: &[(&str, &str)]) -> TestApp {
        let app = Self::start_idle(env);
        app.local.spawn_consumers().unwrap();
        app
    }

    /// The same, with no queue consumers (messages stay queued until someone reads them).
    pub fn start_idle(env: &[(&str, &str)]) -> TestApp {
        let map: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let config = Config::from_lookup(|k| map.get(k).cloned()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let local = Local::open(dir.path(), config).unwrap();
        TestApp {
            router: local.router(),
            local,
            _dir: dir,
        }
    }

    pub async fn key(&self, company: &str, internal: bool) -> String {
        voyage_core::auth::create_key(&self.local.deps.store, company, internal, None)
            .await
            .unwrap()
            .plaintext
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {key}"));
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let resp = self
            .router
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}
