//! Per-session event sequence counters for the `session.*` events the platform dispatches
//! itself (`POST /v1/webhooks/dispatch`, platform events on the bus). One record per
//! session, advanced with a compare-and-set; it never falls below the floor the session's
//! mirror sets, so these values interleave with those of the events the booking engine
//! emits ([`crate::webhooks::sequence`]).
//!
//! A dispatch draws its value from what it knows of the counter and the mirror
//! ([`SequenceState`]: read in one batch read, or guessed, see
//! [`crate::webhooks::sequence`]) and commits the counter's compare-and-set (for a guess,
//! with a check that the mirror is still at the guessed version) in the same transaction as
//! the event's deliveries: a value is taken exactly when the event is stored, and a lost race
//! (or a wrong guess) writes nothing and is drawn again from a read.
//! [`Store::next_session_sequence`] takes a value on its own (a commit of its own).

use super::{company_pk, sessions, Store};
use crate::ports::{Condition, Item, Key, StoreError, TxWrite};
use crate::retry::after_lost_race;
use crate::webhooks::sequence::{self, contended, SequenceDraw, ATTEMPTS};
use crate::{Error, Result};

fn key_of(company: &str, session: &str) -> Key {
    Key::new(company_pk(company), format!("SEQ#{session}"))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Counter {
    last: u64,
}

/// The counter's last value and stored version (`(0, None)`: no counter yet).
fn read_counter(stored: Option<&Item>, key: &Key) -> Result<(u64, Option<u64>)> {
    match stored {
        Some(item) => {
            let counter = serde_json::from_str::<Counter>(&item.data)
                .map_err(|e| Error::from(StoreError::Corrupt(format!("{}: {e}", key.sk))))?;
            Ok((counter.last, Some(item.version)))
        }
        None => Ok((0, None)),
    }
}

/// The compare-and-set that moves the counter (read at `stored_version`) to `last`.
fn counter_write(key: &Key, last: u64, stored_version: Option<u64>) -> Result<TxWrite> {
    let data = serde_json::to_string(&Counter { last })
        .map_err(|e| Error::Internal(format!("encode: {e}")))?;
    let mut item = Item::new(key.clone(), data);
    let condition = match stored_version {
        Some(v) => {
            item.version = v + 1;
            Condition::Version(v)
        }
        None => Condition::NotExists,
    };
    Ok(TxWrite::Put(item, condition))
}

/// What a draw knows of a session's counter and mirror: their stored versions (`None`: no
/// such record) and the counter's last value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SequenceState {
    pub last: u64,
    pub counter_version: Option<u64>,
    pub mirror_version: Option<u64>,
}

impl Store {
    /// The session's counter and mirror as stored (one batch read).
    pub async fn read_session_sequence(
        &self,
        company: &str,
        session: &str,
    ) -> Result<SequenceState> {
        let counter_key = key_of(company, session);
        let mirror_key = sessions::key_of(company, session);
        let items = self
            .table
            .batch_get(&[counter_key.clone(), mirror_key.clone()])
            .await?;
        let mirror_version = items
            .iter()
            .find(|i| i.key == mirror_key)
            .map(|i| i.version);
        let (last, counter_version) =
            read_counter(items.iter().find(|i| i.key == counter_key), &counter_key)?;
        Ok(SequenceState {
            last,
            counter_version,
            mirror_version,
        })
    }

    /// Draws the next `sequence` for an event of `session` from `state` as just read (no
    /// write): above every value handed out before for it, and above that of every event
    /// the session's mirror has emitted so far (below that of the mirror's next one). The
    /// value is taken only when the draw's write, the counter's compare-and-set, commits.
    fn draw_from(
        company: &str,
        session: &str,
        state: SequenceState,
        mirror: Option<TxWrite>,
    ) -> Result<SequenceDraw> {
        let counter_key = key_of(company, session);
        let value = sequence::after(state.last)?
            .max(sequence::dispatch_floor(state.mirror_version.unwrap_or(0)));
        let mut writes = vec![counter_write(&counter_key, value, state.counter_version)?];
        writes.extend(mirror);
        Ok(SequenceDraw {
            value,
            writes,
            after: Some(SequenceState {
                last: value,
                counter_version: Some(state.counter_version.map_or(1, |v| v + 1)),
                mirror_version: state.mirror_version,
            }),
        })
    }

