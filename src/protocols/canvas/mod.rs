//! The canvas-store protocol: its wire frames ([`wire`]), the room task that applies them to a
//! room's document ([`RoomHandle`]), and the [`RoomManager`] of canvas rooms.

mod config;
mod manager;
mod room;
pub mod wire;

pub use config::{RoomConfig, DEFAULT_STORAGE_QUEUE_BYTES};
pub use manager::RoomManager;
pub use room::RoomHandle;

#[cfg(test)]
mod tests;
