use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};
use voyage_core::ports::table::{
    check_batch, check_transaction, page_of, prefix_end, Resume, BATCH_GET_LIMIT,
};
use voyage_core::ports::{Condition, Index, Item, Key, Page, Query, StoreError, Table, TxWrite};

use crate::db::{unavailable, Db};

/// The [`Table`] port on SQLite: one row per item, partial indexes for the two GSIs.
#[derive(Clone)]
pub struct SqliteTable {
    db: Arc<Db>,
}

impl SqliteTable {
    pub fn new(db: Arc<Db>) -> Self {
        SqliteTable { db }
    }
}

const COLUMNS: &str = "pk, sk, gsi1pk, gsi1sk, gsi2pk, gsi2sk, version, expires_at, data";

fn item_of(row: &Row<'_>) -> rusqlite::Result<Item> {
    let index = |p: Option<String>, s: Option<String>| match (p, s) {
        (Some(pk), Some(sk)) => Some(Key { pk, sk }),
        _ => None,
    };
    Ok(Item {
        key: Key {
            pk: row.get(0)?,
            sk: row.get(1)?,
        },
        gsi1: index(row.get(2)?, row.get(3)?),
        gsi2: index(row.get(4)?, row.get(5)?),
        version: row.get::<_, i64>(6)? as u64,
        expires_at: row.get(7)?,
        data: row.get(8)?,
    })
}

fn current_version(tx: &Connection, key: &Key) -> Result<Option<u64>, StoreError> {
    tx.prepare_cached("SELECT version FROM items WHERE pk = ?1 AND sk = ?2")
        .map_err(unavailable)?
        .query_row(params![key.pk, key.sk], |r| r.get::<_, i64>(0))
        .optional()
        .map(|v| v.map(|v| v as u64))
        .map_err(unavailable)
}

fn write_item(tx: &Connection, item: &Item) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO items (pk, sk, gsi1pk, gsi1sk, gsi2pk, gsi2sk, version, expires_at, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .map_err(unavailable)?
    .execute(
        params![
            item.key.pk,
            item.key.sk,
            item.gsi1.as_ref().map(|k| &k.pk),
            item.gsi1.as_ref().map(|k| &k.sk),
            item.gsi2.as_ref().map(|k| &k.pk),
            item.gsi2.as_ref().map(|k| &k.sk),
            item.version as i64,
            item.expires_at,
            item.data
        ],
    )
    .map_err(unavailable)?;
    Ok(())
}

fn delete_item(tx: &Connection, key: &Key) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM items WHERE pk = ?1 AND sk = ?2")
        .map_err(unavailable)?
        .execute(params![key.pk, key.sk])
        .map_err(unavailable)?;
    Ok(())
}

fn bad_cursor() -> StoreError {
    StoreError::Corrupt("query cursor is not one this store issued".into())
}

