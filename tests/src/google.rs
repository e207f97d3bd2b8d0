//! A Google Calendar simulator and a local system wired to each other over loopback HTTP:
//! the system gets tokens and events from the simulator, the simulator pushes to the
//! system's notification address.

use serde_json::{json, Value};
use voyage_simulators::google::{SANDBOX_CLIENT_EMAIL, SANDBOX_PRIVATE_KEY};
use voyage_simulators::GoogleSimulator;

use crate::app::TestApp;
use crate::graph::serve;

/// A key no simulator knows: signs, but Google refuses it.
pub const UNREGISTERED_KEY: &str = include_str!("../fixtures/unregistered-service-account.pem");

pub struct GoogleWorld {
    pub sim: GoogleSimulator,
    pub sim_url: String,
    pub app: TestApp,
    pub app_url: String,
    pub http: reqwest::Client,
}

pub fn email(staff: &str) -> String {
    format!("{staff}@contoso.example")
}

impl GoogleWorld {
    pub async fn start(extra: &[(&str, &str)]) -> GoogleWorld {
        let sim = GoogleSimulator::new();
        sim.register_account(SANDBOX_CLIENT_EMAIL, SANDBOX_PRIVATE_KEY)
            .unwrap();
        let sim_url = serve(sim.router()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app_url = format!("http://{}", listener.local_addr().unwrap());
        let token_url = format!("{sim_url}/token");
        let mut env: Vec<(&str, &str)> = vec![
            ("VOYAGE_GOOGLE_CALENDAR_BASE_URL", &sim_url),
            ("VOYAGE_GOOGLE_TOKEN_URL", &token_url),
            ("VOYAGE_PUBLIC_BASE_URL", &app_url),
        ];
        env.extend_from_slice(extra);
        let app = TestApp::start_idle(&env);
        let router = app.router.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        GoogleWorld {
            sim,
            sim_url,
            app,
            app_url,
            http: reqwest::Client::new(),
        }
    }

    /// A company with a service account (`key`) and a Google connection for `staff`.
    pub async fn tenant_with_connection(
        &self,
        company: &str,
        staff: &str,
        key: &str,
    ) -> (String, Value) {
        let tenant = self.app.key(company, false).await;
        let (status, body) = self
            .app
            .call(
                "PUT",
                "/v1/credentials/google",
                &tenant,
                Some(
                    json!({"type": "service_account", "client_email": SANDBOX_CLIENT_EMAIL,
                    "private_key": key, "token_uri": "https://oauth2.googleapis.com/token"}),
                ),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, conn) = self
            .app
            .call(
                "POST",
                "/v1/connections",
                &tenant,
                Some(json!({"provider": "google", "staff_id": staff, "staff_email": email(staff), "calendar_id": email(staff)})),
            )
            .await;
        assert_eq!(status, 201, "{conn}");
        self.drop_first_sync(conn["id"].as_str().unwrap_or_default())
            .await;
        (tenant, conn)
    }

    /// Takes the first sync a new connection queued off the google-sync queue unrun: the
    /// scenarios run each sync themselves, in the order they describe (the first sync's own
    /// test is `a_new_connection_queues_its_first_sync`).
    pub async fn drop_first_sync(&self, connection: &str) {
        let queue = self
            .app
            .local
            .deps
            .queue(voyage_core::deps::QueueName::GoogleSync)
            .expect("the google-sync queue");
        let messages = queue
            .receive(10, std::time::Duration::from_millis(20))
            .await
            .expect("the queue read");
        for m in messages {
            if m.body.contains(connection) {
                queue.ack(&m.receipt).await.expect("acked");
            } else {
                queue
                    .release(&m.receipt, std::time::Duration::ZERO)
                    .await
                    .expect("released");
            }
        }
    }

    /// A token acting as the staff member, for their own edits through Google's routes.
    pub async fn staff_token(&self, staff: &str) -> String {
        let pair = voyage_core::google::jwt::key_pair(SANDBOX_PRIVATE_KEY).unwrap();
        let token_url = format!("{}/token", self.sim_url);
        let assertion = voyage_core::google::jwt::assertion(
            &pair,
            SANDBOX_CLIENT_EMAIL,
            &email(staff),
            &token_url,
            chrono::Utc::now().timestamp(),
        )
        .unwrap();
        let v: Value = self
            .http
            .post(token_url)
            .form(&[
                ("grant_type", voyage_core::google::jwt::GRANT_TYPE),
                ("assertion", &assertion),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }

    /// The staff member inserts an event; returns its id.
    pub async fn insert(&self, token: &str, staff: &str, event: Value) -> String {
        let resp = self
            .http
            .post(format!(
                "{}/calendar/v3/calendars/{}/events",
                self.sim_url,
                email(staff)
            ))
            .bearer_auth(token)
            .json(&event)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        v["id"].as_str().unwrap().to_string()
    }

    pub async fn edit(
        &self,
        token: &str,
        staff: &str,
        method: &str,
        event: &str,
        body: Option<Value>,
    ) -> u16 {
        let mut req = self
            .http
            .request(
                method.parse().unwrap(),
                format!(
                    "{}/calendar/v3/calendars/{}/events/{event}",
                    self.sim_url,
                    email(staff)
                ),
            )
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap().status().as_u16()
    }

    /// The staff member answers an invitation on their calendar (`accepted`, `tentative`,
    /// `declined`): their attendee entry changes, as a PATCH of `attendees` does in Google.
    pub async fn respond(&self, token: &str, staff: &str, event: &str, response: &str) {
        let url = format!(
            "{}/calendar/v3/calendars/{}/events/{event}",
            self.sim_url,
            email(staff)
        );
        let current: Value = self
            .http
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut attendees = current["attendees"].as_array().cloned().unwrap_or_default();
        for a in attendees.iter_mut() {
            if a["self"] == true {
                a["responseStatus"] = json!(response);
            }
        }
        let status = self
            .edit(
                token,
                staff,
                "PATCH",
                event,
                Some(json!({ "attendees": attendees })),
            )
            .await;
        assert_eq!(status, 200);
    }

    /// Stops every push channel (through Google's `channels.stop`), so the staff member's
    /// edits queue no syncs of their own.
    pub async fn stop_channels(&self, token: &str) {
        let channels = self.control("GET", "channels", json!({})).await;
        for c in channels["value"].as_array().cloned().unwrap_or_default() {
            let resp = self
                .http
                .post(format!("{}/calendar/v3/channels/stop", self.sim_url))
                .bearer_auth(token)
                .json(&json!({"id": c["id"], "resourceId": c["resourceId"]}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 204);
        }
    }

    pub async fn control(&self, method: &str, path: &str, body: Value) -> Value {
        self.http
            .request(
                method.parse().unwrap(),
                format!("{}/_control/{path}", self.sim_url),
            )
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null)
    }

    /// The staff member's overrides between two instants, as external event ids.
    pub async fn overrides(&self, tenant: &str, staff: &str) -> Vec<Value> {
        let (status, body) = self
            .app
            .call(
                "GET",
                &format!(
                    "/v1/staff/{staff}/overrides?from={}&to={}",
                    (chrono::Utc::now() - chrono::Duration::days(3)).format("%Y-%m-%dT00:00:00Z"),
                    (chrono::Utc::now() + chrono::Duration::days(200)).format("%Y-%m-%dT00:00:00Z")
                ),
                tenant,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["data"].as_array().cloned().unwrap_or_default()
    }
}

/// A timed event body.
pub fn timed(summary: &str, start: &str, end: &str) -> Value {
    json!({"summary": summary, "start": {"dateTime": start}, "end": {"dateTime": end}})
}

/// `event` with Google's `eventType` (`outOfOffice`, `workingLocation`, `birthday`, ...).
pub fn of_type(event_type: &str, mut event: Value) -> Value {
    event["eventType"] = json!(event_type);
    event
}

/// `event` as an invitation from someone else to `staff`, whose answer is `response`
/// (`needsAction`, `accepted`, `tentative`, `declined`); the simulator marks `staff`'s entry
/// `self`, as Google does on the staff member's calendar.
pub fn invitation(staff: &str, response: &str, mut event: Value) -> Value {
    event["attendees"] = json!([
        {"email": "organiser@fabrikam.example", "organizer": true, "responseStatus": "accepted"},
        {"email": email(staff), "responseStatus": response},
    ]);
    event
}

/// `YYYY-MM-DD` of the day `n` days from today (tests stay inside the sync window whenever
/// they run; today as the test process first saw it, [`crate::dates`]).
pub fn day(n: i64) -> String {
    crate::dates::date(n - 1)
}
