//! The canvas-store protocol: its wire frames ([`wire`]), the room task that applies them to a
//! room's document ([`RoomHandle`]), and [`CanvasRooms`], which loads canvas rooms in the
//! server's [`crate::rooms::RoomManager`].

mod config;
mod room;
mod rooms;
pub mod wire;

pub use config::RoomConfig;
pub use room::RoomHandle;
pub use rooms::CanvasRooms;

#[cfg(test)]
mod tests;
