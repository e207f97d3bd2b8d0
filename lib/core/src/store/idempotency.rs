use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{company_pk, decode, encode, Store};
use crate::ports::{Condition, Item, Key, StoreError};
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct IdempotencyRecord {
    created_at: DateTime<Utc>,
    /// The answer given the first time; absent while the first request is still running.
    response: Option<serde_json::Value>,
}

/// The outcome of claiming an idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// First use: do the work, then [`Store::complete_idempotent`].
    Fresh,
    /// Seen before: answer this again and do nothing.
    Replay(serde_json::Value),
    /// Seen before and still being worked on by the first request.
    InFlight,
}

fn key_of(company: &str, scope: &str, key: &str) -> Key {
    Key::new(company_pk(company), format!("IDEM#{scope}#{key}"))
}

impl Store {
    /// Claims `key` within `scope` while its first request runs. The claim lasts `lease`:
    /// short, so that if the process dies before [`Store::complete_idempotent`], a retry
    /// after the lease does the work again (at least once) instead of being refused for the
    /// whole remembering period. A record past its expiry counts as absent.
    pub async fn claim_idempotent(
        &self,
        company: &str,
        scope: &str,
        key: &str,
        lease: chrono::Duration,
    ) -> Result<Claim> {
        let now = self.now();
        let record = IdempotencyRecord {
            created_at: now,
            response: None,
        };
        let mut item = Item::new(key_of(company, scope, key), encode(&record)?);
        item.expires_at = Some((now + lease).timestamp());
        match self.table.put(item.clone(), Condition::NotExists).await {
            Ok(()) => return Ok(Claim::Fresh),
            Err(StoreError::ConditionFailed) => {}
            Err(e) => return Err(e.into()),
        }
        let Some(existing) = self.table.get(&item.key).await? else {
            // Deleted between our write and read: treat as a race lost to a purge; retryable.
            return Err(Error::Conflict {
                entity: "idempotency key",
                id: key.to_string(),
            });
        };
        if !self.live(&existing) {
            item.version = existing.version + 1;
            return match self
                .table
                .put(item, Condition::Version(existing.version))
                .await
            {
                Ok(()) => Ok(Claim::Fresh),
                Err(StoreError::ConditionFailed) => Err(Error::Conflict {
                    entity: "idempotency key",
                    id: key.to_string(),
                }),
                Err(e) => Err(e.into()),
            };
        }
        let record: IdempotencyRecord = decode(&existing)?;
        Ok(match record.response {
            Some(r) => Claim::Replay(r),
            None => Claim::InFlight,
        })
    }

    /// Records the answer to replay for `key`, remembered for `ttl`.
    pub async fn complete_idempotent(
        &self,
        company: &str,
        scope: &str,
        key: &str,
        ttl: chrono::Duration,
        response: serde_json::Value,
    ) -> Result<()> {
        let now = self.now();
        let record = IdempotencyRecord {
            created_at: now,
            response: Some(response),
        };
        let mut item = Item::new(key_of(company, scope, key), encode(&record)?);
        item.expires_at = Some((now + ttl).timestamp());
        self.table.put(item, Condition::None).await?;
        Ok(())
    }

    /// Releases a claim whose work failed, so a retry may try again.
    pub async fn abandon_idempotent(&self, company: &str, scope: &str, key: &str) -> Result<()> {
        self.table
            .delete(&key_of(company, scope, key), Condition::None)
            .await?;
        Ok(())
    }
}
