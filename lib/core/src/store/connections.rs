use super::{
    check_cursor, classify_cas_failure, company_pk, decode, encode, validate_page_size, Listed,
    Store,
};
use crate::model::{Connection, Provider};
use crate::ports::{Condition, Index, Item, Key, Query, StoreError, TxWrite};
use crate::{Error, Result};

fn primary_key(company: &str, id: &str) -> Key {
    Key::new(company_pk(company), format!("CONN#{id}"))
}

pub(crate) fn staff_key(company: &str, staff: &str, provider: Provider) -> Key {
    Key::new(
        company_pk(company),
        format!("STAFFCONN#{staff}#{}", provider.as_str()),
    )
}

pub(crate) fn items_of(c: &Connection, version: u64) -> Result<(Item, Item)> {
    let data = encode(c)?;
    let mut primary = Item::new(primary_key(&c.company_id, &c.id), data.clone());
    primary.version = version;
    primary.gsi1 = c
        .channel
        .as_ref()
        .map(|ch| Key::new(format!("CHAN#{}", ch.id), "CONN"));
    primary.gsi2 = Some(Key::new(
        format!("CONNS#{}", c.provider.as_str()),
        format!("{}#{}", c.company_id, c.id),
    ));
    let mut copy = Item::new(staff_key(&c.company_id, &c.staff_id, c.provider), data);
    copy.version = version;
    Ok((primary, copy))
}

impl Store {
    /// Creates a connection. A staff member has at most one connection per provider.
    pub async fn create_connection(&self, c: &Connection) -> Result<Connection> {
        let mut c = c.clone();
        c.version = 1;
        let (primary, copy) = items_of(&c, 1)?;
        match self
            .table
            .transact(vec![
                TxWrite::Put(primary, Condition::NotExists),
                TxWrite::Put(copy, Condition::NotExists),
            ])
            .await
        {
            Ok(()) => Ok(c),
            Err(StoreError::ConditionFailed) => Err(Error::Duplicate {
                entity: "connection",
                id: format!("{}/{}", c.provider.as_str(), c.staff_id),
            }),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_connection(&self, company: &str, id: &str) -> Result<Connection> {
        match self.table.get(&primary_key(company, id)).await? {
            Some(item) => decode(&item),
            None => Err(Error::not_found("connection", id)),
        }
    }

    pub async fn connection_for_staff(
        &self,
        company: &str,
        staff: &str,
        provider: Provider,
    ) -> Result<Option<Connection>> {
        match self.table.get(&staff_key(company, staff, provider)).await? {
            Some(item) => Ok(Some(decode(&item)?)),
            None => Ok(None),
        }
    }

    /// The connection whose push channel (Google) or subscription (Graph) has this id.
    pub async fn connection_by_channel(&self, channel_id: &str) -> Result<Option<Connection>> {
        let q = Query::prefix(format!("CHAN#{channel_id}"), "CONN", 1);
        let page = self.table.query_index(Index::Gsi1, q).await?;
        match page.items.first() {
            // The index may lag a moment behind; re-read the primary for the current state.
            Some(item) => match self.table.get(&item.key).await? {
                Some(fresh) => Ok(Some(decode(&fresh)?)),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    pub async fn list_connections(
        &self,
        company: &str,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<Listed<Connection>> {
        let mut q = Query::prefix(company_pk(company), "CONN#", validate_page_size(limit)?);
        q.cursor = check_cursor(cursor)?;
        let page = self.table.query(q).await?;
        self.decode_page(page)
    }

    /// Every connection of a provider across all companies, for the sync and renewal jobs.
    pub async fn all_connections(
        &self,
        provider: Provider,
        cursor: Option<String>,
    ) -> Result<Listed<Connection>> {
        let mut q = Query::prefix(format!("CONNS#{}", provider.as_str()), "", 100);
        q.cursor = cursor;
        let page = self.table.query_index(Index::Gsi2, q).await?;
        self.decode_page(page)
    }

    /// Compare-and-set on `c.version`; on success `c.version` is the new version.
    pub async fn update_connection(&self, c: &mut Connection) -> Result<()> {
        let expected = c.version;
        let mut next = c.clone();
        next.version = expected + 1;
        next.updated_at = self.now();
        let (primary, copy) = items_of(&next, expected + 1)?;
        let key = primary.key.clone();
        match self
            .table
            .transact(vec![
                TxWrite::Put(primary, Condition::Version(expected)),
                TxWrite::Put(copy, Condition::None),
            ])
            .await
        {
            Ok(()) => {
                *c = next;
                Ok(())
            }
            Err(StoreError::ConditionFailed) => {
                Err(classify_cas_failure(self.table(), &key, "connection", &c.id).await)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete_connection(&self, company: &str, id: &str) -> Result<Connection> {
        let existing = self.get_connection(company, id).await?;
        let key = primary_key(company, id);
        match self
            .table
            .transact(vec![
                TxWrite::Delete(key.clone(), Condition::Version(existing.version)),
                TxWrite::Delete(
                    staff_key(company, &existing.staff_id, existing.provider),
                    Condition::None,
                ),
            ])
            .await
        {
            Ok(()) => Ok(existing),
            Err(StoreError::ConditionFailed) => {
                Err(classify_cas_failure(self.table(), &key, "connection", id).await)
            }
            Err(e) => Err(e.into()),
        }
    }
}
