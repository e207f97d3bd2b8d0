//! Per-connection leases: one sync round at a time per connection (DESIGN-NOTES 1.9).
//!
//! A round takes the lease before reading the cursor. A second request for the same
//! connection while the lease is held does not run a second round: it marks the lease
//! `dirty` and returns; the holder, on releasing, finds the mark and runs one more round, so
//! no change is missed and a burst of notifications costs at most two rounds. A lease
//! expires after its TTL, so a holder that died (a Lambda timeout, a crash) blocks nobody for
//! long; a lease that expired with a request coalesced into it is indexed (`LEASEDIRTY` on
//! the second index, by expiry), and the five-minute `resume-coalesced-rounds` job queues the
//! round its dead holder owed.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::{company_pk, Store, Versioned};
use crate::ports::{Condition, Item, Key, StoreError};
use crate::Result;

/// How long a lease holds without being released: above the longest round (a worker's
/// function timeout is 30 s), below the queues' visibility timeout (180 s), so a message
/// redelivered after its round died finds the lease expired and runs.
pub const LEASE_TTL_SECONDS: i64 = 120;

fn key_of(company: &str, connection: &str) -> Key {
    Key::new(company_pk(company), format!("LEASE#{connection}"))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseRecord {
    #[serde(default)]
    company_id: String,
    #[serde(default)]
    connection_id: String,
    expires_at: DateTime<Utc>,
    /// Someone asked for a round while this one ran.
    dirty: bool,
    #[serde(skip)]
    version: u64,
}

impl Versioned for LeaseRecord {
    fn set_version(&mut self, version: u64) {
        self.version = version;
    }
}

/// A held lease: release it with [`Store::release_lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub company_id: String,
    pub connection_id: String,
    version: u64,
}

/// The answer to a request for the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseClaim {
    /// The caller holds the lease and runs the round.
    Acquired(Lease),
    /// Another round holds it; it was told to run once more (the request coalesced).
    Coalesced,
}

/// What releasing found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// Nobody asked meanwhile: the lease is free.
    Done,
    /// Someone asked meanwhile: the caller still holds the lease and runs another round.
    RunAgain(Lease),
}

const ATTEMPTS: usize = 10;
const DIRTY_PK: &str = "LEASEDIRTY";

impl Store {
    /// Takes the connection's lease, or marks the holder's lease dirty.
    pub async fn claim_lease(&self, company: &str, connection: &str) -> Result<LeaseClaim> {
        let key = key_of(company, connection);
        for _ in 0..ATTEMPTS {
            let now = self.now();
            let existing: Option<LeaseRecord> = match self.table.get(&key).await? {
                Some(item) => Some(super::decode(&item)?),
                None => None,
            };
            let (record, condition) = match &existing {
                Some(held) if held.expires_at > now => {
                    if held.dirty {
                        return Ok(LeaseClaim::Coalesced);
                    }
                    let marked = LeaseRecord {
                        dirty: true,
                        ..held.clone()
                    };
                    match self
                        .put_lease(&key, &marked, Condition::Version(held.version))
                        .await
                    {
                        Ok(_) => return Ok(LeaseClaim::Coalesced),
                        Err(StoreError::ConditionFailed) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(expired) => (
                    fresh(company, connection, now),
                    Condition::Version(expired.version),
                ),
                None => (fresh(company, connection, now), Condition::NotExists),
            };
            match self.put_lease(&key, &record, condition).await {
                Ok(version) => {
                    return Ok(LeaseClaim::Acquired(Lease {
                        company_id: company.to_string(),
                        connection_id: connection.to_string(),
                        version,
                    }))
                }
                Err(StoreError::ConditionFailed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        // Heavy contention: somebody holds it and will run; coalescing is safe.
        Ok(LeaseClaim::Coalesced)
    }

    /// Releases a lease; if a request coalesced into it meanwhile, keeps it (renewed, clean)
    /// and says to run again.
    pub async fn release_lease(&self, lease: Lease) -> Result<Released> {
        let key = key_of(&lease.company_id, &lease.connection_id);
        for _ in 0..ATTEMPTS {
            match self
                .table
                .delete(&key, Condition::Version(lease.version))
                .await
            {
                Ok(()) => return Ok(Released::Done),
                Err(StoreError::ConditionFailed) => {}
                Err(e) => return Err(e.into()),
            }
            let Some(item) = self.table.get(&key).await? else {
                return Ok(Released::Done);
            };
            let current: LeaseRecord = super::decode(&item)?;
            if !current.dirty {
                // Expired and taken by another round: it is theirs now.
                return Ok(Released::Done);
            }
            match self
                .put_lease(
                    &key,
                    &fresh(&lease.company_id, &lease.connection_id, self.now()),
                    Condition::Version(current.version),
                )
                .await
            {
                Ok(version) => {
                    return Ok(Released::RunAgain(Lease { version, ..lease }));
                }
                Err(StoreError::ConditionFailed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Released::Done)
    }

    /// Connections whose lease expired with a request coalesced into it: the holder died
    /// before running the round it owed. `(company, connection)` pairs, oldest first.
    pub async fn abandoned_leases(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, String)>> {
        let mut q = crate::ports::Query::prefix(DIRTY_PK, "", limit.max(1));
        q.upper = Some(format!("{}~", now.format("%Y-%m-%dT%H:%M:%S%.3fZ")));
        let page = self.table.query_index(crate::ports::Index::Gsi2, q).await?;
        let mut out = Vec::new();
        for item in page.items {
            // Confirmed against the record (the index may lag).
            let Some(fresh) = self.table.get(&item.key).await? else {
                continue;
            };
            let lease: LeaseRecord = super::decode(&fresh)?;
            if lease.dirty && lease.expires_at <= now && !lease.connection_id.is_empty() {
                out.push((lease.company_id, lease.connection_id));
            }
        }
        Ok(out)
    }

    /// Forgets a connection's lease (the connection was deleted).
    pub(crate) async fn drop_lease(&self, company: &str, connection: &str) -> Result<()> {
        self.table
            .delete(&key_of(company, connection), Condition::None)
            .await?;
        Ok(())
    }

    async fn put_lease(
        &self,
        key: &Key,
        record: &LeaseRecord,
        condition: Condition,
    ) -> std::result::Result<u64, StoreError> {
        let version = match condition {
            Condition::Version(v) => v + 1,
            _ => 1,
        };
        let data = serde_json::to_string(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut item = Item::new(key.clone(), data);
        item.version = version;
        if record.dirty {
            item.gsi2 = Some(Key::new(
                DIRTY_PK,
                format!(
                    "{}#{}#{}",
                    record.expires_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    record.company_id,
                    record.connection_id
                ),
            ));
        }
        // Stale leases are cleaned up by TTL as well as taken over on expiry.
        item.expires_at = Some((record.expires_at + Duration::days(1)).timestamp());
        self.table.put(item, condition).await?;
        Ok(version)
    }
}

fn fresh(company: &str, connection: &str, now: DateTime<Utc>) -> LeaseRecord {
    LeaseRecord {
        company_id: company.to_string(),
        connection_id: connection.to_string(),
        expires_at: now + Duration::seconds(LEASE_TTL_SECONDS),
        dirty: false,
        version: 0,
    }
}
