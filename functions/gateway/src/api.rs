//! Tenant administration: the caller's identity, its API keys and its calendar connections.
//! Every route acts on the company of the calling key; no body or path can name another.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use voyage_core::deps::Deps;
use voyage_core::exchange::credentials as exchange_credentials;
use voyage_core::google::credentials as google_credentials;
use voyage_core::model::{
    ApiKey, Connection, ConnectionStatus, CredentialRecord, HistoryEntry, Provider, Session,
    SessionClient, SessionStatus,
};
use voyage_core::{auth, connections, validate, Error};
use voyage_http::{ApiJson, ApiPath, ApiQuery, ApiResult, Authenticated};

pub fn router(deps: Arc<Deps>) -> Router {
    Router::new()
        .route("/v1/me", get(me))
        .route("/v1/keys", post(create_key).get(list_keys))
        .route("/v1/keys/{id}", delete(revoke_key))
        .route(
            "/v1/connections",
            post(create_connection).get(list_connections),
        )
        .route(
            "/v1/connections/{id}",
            get(get_connection).delete(delete_connection),
        )
        .route(
            "/v1/credentials/exchange",
            put(put_exchange_credentials).get(get_exchange_credentials),
        )
        .route(
            "/v1/credentials/google",
            put(put_google_credentials).get(get_google_credentials),
        )
        .route("/v1/sessions/{id}", get(get_session))
        .route("/v1/staff/{staff_id}/overrides", get(staff_overrides))
        .route(
            "/v1/settings/availability",
            put(crate::settings::put_availability).get(crate::settings::get_availability),
        )
        .with_state(deps)
}

