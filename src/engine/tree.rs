//! Game room state: a JSON object with a version, changed by replacing values and shipped to
//! clients as dot-path deltas (`{"player.position.x": 10}`, `null` deletes).
//!
//! A handler mutates a copy of the state; the room diffs what it last sent against what it has
//! now and ships the result. The diff descends into objects down to [`MAX_PATH_DEPTH`] segments;
//! arrays, scalars and anything deeper are sent whole. A key that cannot be a path segment (empty,
//! or containing `.`, which the clients split on) is never emitted as a path: its nearest safe
//! ancestor is sent whole, and if that would be the root the caller sends a full sync instead.

use serde_json::{Map, Value};

/// Deepest dot-path a delta uses (the EdgeBase clients apply at least this many segments).
pub const MAX_PATH_DEPTH: usize = 5;

/// Changed dot-paths and their new values; `null` deletes.
pub type Delta = Map<String, Value>;

/// The outcome of comparing two states.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Nothing changed: no delta, no version step.
    None,
    /// The paths that changed.
    Delta(Delta),
    /// A changed top-level key cannot be written as a path: send the whole state.
    Whole,
}

/// The state's root is always an object; anything else an updater leaves becomes `{}`.
pub fn normalize_root(state: &mut Value) {
    if !state.is_object() {
        *state = Value::Object(Map::new());
    }
    strip_nulls(state);
}

/// Removes object members whose value is `null`: on the wire `null` means "deleted", so a stored
/// `null` would read back differently on the server and the clients. Array items are kept.
pub fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// What changed from `old` to `new` (both roots objects, as [`normalize_root`] leaves them).
pub fn diff(old: &Value, new: &Value) -> Change {
    let (Value::Object(old), Value::Object(new)) = (old, new) else {
        return if old == new {
            Change::None
        } else {
            Change::Whole
        };
    };
    let mut delta = Delta::new();
    let mut path = String::new();
    if diff_objects(old, new, &mut path, 1, &mut delta).is_err() {
        return Change::Whole;
    }
    if delta.is_empty() {
        Change::None
    } else {
        Change::Delta(delta)
    }
}

/// A changed key that cannot be written as a path segment.
struct UnsafeKey;

fn safe_segment(key: &str) -> bool {
    !key.is_empty() && !key.contains('.')
}

