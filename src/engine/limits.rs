//! Limits on stored state, checked before a request is applied, in time linear in the request.
//!
//! A request is first projected onto the state it would change: an upper bound of the bytes and
//! values it adds, what it certainly removes, the values it creates and the fields each component
//! would have. Only a request whose projection fits is applied; after applying, the exact sizes
//! are kept (see [`super::size`]).

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::buffer::{self, BufferDelta};
use super::size::{self, Change, Size};
use super::{tombstone, Fields};

/// Bounds the engine enforces on what a request may ask for and on what a room may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest array a buffer delta may create, and the most values all buffer deltas of one
    /// request may create together (checked when a frame is decoded).
    pub max_buffer_len: usize,
    /// Largest document, as the length of its JSON (components, fields, tombstones).
    pub max_document_bytes: usize,
    /// Most JSON values a document may hold (in memory each costs ~80 bytes, however short).
    pub max_document_values: usize,
    /// Most values one request may create: literal values, plus the elements buffer deltas add
    /// beyond the stored arrays' lengths.
    pub max_request_values: usize,
    /// Most fields (stamped field names) one component may have.
    pub max_fields_per_component: usize,
    /// Largest presence (ephemeral) state of one session, as the length of its JSON.
    pub max_presence_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_buffer_len: 1 << 20,
            max_document_bytes: 64 << 20,
            max_document_values: 4 << 20,
            // A 1 MiB frame carries at most ~512Ki values literally (`0,` each).
            max_request_values: 512 << 10,
            max_fields_per_component: 1024,
            max_presence_bytes: 64 << 10,
        }
    }
}

impl Limits {
    /// No limit at all (tools that must read whatever is stored).
    pub const UNBOUNDED: Limits = Limits {
        max_buffer_len: usize::MAX,
        max_document_bytes: usize::MAX,
        max_document_values: usize::MAX,
        max_request_values: usize::MAX,
        max_fields_per_component: usize::MAX,
        max_presence_bytes: usize::MAX,
    };

    /// The limits for replaying stored writes: the room's bounds hold, the per-request ones do
    /// not (a stored write is no longer a client's request, and was acked).
    pub fn for_replay(&self) -> Limits {
        Limits {
            max_buffer_len: usize::MAX,
            max_request_values: usize::MAX,
            ..*self
        }
    }
}

/// Why a request (or a stored room) does not fit the limits. Short messages: they become
/// WebSocket close reasons (at most 123 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("document would exceed max_document_bytes ({max})")]
    DocumentBytes { max: usize },
    #[error("document would exceed max_document_values ({max})")]
    DocumentValues { max: usize },
    #[error("request would create more than max_request_values ({max}) values")]
    RequestValues { max: usize },
    #[error("a component would exceed max_fields_per_component ({max})")]
    ComponentFields { max: usize },
    #[error("presence would exceed max_presence_bytes ({max})")]
    PresenceBytes { max: usize },
}

/// Values of a replaced stored value measured per write, beyond the write's own values.
const MEASURE_PER_WRITE: usize = 8;

/// What a projection reads of the state a request would change.
pub(crate) trait Stored {
    /// The component's current fields (tombstones included).
    fn fields(&self, key: &str) -> Option<&Fields>;
    /// The component's share of the state's size (what deleting it frees at least).
    fn component_size(&self, key: &str) -> Size;
    /// The field names that count toward `max_fields_per_component`.
    fn field_count(&self, key: &str) -> usize;
    /// Whether `name` is one of them.
    fn has_field(&self, key: &str, name: &str) -> bool;
}

/// What a request would do, as far as a check can tell in time linear in the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Projection {
    /// At least what the request adds, at most what it removes.
    pub change: Change,
    /// At least the values it creates (what `max_request_values` bounds).
    pub created: usize,
}

/// What the projection knows of one component of the request.
#[derive(Default)]
struct Projected {
    /// Times it was deleted so far in the request (array lengths projected before a delete
    /// no longer hold).
    deletes: usize,
    /// Deleted earlier in the request: its stored fields are gone.
    freed: bool,
    /// Of its stored size, what the request already counted as removed.
    removed: Size,
    /// Upper bound of its field count.
    fields: usize,
}

