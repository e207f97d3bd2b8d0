//! The two store round trips of an outbound calendar write: one batch read of everything
//! the write depends on, one transaction that records its result.

use super::connections::{
    channel_lookup, items_of as connection_items, primary_key as connection_key, staff_key,
};
use super::credentials::credentials_key;
use super::mappings::{by_session, mapping_deletes, mapping_writes};
use super::sessions::{item_of as session_item, key_of as session_key};
use super::{decode, Store};
use crate::model::{Connection, CredentialRecord, EventMapping, Provider, Session};
use crate::ports::{Condition, StoreError, TxWrite};
use crate::{Error, Result};

/// What an outbound write for one session of one staff member depends on.
#[derive(Debug, Clone, Default)]
pub struct OutboundContext {
    pub session: Option<Session>,
    pub connection: Option<Connection>,
    pub credentials: Option<CredentialRecord>,
    pub mapping: Option<EventMapping>,
    /// The same for every other provider (its connection of the staff member, credentials
    /// and mapping; the same session), read in the same batch: the calendar seam writes
    /// every calendar from one read, and a cancelled session booked again retires every
    /// mapping with its intent.
    pub others: Vec<(Provider, OutboundContext)>,
}

impl OutboundContext {
    /// The context of `provider`, read with this one, with this one's session (the freshest
    /// this process knows).
    pub fn take_other(&mut self, provider: Provider) -> Option<OutboundContext> {
        let i = self.others.iter().position(|(p, _)| *p == provider)?;
        let (_, mut other) = self.others.remove(i);
        other.session = self.session.clone();
        Some(other)
    }
}

/// One record change in the closing transaction. Each carries the version it was read at
/// (0: it did not exist), so a concurrent change makes the whole transaction fail.
#[derive(Debug, Clone)]
pub enum OutboundWrite {
    Session(Session),
    /// Writes nothing; the transaction holds only while the session is at this version (a
    /// write whose transaction does not rewrite the session still loses to any change of it
    /// since it was read: a newer platform change's intent, a round's command).
    SessionUnchanged(Session),
    Connection(Connection),
    /// Writes nothing; the transaction holds only while the connection exists.
    ConnectionExists(Connection),
    Mapping {
        next: EventMapping,
        previous: Option<EventMapping>,
    },
    DeleteMapping(EventMapping),
}

impl Store {
    /// Reads the session, the staff member's connection to `provider`, the company's
    /// credentials for it and the session's mapping, and the same for every other provider
    /// (`others`), in one batch read.
    pub async fn outbound_context(
        &self,
        company: &str,
        staff: &str,
        session: &str,
        provider: Provider,
    ) -> Result<OutboundContext> {
        let providers = [Provider::Exchange, Provider::Google];
        let mut keys = vec![session_key(company, session)];
        for p in providers {
            keys.push(staff_key(company, staff, p));
            keys.push(credentials_key(company, p));
            keys.push(by_session(company, p, session));
        }
        let items = self.table.batch_get(&keys).await?;
        let mut ctx = OutboundContext::default();
        let mut others = Vec::new();
        for (i, p) in providers.into_iter().enumerate() {
            let mut c = OutboundContext::default();
            let base = 1 + 3 * i;
            for item in &items {
                if item.key == keys[0] {
                    c.session = Some(decode(item)?);
                } else if item.key == keys[base] {
                    c.connection = Some(decode(item)?);
                } else if item.key == keys[base + 1] {
                    c.credentials = Some(decode(item)?);
                } else if item.key == keys[base + 2] {
                    c.mapping = Some(decode(item)?);
                }
            }
            if p == provider {
                ctx = c;
            } else {
                others.push((p, c));
            }
        }
        ctx.others = others;
        Ok(ctx)
    }

    /// Applies `writes` in one transaction, all or nothing; a lost race is a `Conflict`.
    /// On success every written record's `version` is its new version.
    pub async fn commit_outbound(&self, writes: &mut [OutboundWrite]) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut tx = Vec::new();
        for w in writes.iter_mut() {
            match w {
                OutboundWrite::Session(s) => {
                    let expected = s.version;
                    let condition = if expected == 0 {
                        Condition::NotExists
                    } else {
                        Condition::Version(expected)
                    };
                    s.version = expected + 1;
                    tx.push(TxWrite::Put(session_item(s, s.version)?, condition));
                }
                OutboundWrite::Connection(c) => {
                    let expected = c.version;
                    c.version = expected + 1;
                    c.updated_at = self.now();
                    let (primary, copy) = connection_items(c, c.version)?;
                    tx.push(TxWrite::Put(primary, Condition::Version(expected)));
                    tx.push(TxWrite::Put(copy, Condition::None));
                    if let Some(lookup) = channel_lookup(c)? {
                        tx.push(TxWrite::Put(lookup, Condition::None));
                    }
                }
                OutboundWrite::SessionUnchanged(s) => {
                    tx.push(TxWrite::Check(
                        session_key(&s.company_id, &s.id),
                        Condition::Version(s.version),
                    ));
                }
                OutboundWrite::ConnectionExists(c) => {
                    tx.push(TxWrite::Check(
                        connection_key(&c.company_id, &c.id),
                        Condition::Exists,
                    ));
                }
                OutboundWrite::Mapping { next, previous } => {
                    let expected = next.version;
                    next.version = expected + 1;
                    tx.extend(mapping_writes(next, expected, previous.as_ref())?);
                }
                OutboundWrite::DeleteMapping(m) => tx.extend(mapping_deletes(m)),
            }
        }
        match self.table.transact(tx).await {
            Ok(()) => Ok(()),
            Err(StoreError::ConditionFailed) => Err(Error::Conflict {
                entity: "session",
                id: writes
                    .iter()
                    .find_map(|w| match w {
                        OutboundWrite::Session(s) | OutboundWrite::SessionUnchanged(s) => {
                            Some(s.id.clone())
                        }
                        _ => None,
                    })
                    .unwrap_or_default(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}
