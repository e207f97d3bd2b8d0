use super::{company_pk, decode, encode, Store};
use crate::model::EventMapping;
use crate::ports::table::BATCH_GET_LIMIT;
use crate::ports::{Condition, Item, Key, StoreError, TxWrite};
use crate::{Error, Result};

fn by_session(company: &str, connection: &str, session: &str) -> Key {
    Key::new(company_pk(company), format!("MAP#{connection}#{session}"))
}

fn by_event(company: &str, connection: &str, event: &str) -> Key {
    Key::new(company_pk(company), format!("MAPX#{connection}#{event}"))
}

impl Store {
    /// Stores a mapping and its by-event copy together. `m.version` 0 creates (refusing a
    /// duplicate); otherwise it must match the stored version.
    pub async fn save_mapping(&self, m: &mut EventMapping) -> Result<()> {
        let expected = m.version;
        let mut next = m.clone();
        next.version = expected + 1;
        let data = encode(&next)?;
        let mut primary = Item::new(
            by_session(&m.company_id, &m.connection_id, &m.session_id),
            data.clone(),
        );
        primary.version = next.version;
        let mut copy = Item::new(
            by_event(&m.company_id, &m.connection_id, &m.external_event_id),
            data,
        );
        copy.version = next.version;
        let condition = if expected == 0 {
            Condition::NotExists
        } else {
            Condition::Version(expected)
        };
        let mut writes = vec![TxWrite::Put(primary, condition)];
        // The provider event id never changes for a mapping (Graph immutable ids), but if it
        // did, the stale by-event copy must go.
        if expected != 0 {
            if let Some(old) = self
                .mapping_for_session(&m.company_id, &m.connection_id, &m.session_id)
                .await?
            {
                if old.external_event_id != m.external_event_id {
                    writes.push(TxWrite::Delete(
                        by_event(&m.company_id, &m.connection_id, &old.external_event_id),
                        Condition::None,
                    ));
                }
            }
        }
        writes.push(TxWrite::Put(copy, Condition::None));
        match self.table.transact(writes).await {
            Ok(()) => {
                *m = next;
                Ok(())
            }
            Err(StoreError::ConditionFailed) if expected == 0 => Err(Error::Duplicate {
                entity: "mapping",
                id: m.session_id.clone(),
            }),
            Err(StoreError::ConditionFailed) => Err(Error::Conflict {
                entity: "mapping",
                id: m.session_id.clone(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn mapping_for_session(
        &self,
        company: &str,
        connection: &str,
        session: &str,
    ) -> Result<Option<EventMapping>> {
        match self
            .table
            .get(&by_session(company, connection, session))
            .await?
        {
            Some(item) => Ok(Some(decode(&item)?)),
            None => Ok(None),
        }
    }

    /// The mappings of any of `events` (provider event ids), in one batch read per 100.
    pub async fn mappings_for_events(
        &self,
        company: &str,
        connection: &str,
        events: &[String],
    ) -> Result<Vec<EventMapping>> {
        let mut keys: Vec<Key> = events
            .iter()
            .map(|e| by_event(company, connection, e))
            .collect();
        keys.sort();
        keys.dedup();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH_GET_LIMIT) {
            for item in self.table.batch_get(chunk).await? {
                out.push(decode(&item)?);
            }
        }
        Ok(out)
    }

    pub async fn delete_mapping(&self, m: &EventMapping) -> Result<()> {
        self.table
            .transact(vec![
                TxWrite::Delete(
                    by_session(&m.company_id, &m.connection_id, &m.session_id),
                    Condition::None,
                ),
                TxWrite::Delete(
                    by_event(&m.company_id, &m.connection_id, &m.external_event_id),
                    Condition::None,
                ),
            ])
            .await?;
        Ok(())
    }
}
