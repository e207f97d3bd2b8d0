//! The SQLite database shared by the local adapters: one writer thread that group-commits,
//! a few read-only connections, and a background checkpointer.
//!
//! The write-ahead log is restarted (written again from its start) under any load. SQLite
//! restarts it only when a write transaction begins with every frame already checkpointed;
//! under steady writes a background checkpoint never catches up with the writer, so the log
//! grew without end (hundreds of MiB in a minute of webhook traffic). Now, once the log holds
//! [`DbOptions::restart_frames`], the checkpointer catches up (two passes) and asks the
//! writer to checkpoint the last few frames itself between two groups, once per request,
//! waiting a few milliseconds for readers still on the log; its next commit then writes the
//! log from the start. The file is kept at most
//! [`DbOptions::size_limit`] bytes after a restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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

type Sender = tokio::sync::oneshot::Sender<WriteResult>;

struct WriteJob {
    work: WriteFn,
    done: Sender,
}

/// Most calls one commit carries.
const GROUP_LIMIT: usize = 256;

/// When the write-ahead log is restarted, how large its file may stay, and how long a write
/// waits for another process's lock.
#[derive(Debug, Clone, Copy)]
pub struct DbOptions {
    /// Frames (pages) in the log after which it is restarted.
    pub restart_frames: i64,
    /// Bytes the log file is cut back to at a restart (`journal_size_limit`).
    pub size_limit: i64,
    /// How often the background checkpointer runs.
    pub checkpoint_every: std::time::Duration,
    /// How long a connection waits for another process's lock (`voyage keys create` beside
    /// `voyage serve`) before failing.
    pub busy_timeout: std::time::Duration,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            // 32 MiB of 4 KiB pages: a restart every few seconds under full load, rarely
            // otherwise.
            restart_frames: 8192,
            size_limit: 64 * 1024 * 1024,
            checkpoint_every: std::time::Duration::from_millis(500),
            busy_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// A PASSIVE checkpoint: copies what it can to the database file without waiting for, or
/// blocking, readers or the writer. Answers the frames in the log.
fn checkpoint(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
}

/// One SQLite database shared by the table, queues and bus of a process.
///
/// Writes go to one writer thread that owns the write connection and *group-commits*: it
/// drains every call waiting at that moment into one `BEGIN IMMEDIATE ... COMMIT` (a call that
/// fails before writing, such as a failed condition, fails alone; see `write_loop`). A call is answered only after the commit that carries it, so durability per call
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
        Self::open_with(dir, DbOptions::default())
    }

    /// [`Db::open`] with these options (tests use small ones).
    pub fn open_with(dir: &Path, options: DbOptions) -> Result<Arc<Db>, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(unavailable)?;
        // Another process (`voyage keys create` beside `voyage serve`) may hold the write
        // lock for a moment: wait for it rather than fail.
        conn.busy_timeout(options.busy_timeout)
            .map_err(unavailable)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open(&path).map_err(unavailable)?;
            r.busy_timeout(options.busy_timeout).map_err(unavailable)?;
            r.execute_batch("PRAGMA query_only = ON;")
                .map_err(unavailable)?;
            readers.push(Mutex::new(r));
        }
        // Checkpoints (and their fsync) happen off the write path: a background connection
        // runs a PASSIVE checkpoint, which never blocks writers, every half second; the writer
        // runs one itself only before a restart of the log, for the last few frames
        // (`restart_log`).
        conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {};",
            options.size_limit
        ))
        .map_err(unavailable)?;
        let checkpointer = Connection::open(&path).map_err(unavailable)?;
        let alive = Arc::new(());
        let watch = Arc::downgrade(&alive);
        let restart = Arc::new(AtomicBool::new(false));
        let wanted = Arc::clone(&restart);
        std::thread::Builder::new()
            .name("voyage-sqlite-checkpoint".into())
            .spawn(move || {
                // Ends with its database (the last strong reference is the Db's).
                while watch.strong_count() > 0 {
                    std::thread::sleep(options.checkpoint_every);
                    match checkpoint(&checkpointer) {
                        Ok(log) if log >= options.restart_frames => {
                            // Copy what was written during that pass too, so the writer's
                            // own pass before the restart is short.
                            let _ = checkpoint(&checkpointer);
                            wanted.store(true, Ordering::Release);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "wal checkpoint failed"),
                    }
                }
            })
            .map_err(|e| unavailable(format!("cannot start the checkpointer: {e}")))?;
        let (tx, rx) = std::sync::mpsc::channel::<WriteJob>();
        std::thread::Builder::new()
            .name("voyage-sqlite-writer".into())
            .spawn(move || write_loop(conn, rx, restart, options.busy_timeout))
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

