//! Per-session event sequence counters for the `session.*` events the platform dispatches
//! itself (`POST /v1/webhooks/dispatch`, platform events on the bus). One record per
//! session, advanced with a compare-and-set; it never falls below the floor the session's
//! mirror sets, so these values interleave with those of the events the booking engine
//! emits ([`crate::webhooks::sequence`]).

use super::{company_pk, sessions, Store};
use crate::ports::{Condition, Item, Key, StoreError};
use crate::webhooks::sequence;
use crate::{Error, Result};

/// Lost races retried before giving up (each one means another dispatch took a value), with
/// a short random pause between them so a burst of dispatches for one session spreads out.
const ATTEMPTS: usize = 40;

fn key_of(company: &str, session: &str) -> Key {
    Key::new(company_pk(company), format!("SEQ#{session}"))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Counter {
    last: u64,
}

impl Store {
    /// The next `sequence` for an event of `session` dispatched now: above every value
    /// handed out before for it, and above that of every event the session's mirror has
    /// emitted so far (below that of the mirror's next one).
    pub async fn next_session_sequence(&self, company: &str, session: &str) -> Result<u64> {
        let counter_key = key_of(company, session);
        let mirror_key = sessions::key_of(company, session);
        for _ in 0..ATTEMPTS {
            let items = self
                .table
                .batch_get(&[counter_key.clone(), mirror_key.clone()])
                .await?;
            let mirror_version = items
                .iter()
                .find(|i| i.key == mirror_key)
                .map(|i| i.version)
                .unwrap_or(0);
            let stored = items.iter().find(|i| i.key == counter_key);
            let last = match stored {
                Some(item) => {
                    serde_json::from_str::<Counter>(&item.data)
                        .map_err(|e| {
                            Error::from(StoreError::Corrupt(format!("{}: {e}", counter_key.sk)))
                        })?
                        .last
                }
                None => 0,
            };
            let next = (last + 1).max(sequence::dispatch_floor(mirror_version));
            let data = serde_json::to_string(&Counter { last: next })
                .map_err(|e| Error::Internal(format!("encode: {e}")))?;
            let mut item = Item::new(counter_key.clone(), data);
            let condition = match stored {
                Some(s) => {
                    item.version = s.version + 1;
                    Condition::Version(s.version)
                }
                None => Condition::NotExists,
            };
            match self.table.put(item, condition).await {
                Ok(()) => return Ok(next),
                Err(StoreError::ConditionFailed) => {
                    let pause = rand::random::<u64>() % 4 + 1;
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Still contended: a passing condition, worth a retry by the caller (503), not a
        // conflict the caller caused (409).
        Err(Error::Unavailable(format!(
            "the sequence of session {session} is contended; retry"
        )))
    }

    /// Records that `session` has had an event with sequence `value` (one the platform chose
    /// itself): the counter never hands out a value at or below it afterwards, so a later
    /// event never looks stale next to it.
    pub async fn raise_session_sequence(
        &self,
        company: &str,
        session: &str,
        value: u64,
    ) -> Result<()> {
        let counter_key = key_of(company, session);
        for _ in 0..ATTEMPTS {
            let stored = self.table.get(&counter_key).await?;
            let last = match &stored {
                Some(item) => {
                    serde_json::from_str::<Counter>(&item.data)
                        .map_err(|e| {
                            Error::from(StoreError::Corrupt(format!("{}: {e}", counter_key.sk)))
                        })?
                        .last
                }
                None => 0,
            };
            if last >= value {
                return Ok(());
            }
            let data = serde_json::to_string(&Counter { last: value })
                .map_err(|e| Error::Internal(format!("encode: {e}")))?;
            let mut item = Item::new(counter_key.clone(), data);
            let condition = match &stored {
                Some(s) => {
                    item.version = s.version + 1;
                    Condition::Version(s.version)
                }
                None => Condition::NotExists,
            };
            match self.table.put(item, condition).await {
                Ok(()) => return Ok(()),
                Err(StoreError::ConditionFailed) => {
                    let pause = rand::random::<u64>() % 4 + 1;
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Unavailable(format!(
            "the sequence of session {session} is contended; retry"
        )))
    }
}
