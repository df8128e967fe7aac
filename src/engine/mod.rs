//! The document engine: pure state, no IO, no clock reads, no tasks.
//!
//! A room's document maps component keys (`"<stableId>/<component>"`) to objects of fields. Every
//! field carries the room clock value of its last write. The conflict rule is last-writer-wins in
//! server order: the server applies requests one at a time, each request that carries document
//! patches advances the clock exactly once, and a later write to a field replaces it whole.
//!
//! - `{"_exists": false}` deletes a component: it becomes a tombstone that is kept (and saved), so a
//!   client that was offline during the delete learns of it from [`Document::diff_since`].
//! - A component that is absent or tombstoned is only (re)created by a value with `"_exists": true`;
//!   a partial write to it is dropped, as in the reference server.
//! - A field may hold a buffer delta (`{"__buf":1,"len":L,"runs":[[offset,[v,..]],..]}`); it is
//!   materialized against the stored array before it is stored (see [`buffer`]).
//! - A request from a client is checked with [`Document::check`] (and [`Ephemeral::check`])
//!   before it is applied: what it would create, and the document's size after it, must stay
//!   within [`Limits`]. The check costs the request's length, never the document's.
//!
//! Two replicas converge by applying the same diff:
//! ```
//! use weft::engine::{Document, Limits};
//! use serde_json::json;
//!
//! let limits = Limits::default();
//! let mut server = Document::default();
//! server.apply(&[json!({"s1/Pos": {"_exists": true, "x": 1, "y": 2}})], &limits);
//! let seen = server.clock();
//! server.apply(&[json!({"s1/Pos": {"x": 5}})], &limits);
//! server.apply(&[json!({"s2/Pos": {"_exists": false}})], &limits);
//!
//! // A client that saw clock `seen` catches up with one diff.
//! let diff = server.diff_since(seen);
//! assert_eq!(diff, json!({"s1/Pos": {"x": 5}, "s2/Pos": {"_exists": false}}));
//! ```

pub mod buffer;
mod document;
mod ephemeral;
mod limits;
mod patch;
mod replay;
pub mod size;
pub mod state;
pub mod tree;
pub mod work;

pub use document::{DiffView, Document, SnapshotError};
pub use ephemeral::Ephemeral;
pub use limits::{LimitError, Limits};
pub use patch::{validate_patches, PatchError};
pub use replay::{replay, ReplayError, Replayed};
pub use size::Size;

/// The fields of one component.
pub type Fields = serde_json::Map<String, serde_json::Value>;

/// A deleted component: `{"_exists": false}`.
pub(crate) fn tombstone() -> Fields {
    let mut fields = Fields::new();
    fields.insert("_exists".to_owned(), serde_json::Value::Bool(false));
    fields
}

/// Largest integer a JavaScript client can hold exactly (2^53 - 1).
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// A JSON number that is a whole number within JavaScript's safe range, written as `5` or `5.0`
/// (clients in other languages may serialize floats).
pub fn whole_number(value: &serde_json::Value) -> Option<i64> {
    let n = value.as_i64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() <= MAX_SAFE_INTEGER as f64)
            .map(|f| f as i64)
    })?;
    (n.abs() <= MAX_SAFE_INTEGER).then_some(n)
}
