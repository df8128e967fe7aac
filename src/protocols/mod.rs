//! The two protocols on the rooms runtime: each has its wire types (with JSON Schemas in
//! `schemas/`), its room task, which implements [`crate::rooms::RoomTask`], and its door to the
//! one [`crate::rooms::RoomManager`], which loads its rooms with its settings:
//! - [`canvas`]: the canvas-store protocol (`@woven-ecs/canvas-store`), [`canvas::CanvasRooms`];
//! - [`game`]: the game-room protocol (EdgeBase Rooms, the Colyseus room model), [`game::GameRooms`].

pub mod canvas;
pub mod game;