async fn me(Authenticated(p): Authenticated) -> Json<serde_json::Value> {
    Json(json!({"company_id": p.company_id, "key_id": p.key_id, "internal": p.internal}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    internal: bool,
}

/// A key as listed: never its hash, never the key.
#[derive(Debug, Serialize)]
struct KeyView {
    id: String,
    company_id: String,
    internal: bool,
    description: Option<String>,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKey> for KeyView {
    fn from(k: ApiKey) -> Self {
        KeyView {
            id: k.id,
            company_id: k.company_id,
            internal: k.internal,
            description: k.description,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
        }
    }
}

/// Creates another key for the caller's company. Only an internal key may create an internal
/// key, so no tenant can raise its own scope.
async fn create_key(
    State(deps): State<Arc<Deps>>,
    Authenticated(p): Authenticated,
    ApiJson(body): ApiJson<CreateKey>,
) -> ApiResult<impl IntoResponse> {
    if body.internal {
        p.require_internal()?;
    }
    let key = auth::create_key(&deps.store, &p.company_id, body.internal, body.description).await?;
    let mut view = serde_json::to_value(KeyView::from(key.record))
        .map_err(|e| Error::Internal(e.to_string()))?;
    // The only time the key is ever shown.
    view["key"] = json!(key.plaintext);
    Ok((StatusCode::CREATED, Json(view)))
}

async fn list_keys(
    State(deps): State<Arc<Deps>>,
    Authenticated(p): Authenticated,
) -> ApiResult<Json<serde_json::Value>> {
    let keys: Vec<KeyView> = deps
        .store
        .list_api_keys(&p.company_id)
        .await?
        .into_iter()
        .map(KeyView::from)
        .collect();
    Ok(Json(json!({ "data": keys })))
}

async fn revoke_key(
    State(deps): State<Arc<Deps>>,
    Authenticated(p): Authenticated,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    validate::identifier("id", &id)?;
    deps.store.revoke_api_key(&p.company_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateConnection {
    provider: Provider,
    staff_id: String,
    staff_email: String,
    #[serde(default)]
    calendar_id: Option<String>,
}

/// A connection as the tenant sees it: never the channel token or `clientState`.
#[derive(Debug, Serialize)]
pub struct ConnectionView {
    pub id: String,
    pub provider: Provider,
    pub staff_id: String,
    pub staff_email: String,
    pub calendar_id: Option<String>,
    pub status: ConnectionStatus,
    pub last_sync_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Google channel id or Graph subscription id.
    pub channel_id: Option<String>,
    pub channel_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Connection> for ConnectionView {
    fn from(c: Connection) -> Self {
        ConnectionView {
            id: c.id,
            provider: c.provider,
            staff_id: c.staff_id,
            staff_email: c.staff_email,
            calendar_id: c.calendar_id,
            status: c.status,
            last_sync_at: c.last_sync_at,
            last_error: c.last_error,
            channel_id: c.channel.as_ref().map(|ch| ch.id.clone()),
            channel_expires_at: c.channel.as_ref().map(|ch| ch.expires_at),
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// Creates the connection and subscribes to its calendar
/// ([`voyage_core::connections::create`]).
async fn create_connection(
    State(deps): State<Arc<Deps>>,
    Authenticated(p): Authenticated,
    ApiJson(body): ApiJson<CreateConnection>,
) -> ApiResult<impl IntoResponse> {
    let request = connections::NewConnection {
        provider: body.provider,
        staff_id: body.staff_id,
        staff_email: body.staff_email,
        calendar_id: body.calendar_id,
    };
    let created = connections::create(&deps, &p.company_id, request).await?;
    Ok((StatusCode::CREATED, Json(ConnectionView::from(created))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<String>,
}

async fn list_connections(
    State(deps): State<Arc<Deps>>,
    Authenticated(p): Authenticated,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let page = deps
        .store
        .list_connections(&p.company_id, q.limit, q.cursor.as_deref())
        .await?;
    let data: Vec<ConnectionView> = page.items.into_iter().map(ConnectionView::from).collect();
    Ok(Json(json!({ "data": data, "next_cursor": page.next })))
}

async fn get_connection(
    State(deps): State<Arc<Deps>>,
    Authenticated(p): Authenticated,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ConnectionView>> {
    validate::identifier("id", &id)?;
    let c = deps.store.get_connection(&p.company_id, &id).await?;
    Ok(Json(c.into()))
}

async fn delete_connection(
    State(deps): State<Arc<Deps>>,
    Authenticated(p): Authenticated,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    validate::identifier("id", &id)?;
    connections::delete(&deps, &p.company_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Credentials as shown back: the identity and when it was stored, never the secret.
#[derive(Debug, Serialize)]
struct CredentialsView {
    provider: Provider,
    #[serde(flatten)]
    identity: serde_json::Map<String, serde_json::Value>,
    updated_at: DateTime<Utc>,
}

impl From<CredentialRecord> for CredentialsView {
    fn from(r: CredentialRecord) -> Self {
        CredentialsView {
            provider: r.provider,
            identity: r.identity,
            updated_at: r.updated_at,
        }
    }
}

/// Stores the company's Graph app credentials (write-only: the secret is sealed and no
/// route returns it). Connections in `error` for lack of credentials recover at the next
/// renewal run.
async fn put_exchange_credentials(
    State(deps): State<Arc<Deps>>,
    Authenticated(p): Authenticated,
    ApiJson(body): ApiJson<exchange_credentials::ExchangeCredentialsInput>,
) -> ApiResult<Json<CredentialsView>> {
    let record = exchange_credentials::store(&deps, &p.company_id, body).await?;
    Ok(Json(record.into()))
}

/// Stores the company's Google service-account key (write-only: the private key is sealed
/// and no route returns it).
async fn put_google_credentials(
    State(deps): State<Arc<Deps>>,
    Authenticated(p): Authenticated,
    ApiJson(body): ApiJson<google_credentials::GoogleCredentialsInput>,
) -> ApiResult<Json<CredentialsView>> {
    let record = google_credentials::store(&deps, &p.company_id, body).await?;
    Ok(Json(record.into()))
}

async fn get_google_credentials(
    State(deps): State<Arc<Deps>>,
    Authenticated(p): Authenticated,
) -> ApiResult<Json<CredentialsView>> {
    match deps
        .store
        .get_credentials(&p.company_id, Provider::Google)
        .await?
    {
        Some(r) => Ok(Json(r.into())),
        None => Err(Error::not_found("credentials", "google").into()),
    }
}

async fn get_exchange_credentials(
    State(deps): State<Arc<Deps>>,
    Authenticated(p): Authenticated,
) -> ApiResult<Json<CredentialsView>> {
    match deps
        .store
        .get_credentials(&p.company_id, Provider::Exchange)
        .await?
    {
        Some(r) => Ok(Json(r.into())),
        None => Err(Error::not_found("credentials", "exchange").into()),
    }
}

/// A session as the tenant sees it: status, times, flags and history.
#[derive(Debug, Serialize)]
struct SessionView {
    id: String,
    staff_id: String,
    status: SessionStatus,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    time_zone: String,
    title: String,
    location: Option<String>,
    client: Option<SessionClient>,
    declined: bool,
    /// When a pending cancellation takes effect unless the event returns.
    cancels_at: Option<DateTime<Utc>>,
    history: Vec<HistoryEntry>,
    updated_at: DateTime<Utc>,
}

impl From<Session> for SessionView {
    fn from(s: Session) -> Self {
        SessionView {
            cancels_at: s.pending.as_ref().map(|p| p.due_at),
            id: s.id,
            staff_id: s.staff_id,
            status: s.status,
            start: s.start,
            end: s.end,
            time_zone: s.time_zone,
            title: s.title,
            location: s.location,
            client: s.client,
            declined: s.declined,
            history: s.history,
            updated_at: s.updated_at,
        }
    }
}

async fn get_session(
    State(deps): State<Arc<Deps>>,
    Authenticated(p): Authenticated,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<SessionView>> {
    validate::identifier("id", &id)?;
    Ok(Json(
        deps.store.get_session(&p.company_id, &id).await?.into(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    from: String,
    to: String,
}

/// The longest range one overrides query may cover.
const MAX_RANGE_DAYS: i64 = 366;

fn instant(field: &str, value: &str) -> Result<DateTime<Utc>, Error> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| Error::validation(field, "must be an RFC 3339 date-time with an offset"))
}

/// Busy time from every connected calendar of a staff member, overlapping `[from, to)`.
async fn staff_overrides(
    State(deps): State<Arc<Deps>>,
    Authenticated(p): Authenticated,
    ApiPath(staff): ApiPath<String>,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    validate::identifier("staff_id", &staff)?;
    let from = instant("from", &q.from)?;
    let to = instant("to", &q.to)?;
    if to <= from {
        return Err(Error::validation("to", "must be after from").into());
    }
    if to - from > chrono::Duration::days(MAX_RANGE_DAYS) {
        return Err(Error::validation(
            "to",
            format!("the range may cover at most {MAX_RANGE_DAYS} days"),
        )
        .into());
    }
    let data: Vec<serde_json::Value> = deps
        .store
        .overrides_for_staff(&p.company_id, &staff, from, to)
        .await?
        .into_iter()
        .map(|o| {
            json!({
                "source": o.source,
                "connection_id": o.connection_id,
                "external_event_id": o.external_event_id,
                "start": o.start,
                "end": o.end,
                "all_day": o.all_day,
            })
        })
        .collect();
    Ok(Json(json!({ "data": data })))
}