/// How long the writer's checkpoint before a restart waits for locks: for readers still
/// reading the log (point reads and short pages: microseconds) or another process's write,
/// so the next commit finds the log unused and writes it from its start. The copy of the
/// remaining frames and its fsyncs come on top, as they did with a passive pass.
const RESTART_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// The writer's part of restarting the log (see the module docs): between two groups, with
/// no transaction open, it checkpoints the frames the checkpointer has not in RESTART mode,
/// which waits (for locks, at most [`RESTART_WAIT`]) for the readers still on the log to finish, so the
/// next transaction begins with the whole log in the database file and no reader on it, and
/// SQLite writes its frames from the start of the log. A passive pass instead left the restart
/// to chance: a point read begun before the last commit, still running, held it back, and
/// under steady reads most passes were (the log grew to 40 MiB against a 1 MiB restart in
/// CI). A pass that could not finish (the checkpointer held the lock, or a reader outlasted
/// the wait) is not tried again before every group: the checkpointer asks again while the log
/// stays long.
fn restart_log(conn: &Connection, wanted: &AtomicBool, busy_timeout: std::time::Duration) {
    if !wanted.swap(false, Ordering::AcqRel) {
        return;
    }
    let restarted = conn.busy_timeout(RESTART_WAIT).and_then(|()| {
        conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0))
    });
    match restarted {
        // The checkpointer's pass held the lock, or a reader outlasted the wait.
        Ok(busy) if busy != 0 => tracing::debug!("wal restart held back; asked again later"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "wal checkpoint before a restart failed"),
    }
    if let Err(e) = conn.busy_timeout(busy_timeout) {
        tracing::warn!(error = %e, "cannot set the writer's busy timeout back");
    }
}

