//! A Graph simulator and a local system wired to each other over loopback HTTP, as a
//! deployment and Microsoft Graph are: the simulator calls the system's notification URLs,
//! the system calls the simulator's token and Graph routes.

use std::net::SocketAddr;

use serde_json::{json, Value};
use voyage_simulators::GraphSimulator;

use crate::app::TestApp;

pub const TENANT: &str = "contoso-tenant";
pub const CLIENT_ID: &str = "voyage-app";
pub const CLIENT_SECRET: &str = "s3cret-Graph~value";

/// Serves `router` on a fresh loopback port; returns its base URL.
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

/// A server started by [`serve_owned`]: it stops serving (its listener closes) when dropped.
pub struct Server {
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `router` on a fresh loopback port until the answered [`Server`] is dropped: for a
/// harness that starts servers again and again in one process (the simulation, one set per
/// seed), where [`serve`]'s servers, kept for the process's life, ran it out of file
/// descriptors after a few thousand seeds.
pub async fn serve_owned(router: axum::Router) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Server {
        url: format!("http://{addr}"),
        task,
    }
}

pub struct GraphWorld {
    pub sim: GraphSimulator,
    pub sim_url: String,
    pub app: TestApp,
    pub app_url: String,
    pub http: reqwest::Client,
}

impl GraphWorld {
    /// A simulator that knows the test app registration, and a local system (consumers
    /// idle unless `consumers`) pointed at it, with `extra` settings.
    pub async fn start(extra: &[(&str, &str)]) -> GraphWorld {
        Self::start_with(extra, false).await
    }

    /// The same, with the local system's queue consumers running (notifications become
    /// delta rounds, webhooks are delivered).
    pub async fn start_running(extra: &[(&str, &str)]) -> GraphWorld {
        Self::start_with(extra, true).await
    }

    async fn start_with(extra: &[(&str, &str)], consumers: bool) -> GraphWorld {
        let sim = GraphSimulator::new();
        sim.register_app(TENANT, CLIENT_ID, CLIENT_SECRET);
        let sim_url = serve(sim.router()).await;
        // The app's address must be known before its configuration: bind, then build.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app_url = format!("http://{}", listener.local_addr().unwrap());
        let mut env: Vec<(&str, &str)> = vec![
            ("VOYAGE_GRAPH_BASE_URL", &sim_url),
            ("VOYAGE_MS_LOGIN_BASE_URL", &sim_url),
            ("VOYAGE_PUBLIC_BASE_URL", &app_url),
        ];
        env.extend_from_slice(extra);
        let app = if consumers {
            TestApp::start(&env)
        } else {
            TestApp::start_idle(&env)
        };
        let router = app.router.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        GraphWorld {
            sim,
            sim_url,
            app,
            app_url,
            http: reqwest::Client::new(),
        }
    }

