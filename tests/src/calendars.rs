//! Both calendar simulators (Graph and Google) wired to one local system whose queue
//! consumers are idle, so a test decides when a sync round runs: the world the two-way
//! scenarios run in, table-driven over the providers ([`Cal`]).

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use voyage_core::deps::Deps;
use voyage_core::model::{Connection, Session};
use voyage_simulators::google::{SANDBOX_CLIENT_EMAIL, SANDBOX_PRIVATE_KEY};
use voyage_simulators::{GoogleSimulator, GraphSimulator};

use crate::app::TestApp;
use crate::graph::{email, serve, CLIENT_ID, CLIENT_SECRET, TENANT};

/// A calendar provider, as the scenarios name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cal {
    Exchange,
    Google,
}

impl Cal {
    pub const BOTH: [Cal; 2] = [Cal::Exchange, Cal::Google];

    pub fn name(self) -> &'static str {
        match self {
            Cal::Exchange => "exchange",
            Cal::Google => "google",
        }
    }

    pub fn provider(self) -> voyage_core::model::Provider {
        match self {
            Cal::Exchange => voyage_core::model::Provider::Exchange,
            Cal::Google => voyage_core::model::Provider::Google,
        }
    }
}

/// One of the platform's events as the staff member's calendar shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub id: String,
    pub start: DateTime<Utc>,
    pub declined: bool,
}

pub struct CalendarsWorld {
    pub graph: GraphSimulator,
    pub google: GoogleSimulator,
    pub app: TestApp,
    pub tenant: String,
    pub platform: String,
}

pub const COMPANY: &str = "acme";

impl CalendarsWorld {
    /// A world with `ann`'s calendar of `cal` connected: (world, connection id).
    pub async fn with(cal: Cal) -> (CalendarsWorld, String) {
        let w = CalendarsWorld::start().await;
        let conn = w.connect(cal, "ann").await;
        (w, conn)
    }

    /// A world with both of `ann`'s calendars connected: (world, exchange conn, google conn).
    pub async fn both() -> (CalendarsWorld, String, String) {
        let w = CalendarsWorld::start().await;
        let exchange = w.connect(Cal::Exchange, "ann").await;
        let google = w.connect(Cal::Google, "ann").await;
        (w, exchange, google)
    }

    /// The event `session`'s mapping in `cal` names, if any.
    pub async fn mapped_event(&self, cal: Cal, session: &str) -> Option<String> {
        self.app
            .local
            .deps
            .store
            .mapping_for_session(COMPANY, cal.provider(), session)
            .await
            .expect("the mapping read")
            .map(|m| m.external_event_id)
    }

    /// The one live event of `session` in `staff`'s calendar of `cal`, asserting there is
    /// exactly one.
    pub fn one_event(&self, cal: Cal, staff: &str, session: &str) -> String {
        let shown = self.shown(cal, staff, session);
        assert_eq!(shown.len(), 1, "{cal:?} of {staff}: {shown:?}");
        shown[0].id.clone()
    }

    /// `POST /v1/sessions/changes` with any body; the status and answer.
    pub async fn post_change(&self, body: Value) -> (u16, Value) {
        let (status, out) = self
            .app
            .call("POST", "/v1/sessions/changes", &self.platform, Some(body))
            .await;
        (status.as_u16(), out)
    }

    /// Both simulators, an idle local system (grace of pending cancellations: 1 s), a
    /// company with credentials for both providers, and the platform's internal key.
    pub async fn start() -> CalendarsWorld {
        CalendarsWorld::start_with(&[]).await
    }

