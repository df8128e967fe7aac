//! The rooms runtime, under both protocols: one task per live room, owning its state and
//! sessions outright.
//!
//! Everything else talks to a room through a cloneable handle (a bounded command channel), so a
//! room is serialized without locks and one socket's frames are handled in order.
//! - `registry`: the live rooms by room key: each loaded once, closed all at once at shutdown;
//! - `runtime`: the one loop every room runs ([`RoomTask`]);
//! - `journal`: a room's path to storage: appends under the write budget, frames held until
//!   durable, folds;
//! - `schedule`: deadlines by key; `session`: outboxes; `tasks`: the task tracker;
//! - `manager` and `room`: the canvas rooms ([`RoomManager`] and their task).

mod config;
mod journal;
mod manager;
mod registry;
mod room;
mod runtime;
mod schedule;
mod session;
mod tasks;

pub use config::{RoomConfig, DEFAULT_STORAGE_QUEUE_BYTES};
pub use journal::JournalConfig;
pub(crate) use journal::{panicked, Journal};
pub use manager::RoomManager;
pub(crate) use registry::Registry;
pub use registry::ShuttingDown;
pub(crate) use room::send_command;
pub use room::RoomHandle;
pub(crate) use runtime::{serve, RoomTask, Step};
pub use schedule::Schedule;
pub(crate) use session::Delivery;
pub use session::{
    CloseReason, JoinError, LinkEvent, NewSession, Outbox, SessionInfo, SessionLink,
};
pub use tasks::Tasks;

#[cfg(test)]
mod tests;
