//! The embedded adapters of the local system, on one SQLite file.
//!
//! Why SQLite (and not redb): `voyage keys create` and `voyage jobs run` must work while
//! `voyage serve` holds the same data directory, and SQLite in WAL mode lets several
//! processes share one database safely; redb takes an exclusive lock.
//!
//! Durability: WAL with `synchronous=NORMAL`. A commit is in the write-ahead log (the OS's
//! page cache) before it returns, so it survives the process being killed (`kill -9`,
//! tested) and restarted; an operating-system crash or power cut can lose the last commits
//! before a checkpoint. `FULL` (an fsync per commit) closes that window at about a tenth of
//! the throughput on the disks measured here; the local system is a single-machine tool, so
//! it takes the faster setting.

mod bus;
mod db;
mod queue;
mod table;

pub use bus::SqliteBus;
pub use db::{Db, DbOptions};
pub use queue::SqliteQueue;
pub use table::SqliteTable;
