//! Graph subscriptions on staff calendars: created with the connection, renewed before they
//! lapse, recreated when lost, deleted with the connection.
//!
//! Each subscription carries a random `clientState`, stored on the connection, that every
//! notification must echo (checked in constant time by the inbound function). Notifications
//! go to `VOYAGE_PUBLIC_BASE_URL/v1/exchange/notifications`, lifecycle events to
//! `.../v1/exchange/lifecycle`.

use chrono::{DateTime, Duration, Utc};
use futures::stream::{self, StreamExt};

use super::api::{CalendarRef, GraphError, NewSubscription};
use super::{credentials, GraphCredentials};
use crate::deps::Deps;
use crate::model::{Connection, ConnectionStatus, PushChannel};

use crate::{ids, Error, Result};

pub const NOTIFICATION_PATH: &str = "/v1/exchange/notifications";
pub const LIFECYCLE_PATH: &str = "/v1/exchange/lifecycle";
/// Graph's maximum for Outlook events is 10,080 minutes; we ask for ten minutes less so a
/// little clock skew never makes Graph refuse the request.
pub const SUBSCRIPTION_MINUTES: i64 = 10_070;
/// The renewal job renews subscriptions that expire within this window.
pub const RENEWAL_WINDOW_HOURS: i64 = 24;
/// A subscription is renewed this long after it was made or last renewed, though it lasts a
/// week: Graph may drop one (`subscriptionRemoved`) and the lifecycle notification that says
/// so may be lost; the renewal's 404 finds it within a day instead of a week, and the round
/// queued with the new one ([`RESUBSCRIBED`]) reads what happened meanwhile. One call per
/// connection a day.
pub const RENEW_AFTER_HOURS: i64 = 24;
/// The reason of the delta round queued when a renewal finds the subscription gone.
pub const RESUBSCRIBED: &str = "resubscribed";

pub fn calendar_of(c: &Connection) -> CalendarRef {
    CalendarRef {
        user: c.staff_email.clone(),
        calendar: c.calendar_id.clone(),
    }
}

fn new_client_state() -> String {
    // 32 random bytes as hex: 64 characters, within Graph's 128.
    hex_encode(&ids::random_bytes::<32>())
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a subscribe or renew attempt did, for job reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Created,
    Renewed,
    Failed,
    NotDue,
}

/// Puts a fresh subscription on the connection (replacing any old one) and records the
/// result on it: `active`, or `error` with the reason. Store errors are returned; provider
/// errors are recorded, not returned.
pub async fn subscribe(deps: &Deps, conn: &mut Connection) -> Result<Renewal> {
    let result = create(deps, conn).await;
    let old = conn.channel.clone();
    let outcome = match &result {
        Ok(_) => Renewal::Created,
        Err(reason) => {
            tracing::warn!(connection = %conn.id, %reason, "graph subscription failed");
            Renewal::Failed
        }
    };
    let apply = |c: &mut Connection| match &result {
        Ok(channel) => {
            c.channel = Some(channel.clone());
            c.status = ConnectionStatus::Active;
            c.last_error = None;
        }
        Err(reason) => {
            c.status = ConnectionStatus::Error;
            c.last_error = Some(format!("subscription: {reason}"));
        }
    };
    let recorded = record_channel(deps, conn, old.as_ref(), apply).await;
    if !matches!(recorded, Ok(true)) {
        // Not recorded (another writer replaced the subscription meanwhile, the connection
        // is gone, or the store failed): the new subscription would be an orphan Graph
        // notifies for a week, so it goes; the next renewal run makes another if one is
        // still needed (review 10, finding 2).
        if let Ok(channel) = &result {
            remove_quietly(deps, &conn.company_id, &channel.id).await;
        }
        return recorded.map(|_| Renewal::NotDue);
    }
    if outcome == Renewal::Created {
        if let Some(old) = old {
            remove_quietly(deps, &conn.company_id, &old.id).await;
        }
    }
    Ok(outcome)
}

