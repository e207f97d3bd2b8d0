//! The durable local queue on SQLite, with SQS's semantics.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::params;
use voyage_core::ports::queue::MAX_DELAY;
use voyage_core::ports::{Queue, QueueError, ReceivedMessage};

use crate::db::Db;

/// A durable in-process queue with SQS's semantics: per-message delay (at most 15 min),
/// visibility timeout, receive count, and a dead-letter table after `max_receives`.
#[derive(Clone)]
pub struct SqliteQueue {
    db: Arc<Db>,
    name: String,
    visibility_timeout: Duration,
    max_receives: u32,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn unavailable(e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(format!("sqlite queue: {e}"))
}

/// How often a waiting consumer looks for messages sent by other processes.
const POLL: Duration = Duration::from_millis(200);

impl SqliteQueue {
    /// `visibility_timeout`: how long a received message stays hidden before it is offered
    /// again; `max_receives`: receives after which it is dead-lettered.
    pub fn new(db: Arc<Db>, name: &str, visibility_timeout: Duration, max_receives: u32) -> Self {
        SqliteQueue {
            db,
            name: name.to_string(),
            visibility_timeout,
            max_receives: max_receives.max(1),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bodies of this queue's dead letters, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<String>, QueueError> {
        let name = self.name.clone();
        self.db
            .read(move |c| {
                let mut stmt = c
                    .prepare(
                        "SELECT body FROM dead_letters WHERE queue = ?1 ORDER BY failed_at_ms, id",
                    )
                    .map_err(crate::db::unavailable)?;
                let rows = stmt
                    .query_map(params![name], |r| r.get::<_, String>(0))
                    .map_err(crate::db::unavailable)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(crate::db::unavailable)?;
                Ok(rows)
            })
            .await
            .map_err(unavailable)
    }

    /// How many dead letters this queue has, and the ids of the oldest `first` of them.
    pub async fn dead_letter_summary(
        &self,
        first: usize,
    ) -> Result<(u64, Vec<String>), QueueError> {
        let name = self.name.clone();
        self.db
            .read(move |c| {
                let count = c
                    .query_row(
                        "SELECT COUNT(*) FROM dead_letters WHERE queue = ?1",
                        params![name],
                        |r| r.get::<_, i64>(0),
                    )
                    .map_err(crate::db::unavailable)?;
                let mut stmt = c
                    .prepare(
                        "SELECT id FROM dead_letters WHERE queue = ?1
                         ORDER BY failed_at_ms, id LIMIT ?2",
                    )
                    .map_err(crate::db::unavailable)?;
                let ids = stmt
                    .query_map(params![name, first as i64], |r| r.get::<_, String>(0))
                    .map_err(crate::db::unavailable)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(crate::db::unavailable)?;
                Ok((count.max(0) as u64, ids))
            })
            .await
            .map_err(unavailable)
    }

    /// Moves every dead letter of this queue back to it (visible at once, receive count
    /// reset, the same id), in one transaction; returns how many moved. What SQS's
    /// dead-letter redrive does, for `voyage dlq redrive`.
    pub async fn redrive_dead_letters(&self) -> Result<u64, QueueError> {
        let name = self.name.clone();
        let moved = self
            .db
            .call(move |c| {
                let now = now_ms();
                let moved = c
                    .execute(
                        "INSERT OR REPLACE INTO queue_messages (id, queue, body, visible_at_ms, receive_count, receipt, sent_at_ms)
                         SELECT id, queue, body, ?2, 0, NULL, ?2 FROM dead_letters WHERE queue = ?1",
                        params![name, now],
                    )
                    .map_err(crate::db::unavailable)?;
                c.execute("DELETE FROM dead_letters WHERE queue = ?1", params![name])
                    .map_err(crate::db::unavailable)?;
                Ok(moved as u64)
            })
            .await
            .map_err(unavailable)?;
        self.db.sent.notify_waiters();
        Ok(moved)
    }

    /// Messages waiting (visible or not), for status output.
    pub async fn depth(&self) -> Result<u64, QueueError> {
        let name = self.name.clone();
        self.db
            .read(move |c| {
                c.query_row(
                    "SELECT COUNT(*) FROM queue_messages WHERE queue = ?1",
                    params![name],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n as u64)
                .map_err(crate::db::unavailable)
            })
            .await
            .map_err(unavailable)
    }

    /// Receives what is visible now; when nothing is, also answers when the next message of
    /// this queue becomes visible (Unix ms), so a waiting consumer wakes for it on time.
    async fn receive_now(
        &self,
        max: usize,
    ) -> Result<(Vec<ReceivedMessage>, Option<i64>), QueueError> {
        let name = self.name.clone();
        let hide_ms = self.visibility_timeout.as_millis() as i64;
        let max_receives = self.max_receives as i64;
        self.db
            .call(move |c| {
                let tx = c;
                let now = now_ms();
                let mut out = Vec::new();
                {
                    let mut select = tx
                        .prepare_cached(
                            "SELECT id, body, receive_count FROM queue_messages
                             WHERE queue = ?1 AND visible_at_ms <= ?2
                             ORDER BY visible_at_ms, id LIMIT ?3",
                        )
                        .map_err(crate::db::unavailable)?;
                    let rows = select
                        .query_map(params![name, now, (max * 2) as i64], |r| {
                            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
                        })
                        .map_err(crate::db::unavailable)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map_err(crate::db::unavailable)?;
                    for (id, body, count) in rows {
                        if out.len() >= max {
                            break;
                        }
                        if count >= max_receives {
                            // Received and released max times already: dead-letter it, as
                            // SQS's redrive policy does on the next receive.
                            tx.execute(
                                "INSERT OR REPLACE INTO dead_letters (id, queue, body, receive_count, failed_at_ms)
                                 VALUES (?1, ?2, ?3, ?4, ?5)",
                                params![id, name, body, count, now],
                            )
                            .map_err(crate::db::unavailable)?;
                            tx.execute("DELETE FROM queue_messages WHERE id = ?1", params![id])
                                .map_err(crate::db::unavailable)?;
                            tracing::warn!(queue = %name, message_id = %id, receives = count, "message dead-lettered");
                            continue;
                        }
                        let receipt = ulid::Ulid::new().to_string();
                        tx.prepare_cached(
                            "UPDATE queue_messages SET receive_count = receive_count + 1,
                                    visible_at_ms = ?2, receipt = ?3 WHERE id = ?1",
                        )
                        .map_err(crate::db::unavailable)?
                        .execute(params![id, now + hide_ms, receipt])
                        .map_err(crate::db::unavailable)?;
                        out.push(ReceivedMessage {
                            id,
                            receipt,
                            body,
                            receive_count: (count + 1) as u32,
                        });
                    }
                }
                let next_visible = if out.is_empty() {
                    tx.prepare_cached(
                        "SELECT MIN(visible_at_ms) FROM queue_messages WHERE queue = ?1",
                    )
                    .map_err(crate::db::unavailable)?
                    .query_row(params![name], |r| r.get::<_, Option<i64>>(0))
                    .map_err(crate::db::unavailable)?
                } else {
                    None
                };
                Ok((out, next_visible))
            })
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn send(&self, body: &str, delay: Duration) -> Result<(), QueueError> {
        if delay > MAX_DELAY {
            return Err(QueueError::Rejected(format!(
                "delay {delay:?} exceeds {MAX_DELAY:?}"
            )));
        }
        let name = self.name.clone();
        let body = body.to_string();
        let id = ulid::Ulid::new().to_string();
        self.db
            .call(move |c| {
                let now = now_ms();
                c.prepare_cached(
                    "INSERT INTO queue_messages (id, queue, body, visible_at_ms, sent_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(crate::db::unavailable)?
                .execute(params![id, name, body, now + delay.as_millis() as i64, now])
                .map_err(crate::db::unavailable)?;
                Ok(())
            })
            .await
            .map_err(unavailable)?;
        self.db.sent.notify_waiters();
        Ok(())
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let max = max.clamp(1, 10);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register for the wake-up *before* looking, so a send that lands between the
            // look and the wait is not missed (it would otherwise cost a whole poll interval).
            let notified = self.db.sent.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (got, next_visible) = self.receive_now(max).await?;
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            // A delayed message of this process's queue wakes us when it becomes visible.
            let until_visible = next_visible
                .map(|at| Duration::from_millis((at - now_ms()).max(1) as u64))
                .unwrap_or(POLL);
            let nap = POLL.min(until_visible).min(deadline - now);
            // A send in this process wakes us at once; one from another process within POLL.
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        let receipt = receipt.to_string();
        self.db
            .call(move |c| {
                c.execute(
                    "DELETE FROM queue_messages WHERE receipt = ?1",
                    params![receipt],
                )
                .map_err(crate::db::unavailable)?;
                Ok(())
            })
            .await
            .map_err(unavailable)
    }

    async fn release(&self, receipt: &str, delay: Duration) -> Result<(), QueueError> {
        let receipt = receipt.to_string();
        let delay_ms = delay.min(MAX_DELAY).as_millis() as i64;
        self.db
            .call(move |c| {
                c.execute(
                    "UPDATE queue_messages SET visible_at_ms = ?2, receipt = NULL WHERE receipt = ?1",
                    params![receipt, now_ms() + delay_ms],
                )
                .map_err(crate::db::unavailable)?;
                Ok(())
            })
            .await
            .map_err(unavailable)?;
        self.db.sent.notify_waiters();
        Ok(())
    }
}
