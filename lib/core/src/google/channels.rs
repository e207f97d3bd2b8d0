//! Google push channels: created for a new connection, replaced before they expire (the
//! new one first, then `channels.stop` on the old one), stopped with the connection.

use chrono::Duration;

use super::api::{GoogleError, WatchRequest};
use super::credentials;
use crate::deps::Deps;
use crate::exchange::channels::{Renewal, RENEWAL_WINDOW_HOURS};
use crate::model::{Connection, ConnectionStatus, Provider, PushChannel};
use crate::{ids, Result};

pub const NOTIFICATION_PATH: &str = "/v1/google-sync/notifications";
/// Google's default and longest channel life for calendar events: 7 days.
pub const CHANNEL_TTL_SECONDS: u64 = 604_800;

/// Creates a channel for the connection (replacing any old one) and records the result:
/// `active`, or `error` with the reason.
pub async fn watch(deps: &Deps, conn: &mut Connection) -> Result<Renewal> {
    let old = conn.channel.clone();
    let outcome = match create(deps, conn).await {
        Ok(channel) => {
            conn.channel = Some(channel);
            if conn.status != ConnectionStatus::Disabled {
                conn.status = ConnectionStatus::Active;
            }
            conn.last_error = None;
            Renewal::Created
        }
        Err(reason) => {
            tracing::warn!(connection = %conn.id, %reason, "google channel not created");
            conn.status = ConnectionStatus::Error;
            conn.last_error = Some(format!("push channel: {reason}"));
            Renewal::Failed
        }
    };
    deps.store.update_connection(conn).await?;
    if outcome == Renewal::Created {
        if let Some(old) = old {
            stop_quietly(deps, conn, &old).await;
        }
    }
    Ok(outcome)
}

async fn create(deps: &Deps, conn: &Connection) -> std::result::Result<PushChannel, String> {
    let base = deps
        .config
        .public_base_url
        .as_deref()
        .ok_or("VOYAGE_PUBLIC_BASE_URL is not set, so Google has no address to push to")?;
    let account = credentials::load(deps, &conn.company_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or(credentials::MISSING)?;
    let calendar_id = conn
        .calendar_id
        .clone()
        .ok_or("the connection has no calendar id")?;
    let token: String = ids::random_bytes::<32>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let request = WatchRequest {
        calendar_id,
        channel_id: ids::new_id("gch"),
        token: token.clone(),
        address: format!("{base}{NOTIFICATION_PATH}"),
        ttl_seconds: CHANNEL_TTL_SECONDS,
    };
    let channel = deps
        .google()
        .map_err(|e| e.to_string())?
        .watch(&account, &conn.staff_email, &request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(PushChannel {
        renewed_at: None,
        id: channel.id,
        resource_id: Some(channel.resource_id),
        expires_at: channel.expires_at,
        secret: token,
    })
}

/// Stops a channel, logging (not failing) when Google cannot: a channel left running
/// expires by itself, and its pushes no longer match any connection.
pub async fn stop_quietly(deps: &Deps, conn: &Connection, channel: &PushChannel) {
    let result = async {
        let account = credentials::load(deps, &conn.company_id)
            .await?
            .ok_or_else(|| crate::Error::validation("credentials", credentials::MISSING))?;
        let resource = channel.resource_id.clone().unwrap_or_default();
        match deps
            .google()?
            .stop_channel(&account, &conn.staff_email, &channel.id, &resource)
            .await
        {
            Ok(()) | Err(GoogleError::NotFound) => Ok(()),
            Err(e) => Err(crate::Error::Unavailable(e.to_string())),
        }
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(channel = %channel.id, error = %e, "could not stop google channel");
    }
}

/// The renewal job for Google: a channel for every pending connection, or one whose channel
/// is missing, failed or expires within the renewal window.
pub async fn renew_all(deps: &Deps) -> Result<crate::jobs::JobReport> {
    let mut report = crate::jobs::JobReport {
        job: "renew-subscriptions".into(),
        ..Default::default()
    };
    let mut cursor = None;
    loop {
        let page = deps.store.all_connections(Provider::Google, cursor).await?;
        for mut conn in page.items {
            let now = deps.store.now();
            let due = conn.status != ConnectionStatus::Disabled
                && (conn.status != ConnectionStatus::Active
                    || conn.channel.as_ref().is_none_or(|c| {
                        c.expires_at <= now + Duration::hours(RENEWAL_WINDOW_HOURS)
                    }));
            if !due {
                continue;
            }
            match watch(deps, &mut conn).await {
                Ok(Renewal::Created | Renewal::Renewed) => report.processed += 1,
                Ok(_) => report.failed += 1,
                Err(e) => {
                    tracing::warn!(connection = %conn.id, error = %e, "google channel renewal failed");
                    report.failed += 1;
                }
            }
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    Ok(report)
}
