//! weft: a room server for real-time collaboration.
//!
//! Layers, top to bottom; imports only point down:
//! - [`app`]: wiring: settings -> storage -> one [`rooms::RoomManager`] (with the canvas and
//!   game protocols' doors to it: [`protocols::canvas::CanvasRooms`],
//!   [`protocols::game::GameRooms`]) -> HTTP server -> graceful shutdown. [`config`] holds the settings tree,
//!   [`telemetry`] the logging. (The `weft snapshot` CLI lives with the binary, in `src/cli/`.)
//! - [`transport`]: actix-web routes for HTTP; WebSocket upgrades taken off actix-http onto
//!   weft's own socket, and one session loop (limits, heartbeat, rate, delivery) shared by the
//!   canvas and game endpoints, which decode their own frames. [`auth`]: who may connect where.
//! - [`protocols`]: the canvas-store protocol and the game-room protocol (EdgeBase Rooms, the
//!   Colyseus room model): wire types, and each one's room task on the runtime.
//! - [`rooms`]: the runtime under both: the one manager of live rooms by room key, one room task
//!   shape, the journal (appends under a write budget, frames held until durable, folds),
//!   deadlines, session outboxes, the task tracker.
//! - [`storage`]: bytes by room key (snapshot + log): RocksDB, JSON files + logs, memory.
//! - [`engine`]: the pure documents: per-field stamps, last-writer-wins, tombstones, diffs,
//!   replay of a stored snapshot + log; game states as stamped documents ([`engine::state`]).
//!
//! [`ids`] validates room and client ids; [`metrics`] counts what happens.

pub mod app;
pub mod auth;
pub mod config;
pub mod engine;
pub mod ids;
pub mod metrics;
pub mod protocols;
pub mod rooms;
pub mod storage;
pub mod telemetry;
pub mod transport;
