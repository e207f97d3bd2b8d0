//! The SQLite database shared by the local adapters: one writer thread that group-commits,
//! a few read-only connections, and a background checkpointer.

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

type WriteResult = Result<Box<dyn std::any::Any + Send>, StoreError>;
type WriteFn = Box<dyn FnOnce(&Connection) -> WriteResult + Send>;

struct WriteJob {
    work: WriteFn,
    done: tokio::sync::oneshot::Sender<WriteResult>,
}

/// Most calls one commit carries.
const GROUP_LIMIT: usize = 256;

/// One SQLite database shared by the table, queues and bus of a process.
///
/// Writes go to one writer thread that owns the write connection and *group-commits*: it
/// drains every call waiting at that moment into one `BEGIN IMMEDIATE ... COMMIT`, each call
/// inside its own savepoint (a call that fails, such as a failed condition, is rolled back
/// alone). A call is answered only after the commit that carries it, so durability per call
/// is unchanged while the commit cost is shared. Reads go to a few read-only connections,
/// which in WAL mode never wait for the writer.
pub struct Db {
    writer: std::sync::mpsc::Sender<WriteJob>,
    /// Its drop tells the checkpointer thread to stop.
    _alive: Arc<()>,
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
        // Checkpoints (and their fsync) happen off the write path: the writer never runs
        // one itself; a background connection runs a PASSIVE checkpoint, which never blocks
        // writers, every half second.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")
            .map_err(unavailable)?;
        let checkpointer = Connection::open(&path).map_err(unavailable)?;
        let alive = Arc::new(());
        let watch = Arc::downgrade(&alive);
        std::thread::Builder::new()
            .name("voyage-sqlite-checkpoint".into())
            .spawn(move || {
                // Ends with its database (the last strong reference is the Db's).
                while watch.strong_count() > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(500));
                    if let Err(e) = checkpointer.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
                        tracing::warn!(error = %e, "wal checkpoint failed");
                    }
                }
            })
            .map_err(|e| unavailable(format!("cannot start the checkpointer: {e}")))?;
        let (tx, rx) = std::sync::mpsc::channel::<WriteJob>();
        std::thread::Builder::new()
            .name("voyage-sqlite-writer".into())
            .spawn(move || write_loop(conn, rx))
            .map_err(|e| unavailable(format!("cannot start the writer: {e}")))?;
        Ok(Arc::new(Db {
            writer: tx,
            _alive: alive,
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
        let start = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A free reader answers here and now: reads are point lookups and bounded pages
        // served from the page cache, shorter than a hop to the blocking pool.
        let n = self.readers.len();
        if let Some(guard) = (0..n).find_map(|i| self.readers[(start + i) % n].try_lock().ok()) {
            return f(&guard);
        }
        let db = Arc::clone(self);
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

    /// Runs `f` inside the writer's current transaction (see [`Db`]); answers after commit.
    pub(crate) async fn call<R, F>(self: &Arc<Self>, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (done, answer) = tokio::sync::oneshot::channel();
        let work: WriteFn =
            Box::new(move |c| f(c).map(|r| Box::new(r) as Box<dyn std::any::Any + Send>));
        self.writer
            .send(WriteJob { work, done })
            .map_err(|_| unavailable("the writer has stopped"))?;
        let result = answer
            .await
            .map_err(|_| unavailable("the writer dropped a call"))??;
        result
            .downcast::<R>()
            .map(|r| *r)
            .map_err(|_| unavailable("writer answered with the wrong type"))
    }
}

/// Runs one statement that takes no parameters, prepared once per connection.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// The writer thread: one transaction per group of waiting calls.
fn write_loop(conn: Connection, jobs: std::sync::mpsc::Receiver<WriteJob>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_LIMIT {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        if let Err(e) = run_cached(&conn, "BEGIN IMMEDIATE") {
            for job in group {
                let _ = job.done.send(Err(unavailable(&e)));
            }
            continue;
        }
        let mut answers = Vec::with_capacity(group.len());
        for job in group {
            // Cached statements: no SQL is parsed per call.
            let result = match run_cached(&conn, "SAVEPOINT call") {
                Err(e) => Err(unavailable(e)),
                Ok(()) => {
                    let work = job.work;
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&conn)))
                        .unwrap_or_else(|_| Err(unavailable("a store call panicked")));
                    let ended = if r.is_err() {
                        run_cached(&conn, "ROLLBACK TO call")
                            .and_then(|()| run_cached(&conn, "RELEASE call"))
                    } else {
                        run_cached(&conn, "RELEASE call")
                    };
                    match ended {
                        Ok(()) => r,
                        Err(e) => Err(unavailable(e)),
                    }
                }
            };
            answers.push((job.done, result));
        }
        match run_cached(&conn, "COMMIT") {
            Ok(()) => {
                for (done, result) in answers {
                    let _ = done.send(result);
                }
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                for (done, _) in answers {
                    let _ = done.send(Err(unavailable(&e)));
                }
            }
        }
    }
}
