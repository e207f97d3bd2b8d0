//! `/v1/webhooks`: endpoints, delivery logs, redelivery, bulk recovery, test events, internal
//! dispatch.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use voyage_core::model::{
    Attempt, Delivery, DeliveryStatus, EndpointStatus, SigningSecret, WebhookEndpoint,
};
use voyage_core::retry::RetryPolicy;
use voyage_core::webhooks::address::validate_url;
use voyage_core::webhooks::options::{validate_headers, MAX_RATE_LIMIT};
use voyage_core::webhooks::{validate_event_type, validate_pattern, Dispatch, WebhookEngine};
use voyage_core::{ids, signing, validate, Error};
use voyage_http::{ApiJson, ApiPath, ApiQuery, ApiResult, Authenticated, Internal};

/// How long a rotated-out secret keeps signing.
pub const ROTATION_OVERLAP: chrono::Duration = chrono::Duration::hours(24);
/// Most rotated-out secrets signing at once (rotations within a day): beyond it, the oldest
/// stops early, so a delivery's signature headers stay bounded.
pub const MAX_PREVIOUS_SECRETS: usize = 4;
/// Most subscription patterns per endpoint.
pub const MAX_EVENTS: usize = 100;

pub fn router(engine: WebhookEngine) -> Router {
    Router::new()
        .route("/v1/webhooks", post(create).get(list))
        .route("/v1/webhooks/dispatch", post(dispatch))
        .route("/v1/webhooks/event-types", get(event_types))
        .route("/v1/webhooks/deliveries/{delivery_id}", get(get_delivery))
        .route(
            "/v1/webhooks/deliveries/{delivery_id}/redeliver",
            post(redeliver),
        )
        .route("/v1/webhooks/{id}", get(read).patch(update).delete(remove))
        .route("/v1/webhooks/{id}/rotate-secret", post(rotate))
        .route("/v1/webhooks/{id}/test", post(test))
        .route("/v1/webhooks/{id}/deliveries", get(deliveries))
        .route("/v1/webhooks/{id}/recover", post(recover))
        .with_state(engine)
}

#[derive(Debug, Serialize)]
struct EndpointView {
    id: String,
    url: String,
    events: Vec<String>,
    description: Option<String>,
    status: EndpointStatus,
    disabled_reason: Option<String>,
    retry_schedule: Option<String>,
    /// Static headers sent with every delivery.
    headers: BTreeMap<String, String>,
    /// Deliveries per second to this endpoint at most; none when unlimited.
    rate_limit: Option<u32>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// Only when just created or rotated.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

fn schedule_text(secs: &[u64]) -> String {
    secs.iter()
        .map(|s| format!("{s}s"))
        .collect::<Vec<_>>()
        .join(",")
}

fn view(e: WebhookEndpoint, secret: Option<String>) -> EndpointView {
    EndpointView {
        retry_schedule: e.retry_delays_secs.as_deref().map(schedule_text),
        id: e.id,
        url: e.url,
        events: e.events,
        description: e.description,
        status: e.status,
        disabled_reason: e.disabled_reason,
        headers: e.headers,
        rate_limit: e.rate_limit,
        created_at: e.created_at,
        updated_at: e.updated_at,
        secret,
    }
}

fn check_events(events: &[String]) -> Result<(), Error> {
    if events.is_empty() {
        return Err(Error::validation(
            "events",
            "must name at least one event type",
        ));
    }
    if events.len() > MAX_EVENTS {
        return Err(Error::validation(
            "events",
            format!("at most {MAX_EVENTS} patterns"),
        ));
    }
    for (i, e) in events.iter().enumerate() {
        validate_pattern(&format!("events[{i}]"), e)?;
        if events[..i].contains(e) {
            return Err(Error::validation(
                format!("events[{i}]"),
                format!("`{e}` is listed twice"),
            ));
        }
    }
    Ok(())
}

/// A rate limit as sent: 1 to [`MAX_RATE_LIMIT`] deliveries per second.
fn check_rate_limit(n: u32) -> Result<u32, Error> {
    if (1..=MAX_RATE_LIMIT).contains(&n) {
        Ok(n)
    } else {
        Err(Error::validation(
            "rate_limit",
            format!("must be a whole number of deliveries per second, 1 to {MAX_RATE_LIMIT}"),
        ))
    }
}

/// A field that may be left out (`None`) but not sent as `null`: a data error naming it.
fn not_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    match Option::<T>::deserialize(d)? {
        Some(v) => Ok(Some(v)),
        None => Err(serde::de::Error::custom("must not be null")),
    }
}