    /// [`CalendarsWorld::start`] with more of the local system's settings (a sync budget,
    /// say).
    pub async fn start_with(settings: &[(&str, &str)]) -> CalendarsWorld {
        let graph = GraphSimulator::new();
        graph.register_app(TENANT, CLIENT_ID, CLIENT_SECRET);
        let graph_url = serve(graph.router()).await;
        let google = GoogleSimulator::new();
        google
            .register_account(SANDBOX_CLIENT_EMAIL, SANDBOX_PRIVATE_KEY)
            .unwrap();
        let google_url = serve(google.router()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app_url = format!("http://{}", listener.local_addr().unwrap());
        let token_url = format!("{google_url}/token");
        let mut env = vec![
            ("VOYAGE_GRAPH_BASE_URL", graph_url.as_str()),
            ("VOYAGE_MS_LOGIN_BASE_URL", graph_url.as_str()),
            ("VOYAGE_GOOGLE_CALENDAR_BASE_URL", google_url.as_str()),
            ("VOYAGE_GOOGLE_TOKEN_URL", token_url.as_str()),
            ("VOYAGE_PUBLIC_BASE_URL", app_url.as_str()),
            ("VOYAGE_PENDING_CANCELLATION_GRACE", "1s"),
        ];
        env.extend_from_slice(settings);
        let app = TestApp::start_idle(&env);
        let router = app.router.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let tenant = app.key(COMPANY, false).await;
        let platform = app.key("platform", true).await;
        let w = CalendarsWorld {
            graph,
            google,
            app,
            tenant,
            platform,
        };
        let (status, body) = w
            .app
            .call(
                "PUT",
                "/v1/credentials/exchange",
                &w.tenant,
                Some(json!({"tenant_id": TENANT, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = w
            .app
            .call(
                "PUT",
                "/v1/credentials/google",
                &w.tenant,
                Some(json!({"type": "service_account", "client_email": SANDBOX_CLIENT_EMAIL,
                    "private_key": SANDBOX_PRIVATE_KEY, "token_uri": "https://oauth2.googleapis.com/token"})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        w
    }

    /// Connects `staff`'s calendar of `cal`; returns the connection id.
    pub async fn connect(&self, cal: Cal, staff: &str) -> String {
        let body = match cal {
            Cal::Exchange => {
                json!({"provider": "exchange", "staff_id": staff, "staff_email": email(staff)})
            }
            Cal::Google => json!({"provider": "google", "staff_id": staff,
                "staff_email": email(staff), "calendar_id": email(staff)}),
        };
        let (status, conn) = self
            .app
            .call("POST", "/v1/connections", &self.tenant, Some(body))
            .await;
        assert_eq!(status, 201, "{conn}");
        let id = conn["id"].as_str().unwrap().to_string();
        // The first round lists the calendar (and starts its cursor).
        self.sync(cal, &id).await;
        id
    }

    /// `POST /v1/sessions/changes`; the answer.
    pub async fn change(&self, action: &str, session: &str, hour: u32) -> Value {
        let (status, out) = self
            .app
            .call(
                "POST",
                "/v1/sessions/changes",
                &self.platform,
                Some(change_body(action, session, "ann", hour)),
            )
            .await;
        assert_eq!(status, 200, "{out}");
        out
    }

    pub async fn session(&self, id: &str) -> Session {
        self.app
            .local
            .deps
            .store
            .get_session(COMPANY, id)
            .await
            .unwrap()
    }

    /// The connection as stored.
    pub async fn connection(&self, id: &str) -> Connection {
        self.app
            .local
            .deps
            .store
            .get_connection(COMPANY, id)
            .await
            .unwrap()
    }

    /// Runs one sync round of the connection (inline, as its queue worker would); returns the
    /// booking commands it carried out.
    pub async fn sync(&self, cal: Cal, connection: &str) -> usize {
        self.sync_with(&self.app.local.deps, cal, connection).await
    }

    /// [`CalendarsWorld::sync`] through `deps` (a world's dependencies with a race in them).
    pub async fn sync_with(&self, deps: &Deps, cal: Cal, connection: &str) -> usize {
        match cal {
            Cal::Exchange => {
                let req = voyage_core::exchange::push::SyncRequest {
                    company_id: COMPANY.into(),
                    connection_id: connection.into(),
                    subscription_id: String::new(),
                    reason: "notification".into(),
                };
                voyage_core::exchange::sync::handle(deps, &req)
                    .await
                    .unwrap()
                    .commands
            }
            Cal::Google => {
                let mut conn = self.connection(connection).await;
                voyage_core::google::sync::sync_connection(deps, &mut conn)
                    .await
                    .unwrap()
                    .commands
            }
        }
    }

    /// The platform's live events of `session` in `staff`'s calendar of `cal`.
    pub fn shown(&self, cal: Cal, staff: &str, session: &str) -> Vec<Shown> {
        let tag = format!("{COMPANY}/{session}");
        match cal {
            Cal::Exchange => self
                .graph
                .events_of(&email(staff))
                .into_iter()
                .filter(|e| e.session_tag.as_deref() == Some(&tag) && !e.deleted)
                .map(|e| Shown {
                    id: e.id,
                    start: e.start,
                    declined: e.declined,
                })
                .collect(),
            Cal::Google => self
                .google
                .events_of(&email(staff))
                .into_iter()
                .filter(|e| e.session_tag.as_deref() == Some(&tag) && e.status != "cancelled")
                .filter_map(|e| {
                    Some(Shown {
                        id: e.id,
                        start: e.start?,
                        declined: e.declined,
                    })
                })
                .collect(),
        }
    }

    /// The staff member deletes an event in their calendar.
    pub fn staff_delete(&self, cal: Cal, staff: &str, id: &str) {
        let done = match cal {
            Cal::Exchange => self.graph.staff_delete(&email(staff), id),
            Cal::Google => self.google.staff_delete(&email(staff), id),
        };
        assert!(done, "{cal:?}: no live event {id} to delete");
    }

    /// The staff member restores a deleted event (Deleted Items, Google's bin).
    pub fn staff_restore(&self, cal: Cal, staff: &str, id: &str) {
        let done = match cal {
            Cal::Exchange => self.graph.staff_restore(&email(staff), id),
            Cal::Google => self.google.staff_restore(&email(staff), id),
        };
        assert!(done, "{cal:?}: no deleted event {id} to restore");
    }

    /// The staff member moves an event to `hour` (for an hour) on the test day.
    pub fn staff_move(&self, cal: Cal, staff: &str, id: &str, hour: u32) {
        let (start, end) = (at(hour), at(hour + 1));
        let done = match cal {
            Cal::Exchange => self.graph.staff_move(&email(staff), id, start, end),
            Cal::Google => self.google.staff_move(&email(staff), id, start, end),
        };
        assert!(done, "{cal:?}: no live event {id} to move");
    }

    /// The staff member declines an event.
    pub fn staff_decline(&self, cal: Cal, staff: &str, id: &str) {
        let done = match cal {
            Cal::Exchange => self.graph.staff_decline(&email(staff), id),
            Cal::Google => self.google.staff_decline(&email(staff), id),
        };
        assert!(done, "{cal:?}: no live event {id} to decline");
    }

    /// Runs the outbound queue's messages through its worker (as the Lambda's batches do)
    /// until it is empty or only failing messages are left; returns how many succeeded.
    pub async fn drain_outbound(&self) -> usize {
        let deps = &self.app.local.deps;
        let queue = deps
            .queue(voyage_core::deps::QueueName::ExchangeOutbound)
            .unwrap();
        let mut done = 0;
        for _ in 0..20 {
            let messages = queue
                .receive(10, std::time::Duration::from_millis(50))
                .await
                .unwrap();
            if messages.is_empty() {
                break;
            }
            for m in messages {
                if voyage_fn_exchange_outbound::worker::handle(deps, &m.body)
                    .await
                    .is_ok()
                {
                    done += 1;
                    queue.ack(&m.receipt).await.unwrap();
                } else {
                    queue
                        .release(&m.receipt, std::time::Duration::ZERO)
                        .await
                        .unwrap();
                }
            }
        }
        done
    }

    /// The five-minute job that commits due pending cancellations.
    pub async fn commit_pending_cancellations(&self) {
        voyage_core::exchange::sync::commit_pending_cancellations(&self.app.local.deps)
            .await
            .unwrap();
    }
}

/// `hour`:00 UTC on the scenarios' day.
pub fn at(hour: u32) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&format!("{}T{hour:02}:00:00Z", crate::dates::date(0)))
        .unwrap()
        .with_timezone(&Utc)
}

/// The body of a session change for `staff`, an hour from `hour`:00 UTC on the scenarios' day.
pub fn change_body(action: &str, session: &str, staff: &str, hour: u32) -> Value {
    json!({
        "action": action,
        "session": {
            "id": session,
            "company_id": COMPANY,
            "staff_id": staff,
            "start": at(hour).to_rfc3339(),
            "end": at(hour + 1).to_rfc3339(),
            "time_zone": "Europe/London",
            "title": "Consultation",
            "location": null,
            "client": {"name": "Dana Client", "email": "dana@client.example"}
        }
    })
}

/// [`change_body`] of session `s1` for `staff`, with the platform's `version`.
pub fn versioned_body(action: &str, staff: &str, hour: u32, version: u64) -> Value {
    let mut body = change_body(action, "s1", staff, hour);
    body["session"]["version"] = json!(version);
    body
}

/// `POST /v1/sessions/changes`, as its handler does it, with `deps` (a client wrapped for a
/// race, say).
pub async fn apply_change(
    deps: &voyage_core::deps::Deps,
    body: Value,
) -> voyage_core::calendar::changes::ChangesOutcome {
    try_apply_change(deps, body)
        .await
        .expect("the change applied")
}

/// [`apply_change`], its error answered rather than asserted away.
pub async fn try_apply_change(
    deps: &voyage_core::deps::Deps,
    body: Value,
) -> voyage_core::Result<voyage_core::calendar::changes::ChangesOutcome> {
    let input: voyage_core::calendar::SessionChangeInput =
        serde_json::from_value(body).expect("a change body");
    voyage_core::calendar::changes::apply(deps, &input.validate().expect("a valid change")).await
}

/// A simulator fault: the next `count` requests matching `method` and `path` answer `status`.
pub fn fault(method: &str, path: &str, status: u16, count: u32) -> voyage_simulators::Fault {
    voyage_simulators::Fault {
        method: Some(method.into()),
        path_contains: Some(path.into()),
        status: Some(status),
        retry_after: None,
        latency_ms: None,
        count,
        after: 0,
        lose_answer: false,
    }
}
