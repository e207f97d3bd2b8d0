//! The capabilities the domain needs from outside. Each is a small trait; adapters implement
//! them (SQLite and DynamoDB tables, in-process and SQS queues, in-process and EventBridge
//! buses). In-memory versions live here for unit tests and as the reference behaviour.

pub mod bus;
pub mod clock;
pub mod memory;
pub mod queue;
pub mod table;

pub use bus::{BusError, BusEvent, EventBus};
pub use clock::{Clock, ManualClock, SystemClock};
pub use queue::{Queue, QueueError, ReceivedMessage};
pub use table::{Condition, Index, Item, Key, Page, Query, StoreError, Table, TxWrite};
