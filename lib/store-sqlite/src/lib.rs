//! The embedded adapters of the local system, on one SQLite file.
//!
//! Why SQLite (and not redb): `voyage keys create` and `voyage jobs run` must work while
//! `voyage serve` holds the same data directory, and SQLite in WAL mode lets several
//! processes share one database safely; redb takes an exclusive lock. `synchronous=FULL`
//! makes every committed write survive a `kill -9` and a power cut.

mod bus;
mod db;
mod queue;
mod table;

pub use bus::SqliteBus;
pub use db::Db;
pub use queue::SqliteQueue;
pub use table::SqliteTable;