/// Writes `apply`'s change of the connection. A lost race with another write of it (a round
/// recording its sync, an outbound write refreshing `last_sync_at`) is read again and the
/// change applied to the fresh copy, as long as its subscription is still `expected` (by
/// id): `false` when another writer replaced it meanwhile, or the connection is gone.
async fn record_channel(
    deps: &Deps,
    conn: &mut Connection,
    expected: Option<&PushChannel>,
    apply: impl Fn(&mut Connection),
) -> Result<bool> {
    const ATTEMPTS: usize = 4;
    let expected = expected.map(|c| c.id.clone());
    for attempt in 1..=ATTEMPTS {
        apply(conn);
        match deps.store.update_connection(conn).await {
            Ok(()) => return Ok(true),
            Err(Error::Conflict { .. }) if attempt < ATTEMPTS => {
                let fresh = match deps.store.get_connection(&conn.company_id, &conn.id).await {
                    Ok(c) => c,
                    Err(Error::NotFound { .. }) => return Ok(false),
                    Err(e) => return Err(e),
                };
                if fresh.channel.as_ref().map(|c| &c.id) != expected.as_ref() {
                    return Ok(false);
                }
                *conn = fresh;
            }
            Err(Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// [`subscribe`] in place of a subscription that was lost or never made: when the new one
/// is made, a delta round (reason [`RESUBSCRIBED`]) reads what no notification told while
/// there was none.
async fn resubscribe(deps: &Deps, conn: &mut Connection) -> Result<Renewal> {
    // The lost subscription stays recorded until the new one replaces it (a lost race is
    // checked against it), and is then removed (Graph answers 404: nothing to do).
    let renewal = subscribe(deps, conn).await?;
    if renewal == Renewal::Created {
        let request = super::push::SyncRequest::for_connection(conn, RESUBSCRIBED);
        if let Err(e) = super::push::enqueue(deps, &request).await {
            tracing::warn!(connection = %conn.id, error = %e, "catch-up round not queued; the hourly re-base round reads the calendar");
        }
    }
    Ok(renewal)
}

async fn create(deps: &Deps, conn: &Connection) -> std::result::Result<PushChannel, String> {
    let base = deps
        .config
        .public_base_url
        .as_deref()
        .ok_or("VOYAGE_PUBLIC_BASE_URL is not set, so Graph has no notification URL to call")?;
    let creds = load_credentials(deps, &conn.company_id)
        .await
        .map_err(|e| e.to_string())?;
    let graph = deps.graph().map_err(|e| e.to_string())?;
    let client_state = new_client_state();
    let expires_at = deps.store.now() + Duration::minutes(SUBSCRIPTION_MINUTES);
    let calendar = calendar_of(conn);
    let sub = NewSubscription {
        resource: calendar.events_path(),
        change_types: "created,updated,deleted".into(),
        notification_url: format!("{base}{NOTIFICATION_PATH}"),
        lifecycle_url: format!("{base}{LIFECYCLE_PATH}"),
        expires_at,
        client_state: client_state.clone(),
    };
    let created = graph
        .create_subscription(&creds, &sub)
        .await
        .map_err(|e| e.to_string())?;
    Ok(PushChannel {
        id: created.id,
        resource_id: None,
        expires_at: created.expires_at,
        secret: client_state,
        renewed_at: Some(deps.store.now()),
    })
}

async fn load_credentials(deps: &Deps, company: &str) -> Result<GraphCredentials> {
    credentials::load(deps, company)
        .await?
        .ok_or_else(|| Error::validation("credentials", credentials::MISSING))
}

/// Renews the connection's subscription if it is due (missing, failed, expiring within the
/// renewal window, or renewed [`RENEW_AFTER_HOURS`] ago); recreates it when Graph no longer
/// knows it.
pub async fn renew_if_due(
    deps: &Deps,
    conn: &mut Connection,
    now: DateTime<Utc>,
) -> Result<Renewal> {
    if conn.status == ConnectionStatus::Disabled {
        return Ok(Renewal::NotDue);
    }
    let due = conn.status != ConnectionStatus::Active
        || conn.channel.as_ref().is_none_or(|c| {
            // A record from before `renewed_at` was kept: renewed when its expiry says it
            // was (not all at the first run after an upgrade).
            let renewed = c
                .renewed_at
                .unwrap_or(c.expires_at - Duration::minutes(SUBSCRIPTION_MINUTES));
            c.expires_at <= now + Duration::hours(RENEWAL_WINDOW_HOURS)
                || renewed <= now - Duration::hours(RENEW_AFTER_HOURS)
        });
    if !due {
        return Ok(Renewal::NotDue);
    }
    renew(deps, conn).await
}

/// Extends the subscription to the maximum, or recreates it when it is missing or gone.
pub async fn renew(deps: &Deps, conn: &mut Connection) -> Result<Renewal> {
    let Some(channel) = conn.channel.clone() else {
        return resubscribe(deps, conn).await;
    };
    let creds = match load_credentials(deps, &conn.company_id).await {
        Ok(c) => c,
        Err(_) => return subscribe(deps, conn).await,
    };
    let expires_at = deps.store.now() + Duration::minutes(SUBSCRIPTION_MINUTES);
    match deps
        .graph()?
        .renew_subscription(&creds, &channel.id, expires_at)
        .await
    {
        Ok(sub) => {
            let renewed = PushChannel {
                expires_at: sub.expires_at,
                renewed_at: Some(deps.store.now()),
                ..channel.clone()
            };
            let apply = |c: &mut Connection| {
                c.channel = Some(renewed.clone());
                c.status = ConnectionStatus::Active;
                c.last_error = None;
            };
            // Not recorded when another writer replaced the subscription meanwhile: theirs
            // stands (this one expires, or the replacement removed it).
            Ok(
                match record_channel(deps, conn, Some(&channel), apply).await? {
                    true => Renewal::Renewed,
                    false => Renewal::NotDue,
                },
            )
        }
        // Expired or removed on Graph's side: a new one (with a new clientState), and a
        // delta round for what no notification told while there was none.
        Err(GraphError::NotFound) => resubscribe(deps, conn).await,
        // A refusal or an outage while the subscription still has more than the renewal
        // window to live: nothing is lost yet, the next run tries again; the connection
        // keeps its status (renewals come daily: a passing 503 must not show `error`).
        Err(e)
            if conn.status == ConnectionStatus::Active
                && channel.expires_at
                    > deps.store.now() + Duration::hours(RENEWAL_WINDOW_HOURS) =>
        {
            tracing::warn!(connection = %conn.id, error = %e, "subscription renewal failed; tried again at the next run");
            Ok(Renewal::Failed)
        }
        Err(e) => {
            conn.status = ConnectionStatus::Error;
            conn.last_error = Some(format!("subscription renewal: {e}"));
            deps.store.update_connection(conn).await?;
            Ok(Renewal::Failed)
        }
    }
}

/// Deletes a subscription on Graph, logging (not failing) when Graph cannot: an orphan
/// subscription expires by itself within a week, and its notifications no longer match any
/// connection, so they are dropped.
pub async fn remove_quietly(deps: &Deps, company: &str, subscription_id: &str) {
    let result = async {
        let creds = load_credentials(deps, company).await?;
        match deps
            .graph()?
            .delete_subscription(&creds, subscription_id)
            .await
        {
            Ok(()) | Err(GraphError::NotFound) => Ok(()),
            Err(e) => Err(Error::Unavailable(e.to_string())),
        }
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(subscription = subscription_id, error = %e, "could not delete graph subscription");
    }
}

/// Connections renewed at once by [`renew_all`] (each a different mailbox, so Graph's
/// per-mailbox limits are not shared; a daily renewal of every connection stays well inside
/// the scheduled function's time).
pub const RENEW_CONCURRENCY: usize = 8;

/// One connection of the renewal job's listing: read again first (the listing comes from an
/// index, and a busy connection changes between the page and its turn: a renewal recorded
/// on a stale copy loses its race after Graph made the subscription), then renewed if due.
async fn renew_listed(deps: &Deps, listed: Connection) -> Result<Renewal> {
    let mut conn = match deps
        .store
        .get_connection(&listed.company_id, &listed.id)
        .await
    {
        Ok(c) => c,
        Err(Error::NotFound { .. }) => return Ok(Renewal::NotDue),
        Err(e) => return Err(e),
    };
    let now = deps.store.now();
    let outcome = renew_if_due(deps, &mut conn, now).await;
    if let Err(e) = &outcome {
        tracing::warn!(connection = %conn.id, error = %e, "renewal failed");
    }
    outcome
}

/// The renewal job for Exchange: every connection, independently.
pub async fn renew_all(deps: &Deps) -> Result<crate::jobs::JobReport> {
    let mut report = crate::jobs::JobReport {
        job: "renew-subscriptions".into(),
        ..Default::default()
    };
    let mut cursor = None;
    loop {
        let page = deps
            .store
            .all_connections(crate::model::Provider::Exchange, cursor)
            .await?;
        let outcomes: Vec<Result<Renewal>> = stream::iter(page.items)
            .map(|listed| renew_listed(deps, listed))
            .buffer_unordered(RENEW_CONCURRENCY)
            .collect()
            .await;
        for outcome in outcomes {
            match outcome {
                Ok(Renewal::NotDue) => {}
                Ok(Renewal::Created | Renewal::Renewed) => report.processed += 1,
                Ok(Renewal::Failed) => report.failed += 1,
                Err(_) => report.failed += 1,
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(report)
}
