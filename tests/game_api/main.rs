//! Integration tests of the game room endpoint (EdgeBase Rooms v2: `GET /api/room?namespace=&id=`,
//! `GET /api/room/metadata`, `POST /api/room/matchmake`): the real server, in process on port 0,
//! with test namespaces defined here, driven over real WebSockets and asserted frame by frame.
//! Every frame received is also validated against its JSON Schema in `schemas/game/`.
//!
//! - `connection`: auth (success, failure, timeout, refresh), frames before auth, invalid JSON,
//!   unknown types, app-level and WebSocket-level ping, binary and oversized frames.
//! - `actions`: `send` refusals (NOT_JOINED, INVALID_ACTION, NO_HANDLER), handler errors and
//!   timeouts, the token bucket, `maxStateSize`.
//! - `rooms`: join and `sync`, deltas and versions, player and server state, messages, leave,
//!   kick, reconnect within the grace period, eviction and restore, timers.
//! - `durability`: frames wait until the writes they show are stored; a failed write is never
//!   acked.
//! - `http`: the upgrade's refusals (404, 400, ROOM_FULL 403), ROOM_FULL and JOIN_DENIED at join,
//!   the metadata endpoint, matchmaking.

mod actions;
mod connection;
mod durability;
mod helpers;
mod http;
mod rooms;
