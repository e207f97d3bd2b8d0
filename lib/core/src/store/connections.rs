use super::{
    check_cursor, classify_cas_failure, company_pk, decode, encode, validate_page_size, Listed,
    Store,
};
use crate::model::{Connection, ConnectionStatus, Provider};
use crate::ports::{Condition, Index, Item, Key, Query, StoreError, TxWrite};
use crate::{Error, Result};

pub(crate) fn primary_key(company: &str, id: &str) -> Key {
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

/// The lookup item of a push channel (Google) or subscription (Graph) id: which connection
/// has it. Read with a consistent read, unlike the channel index (`gsi1`), which on DynamoDB
/// lags a moment behind the write that set the channel: a notification arriving in that
/// moment was answered as for an unknown subscription and dropped, and Graph does not send
/// it again. Written with the connection, kept (by its expiry) a week past the channel's,
/// and checked against the connection when read (a replaced channel's lookup names a
/// connection with another channel now).
fn channel_key(channel_id: &str) -> Key {
    Key::new(format!("CHAN#{channel_id}"), "CONN")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ChannelOwner {
    company_id: String,
    connection_id: String,
}

impl super::Versioned for ChannelOwner {
    fn set_version(&mut self, _: u64) {}
}

pub(crate) fn channel_lookup(c: &Connection) -> Result<Option<Item>> {
    let Some(channel) = &c.channel else {
        return Ok(None);
    };
    let owner = ChannelOwner {
        company_id: c.company_id.clone(),
        connection_id: c.id.clone(),
    };
    let mut item = Item::new(channel_key(&channel.id), encode(&owner)?);
    item.expires_at = Some((channel.expires_at + chrono::Duration::days(7)).timestamp());
    Ok(Some(item))
}

impl Store {
    /// Creates a connection. A staff member has at most one connection per provider.
    pub async fn create_connection(&self, c: &Connection) -> Result<Connection> {
        let mut c = c.clone();
        c.version = 1;
        let (primary, copy) = items_of(&c, 1)?;
        let mut writes = vec![
            TxWrite::Put(primary, Condition::NotExists),
            TxWrite::Put(copy, Condition::NotExists),
        ];
        writes.extend(channel_lookup(&c)?.map(|i| TxWrite::Put(i, Condition::None)));
        match self.table.transact(writes).await {
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

    /// The connection, or `None` when it was deleted.
    pub async fn find_connection(&self, company: &str, id: &str) -> Result<Option<Connection>> {
        match self.get_connection(company, id).await {
            Ok(c) => Ok(Some(c)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
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

    /// The connection whose push channel (Google) or subscription (Graph) has this id: from
    /// its lookup item (a consistent read), else (a connection stored before lookups
    /// existed) from the channel index.
    pub async fn connection_by_channel(&self, channel_id: &str) -> Result<Option<Connection>> {
        if let Some(item) = self.table.get(&channel_key(channel_id)).await? {
            let owner: ChannelOwner = decode(&item)?;
            let connection = self
                .find_connection(&owner.company_id, &owner.connection_id)
                .await?;
            return Ok(
                connection.filter(|c| c.channel.as_ref().is_some_and(|ch| ch.id == channel_id))
            );
        }
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
        q.cursor = check_cursor(cursor, &q, None)?;
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
        let mut writes = vec![
            TxWrite::Put(primary, Condition::Version(expected)),
            TxWrite::Put(copy, Condition::None),
        ];
        writes.extend(channel_lookup(&next)?.map(|i| TxWrite::Put(i, Condition::None)));
        match self.table.transact(writes).await {
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

    /// Records a sync's outcome on a connection, re-reading it after a lost race. A failure
    /// puts it in `error` with the message. A success records the sync time and, when the
    /// connection has its subscription or channel, makes it `active` again; without one it
    /// keeps its status and reason (a sync alone does not bring notifications back).
    pub async fn record_sync(&self, c: &mut Connection, error: Option<String>) -> Result<()> {
        // Rounds of one connection may run at once (a burst of notifications on several
        // workers), each recording here: allow for a few lost races.
        for _ in 0..10 {
            match &error {
                Some(message) => {
                    c.status = ConnectionStatus::Error;
                    c.last_error = Some(message.clone());
                }
                None => {
                    c.last_sync_at = Some(self.now());
                    if c.channel.is_some() && c.status == ConnectionStatus::Error {
                        c.status = ConnectionStatus::Active;
                        c.last_error = None;
                    }
                }
            }
            match self.update_connection(c).await {
                Ok(()) => return Ok(()),
                Err(Error::Conflict { .. }) => {
                    *c = self.get_connection(&c.company_id, &c.id).await?
                }
                Err(e) => return Err(e),
            }
        }
        match error {
            // Every attempt lost to another round of this connection recording its own sync
            // at the same moment: the sync time is as fresh as ours.
            None => Ok(()),
            Some(_) => Err(Error::Conflict {
                entity: "connection",
                id: c.id.clone(),
            }),
        }
    }

    pub async fn delete_connection(&self, company: &str, id: &str) -> Result<Connection> {
        let existing = self.get_connection(company, id).await?;
        let key = primary_key(company, id);
        match self
            .table
            .transact(
                [
                    TxWrite::Delete(key.clone(), Condition::Version(existing.version)),
                    TxWrite::Delete(
                        staff_key(company, &existing.staff_id, existing.provider),
                        Condition::None,
                    ),
                ]
                .into_iter()
                .chain(
                    existing
                        .channel
                        .as_ref()
                        .map(|ch| TxWrite::Delete(channel_key(&ch.id), Condition::None)),
                )
                .collect(),
            )
            .await
        {
            Ok(()) => Ok(existing),
            Err(StoreError::ConditionFailed) => {
                Err(classify_cas_failure(self.table(), &key, "connection", id).await)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes everything a connection's syncs produced: its availability overrides, its
    /// event mappings, its delta cursor, its Google sync checkpoint and its lease. Called
    /// after the connection itself is deleted, so a re-created connection starts clean and no
    /// override of the old one keeps blocking moves. Idempotent: a failure part-way is
    /// finished by calling it again.
    pub async fn purge_connection_state(&self, conn: &Connection) -> Result<()> {
        let overrides: Vec<crate::model::availability::OverrideRef> = self
            .overrides_for_connection(&conn.company_id, &conn.staff_id, &conn.id)
            .await?
            .into_iter()
            .map(|o| o.reference())
            .collect();
        if !overrides.is_empty() {
            self.apply_overrides(&[], &overrides).await?;
        }
        for m in self
            .mappings_for_connection(&conn.company_id, &conn.id)
            .await?
        {
            self.forget_mapping(&m).await?;
        }
        self.clear_cursor(&conn.company_id, &conn.id).await?;
        self.clear_round_progress(&conn.company_id, &conn.id)
            .await?;
        self.clear_google_sync_progress(&conn.company_id, &conn.id)
            .await?;
        self.drop_lease(&conn.company_id, &conn.id).await
    }
}
