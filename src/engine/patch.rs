//! Patches: validation, and the rule that decides what one component value does.

use serde_json::Value;

use super::buffer::{self, BufferDelta, BufferDeltaError};
use super::limits::Limits;
use super::size::{self, Change};
use super::Fields;

/// Why a list of patches was refused. The message names the offending place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("patches must be an array of objects")]
    NotAList,
    #[error("patch {index} must be an object")]
    PatchNotObject { index: usize },
    #[error("component {key:?} must be an object")]
    ComponentNotObject { key: String },
    #[error("component {key:?}: `_exists` must be a boolean")]
    ExistsNotBool { key: String },
    #[error("buffer deltas of one request may create at most {max} values")]
    TooManyBufferValues { max: usize },
    #[error("component {key:?} field {field:?}: {source}")]
    BadBuffer {
        key: String,
        field: String,
        source: BufferDeltaError,
    },
}

/// Checks that `patches` is an array of `{key: {field: value}}` objects whose buffer deltas are
/// well formed and within `limits`. Everything the engine later applies or relays passed this.
pub fn validate_patches(patches: &Value, limits: &Limits) -> Result<(), PatchError> {
    let list = patches.as_array().ok_or(PatchError::NotAList)?;
    let mut buffer_values = 0usize;
    for (index, patch) in list.iter().enumerate() {
        let patch = patch
            .as_object()
            .ok_or(PatchError::PatchNotObject { index })?;
        for (key, component) in patch {
            let fields = component
                .as_object()
                .ok_or_else(|| PatchError::ComponentNotObject { key: key.clone() })?;
            if fields.get("_exists").is_some_and(|v| !v.is_boolean()) {
                return Err(PatchError::ExistsNotBool { key: key.clone() });
            }
            for (field, value) in fields {
                if let Value::Object(map) = value {
                    if buffer::is_marked(value) {
                        let delta =
                            BufferDelta::parse(map, limits.max_buffer_len).map_err(|source| {
                                PatchError::BadBuffer {
                                    key: key.clone(),
                                    field: field.clone(),
                                    source,
                                }
                            })?;
                        buffer_values = buffer_values.saturating_add(delta.len);
                        if buffer_values > limits.max_buffer_len {
                            return Err(PatchError::TooManyBufferValues {
                                max: limits.max_buffer_len,
                            });
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// What applying one component value does, given the component's current fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// `_exists: false`: the component becomes a tombstone.
    Delete,
    /// Absent or tombstoned, and the value says `_exists: true`: start from the value alone.
    Create,
    /// Live: the value's fields replace the current ones, field by field.
    Merge,
    /// Absent or tombstoned and the value does not recreate it: dropped, as the reference does.
    Skip,
}

pub(crate) fn is_tombstone(fields: &Fields) -> bool {
    fields.get("_exists") == Some(&Value::Bool(false))
}

pub(crate) fn action(current: Option<&Fields>, value: &Fields) -> Action {
    match value.get("_exists") {
        Some(Value::Bool(false)) => Action::Delete,
        exists => match current {
            Some(fields) if !is_tombstone(fields) => Action::Merge,
            _ if exists == Some(&Value::Bool(true)) => Action::Create,
            _ => Action::Skip,
        },
    }
}

/// Writes `value`'s fields into `target`, materializing buffer deltas against `target`'s arrays.
/// A malformed delta (which validation keeps out) is skipped rather than stored.
/// A field already present is overwritten where it is (its place in the object is kept, as
/// `insert` keeps it), and a buffer delta is applied to the stored array in place.
/// Returns how the sum of `target`'s entry sizes changed (see [`size::entries`]).
pub(crate) fn write_fields(target: &mut Fields, value: &Fields, limits: &Limits) -> Change {
    let mut change = Change::default();
    for (field, v) in value {
        super::work::step(1);
        match v {
            Value::Object(map) if buffer::is_marked(v) => {
                let Ok(delta) = BufferDelta::parse(map, limits.max_buffer_len) else {
                    continue;
                };
                match target.get_mut(field) {
                    Some(stored) => change += delta.materialize_into(stored),
                    None => {
                        let array = delta.materialize(None);
                        change.added += size::entry(field, &array);
                        target.insert(field.clone(), array);
                    }
                }
            }
            other => {
                change.added += size::entry(field, other);
                match target.get_mut(field) {
                    Some(stored) => {
                        change.removed += size::entry(field, stored);
                        *stored = other.clone();
                    }
                    None => {
                        target.insert(field.clone(), other.clone());
                    }
                }
            }
        }
    }
    change
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tombstone;
    use serde_json::json;

    /// Every malformed shape is refused with an error naming where it is.
    #[test]
    fn validation_names_the_problem() {
        let limits = Limits::default();
        let cases = [
            (json!({"a": 1}), "patches must be an array of objects"),
            (json!([1]), "patch 0 must be an object"),
            (json!([{"k": null}]), "component \"k\" must be an object"),
            (
                json!([{"k": {"_exists": 1}}]),
                "`_exists` must be a boolean",
            ),
            (
                json!([{"k": {"pts": {"__buf": 1, "len": "x", "runs": []}}}]),
                "field \"pts\": buffer delta `len`",
            ),
        ];
        for (patches, want) in cases {
            let err = validate_patches(&patches, &limits).unwrap_err().to_string();
            assert!(err.contains(want), "{patches}: {err}");
        }
        let small = Limits {
            max_buffer_len: 4,
            ..Limits::default()
        };
        let delta = |len: usize| json!({"__buf": 1, "len": len, "runs": []});
        let three_and_two = json!([{"k": {"a": delta(3)}}, {"j": {"b": delta(2)}}]);
        assert_eq!(
            validate_patches(&three_and_two, &small),
            Err(PatchError::TooManyBufferValues { max: 4 }),
            "the cap holds across fields and patches of one request"
        );
        assert_eq!(
            validate_patches(&json!([{"k": {"a": delta(2), "b": delta(2)}}]), &small),
            Ok(())
        );
        let ok = json!([{"k": {"_exists": true, "pts": {"__buf": 1, "len": 2, "runs": [[0, [1.5]]]}}}, {}]);
        assert_eq!(validate_patches(&ok, &limits), Ok(()));
    }

    /// The create/merge/delete/skip rule of the reference server.
    #[test]
    fn action_rule() {
        let live = json!({"_exists": true, "x": 1});
        let live = live.as_object();
        let dead = tombstone();
        let obj = |v: Value| v.as_object().cloned().unwrap_or_default();
        let del = obj(json!({"_exists": false}));
        let create = obj(json!({"_exists": true, "x": 2}));
        let partial = obj(json!({"x": 2}));
        assert_eq!(action(live, &del), Action::Delete);
        assert_eq!(action(None, &del), Action::Delete);
        assert_eq!(action(live, &partial), Action::Merge);
        assert_eq!(action(live, &create), Action::Merge);
        assert_eq!(action(None, &create), Action::Create);
        assert_eq!(action(Some(&dead), &create), Action::Create);
        assert_eq!(action(None, &partial), Action::Skip);
        assert_eq!(action(Some(&dead), &partial), Action::Skip);
    }
}
