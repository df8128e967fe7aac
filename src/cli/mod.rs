//! The binary's commands besides `serve`: they use the library like any other program would.

pub mod snapshot;
