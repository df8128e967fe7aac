//! Integration tests: the real server, in process on port 0, driven over real WebSockets.
//! All integration tests compile into this one binary.

mod helpers;
mod smoke;