/// Projects `patches` (validated) onto `stored`: checks the request's values and every
/// component's field count, and returns a bound of the size change. Linear in the request.
pub(crate) fn project(
    stored: &impl Stored,
    patches: &[Value],
    limits: &Limits,
) -> Result<Projection, LimitError> {
    let mut change = Change::default();
    // Array lengths as earlier writes of the request leave them: (key, field) -> (deletes of
    // the key before that write, length). A delta that shrinks an array and one that grows it
    // back both count.
    let mut lengths: HashMap<(&str, &str), (usize, usize)> = HashMap::new();
    let mut created = 0usize;
    let mut components: HashMap<&str, Projected> = HashMap::new();
    // Stored fields already counted as replaced (a second write replaces the first, not them).
    let mut replaced: HashSet<(&str, &str)> = HashSet::new();
    // Values of stored state the projection may still measure: the request's own values, so
    // a small request cannot make a check read a large stored value.
    let mut budget = 0usize;
    for patch in patches.iter().filter_map(Value::as_object) {
        for (key, value) in patch {
            let Some(value) = value.as_object() else {
                continue;
            };
            let current = stored.fields(key);
            if current.is_none() && !components.contains_key(key.as_str()) {
                // A new component: its key, braces and comma, and the object as a value.
                change.added += size::component(key, Size::default(), 0) + Size::new(1, 1);
            }
            let state = components.entry(key).or_insert_with(|| Projected {
                fields: stored.field_count(key),
                ..Projected::default()
            });
            if value.get("_exists") == Some(&Value::Bool(false)) {
                if !state.freed {
                    change.removed += stored.component_size(key).minus(state.removed);
                    state.freed = true;
                }
                state.deletes += 1;
                change.added +=
                    size::component(key, size::entries(&tombstone()), 1) + Size::new(1, 1);
                state.fields = value.len();
            } else {
                let known = |name: &str| !state.freed && stored.has_field(key, name);
                let new_names = value.keys().filter(|name| !known(name)).count();
                state.fields = state.fields.saturating_add(new_names);
            }
            if state.fields > limits.max_fields_per_component {
                return Err(LimitError::ComponentFields {
                    max: limits.max_fields_per_component,
                });
            }
            let current = current.filter(|_| !state.freed);
            for (name, v) in value {
                let stored_value = current.and_then(|fields| fields.get(name));
                match v {
                    Value::Object(map) if buffer::is_marked(v) => {
                        let Ok(delta) = BufferDelta::parse(map, limits.max_buffer_len) else {
                            continue;
                        };
                        let projected = lengths
                            .get(&(key.as_str(), name.as_str()))
                            .filter(|(deletes, _)| *deletes == state.deletes)
                            .map(|&(_, len)| len);
                        let stored_len = projected.unwrap_or(match stored_value {
                            Some(Value::Array(items)) => items.len(),
                            _ => 0,
                        });
                        lengths.insert((key, name), (state.deletes, delta.len));
                        created = created.saturating_add(delta.values_created(stored_len));
                        change.added +=
                            Size::new(size::key_len(name) + 2, 0) + delta.growth_bound(stored_len);
                    }
                    literal => {
                        lengths.insert((key, name), (state.deletes, 0));
                        let written = size::entry(name, literal);
                        created = created.saturating_add(written.values);
                        change.added += written;
                        if stored_value.is_none() {
                            change.added += Size::new(1, 0); // its comma
                        }
                        // Counted once: a second write of the field replaces the first write.
                        if let Some(old) = stored_value.filter(|_| replaced.insert((key, name))) {
                            // Measured only as far as the request pays for (a lower bound).
                            budget = budget.saturating_add(written.values + MEASURE_PER_WRITE);
                            let old = size::of_value_within(old, &mut budget)
                                + Size::new(size::key_len(name) + 1, 0);
                            change.removed += old;
                            state.removed += old;
                        }
                    }
                }
            }
            if created > limits.max_request_values {
                return Err(LimitError::RequestValues {
                    max: limits.max_request_values,
                });
            }
        }
    }
    Ok(Projection { change, created })
}
