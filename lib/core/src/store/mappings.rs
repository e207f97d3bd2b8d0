use super::{company_pk, decode, encode, Store};
use crate::model::{EventMapping, Provider};
use crate::ports::table::BATCH_GET_LIMIT;
use crate::ports::{Condition, Item, Key, StoreError, TxWrite};
use crate::{Error, Result};

/// A session shows as at most one event per provider (a staff member has one connection
/// per provider), so the mapping is keyed by provider and session: the outbound path can
/// read it in the same batch as the connection, before it knows the connection's id.
pub(crate) fn by_session(company: &str, provider: Provider, session: &str) -> Key {
    Key::new(
        company_pk(company),
        format!("MAP#{}#{session}", provider.as_str()),
    )
}

fn by_event(company: &str, connection: &str, event: &str) -> Key {
    Key::new(company_pk(company), format!("MAPX#{connection}#{event}"))
}

/// The writes that store `next` (already carrying its new version) over `previous`: the
/// mapping, its by-event copy, and the removal of a stale copy when the event changed.
pub(crate) fn mapping_writes(
    next: &EventMapping,
    expected: u64,
    previous: Option<&EventMapping>,
) -> Result<Vec<TxWrite>> {
    let data = encode(next)?;
    let mut primary = Item::new(
        by_session(&next.company_id, next.provider, &next.session_id),
        data.clone(),
    );
    primary.version = next.version;
    let mut copy = Item::new(
        by_event(
            &next.company_id,
            &next.connection_id,
            &next.external_event_id,
        ),
        data,
    );
    copy.version = next.version;
    let condition = if expected == 0 {
        Condition::NotExists
    } else {
        Condition::Version(expected)
    };
    let mut writes = vec![TxWrite::Put(primary, condition)];
    if let Some(old) = previous {
        if (&old.connection_id, &old.external_event_id)
            != (&next.connection_id, &next.external_event_id)
        {
            writes.push(TxWrite::Delete(
                by_event(&old.company_id, &old.connection_id, &old.external_event_id),
                Condition::None,
            ));
        }
    }
    writes.push(TxWrite::Put(copy, Condition::None));
    Ok(writes)
}

impl Store {
    /// Stores a mapping and its by-event copy together. `m.version` 0 creates (refusing a
    /// duplicate); otherwise it must match the stored version.
    pub async fn save_mapping(&self, m: &mut EventMapping) -> Result<()> {
        let expected = m.version;
        let mut next = m.clone();
        next.version = expected + 1;
        let previous = if expected != 0 {
            self.mapping_for_session(&m.company_id, m.provider, &m.session_id)
                .await?
        } else {
            None
        };
        let writes = mapping_writes(&next, expected, previous.as_ref())?;
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
        provider: Provider,
        session: &str,
    ) -> Result<Option<EventMapping>> {
        match self
            .table
            .get(&by_session(company, provider, session))
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

    /// Every mapping of a connection (its by-event copies), for re-baselining after a full
    /// sync.
    pub async fn mappings_for_connection(
        &self,
        company: &str,
        connection: &str,
    ) -> Result<Vec<EventMapping>> {
        let q =
            crate::ports::Query::prefix(company_pk(company), format!("MAPX#{connection}#"), 100);
        self.query_all(None, q).await
    }

    pub async fn delete_mapping(&self, m: &EventMapping) -> Result<()> {
        match self.table.transact(mapping_deletes(m)).await {
            Ok(()) => Ok(()),
            Err(StoreError::ConditionFailed) => Err(Error::Conflict {
                entity: "mapping",
                id: m.session_id.clone(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

impl Store {
    /// Deletes a mapping and its by-event copy whatever their versions (the connection is
    /// gone). The by-session record is only removed while it still points at this event.
    pub(crate) async fn forget_mapping(&self, m: &EventMapping) -> Result<()> {
        if let Some(current) = self
            .mapping_for_session(&m.company_id, m.provider, &m.session_id)
            .await?
        {
            if current.connection_id == m.connection_id {
                self.table
                    .delete(
                        &by_session(&m.company_id, m.provider, &m.session_id),
                        Condition::None,
                    )
                    .await?;
            }
        }
        self.table
            .delete(
                &by_event(&m.company_id, &m.connection_id, &m.external_event_id),
                Condition::None,
            )
            .await?;
        Ok(())
    }
}

/// The writes that remove `m` and its by-event copy, both as they were read. The copy's
/// version is checked too: a session's mapping made again after a removal starts again at
/// version 1, so the version alone would let a removal read before that (a twin of the same
/// move, held up) remove the new event's mapping; the new mapping's copy has another key, and
/// the old copy, removed already, fails the check.
pub(crate) fn mapping_deletes(m: &EventMapping) -> Vec<TxWrite> {
    vec![
        TxWrite::Delete(
            by_session(&m.company_id, m.provider, &m.session_id),
            Condition::Version(m.version),
        ),
        TxWrite::Delete(
            by_event(&m.company_id, &m.connection_id, &m.external_event_id),
            Condition::Version(m.version),
        ),
    ]
}
