//! weft: a room server for real-time collaboration.
//!
//! Layers, top to bottom; imports only point down:
//! - [`app`]: wiring: settings -> storage -> authorizer -> [`rooms::RoomManager`] -> HTTP server
//!   -> graceful shutdown. [`config`] holds the settings tree, [`telemetry`] the logging.
//! - [`snapshot_cli`]: `weft snapshot`: export, import, inspect, restore `<roomId>.json` snapshots.
//! - [`transport`]: actix-web routes for HTTP; WebSocket upgrades taken off actix-http onto
//!   weft's own socket, and one session loop (limits, heartbeat, rate, delivery) shared by the
//!   canvas and game endpoints, which decode their own frames.
//! - [`auth`]: who may connect where: none (development), a token table, or JWT.
//! - [`game`]: game rooms (EdgeBase Rooms protocol, Colyseus room model): namespaces, the
//!   handler trait and builder, one task per room, matchmaking.
//! - [`rooms`]: the runtime: one task per room, sessions, persistence schedule, idle eviction.
//! - [`protocol`]: wire types of the canvas-store protocol (JSON Schemas in `schemas/`).
//! - [`storage`]: bytes by room key (snapshot + log): RocksDB, JSON files + logs, memory.
//! - [`engine`]: the pure documents: per-field stamps, last-writer-wins, tombstones, diffs,
//!   replay of a stored snapshot + log; game states as stamped documents ([`engine::state`]).
//!
//! [`ids`] validates room and client ids; [`metrics`] counts what happens.

pub mod app;
pub mod auth;
pub mod config;
pub mod engine;
pub mod game;
pub mod ids;
pub mod metrics;
pub mod protocol;
pub mod rooms;
pub mod snapshot_cli;
pub mod storage;
pub mod telemetry;
pub mod transport;
