use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use voyage_core::ports::StoreError;

/// The database file of a data directory.
pub const DB_FILE: &str = "voyage.db";

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS items (
    pk TEXT NOT NULL,
    sk TEXT NOT NULL,
    gsi1pk TEXT, gsi1sk TEXT,
    gsi2pk TEXT, gsi2sk TEXT,
    version INTEGER NOT NULL,
    expires_at INTEGER,
    data TEXT NOT NULL,
    PRIMARY KEY (pk, sk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS items_gsi1 ON items (gsi1pk, gsi1sk, pk, sk) WHERE gsi1pk IS NOT NULL;
CREATE INDEX IF NOT EXISTS items_gsi2 ON items (gsi2pk, gsi2sk, pk, sk) WHERE gsi2pk IS NOT NULL;
CREATE INDEX IF NOT EXISTS items_ttl ON items (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS queue_messages (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    visible_at_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    sent_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_visible ON queue_messages (queue, visible_at_ms);
CREATE UNIQUE INDEX IF NOT EXISTS queue_receipt ON queue_messages (receipt) WHERE receipt IS NOT NULL;

CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    receive_count INTEGER NOT NULL,
    failed_at_ms INTEGER NOT NULL
);
"#;

/// Read-only connections beside the writer. In WAL mode readers never wait for the writer,
/// so reads run in parallel with each other and with the one write in progress.
const READERS: usize = 4;

/// One SQLite database shared by the table, queues and bus of a process: one writer
/// connection (SQLite allows one writer at a time anyway; queuing here is cheaper than its
/// busy-wait) and a few readers.
pub struct Db {
    conn: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
    path: PathBuf,
    /// Wakes in-process queue consumers when a message is sent; other processes' sends are
    /// found by polling.
    pub(crate) sent: tokio::sync::Notify,
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

impl Db {
    /// Opens (creating when needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Arc<Db>, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(unavailable)?;
        // Another process (`voyage keys create` beside `voyage serve`) may hold the write
        // lock for a moment: wait for it rather than fail.
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(unavailable)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open(&path).map_err(unavailable)?;
            r.busy_timeout(std::time::Duration::from_secs(10))
                .map_err(unavailable)?;
            r.execute_batch("PRAGMA query_only = ON;")
                .map_err(unavailable)?;
            readers.push(Mutex::new(r));
        }
        Ok(Arc::new(Db {
            conn: Mutex::new(conn),
            readers,
            next_reader: std::sync::atomic::AtomicUsize::new(0),
            path,
            sent: tokio::sync::Notify::new(),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs a read-only `f` on one of the reader connections, off the async threads.
    pub(crate) async fn read<R, F>(self: &Arc<Self>, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let db = Arc::clone(self);
        let start = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            // Take a free reader if there is one, else wait for the next in turn.
            let n = db.readers.len();
            let guard = (0..n)
                .find_map(|i| db.readers[(start + i) % n].try_lock().ok())
                .map(Ok)
                .unwrap_or_else(|| db.readers[start % n].lock())
                .map_err(|_| unavailable("reader lock poisoned"))?;
            f(&guard)
        })
        .await
        .map_err(|e| unavailable(format!("worker failed: {e}")))?
    }

    /// Runs `f` on the writer connection off the async threads.
    pub(crate) async fn call<R, F>(self: &Arc<Self>, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let db = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut conn = db
                .conn
                .lock()
                .map_err(|_| unavailable("connection lock poisoned"))?;
            f(&mut conn)
        })
        .await
        .map_err(|e| unavailable(format!("worker failed: {e}")))?
    }
}