/// The writer thread: one transaction per group of waiting calls.
///
/// A call runs without a savepoint of its own (a savepoint copies every page a call first
/// touches into a sub-journal, which cost the writer about a sixth of its time): a call that
/// fails having written nothing (a failed condition is checked before any write) leaves the
/// transaction as it was and fails alone. A call that fails after writing (an I/O error, a
/// full disk, a panic), or during which SQLite ended the transaction itself, cannot be undone
/// alone: the transaction is rolled back, every call it carried is answered with the error,
/// and the calls after it begin a new transaction. When `BEGIN` itself fails (another process
/// held the lock past the busy timeout) the whole group fails at once.
fn write_loop(
    conn: Connection,
    jobs: std::sync::mpsc::Receiver<WriteJob>,
    restart: Arc<AtomicBool>,
    busy_timeout: std::time::Duration,
) {
    while let Ok(first) = jobs.recv() {
        restart_log(&conn, &restart, busy_timeout);
        let mut group = vec![first];
        while group.len() < GROUP_LIMIT {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        run_group(&conn, group);
    }
}

/// Runs one group of calls in as few transactions as it takes (one, unless a call fails
/// after writing) and answers each after the commit that carries it.
fn run_group(conn: &Connection, group: Vec<WriteJob>) {
    let mut answers: Vec<(Sender, WriteResult)> = Vec::with_capacity(group.len());
    let mut open = false;
    let mut jobs = group.into_iter();
    while let Some(job) = jobs.next() {
        if !open {
            if let Err(e) = run_cached(conn, "BEGIN IMMEDIATE") {
                // Another process held the write lock past the busy timeout: the calls after
                // this one would each wait that long again, in turn. Fail them all now.
                let why = e.to_string();
                for waiting in std::iter::once(job).chain(jobs.by_ref()) {
                    let _ = waiting.done.send(Err(unavailable(&why)));
                }
                break;
            }
            open = true;
        }
        let before = conn.total_changes();
        let work = job.work;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(conn)))
            .unwrap_or_else(|_| Err(unavailable("a store call panicked")));
        // SQLite ends the transaction itself on some errors (a full disk, an I/O error, no
        // memory), having undone it; a call that failed after writing is undone here.
        let ended = conn.is_autocommit();
        if ended || (result.is_err() && conn.total_changes() != before) {
            if !ended {
                let _ = conn.execute_batch("ROLLBACK");
            }
            open = false;
            let why = match &result {
                Err(e) => e.to_string(),
                Ok(_) => "the transaction ended under the call".to_string(),
            };
            for (done, _) in answers.drain(..) {
                let _ = done.send(Err(unavailable(format!(
                    "rolled back with a call that failed: {why}"
                ))));
            }
            let _ = job.done.send(match result {
                Err(e) => Err(e),
                Ok(_) => Err(unavailable(why)),
            });
            continue;
        }
        answers.push((job.done, result));
    }
    if !open {
        return;
    }
    match run_cached(conn, "COMMIT") {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn row_count(db: &Db, pk: &str) -> i64 {
        let conn = db.readers[0].lock().unwrap();
        conn.query_row("SELECT COUNT(*) FROM items WHERE pk = ?1", [pk], |r| {
            r.get(0)
        })
        .unwrap()
    }

    /// A call that puts one item of `pk` and then answers `fail`.
    fn put_then(
        db: &Arc<Db>,
        pk: &'static str,
        fail: bool,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> {
        let db = Arc::clone(db);
        async move {
            db.call(move |c| {
                c.execute(
                    "INSERT INTO items (pk, sk, version, data) VALUES (?1, ?2, 1, '{}')",
                    rusqlite::params![pk, ulid::Ulid::new().to_string()],
                )
                .map_err(unavailable)?;
                if fail {
                    Err(unavailable("failed after writing"))
                } else {
                    Ok(())
                }
            })
            .await
        }
    }

    /// Holds the writer until the answered flag is set, so the calls sent meanwhile make one
    /// group; answers once the writer is held.
    async fn hold_writer(db: &Arc<Db>) -> (tokio::task::JoinHandle<()>, Arc<AtomicBool>) {
        let (held, release) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (db, h, r) = (Arc::clone(db), Arc::clone(&held), Arc::clone(&release));
        let holder = tokio::spawn(async move {
            let _ = db
                .call(move |_| {
                    h.store(true, Ordering::SeqCst);
                    while !r.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Ok(())
                })
                .await;
        });
        while !held.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (holder, release)
    }

    /// Lets a held writer go (polled after the calls of its `join!` were sent).
    async fn let_go(release: &AtomicBool) {
        release.store(true, Ordering::SeqCst);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_failing_before_any_write_fails_alone_and_its_group_commits() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let (holder, release) = hold_writer(&db).await;
        let refused = {
            let db = Arc::clone(&db);
            async move { db.call(|_| Err::<(), _>(StoreError::ConditionFailed)).await }
        };
        let (a, refused, b, ()) = tokio::join!(
            put_then(&db, "A", false),
            refused,
            put_then(&db, "B", false),
            let_go(&release)
        );
        holder.await.unwrap();
        assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
        assert!(matches!(refused, Err(StoreError::ConditionFailed)));
        assert_eq!((row_count(&db, "A"), row_count(&db, "B")), (1, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_failing_after_writing_undoes_its_group_and_every_call_of_it_hears_so() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let (holder, release) = hold_writer(&db).await;
        let (before, failing, ()) = tokio::join!(
            put_then(&db, "A", false),
            put_then(&db, "F", true),
            let_go(&release)
        );
        holder.await.unwrap();
        // Both ran in one group: the failed call's row and the call before it are undone,
        // and neither is told it was stored.
        assert!(failing.is_err());
        assert!(before.is_err(), "a rolled-back call was answered Ok");
        assert_eq!((row_count(&db, "A"), row_count(&db, "F")), (0, 0));
        // The writer goes on: the next call commits.
        put_then(&db, "C", false).await.unwrap();
        assert_eq!(row_count(&db, "C"), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_call_is_answered_stored_unless_its_write_is_there_when_the_disk_fills() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        put_then(&db, "seed", false).await.unwrap();
        // No more pages: a large row cannot be stored, and SQLite may end the whole
        // transaction it ran in (SQLITE_FULL).
        db.call(|c| {
            let pages: i64 = c
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .map_err(unavailable)?;
            c.execute_batch(&format!("PRAGMA max_page_count = {pages}"))
                .map_err(unavailable)
        })
        .await
        .unwrap();
        let big = |db: &Arc<Db>| {
            let db = Arc::clone(db);
            async move {
                db.call(|c| {
                    c.execute(
                        "INSERT INTO items (pk, sk, version, data) VALUES ('F', 'f', 1, ?1)",
                        ["x".repeat(200_000)],
                    )
                    .map(|_| ())
                    .map_err(unavailable)
                })
                .await
            }
        };
        let (holder, release) = hold_writer(&db).await;
        let (a, f, b, ()) = tokio::join!(
            put_then(&db, "A", false),
            big(&db),
            put_then(&db, "B", false),
            let_go(&release)
        );
        holder.await.unwrap();
        assert!(f.is_err());
        // Whatever SQLite undid, a call told Ok has its row, and one told Err has none.
        for (pk, answer) in [("A", &a), ("B", &b)] {
            assert_eq!(
                row_count(&db, pk),
                i64::from(answer.is_ok()),
                "{pk} answered {answer:?}"
            );
        }
        assert_eq!(row_count(&db, "F"), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_that_cannot_take_the_write_lock_fails_at_once_not_call_by_call() {
        let dir = tempfile::tempdir().unwrap();
        let wait = Duration::from_millis(300);
        let options = DbOptions {
            busy_timeout: wait,
            ..DbOptions::default()
        };
        let db = Db::open_with(dir.path(), options).unwrap();
        put_then(&db, "seed", false).await.unwrap();
        // Another process holds the write lock throughout.
        let other = Connection::open(dir.path().join(DB_FILE)).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let started = Instant::now();
        let calls: Vec<_> = (0..8).map(|_| put_then(&db, "A", false)).collect();
        let answers = futures_join_all(calls).await;
        let took = started.elapsed();
        other.execute_batch("ROLLBACK").unwrap();
        assert!(answers.iter().all(|a| a.is_err()), "{answers:?}");
        // One wait per group (the eight calls make one or two), not one per call (eight).
        assert!(took < wait * 5, "eight refused calls took {took:?}");
        assert_eq!(row_count(&db, "A"), 0);
    }

    /// Awaits every future, polling them together (each sends its call on its first poll).
    async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
        let mut set = Vec::new();
        for f in futures {
            set.push(Box::pin(f));
        }
        let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (i, f) in set.iter_mut().enumerate() {
                if out[i].is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => out[i] = Some(v),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        out.into_iter().flatten().collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_continuous_writes_the_write_ahead_log_is_restarted_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let options = DbOptions {
            restart_frames: 256,
            size_limit: 2 * 1024 * 1024,
            checkpoint_every: Duration::from_millis(20),
            ..DbOptions::default()
        };
        let db = Db::open_with(dir.path(), options).unwrap();
        let wal = dir.path().join(format!("{DB_FILE}-wal"));
        // Eight writers with no pause between their calls: some call always waits, so the
        // log is never idle at a checkpoint (SQLite alone would not restart it).
        const WRITES: u64 = 30_000;
        let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut writers = Vec::new();
        for _ in 0..8 {
            let (db, written) = (Arc::clone(&db), Arc::clone(&written));
            writers.push(tokio::spawn(async move {
                while written.fetch_add(1, Ordering::Relaxed) < WRITES {
                    db.call(|c| {
                        c.execute(
                            "INSERT INTO items (pk, sk, version, data) VALUES ('W', ?1, 1, ?2)",
                            rusqlite::params![ulid::Ulid::new().to_string(), "x".repeat(600)],
                        )
                        .map(|_| ())
                        .map_err(unavailable)
                    })
                    .await
                    .unwrap();
                }
            }));
        }
        // Point reads all the while, as dispatches and workers make them: a reader on an old
        // snapshot holds a checkpoint back, yet the log is still restarted.
        let reading = Arc::new(AtomicBool::new(true));
        let mut readers = Vec::new();
        for _ in 0..4 {
            let (db, reading) = (Arc::clone(&db), Arc::clone(&reading));
            readers.push(tokio::spawn(async move {
                while reading.load(Ordering::Relaxed) {
                    db.read(|c| {
                        c.query_row(
                            "SELECT COUNT(*) FROM items WHERE pk = 'W' AND sk = ?1",
                            [ulid::Ulid::new().to_string()],
                            |r| r.get::<_, i64>(0),
                        )
                        .map_err(unavailable)
                    })
                    .await
                    .unwrap();
                    tokio::task::yield_now().await;
                }
            }));
        }
        let started = Instant::now();
        let mut largest = 0;
        // The log header's checkpoint sequence number (bytes 12..16, big-endian) rises by one
        // at each restart: a count that does not depend on how fast the disk is.
        let sequence = |wal: &Path| -> Option<u32> {
            use std::io::Read;
            let mut header = [0u8; 16];
            std::fs::File::open(wal)
                .ok()?
                .read_exact(&mut header)
                .ok()?;
            Some(u32::from_be_bytes([
                header[12], header[13], header[14], header[15],
            ]))
        };
        let mut sequences = std::collections::BTreeSet::new();
        while writers.iter().any(|w| !w.is_finished()) {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the writes never ended"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
            sequences.extend(sequence(&wal));
        }
        for w in writers {
            w.await.unwrap();
        }
        reading.store(false, Ordering::Relaxed);
        for r in readers {
            r.await.unwrap();
        }
        // The log was written from its start again and again (seen: one restart per
        // checkpointer period, dozens in a run; a slow disk makes the periods longer)...
        assert!(
            sequences.len() >= 3,
            "the log was restarted {} times over {WRITES} writes",
            sequences.len().saturating_sub(1)
        );
        // ...so it never held more than a fraction of the 30,000 commits' frames (without the
        // restart it ends well over 100 MiB; seen here: 5-14 MiB against a 1 MiB restart).
        assert!(
            largest < 64 * 1024 * 1024,
            "the log grew to {largest} bytes over {WRITES} writes"
        );
    }
}
