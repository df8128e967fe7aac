//! Integration tests: the real server, in process on port 0, driven over real WebSockets.
//! All integration tests compile into this one binary.
//!
//! - `protocol`: the canvas-store v2 wire contract, frame by frame.
//! - `sessions`: readonly sessions, token refresh, the room API's session controls.
//! - `auth`: token table and JWT authorization at connect.
//! - `bad_input`: what is ignored, what closes the socket (and with which code), and that nothing
//!   else is disturbed.
//! - `limits`: rate, connection caps, frame size, slow readers, heartbeat.
//! - `state_limits`: document, request and presence limits; presence that belongs to a session.
//! - `rooms`: idle eviction, the snapshot files, reloading, the manager's room API.
//! - `shutdown`: graceful shutdown in process and of the real binary on SIGTERM.
//! - `edge`: plain HTTP on the endpoint, health, metrics, the closing handshake.
//! - `websocket`: weft's own WebSocket over a raw socket: the upgrade and its HTTP refusals,
//!   hand-made frames (fragmented, pipelined, malformed) and the close codes they get.

mod auth;
mod bad_input;
mod edge;
mod helpers;
mod limits;
mod protocol;
mod rooms;
mod sessions;
mod shutdown;
mod smoke;
mod state_limits;
mod websocket;
