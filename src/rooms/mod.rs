//! The rooms runtime, under both protocols: one task per live room, owning its state and
//! sessions outright.
//!
//! Everything else talks to a room through a cloneable handle (a bounded command channel), so a
//! room is serialized without locks and one socket's frames are handled in order.
//! - `manager`: the [`RoomManager`] of every live room, canvas and game, by room key: each
//!   loaded once, closed all at once at shutdown (`registry` keeps its map);
//! - `runtime`: the one loop every room runs ([`RoomTask`]);
//! - `journal`: a room's path to storage: appends under the write budget, frames held until
//!   durable, folds;
//! - `schedule`: deadlines by key; `session`: outboxes; `tasks`: the task tracker.
//!
//! The protocols' room tasks (`crate::protocols`) run on it.

mod journal;
mod manager;
mod registry;
mod runtime;
mod schedule;
mod session;
mod tasks;

pub use journal::JournalConfig;
pub(crate) use journal::{panicked, Journal};
pub use manager::{ClosingFold, LiveRoom, RoomManager};
pub(crate) use manager::{Registration, JOIN_ATTEMPTS};
pub use registry::ShuttingDown;
pub(crate) use runtime::{command_channel, send_command, serve, Ended, RoomTask, Step};
pub use schedule::Schedule;
#[cfg(test)]
pub(crate) use session::frame_cost;
pub(crate) use session::Delivery;
pub use session::{
    CloseReason, JoinError, LinkEvent, NewSession, Outbox, SessionInfo, SessionLink,
};
pub use tasks::Tasks;
