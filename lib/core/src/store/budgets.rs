//! Request budgets: how many provider requests a scope (an app and a mailbox, a service
//! account and a user) has taken in a fixed window, counted in the store so that every
//! process and every Lambda shares one count.

use super::{decode, encode, Store};
use crate::ports::{Condition, Item, Key, StoreError};
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct BudgetWindow {
    pub taken: u64,
    #[serde(default)]
    pub version: u64,
}

fn key_of(scope: &str, window_start: i64) -> Key {
    Key::new(format!("BUDGET#{scope}"), format!("W#{window_start}"))
}

impl Store {
    /// Takes up to `want` requests from the scope's window `[window_start, window_end)`
    /// whose limit is `limit`: answers how many were granted (0 when the window is spent).
    /// Compare-and-set on the window's count, so concurrent takers never exceed the limit.
    pub async fn take_budget(
        &self,
        scope: &str,
        window_start: i64,
        window_end: i64,
        want: u64,
        limit: u64,
    ) -> Result<u64> {
        let key = key_of(scope, window_start);
        for _ in 0..8 {
            let current: Option<BudgetWindow> = match self.table.get(&key).await? {
                Some(item) => Some(decode(&item)?),
                None => None,
            };
            let taken = current.as_ref().map_or(0, |w| w.taken);
            let grant = want.min(limit.saturating_sub(taken));
            if grant == 0 {
                return Ok(0);
            }
            let version = current.as_ref().map_or(0, |w| w.version);
            let next = BudgetWindow {
                taken: taken + grant,
                version: version + 1,
            };
            let mut item = Item::new(key.clone(), encode(&next)?);
            item.version = version + 1;
            item.expires_at = Some(window_end + 3600);
            let condition = if version == 0 {
                Condition::NotExists
            } else {
                Condition::Version(version)
            };
            match self.table.put(item, condition).await {
                Ok(()) => return Ok(grant),
                Err(StoreError::ConditionFailed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict {
            entity: "budget",
            id: scope.to_string(),
        })
    }
}
