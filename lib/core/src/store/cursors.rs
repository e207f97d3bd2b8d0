use super::{company_pk, decode, encode, Store};
use crate::model::DeltaCursor;
use crate::ports::{Condition, Item, Key, StoreError};
use crate::{Error, Result};

fn key_of(company: &str, connection: &str) -> Key {
    Key::new(company_pk(company), format!("CURSOR#{connection}"))
}

impl Store {
    pub async fn get_cursor(&self, company: &str, connection: &str) -> Result<Option<DeltaCursor>> {
        match self.table.get(&key_of(company, connection)).await? {
            Some(item) => Ok(Some(decode(&item)?)),
            None => Ok(None),
        }
    }

    /// Stores the cursor if nobody advanced it since it was read: `version` 0 means "there
    /// was none", anything else must match. A lost race is [`Error::Conflict`], and the
    /// caller's round is then replayed from the winner's cursor rather than skipping pages.
    pub async fn save_cursor(&self, cursor: &mut DeltaCursor) -> Result<()> {
        let expected = cursor.version;
        let condition = if expected == 0 {
            Condition::NotExists
        } else {
            Condition::Version(expected)
        };
        let mut next = cursor.clone();
        next.version = expected + 1;
        let mut item = Item::new(
            key_of(&cursor.company_id, &cursor.connection_id),
            encode(&next)?,
        );
        item.version = expected + 1;
        match self.table.put(item, condition).await {
            Ok(()) => {
                *cursor = next;
                Ok(())
            }
            Err(StoreError::ConditionFailed) => Err(Error::Conflict {
                entity: "cursor",
                id: cursor.connection_id.clone(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Forgets the cursor (a 410 from the provider): the next round is a full sync.
    pub async fn clear_cursor(&self, company: &str, connection: &str) -> Result<()> {
        self.table
            .delete(&key_of(company, connection), Condition::None)
            .await?;
        Ok(())
    }
}

fn progress_key(company: &str, connection: &str) -> Key {
    Key::new(company_pk(company), format!("PROGRESS#{connection}"))
}

impl Store {
    /// The unfinished round of a connection, if one checkpointed.
    pub async fn get_round_progress(
        &self,
        company: &str,
        connection: &str,
    ) -> Result<Option<crate::model::RoundProgress>> {
        match self.table.get(&progress_key(company, connection)).await? {
            Some(item) => Ok(Some(decode(&item)?)),
            None => Ok(None),
        }
    }

    /// Checkpoints an unfinished round (one writer: the connection's lease holder). Kept a
    /// week at most: a link that old has expired anyway.
    pub async fn save_round_progress(&self, p: &crate::model::RoundProgress) -> Result<()> {
        let mut item = Item::new(progress_key(&p.company_id, &p.connection_id), encode(p)?);
        item.expires_at = Some((p.updated_at + chrono::Duration::days(7)).timestamp());
        self.table.put(item, Condition::None).await?;
        Ok(())
    }

    /// Forgets a round's checkpoint (it completed, or its link is no longer valid).
    pub async fn clear_round_progress(&self, company: &str, connection: &str) -> Result<()> {
        self.table
            .delete(&progress_key(company, connection), Condition::None)
            .await?;
        Ok(())
    }
}