/// Diffs two objects found at `path` (`depth` = segments of a child's path).
fn diff_objects(
    old: &Map<String, Value>,
    new: &Map<String, Value>,
    path: &mut String,
    depth: usize,
    delta: &mut Delta,
) -> Result<(), UnsafeKey> {
    for key in old.keys() {
        if !new.contains_key(key) {
            if !safe_segment(key) {
                return Err(UnsafeKey);
            }
            delta.insert(join(path, key), Value::Null);
        }
    }
    for (key, new_value) in new {
        let old_value = old.get(key);
        if old_value == Some(new_value) {
            continue;
        }
        if !safe_segment(key) {
            return Err(UnsafeKey);
        }
        match (old_value, new_value) {
            (Some(Value::Object(o)), Value::Object(n)) if depth < MAX_PATH_DEPTH => {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                let mut child = Delta::new();
                let outcome = diff_objects(o, n, path, depth + 1, &mut child);
                path.truncate(len);
                match outcome {
                    Ok(()) => delta.extend(child),
                    // The child is a safe path: send it whole instead of its unsafe members.
                    Err(UnsafeKey) => {
                        delta.insert(join(path, key), new_value.clone());
                    }
                }
            }
            _ => {
                delta.insert(join(path, key), new_value.clone());
            }
        }
    }
    Ok(())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Applies a delta the way the EdgeBase clients do: split each key on `.`, create missing
/// intermediate objects, `null` deletes. Used by tests and tools to model a client.
pub fn apply_delta(state: &mut Value, delta: &Delta) {
    for (path, value) in delta {
        let segments: Vec<&str> = path.split('.').collect();
        let Some((last, parents)) = segments.split_last() else {
            continue;
        };
        let mut node = &mut *state;
        for segment in parents {
            if !node.is_object() {
                *node = Value::Object(Map::new());
            }
            let Value::Object(map) = node else { break };
            node = map
                .entry((*segment).to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
        }
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        if let Value::Object(map) = node {
            if value.is_null() {
                map.remove(*last);
            } else {
                map.insert((*last).to_owned(), value.clone());
            }
        }
    }
}

/// Bytes of `value` as compact JSON, without building the string.
pub fn json_size(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value to a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn delta(old: Value, new: Value) -> Change {
        diff(&old, &new)
    }

    #[test]
    fn nested_changes_become_dot_paths() {
        assert_eq!(
            delta(
                json!({"player": {"position": {"x": 1, "y": 2}}, "round": 1}),
                json!({"player": {"position": {"x": 10, "y": 2}}, "round": 1}),
            ),
            Change::Delta(
                json!({"player.position.x": 10})
                    .as_object()
                    .cloned()
                    .unwrap()
            )
        );
        assert_eq!(
            delta(json!({"a": 1, "b": 2}), json!({"a": 1})),
            Change::Delta(json!({"b": null}).as_object().cloned().unwrap())
        );
        assert_eq!(delta(json!({"a": [1]}), json!({"a": [1]})), Change::None);
        assert_eq!(
            delta(json!({"a": [1]}), json!({"a": [1, 2]})),
            Change::Delta(json!({"a": [1, 2]}).as_object().cloned().unwrap())
        );
    }

    #[test]
    fn paths_stop_at_the_depth_limit() {
        let old = json!({"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}});
        let new = json!({"a": {"b": {"c": {"d": {"e": {"f": 2}}}}}});
        assert_eq!(
            diff(&old, &new),
            Change::Delta(json!({"a.b.c.d.e": {"f": 2}}).as_object().cloned().unwrap())
        );
    }

    #[test]
    fn unsafe_keys_send_their_safe_ancestor_whole() {
        assert_eq!(
            delta(json!({"p": {"a.b": 1}}), json!({"p": {"a.b": 2}})),
            Change::Delta(json!({"p": {"a.b": 2}}).as_object().cloned().unwrap())
        );
        assert_eq!(delta(json!({"a.b": 1}), json!({"a.b": 2})), Change::Whole);
        assert_eq!(delta(json!({"": 1}), json!({})), Change::Whole);
        // Unchanged unsafe keys do not matter.
        assert_eq!(
            delta(json!({"a.b": 1, "c": 1}), json!({"a.b": 1, "c": 2})),
            Change::Delta(json!({"c": 2}).as_object().cloned().unwrap())
        );
    }

    #[test]
    fn nulls_are_deletions() {
        let mut state = json!({"a": null, "b": {"c": null, "d": [null]}});
        normalize_root(&mut state);
        assert_eq!(state, json!({"b": {"d": [null]}}));
        let mut scalar = json!(3);
        normalize_root(&mut scalar);
        assert_eq!(scalar, json!({}));
    }

    #[test]
    fn size_is_compact_json_length() {
        let v = json!({"a": [1, 2, {"b": "x"}]});
        assert_eq!(json_size(&v), v.to_string().len());
    }

    pub(crate) fn arb_value() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("c".to_owned()),
            Just("x.y".to_owned()),
            Just(String::new()),
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<i8>().prop_map(|n| json!(n)),
            "[a-z]{0,3}".prop_map(Value::String),
        ];
        leaf.prop_recursive(7, 64, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// A client that applies the delta ends with exactly the server's state; a full sync is
        /// asked for only when a top-level key is unsafe.
        #[test]
        fn a_client_applying_the_delta_converges(mut old in arb_value(), mut new in arb_value()) {
            normalize_root(&mut old);
            normalize_root(&mut new);
            let mut client = old.clone();
            match diff(&old, &new) {
                Change::None => prop_assert_eq!(&old, &new),
                Change::Delta(d) => {
                    prop_assert!(d.keys().all(|k| k.split('.').count() <= MAX_PATH_DEPTH));
                    apply_delta(&mut client, &d);
                    prop_assert_eq!(client, new);
                }
                Change::Whole => {
                    let unsafe_top = old.as_object().unwrap().keys()
                        .chain(new.as_object().unwrap().keys())
                        .any(|k| !safe_segment(k));
                    prop_assert!(unsafe_top);
                }
            }
        }
    }
}
