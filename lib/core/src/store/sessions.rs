use chrono::{DateTime, Utc};

use super::{classify_cas_failure, company_pk, decode, encode, Listed, Store};
use crate::model::Session;
use crate::ports::{Condition, Index, Item, Key, Query, StoreError};
use crate::{Error, Result};

pub(crate) fn key_of(company: &str, id: &str) -> Key {
    Key::new(company_pk(company), format!("SESS#{id}"))
}

const PENDING_PK: &str = "PENDCANCEL";
const OUTBOX_PK: &str = "OUTBOX";

fn staff_index(company: &str, staff: &str) -> String {
    format!("CO#{company}#STAFF#{staff}")
}

/// A session is kept this long after it ends, then expires (TTL): history for support, and
/// late platform retries still ordered by version, without every past session staying
/// forever.
pub const RETENTION_AFTER_END_DAYS: i64 = 30;

pub(crate) fn item_of(s: &Session, version: u64) -> Result<Item> {
    let mut item = Item::new(key_of(&s.company_id, &s.id), encode(s)?);
    item.version = version;
    item.expires_at = Some((s.end + chrono::Duration::days(RETENTION_AFTER_END_DAYS)).timestamp());
    item.gsi1 = Some(Key::new(
        staff_index(&s.company_id, &s.staff_id),
        format!("SESS#{}#{}", s.start.format("%Y-%m-%dT%H:%M:%SZ"), s.id),
    ));
    // A sparse index for the sweeps: sessions whose outbox is not yet published (first:
    // the relay publishes them, after which they fall back to the next case), then pending
    // cancellations by due time.
    item.gsi2 = if s.outbox.is_empty() {
        None
    } else {
        Some(Key::new(
            OUTBOX_PK,
            format!(
                "{}#{}#{}",
                s.updated_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                s.company_id,
                s.id
            ),
        ))
    }
    .or_else(|| {
        s.pending.as_ref().map(|p| {
            Key::new(
                PENDING_PK,
                format!(
                    "{}#{}#{}",
                    p.due_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    s.company_id,
                    s.id
                ),
            )
        })
    });
    Ok(item)
}

impl Store {
    pub async fn create_session(&self, s: &Session) -> Result<Session> {
        let mut s = s.clone();
        s.version = 1;
        match self.table.put(item_of(&s, 1)?, Condition::NotExists).await {
            Ok(()) => Ok(s),
            Err(StoreError::ConditionFailed) => Err(Error::Duplicate {
                entity: "session",
                id: s.id.clone(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_session(&self, company: &str, id: &str) -> Result<Session> {
        match self.table.get(&key_of(company, id)).await? {
            Some(item) => decode(&item),
            None => Err(Error::not_found("session", id)),
        }
    }

    pub async fn find_session(&self, company: &str, id: &str) -> Result<Option<Session>> {
        match self.get_session(company, id).await {
            Ok(s) => Ok(Some(s)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Compare-and-set on `s.version`; on success `s.version` is the new version.
    pub async fn update_session(&self, s: &mut Session) -> Result<()> {
        let expected = s.version;
        let mut next = s.clone();
        next.version = expected + 1;
        let item = item_of(&next, expected + 1)?;
        let key = item.key.clone();
        match self.table.put(item, Condition::Version(expected)).await {
            Ok(()) => {
                *s = next;
                Ok(())
            }
            Err(StoreError::ConditionFailed) => {
                Err(classify_cas_failure(self.table(), &key, "session", &s.id).await)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Sessions by id, in one batch read per 100; missing ones are left out.
    pub async fn get_sessions(
        &self,
        company: &str,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, Session>> {
        let mut keys: Vec<Key> = ids.iter().map(|id| key_of(company, id)).collect();
        keys.sort();
        keys.dedup();
        let mut out = std::collections::HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(crate::ports::table::BATCH_GET_LIMIT) {
            for item in self.table.batch_get(chunk).await? {
                let session: Session = decode(&item)?;
                out.insert(session.id.clone(), session);
            }
        }
        Ok(out)
    }

    /// One page of the sessions whose pending cancellation is due at `until`, oldest first,
    /// confirmed against their records (the index may lag); `cursor` is the `next` of the
    /// page before, so a sweep moves past sessions it could not commit.
    pub async fn due_pending_cancellations(
        &self,
        until: DateTime<Utc>,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<Listed<Session>> {
        let mut q = Query::prefix(PENDING_PK, "", limit.max(1));
        q.upper = Some(format!("{}~", until.format("%Y-%m-%dT%H:%M:%S%.3fZ")));
        q.cursor = cursor;
        let page = self.table.query_index(Index::Gsi2, q).await?;
        let keys: Vec<Key> = page.items.into_iter().map(|i| i.key).collect();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(crate::ports::table::BATCH_GET_LIMIT) {
            for fresh in self.table.batch_get(chunk).await? {
                let s: Session = decode(&fresh)?;
                if s.status == crate::model::SessionStatus::PendingCancellation
                    && s.pending.as_ref().is_some_and(|p| p.due_at <= until)
                {
                    out.push(s);
                }
            }
        }
        out.sort_by_key(|s| s.pending.as_ref().map(|p| p.due_at));
        Ok(Listed {
            items: out,
            next: page.next,
        })
    }

    /// Sessions whose outbox holds events not yet on the bus, oldest change first,
    /// confirmed against their records (the index may lag).
    pub async fn sessions_with_outbox(&self, limit: usize) -> Result<Vec<Session>> {
        let q = Query::prefix(OUTBOX_PK, "", limit.max(1));
        let page = self.table.query_index(Index::Gsi2, q).await?;
        let keys: Vec<Key> = page.items.into_iter().map(|i| i.key).collect();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(crate::ports::table::BATCH_GET_LIMIT) {
            for fresh in self.table.batch_get(chunk).await? {
                let s: Session = decode(&fresh)?;
                if !s.outbox.is_empty() {
                    out.push(s);
                }
            }
        }
        out.sort_by_key(|s| s.updated_at);
        Ok(out)
    }

    /// A staff member's sessions starting in `[from, to)`, ordered by start: an index range
    /// read of exactly that range (the sessions before it are not read).
    pub async fn sessions_for_staff(
        &self,
        company: &str,
        staff: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Session>> {
        let q = Query::between(
            staff_index(company, staff),
            "SESS#",
            format!("SESS#{}", from.format("%Y-%m-%dT%H:%M:%SZ")),
            // Keys are stamped to the second: a bound a second later keeps a session starting
            // within `to`'s second (the exact test is below).
            format!(
                "SESS#{}",
                (to + chrono::Duration::seconds(1)).format("%Y-%m-%dT%H:%M:%SZ")
            ),
            100,
        );
        let sessions: Vec<Session> = self.query_all(Some(Index::Gsi1), q).await?;
        Ok(sessions
            .into_iter()
            .filter(|s| s.start >= from && s.start < to)
            .collect())
    }
}