    /// A tenant with Graph credentials (`secret` given) and an Exchange connection for
    /// `staff`; returns the tenant key and the connection as the API shows it.
    pub async fn tenant_with_connection(
        &self,
        company: &str,
        staff: &str,
        secret: &str,
    ) -> (String, Value) {
        let key = self.app.key(company, false).await;
        let (status, _) = self
            .app
            .call(
                "PUT",
                "/v1/credentials/exchange",
                &key,
                Some(json!({"tenant_id": TENANT, "client_id": CLIENT_ID, "client_secret": secret})),
            )
            .await;
        assert_eq!(status, 200);
        let (status, conn) = self
            .app
            .call(
                "POST",
                "/v1/connections",
                &key,
                Some(
                    json!({"provider": "exchange", "staff_id": staff, "staff_email": email(staff)}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{conn}");
        (key, conn)
    }

    /// Every event in the staff member's simulated mailbox, deleted ones included.
    pub async fn events(&self, staff: &str) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!(
                "{}/_control/users/{}/events",
                self.sim_url,
                email(staff)
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["value"].as_array().cloned().unwrap_or_default()
    }

    pub async fn live_events(&self, staff: &str) -> Vec<Value> {
        self.events(staff)
            .await
            .into_iter()
            .filter(|e| e["deleted"] == json!(false))
            .collect()
    }

    pub async fn subscriptions(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!("{}/_control/subscriptions", self.sim_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["value"].as_array().cloned().unwrap_or_default()
    }

    /// Graph requests served, as `METHOD path-kind` (`POST events`, `PATCH event`, ...).
    pub fn graph_calls(&self) -> Vec<String> {
        self.sim
            .served()
            .into_iter()
            .map(|s| {
                let kind = if s.path.ends_with("/token") {
                    "token"
                } else if s.path.ends_with("/mailboxSettings") {
                    "mailboxSettings"
                } else if s.path.ends_with("/$batch") {
                    // JSON batching: the system sends only reads this way (`get_events`).
                    "batch-read"
                } else if s.path.ends_with("/events") {
                    "events"
                } else if s.path.contains("/events/") {
                    "event"
                } else if s.path.contains("/subscriptions") {
                    "subscriptions"
                } else {
                    "other"
                };
                format!("{} {kind} {}", s.method, s.status)
            })
            .collect()
    }
}

impl GraphWorld {
    /// An app-only token, as the staff member's Outlook stand-in uses it.
    pub async fn staff_token(&self) -> String {
        let v: Value = self
            .http
            .post(format!("{}/{TENANT}/oauth2/v2.0/token", self.sim_url))
            .form(&[
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
                ("scope", "https://graph.microsoft.com/.default"),
                ("grant_type", "client_credentials"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }

    /// The staff member changes an event through Graph's routes: `DELETE` (body `None`),
    /// `PATCH` (a body), or `decline` (method `POST`, path suffix `/decline`).
    pub async fn staff(
        &self,
        method: &str,
        staff: &str,
        event: &str,
        suffix: &str,
        body: Option<Value>,
    ) -> u16 {
        let token = self.staff_token().await;
        let url = format!(
            "{}/v1.0/users/{}/events/{event}{suffix}",
            self.sim_url,
            email(staff)
        );
        let mut req = self
            .http
            .request(method.parse().unwrap(), url)
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap().status().as_u16()
    }

    /// The staff member creates an event of their own (busy unless `show_as` says otherwise).
    pub async fn staff_creates(
        &self,
        staff: &str,
        subject: &str,
        start: &str,
        end: &str,
        show_as: &str,
    ) -> String {
        let token = self.staff_token().await;
        let v: Value = self
            .http
            .post(format!(
                "{}/v1.0/users/{}/events",
                self.sim_url,
                email(staff)
            ))
            .bearer_auth(token)
            .json(&json!({
                "subject": subject, "showAs": show_as,
                "start": {"dateTime": start, "timeZone": "UTC"},
                "end": {"dateTime": end, "timeZone": "UTC"},
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["id"].as_str().unwrap().to_string()
    }

    /// Restores a deleted event from Deleted Items (a simulator control route).
    pub async fn restore(&self, staff: &str, event: &str) -> u16 {
        self.http
            .post(format!(
                "{}/_control/users/{}/events/{event}/restore",
                self.sim_url,
                email(staff)
            ))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub async fn control(&self, path: &str, body: Value) -> u16 {
        self.http
            .post(format!("{}/_control/{path}", self.sim_url))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

pub fn email(staff: &str) -> String {
    format!("{staff}@contoso.example")
}

/// A session change as the platform sends it.
pub fn change(action: &str, company: &str, session: &str, staff: &str, start_hour: u32) -> Value {
    json!({
        "action": action,
        "session": {
            "id": session,
            "company_id": company,
            "staff_id": staff,
            "start": format!("{}T{start_hour:02}:00:00Z", crate::dates::date(0)),
            "end": format!("{}T{:02}:00:00Z", crate::dates::date(0), start_hour + 1),
            "time_zone": "Europe/Berlin",
            "title": "Consultation",
            "location": "Room 4",
            "client": {"name": "Bob Client", "email": "bob@example.com"}
        }
    })
}
