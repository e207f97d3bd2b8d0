//! Google's push notifications: authenticated by the channel token (constant time),
//! answered at once; `exists`/`not_exists` queue a sync of that connection, with duplicate
//! message numbers dropped and bursts coalesced into one sync.

use serde::{Deserialize, Serialize};

use crate::auth::secrets_equal;
use crate::deps::{Deps, QueueName};
use crate::model::Provider;
use crate::ports::queue::{send_after, Envelope};
use crate::store::Claim;
use crate::{Error, Result};

pub const SYNC_KIND: &str = "google.sync";
/// Pushes within this window share one sync, which runs when the window ends (so it sees
/// every change the window's pushes announced).
pub const COALESCE_SECONDS: i64 = 2;
/// How long a message number is remembered for duplicate detection.
const DEDUP_MINUTES: i64 = 60;

/// The headers of a push (names matched case-insensitively by the HTTP layer).
#[derive(Debug, Clone, Default)]
pub struct Push {
    pub channel_id: Option<String>,
    pub token: Option<String>,
    pub resource_state: Option<String>,
    pub message_number: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushOutcome {
    /// The channel's first message (`sync`): nothing to do.
    Acknowledged,
    /// A sync was queued.
    Queued,
    /// A sync is already queued for this burst.
    Coalesced,
    /// This message number was seen before.
    Duplicate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    pub company_id: String,
    pub connection_id: String,
}

pub async fn accept(deps: &Deps, push: &Push) -> Result<PushOutcome> {
    let channel_id = push
        .channel_id
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Error::BadRequest {
            status: 400,
            code: "missing_channel",
            message: "X-Goog-Channel-ID is required".into(),
        })?;
    let unknown = || Error::BadRequest {
        status: 404,
        code: "unknown_channel",
        message: "no connection has this channel".into(),
    };
    let conn = deps
        .store
        .connection_by_channel(channel_id)
        .await?
        .filter(|c| c.provider == Provider::Google)
        .ok_or_else(unknown)?;
    let channel = conn.channel.as_ref().ok_or_else(unknown)?;
    if !secrets_equal(&channel.secret, push.token.as_deref().unwrap_or_default()) {
        tracing::warn!(
            channel = channel_id,
            "google push with a wrong channel token refused"
        );
        return Err(Error::BadRequest {
            status: 401,
            code: "unauthorized",
            message: "X-Goog-Channel-Token does not match the channel's token".into(),
        });
    }
    match push
        .resource_state
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("sync") => return Ok(PushOutcome::Acknowledged),
        Some("exists") | Some("not_exists") => {}
        other => {
            return Err(Error::validation(
                "X-Goog-Resource-State",
                format!(
                    "`{}` is not sync, exists or not_exists",
                    other.unwrap_or("")
                ),
            ))
        }
    }
    if let Some(number) = push.message_number.as_deref() {
        let key = format!("{channel_id}:{number}");
        match deps
            .store
            .claim_idempotent(
                &conn.company_id,
                "gpush",
                &key,
                chrono::Duration::minutes(DEDUP_MINUTES),
            )
            .await
        {
            Ok(Claim::Fresh) => {}
            Ok(_) | Err(Error::Conflict { .. }) => return Ok(PushOutcome::Duplicate),
            Err(e) => return Err(e),
        }
    }
    let window = chrono::Duration::seconds(COALESCE_SECONDS);
    match deps
        .store
        .claim_idempotent(&conn.company_id, "gsync", &conn.id, window)
        .await
    {
        Ok(Claim::Fresh) => {}
        Ok(_) | Err(Error::Conflict { .. }) => return Ok(PushOutcome::Coalesced),
        Err(e) => return Err(e),
    }
    if let Err(e) = queue_sync(
        deps,
        &conn.company_id,
        &conn.id,
        std::time::Duration::from_secs(COALESCE_SECONDS as u64),
    )
    .await
    {
        // Nothing was queued: the claims go, so Google's resend of this push (same message
        // number, answered 5xx now) queues the sync instead of being taken for a duplicate
        // (the change would wait for the five-minute job). Best effort: a claim left
        // behind only costs that wait.
        let claims = [
            Some(("gsync", conn.id.clone())),
            push.message_number
                .as_deref()
                .map(|n| ("gpush", format!("{channel_id}:{n}"))),
        ];
        for (scope, key) in claims.into_iter().flatten() {
            if let Err(e) = deps
                .store
                .abandon_idempotent(&conn.company_id, scope, &key)
                .await
            {
                tracing::warn!(scope, error = %e, "google push claim not released");
            }
        }
        return Err(e);
    }
    Ok(PushOutcome::Queued)
}

/// Queues a sync of one connection on the google-sync queue, handled no earlier than
/// `delay` from now: a push's coalesced sync, a sync's follow-up after its time budget, the
/// five-minute job's and `POST /v1/google-sync`'s fan-out.
pub async fn queue_sync(
    deps: &Deps,
    company_id: &str,
    connection_id: &str,
    delay: std::time::Duration,
) -> Result<()> {
    let envelope = Envelope {
        kind: SYNC_KIND.into(),
        payload: serde_json::to_value(SyncRequest {
            company_id: company_id.to_string(),
            connection_id: connection_id.to_string(),
        })
        .map_err(|e| Error::Internal(e.to_string()))?,
        not_before: None,
    };
    send_after(
        deps.queue(QueueName::GoogleSync)?,
        deps.store.clock(),
        envelope,
        delay,
    )
    .await
    .map_err(|e| Error::Unavailable(e.to_string()))
}
