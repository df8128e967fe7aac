//! Game rooms: the EdgeBase Rooms model (shared, per-player and server-only state, actions,
//! messages, kicks, named timers, metadata, reconnect grace) and the Colyseus room model
//! (simulation tick, patch rate, clock callbacks, lock, max players, auto-dispose) on one API.
//!
//! A namespace is registered with its [`NamespaceOptions`] and a [`LogicFactory`] (a
//! [`RoomLogic`] implementation, or a [`RoomBuilder`] of closures). Each live room is one task
//! ([`room`]) that owns a [`RoomContext`] and handles one event at a time; [`GameRooms`] loads
//! them in the server's [`crate::rooms::RoomManager`], restores them within their TTL and
//! answers matchmaking.

mod context;
mod handle;
mod logic;
pub mod namespaces;
mod options;
mod record;
mod room;
mod rooms;
mod sender;
mod wakeups;
pub mod wire;

pub use context::{ClockId, RoomContext, StateError, MAX_STATE_DEPTH};
pub use handle::{RoomHandle, RoomStatus};
pub use logic::{HandlerError, HandlerResult, LeaveReason, LogicFactory, RoomBuilder, RoomLogic};
pub use options::NamespaceOptions;
pub use record::{
    load as load_stored_room, Entry, Op, RecordError, Restored, RestoredPlayer, RoomRecord,
    SavedSender, SavedTimer, MAX_RECORD_DEPTH,
};
pub use rooms::{GameRooms, JoinOutcome, Match, Namespace, Namespaces, RoomUnavailable};
pub use sender::Sender;