#[async_trait]
impl Table for SqliteTable {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        let key = key.clone();
        self.db
            .read(move |c| {
                c.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM items WHERE pk = ?1 AND sk = ?2"
                ))
                .map_err(unavailable)?
                .query_row(params![key.pk, key.sk], item_of)
                .optional()
                .map_err(unavailable)
            })
            .await
    }

    async fn batch_get(&self, keys: &[Key]) -> Result<Vec<Item>, StoreError> {
        if keys.len() > BATCH_GET_LIMIT {
            return Err(StoreError::Unavailable(format!(
                "batch get of {} keys exceeds {BATCH_GET_LIMIT}",
                keys.len()
            )));
        }
        let mut keys = keys.to_vec();
        keys.sort();
        keys.dedup();
        self.db
            .read(move |c| {
                let mut out = Vec::with_capacity(keys.len());
                let mut stmt = c
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM items WHERE pk = ?1 AND sk = ?2"
                    ))
                    .map_err(unavailable)?;
                for k in &keys {
                    if let Some(item) = stmt
                        .query_row(params![k.pk, k.sk], item_of)
                        .optional()
                        .map_err(unavailable)?
                    {
                        out.push(item);
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn put(&self, item: Item, condition: Condition) -> Result<(), StoreError> {
        self.transact(vec![TxWrite::Put(item, condition)]).await
    }

    async fn delete(&self, key: &Key, condition: Condition) -> Result<(), StoreError> {
        self.transact(vec![TxWrite::Delete(key.clone(), condition)])
            .await
    }

    async fn batch_write(&self, puts: Vec<Item>, deletes: Vec<Key>) -> Result<(), StoreError> {
        check_batch(&puts, &deletes)?;
        self.db
            .call(move |c| {
                for k in &deletes {
                    delete_item(c, k)?;
                }
                for i in &puts {
                    write_item(c, i)?;
                }
                Ok(())
            })
            .await
    }

    async fn transact(&self, writes: Vec<TxWrite>) -> Result<(), StoreError> {
        check_transaction(&writes)?;
        self.db
            .call(move |c| {
                // The writer's transaction holds the write lock: no other process can change
                // an item between this check and this write.
                for w in &writes {
                    let cond = w.condition();
                    // An unconditional write needs no read.
                    if cond == Condition::None {
                        continue;
                    }
                    if !cond.holds(current_version(c, w.key())?) {
                        return Err(StoreError::ConditionFailed);
                    }
                }
                for w in &writes {
                    match w {
                        TxWrite::Put(i, _) => write_item(c, i)?,
                        TxWrite::Delete(k, _) => delete_item(c, k)?,
                        TxWrite::Check(..) => {}
                    }
                }
                Ok(())
            })
            .await
    }

    async fn query(&self, q: Query) -> Result<Page, StoreError> {
        let after = match &q.cursor {
            Some(c) => Some(Resume::decode(c).ok_or_else(bad_cursor)?.sk),
            None => None,
        };
        let limit = q.limit.max(1);
        let (after_op, order) = if q.descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        self.db
            .read(move |c| {
                let mut stmt = c
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM items
                         WHERE pk = ?1 AND sk >= ?2 AND sk < ?3
                           AND sk <= ?4 AND (?5 IS NULL OR sk {after_op} ?5)
                         ORDER BY sk {order} LIMIT ?6"
                    ))
                    .map_err(unavailable)?;
                let items = stmt
                    .query_map(
                        params![
                            q.pk,
                            lower_of(&q),
                            prefix_end(&q.prefix),
                            upper_of(&q),
                            after,
                            (limit + 1) as i64
                        ],
                        item_of,
                    )
                    .map_err(unavailable)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(unavailable)?;
                Ok(page_of(items, limit, None, false))
            })
            .await
    }

    async fn query_index(&self, index: Index, q: Query) -> Result<Page, StoreError> {
        let after = match &q.cursor {
            Some(c) => Some(Resume::decode(c).ok_or_else(bad_cursor)?),
            None => None,
        };
        let (ipk, isk) = match index {
            Index::Gsi1 => ("gsi1pk", "gsi1sk"),
            Index::Gsi2 => ("gsi2pk", "gsi2sk"),
        };
        let limit = q.limit.max(1);
        let (after_op, order) = if q.descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        self.db
            .read(move |c| {
                let mut stmt = c
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM items
                         WHERE {ipk} = ?1 AND {isk} >= ?2 AND {isk} < ?3
                           AND {isk} <= ?4
                           AND (?5 IS NULL OR ({isk}, pk, sk) {after_op} (?5, ?6, ?7))
                         ORDER BY {isk} {order}, pk {order}, sk {order} LIMIT ?8"
                    ))
                    .map_err(unavailable)?;
                let (a_isk, a_pk, a_sk) = match after {
                    Some(r) => (Some(r.isk.unwrap_or_default()), Some(r.pk), Some(r.sk)),
                    None => (None, None, None),
                };
                let items = stmt
                    .query_map(
                        params![
                            q.pk,
                            lower_of(&q),
                            prefix_end(&q.prefix),
                            upper_of(&q),
                            a_isk,
                            a_pk,
                            a_sk,
                            (limit + 1) as i64
                        ],
                        item_of,
                    )
                    .map_err(unavailable)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(unavailable)?;
                Ok(page_of(items, limit, Some(index), false))
            })
            .await
    }

    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        self.db
            .call(move |c| {
                c.execute(
                    "DELETE FROM items WHERE expires_at IS NOT NULL AND expires_at <= ?1",
                    params![now],
                )
                .map(|n| n as u64)
                .map_err(unavailable)
            })
            .await
    }
}

/// A query's range start as one bound the index can seek to: the prefix, or `lower` when
/// later (an `?x IS NULL OR` condition would make SQLite scan from the prefix instead).
fn lower_of(q: &Query) -> String {
    match &q.lower {
        Some(l) if l.as_str() > q.prefix.as_str() => l.clone(),
        _ => q.prefix.clone(),
    }
}

/// A query's inclusive range end: `upper`, or the end of the prefix (excluded by the
/// `< prefix_end` condition beside it).
fn upper_of(q: &Query) -> String {
    q.upper.clone().unwrap_or_else(|| prefix_end(&q.prefix))
}