    /// Draws the next `sequence` for an event of `session` from the stored state (one batch
    /// read; see [`Store::draw_guessed_session_sequence`] for a draw without one). A mirror
    /// written between the read and the commit is not checked: the event was decided
    /// concurrently with that change, and on DynamoDB a check would make every booking
    /// engine write of the mirror conflict with the dispatches in flight.
    pub async fn draw_session_sequence(
        &self,
        company: &str,
        session: &str,
    ) -> Result<SequenceDraw> {
        let state = self.read_session_sequence(company, session).await?;
        Self::draw_from(company, session, state, None)
    }

    /// Draws the next `sequence` for an event of `session` from a guessed `state` (no read):
    /// as [`Store::draw_session_sequence`], with a check that the mirror is still at the
    /// guessed version beside the counter's compare-and-set, since a guess may be old. A
    /// wrong guess fails the commit, which writes nothing.
    pub fn draw_guessed_session_sequence(
        &self,
        company: &str,
        session: &str,
        state: SequenceState,
    ) -> Result<SequenceDraw> {
        let mirror = TxWrite::Check(
            sessions::key_of(company, session),
            match state.mirror_version {
                Some(v) => Condition::Version(v),
                None => Condition::NotExists,
            },
        );
        Self::draw_from(company, session, state, Some(mirror))
    }

    /// Draws the write that records `value`, a `sequence` the platform chose itself, for
    /// `session` (one read): the counter never hands out a value at or below it afterwards,
    /// so a later event never looks stale next to it.
    pub async fn draw_raised_sequence(
        &self,
        company: &str,
        session: &str,
        value: u64,
    ) -> Result<SequenceDraw> {
        let counter_key = key_of(company, session);
        let stored = self.table.get(&counter_key).await?;
        let (last, version) = read_counter(stored.as_ref(), &counter_key)?;
        let writes = if last >= value {
            Vec::new()
        } else {
            vec![counter_write(&counter_key, value, version)?]
        };
        Ok(SequenceDraw {
            value,
            writes,
            after: None,
        })
    }

    /// Commits a draw's write on its own. `Ok(false)`: the counter moved since the draw
    /// (nothing written; draw again).
    async fn take_draw(&self, draw: SequenceDraw) -> Result<bool> {
        if draw.writes.is_empty() {
            return Ok(true);
        }
        match self.table.transact(draw.writes).await {
            Ok(()) => Ok(true),
            Err(StoreError::ConditionFailed) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the next `sequence` for an event of `session` in a commit of its own (a
    /// dispatch takes it in the commit of its deliveries instead).
    pub async fn next_session_sequence(&self, company: &str, session: &str) -> Result<u64> {
        for _ in 0..ATTEMPTS {
            let draw = self.draw_session_sequence(company, session).await?;
            let value = draw.value;
            if self.take_draw(draw).await? {
                return Ok(value);
            }
            after_lost_race().await;
        }
        Err(contended(session))
    }

    /// Records that `session` has had an event with sequence `value` (one the platform chose
    /// itself), in a commit of its own.
    pub async fn raise_session_sequence(
        &self,
        company: &str,
        session: &str,
        value: u64,
    ) -> Result<()> {
        for _ in 0..ATTEMPTS {
            let draw = self.draw_raised_sequence(company, session, value).await?;
            if self.take_draw(draw).await? {
                return Ok(());
            }
            after_lost_race().await;
        }
        Err(contended(session))
    }
}
