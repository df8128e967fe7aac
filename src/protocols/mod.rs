//! The two protocols on the rooms runtime: each has its wire types (with JSON Schemas in
//! `schemas/`) and its room task, which implements [`crate::rooms::RoomTask`].
//! - [`canvas`]: the canvas-store protocol (`@woven-ecs/canvas-store`), [`canvas::RoomManager`];
//! - [`game`]: the game-room protocol (EdgeBase Rooms, the Colyseus room model), [`game::GameRooms`].

pub mod canvas;
pub mod game;