/// `null` as `Some(None)` (clear the option), absent as `None` (leave it).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn check_schedule(text: &str) -> Result<Vec<u64>, Error> {
    let p = RetryPolicy::parse(text).map_err(|m| Error::validation("retry_schedule", m))?;
    Ok(p.delays.iter().map(|d| d.as_secs()).collect())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    url: String,
    events: Vec<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    /// e.g. `"30s,5m,30m"`; the deployment's schedule when absent.
    #[serde(default)]
    retry_schedule: Option<String>,
    /// Static headers sent with every delivery (never a reserved one).
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    /// Deliveries per second at most.
    #[serde(default)]
    rate_limit: Option<u32>,
}

async fn create(
    State(engine): State<WebhookEngine>,
    Authenticated(p): Authenticated,
    ApiJson(body): ApiJson<CreateBody>,
) -> ApiResult<impl IntoResponse> {
    let config = &engine.deps.config;
    validate_url("url", &body.url, config.allow_http_webhooks)?;
    check_events(&body.events)?;
    if let Some(d) = &body.description {
        validate::text("description", d, 500)?;
    }
    let secret = match body.secret {
        Some(s) => {
            signing::secret_key(&s).map_err(|e| Error::validation("secret", e.to_string()))?;
            s
        }
        None => signing::generate_secret(),
    };
    let retry = body
        .retry_schedule
        .as_deref()
        .map(check_schedule)
        .transpose()?;
    let headers = body
        .headers
        .as_ref()
        .map(validate_headers)
        .transpose()?
        .unwrap_or_default();
    let rate_limit = body.rate_limit.map(check_rate_limit).transpose()?;
    let now = engine.deps.store.now();
    let endpoint = WebhookEndpoint {
        id: ids::new_id("whk"),
        company_id: p.company_id,
        url: body.url,
        events: body.events,
        description: body.description,
        status: EndpointStatus::Active,
        secrets: vec![SigningSecret {
            secret: secret.clone(),
            expires_at: None,
        }],
        retry_delays_secs: retry,
        disabled_reason: None,
        failing_since: None,
        failed_deliveries: 0,
        headers,
        rate_limit,
        failing_event_at: None,
        announced_failing_since: None,
        created_at: now,
        updated_at: now,
        version: 0,
    };
    let created = engine.deps.store.create_endpoint(&endpoint).await?;
    Ok((StatusCode::CREATED, Json(view(created, Some(secret)))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<String>,
}

async fn list(
    State(engine): State<WebhookEngine>,
    Authenticated(p): Authenticated,
    ApiQuery(q): ApiQuery<Page>,
) -> ApiResult<Json<serde_json::Value>> {
    let page = engine
        .deps
        .store
        .list_endpoints(&p.company_id, q.limit, q.cursor.as_deref())
        .await?;
    let data: Vec<EndpointView> = page.items.into_iter().map(|e| view(e, None)).collect();
    Ok(Json(json!({"data": data, "next_cursor": page.next})))
}

async fn read(
    State(engine): State<WebhookEngine>,
    Authenticated(p): Authenticated,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<EndpointView>> {
    validate::identifier("id", &id)?;
    let e = engine.deps.store.get_endpoint(&p.company_id, &id).await?;
    Ok(Json(view(e, None)))
}

/// A change of an endpoint: an absent field is left as it is; `null` clears the fields that
/// can be empty (`description`; `retry_schedule`, back to the default; `rate_limit`) and is
/// a 422 naming any other (a URL, a status, a list of events have no "none").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    #[serde(default, deserialize_with = "not_null")]
    url: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    events: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Option<String>>,
    #[serde(default, deserialize_with = "not_null")]
    status: Option<EndpointStatus>,
    /// `null`: back to the default schedule.
    #[serde(default, deserialize_with = "present")]
    retry_schedule: Option<Option<String>>,
    /// Replaces the static headers (`{}` removes them all).
    #[serde(default, deserialize_with = "not_null")]
    headers: Option<BTreeMap<String, String>>,
    /// `null` removes the limit.
    #[serde(default, deserialize_with = "present")]
    rate_limit: Option<Option<u32>>,
}

async fn update(
    State(engine): State<WebhookEngine>,
    Authenticated(p): Authenticated,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateBody>,
) -> ApiResult<Json<EndpointView>> {
    validate::identifier("id", &id)?;
    if let Some(u) = &body.url {
        validate_url("url", u, engine.deps.config.allow_http_webhooks)?;
    }
    if let Some(ev) = &body.events {
        check_events(ev)?;
    }
    if let Some(Some(d)) = &body.description {
        validate::text("description", d, 500)?;
    }
    let retry = match &body.retry_schedule {
        Some(Some(text)) => Some(Some(check_schedule(text)?)),
        Some(None) => Some(None),
        None => None,
    };
    let headers = body.headers.as_ref().map(validate_headers).transpose()?;
    let rate_limit = match body.rate_limit {
        Some(Some(n)) => Some(Some(check_rate_limit(n)?)),
        other => other,
    };
    let store = &engine.deps.store;
    let mut e = store.get_endpoint(&p.company_id, &id).await?;
    if let Some(h) = headers {
        e.headers = h;
    }
    if let Some(r) = rate_limit {
        e.rate_limit = r;
    }
    if let Some(u) = body.url {
        e.url = u;
    }
    if let Some(ev) = body.events {
        e.events = ev;
    }
    if let Some(d) = body.description {
        e.description = d;
    }
    if let Some(r) = retry {
        e.retry_delays_secs = r;
    }
    if let Some(s) = body.status {
        if s == EndpointStatus::Active && e.status == EndpointStatus::Disabled {
            // Re-enabled by the tenant: start its health from scratch.
            e.disabled_reason = None;
            e.failing_since = None;
            e.failed_deliveries = 0;
        }
        if s == EndpointStatus::Disabled && e.status == EndpointStatus::Active {
            e.disabled_reason = Some("disabled by the tenant".into());
        }
        e.status = s;
    }
    store.update_endpoint(&mut e).await?;
    Ok(Json(view(e, None)))
}

async fn remove(
    State(engine): State<WebhookEngine>,
    Authenticated(p): Authenticated,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    validate::identifier("id", &id)?;
    engine
        .deps
        .store
        .delete_endpoint(&p.company_id, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn rotate(
    State(engine): State<WebhookEngine>,
    Authenticated(p): Authenticated,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<EndpointView>> {
    validate::identifier("id", &id)?;
    let store = &engine.deps.store;
    let mut e = store.get_endpoint(&p.company_id, &id).await?;
    let now = store.now();
    let secret = signing::generate_secret();
    // The previous current secret signs for 24 h more; each rotated out before it keeps the
    // rest of its own 24 h (a receiver told "a day" is not cut short by a second rotation),
    // the newest [`MAX_PREVIOUS_SECRETS`] of them.
    for (i, s) in e.secrets.iter_mut().enumerate() {
        if i == 0 || s.expires_at.is_none() {
            s.expires_at = Some(now + ROTATION_OVERLAP);
        }
    }
    e.secrets.retain(|s| s.expires_at.is_none_or(|t| t > now));
    e.secrets.truncate(MAX_PREVIOUS_SECRETS);
    e.secrets.insert(
        0,
        SigningSecret {
            secret: secret.clone(),
            expires_at: None,
        },
    );
    store.update_endpoint(&mut e).await?;
    Ok(Json(view(e, Some(secret))))
}

async fn test(
    State(engine): State<WebhookEngine>,
    Authenticated(p): Authenticated,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    validate::identifier("id", &id)?;
    let e = engine.deps.store.get_endpoint(&p.company_id, &id).await?;
    if e.status != EndpointStatus::Active {
        return Err(Error::validation("id", "the endpoint is disabled").into());
    }
    let mut payload = serde_json::Map::new();
    payload.insert("endpoint_id".into(), json!(e.id));
    payload.insert("message".into(), json!("This is a test event from Voyage."));
    let out = engine
        .dispatch(Dispatch {
            company_id: p.company_id,
            event_type: "webhook.test".into(),
            payload,
            idempotency_key: None,
            only_endpoint: Some(e.id),
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(out)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<String>,
}

#[derive(Debug, Serialize)]
struct DeliveryView {
    id: String,
    endpoint_id: String,
    event_id: String,
    event_type: String,
    status: DeliveryStatus,
    attempt_count: u32,
    last_status_code: Option<u16>,
    last_error_class: Option<String>,
    next_attempt_at: Option<DateTime<Utc>>,
    redelivery_of: Option<String>,
    created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<Vec<Attempt>>,
}

fn delivery_view(d: Delivery, attempts: Option<Vec<Attempt>>) -> DeliveryView {
    let payload = attempts
        .as_ref()
        .and_then(|_| serde_json::from_str(d.body.get()).ok());
    DeliveryView {
        // A pending delivery's due time is shown; a finished one has none.
        next_attempt_at: if d.status == DeliveryStatus::Pending {
            d.next_attempt_at
        } else {
            None
        },
        id: d.id,
        endpoint_id: d.endpoint_id,
        event_id: d.event_id,
        event_type: d.event_type,
        status: d.status,
        attempt_count: d.attempt_count,
        last_status_code: d.last_status_code,
        last_error_class: d.last_error_class,
        redelivery_of: d.redelivery_of,
        created_at: d.created_at,
        payload,
        attempts,
    }
}

async fn deliveries(
    State(engine): State<WebhookEngine>,
    Authenticated(p): Authenticated,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    validate::identifier("id", &id)?;
    let status =
        match q.status.as_deref() {
            None | Some("") => None,
            Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| {
                Error::validation("status", "must be pending, succeeded or failed")
            })?),
        };
    let store = &engine.deps.store;
    store.get_endpoint(&p.company_id, &id).await?;
    let page = store
        .list_deliveries(&p.company_id, &id, status, q.limit, q.cursor.as_deref())
        .await?;
    let data: Vec<DeliveryView> = page
        .items
        .into_iter()
        .map(|d| delivery_view(d, None))
        .collect();
    Ok(Json(json!({"data": data, "next_cursor": page.next})))
}

async fn get_delivery(
    State(engine): State<WebhookEngine>,
    Authenticated(p): Authenticated,
    ApiPath(delivery_id): ApiPath<String>,
) -> ApiResult<Json<DeliveryView>> {
    validate::identifier("delivery_id", &delivery_id)?;
    let (d, attempts) = engine
        .deps
        .store
        .delivery_with_attempts(&p.company_id, &delivery_id)
        .await?;
    Ok(Json(delivery_view(d, Some(attempts))))
}

async fn redeliver(
    State(engine): State<WebhookEngine>,
    Authenticated(p): Authenticated,
    ApiPath(delivery_id): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    validate::identifier("delivery_id", &delivery_id)?;
    let d = engine.redeliver(&p.company_id, &delivery_id).await?;
    Ok((StatusCode::ACCEPTED, Json(delivery_view(d, None))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoverBody {
    /// RFC 3339; deliveries that failed at or after this time.
    since: String,
    /// RFC 3339; deliveries that failed before this time (now when absent).
    #[serde(default)]
    until: Option<String>,
}

fn timestamp(field: &str, text: &str) -> Result<DateTime<Utc>, Error> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            Error::validation(
                field,
                "must be an RFC 3339 time with an offset, e.g. 2026-11-29T18:00:00Z",
            )
        })
}

/// Re-sends every delivery of the endpoint that failed in `[since, until)` as new
/// deliveries: 202 with how many.
async fn recover(
    State(engine): State<WebhookEngine>,
    Authenticated(p): Authenticated,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<RecoverBody>,
) -> ApiResult<impl IntoResponse> {
    validate::identifier("id", &id)?;
    let since = timestamp("since", &body.since)?;
    let until = body
        .until
        .as_deref()
        .map(|u| timestamp("until", u))
        .transpose()?;
    let out = engine.recover(&p.company_id, &id, since, until).await?;
    Ok((StatusCode::ACCEPTED, Json(out)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchBody {
    pub company_id: String,
    pub event: String,
    pub payload: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

impl DispatchBody {
    /// Validates and converts (also used for platform events from the bus).
    pub fn into_dispatch(self) -> Result<Dispatch, Error> {
        validate::identifier("company_id", &self.company_id)?;
        validate_event_type("event", &self.event)?;
        if let Some(k) = &self.idempotency_key {
            if k.is_empty() || k.len() > 255 || k.chars().any(|c| c.is_control() || c == '#') {
                return Err(Error::validation(
                    "idempotency_key",
                    "must be 1-255 characters, without control characters or #",
                ));
            }
        }
        Ok(Dispatch {
            company_id: self.company_id,
            event_type: self.event,
            payload: self.payload,
            idempotency_key: self.idempotency_key,
            only_endpoint: None,
        })
    }
}

/// Every event type with its description and the JSON Schema of its payload (the files
/// under `schemas/events/`, compiled in).
async fn event_types(Authenticated(_): Authenticated) -> Json<serde_json::Value> {
    Json(json!({"data": voyage_core::webhooks::schemas::catalogue()}))
}

/// Internal: the platform dispatches an event for a company.
async fn dispatch(
    State(engine): State<WebhookEngine>,
    Internal(_): Internal,
    ApiJson(body): ApiJson<DispatchBody>,
) -> ApiResult<impl IntoResponse> {
    // A `session.*` event gets its `sequence` in the commit of its deliveries; what goes out
    // (with it) matches its published schema.
    let out = engine.dispatch_stamped(body.into_dispatch()?, true).await?;
    Ok((StatusCode::ACCEPTED, Json(out)))
}
