use chrono::{DateTime, Utc};

use super::{classify_cas_failure, company_pk, decode, encode, Store};
use crate::model::Session;
use crate::ports::{Condition, Index, Item, Key, Query, StoreError};
use crate::{Error, Result};

pub(crate) fn key_of(company: &str, id: &str) -> Key {
    Key::new(company_pk(company), format!("SESS#{id}"))
}

fn staff_index(company: &str, staff: &str) -> String {
    format!("CO#{company}#STAFF#{staff}")
}

pub(crate) fn item_of(s: &Session, version: u64) -> Result<Item> {
    let mut item = Item::new(key_of(&s.company_id, &s.id), encode(s)?);
    item.version = version;
    item.gsi1 = Some(Key::new(
        staff_index(&s.company_id, &s.staff_id),
        format!("SESS#{}#{}", s.start.format("%Y-%m-%dT%H:%M:%SZ"), s.id),
    ));
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

    /// A staff member's sessions starting in `[from, to)`, ordered by start.
    pub async fn sessions_for_staff(
        &self,
        company: &str,
        staff: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Session>> {
        let mut q = Query::prefix(staff_index(company, staff), "SESS#", 100);
        q.upper = Some(format!("SESS#{}", to.format("%Y-%m-%dT%H:%M:%SZ")));
        let sessions: Vec<Session> = self.query_all(Some(Index::Gsi1), q).await?;
        Ok(sessions
            .into_iter()
            .filter(|s| s.start >= from && s.start < to)
            .collect())
    }
}
