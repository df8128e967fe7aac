//! The rooms runtime: one task per live room, owning its document and sessions outright.
//!
//! Everything else talks to a room through a cloneable [`RoomHandle`] (a bounded command channel),
//! so a room is serialized without locks and one socket's frames are handled in order. The
//! [`RoomManager`] creates each room exactly once, evicts it when idle, and closes all on shutdown.

mod journal;
mod manager;
mod registry;
mod room;
mod runtime;
mod schedule;
mod session;
mod tasks;

pub use journal::JournalConfig;
pub(crate) use journal::{panicked, Journal};
pub use manager::{JoinError, RoomConfig, RoomManager, DEFAULT_STORAGE_QUEUE_BYTES};
pub use registry::ShuttingDown;
pub(crate) use registry::{ClosingGuard, Registry};
pub(crate) use room::send_command;
pub use room::RoomHandle;
pub(crate) use runtime::{serve, RoomTask, Step};
pub use schedule::Schedule;
pub(crate) use session::Delivery;
pub use session::{CloseReason, LinkEvent, NewSession, Outbox, SessionInfo, SessionLink};
pub use tasks::Tasks;

#[cfg(test)]
mod tests;
