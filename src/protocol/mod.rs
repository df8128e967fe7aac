//! Wire types, one module per protocol. Each message has a JSON Schema and examples in `schemas/`.

pub mod canvas;
pub mod game;
