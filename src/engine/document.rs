//! The persistent document: components, per-field stamps, the room clock, snapshots.

use indexmap::IndexMap;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::patch::{self, Action, Fields, Limits};

/// One component: its fields and the clock value of each field's last write.
#[derive(Debug, Clone, Default, PartialEq)]
struct Component {
    fields: Fields,
    /// Field -> clock of its last write. A small vector: components have a handful of fields.
    stamps: Vec<(String, u64)>,
    /// The largest stamp, so `diff_since` can skip untouched components cheaply.
    latest: u64,
}

impl Component {
    fn stamp(&mut self, field: &str, clock: u64) {
        match self.stamps.iter_mut().find(|(f, _)| f == field) {
            Some((_, ts)) => *ts = clock,
            None => self.stamps.push((field.to_owned(), clock)),
        }
        self.latest = self.latest.max(clock);
    }

    fn stamp_all(&mut self, value: &Fields, clock: u64) {
        for field in value.keys() {
            self.stamp(field, clock);
        }
    }
}

/// A room's document (see the module docs of [`crate::engine`] for the rules).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Document {
    clock: u64,
    components: IndexMap<String, Component>,
}

/// Why bytes could not be read as a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("snapshot component {0:?} is not an object")]
    ComponentNotObject(String),
}

impl Document {
    /// The room clock: the stamp of the latest write (0 for a new document).
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// Number of live (not deleted) components.
    pub fn live_components(&self) -> usize {
        self.components
            .values()
            .filter(|c| !patch::is_tombstone(&c.fields))
            .count()
    }

    /// Number of tombstones (deleted components kept so offline clients learn of the delete).
    pub fn tombstones(&self) -> usize {
        self.components.len() - self.live_components()
    }

    /// Current fields of a component, tombstones included.
    pub fn get(&self, key: &str) -> Option<&Fields> {
        self.components.get(key).map(|c| &c.fields)
    }

    /// Applies one request's document patches: the clock advances once (if there is at least one
    /// patch) and every write of the request is stamped with the new value, which is returned.
    /// Patches are expected to have passed [`patch::validate_patches`]; anything else is skipped.
    pub fn apply(&mut self, patches: &[Value], limits: &Limits) -> u64 {
        if patches.is_empty() {
            return self.clock;
        }
        self.clock += 1;
        let clock = self.clock;
        for patch in patches.iter().filter_map(Value::as_object) {
            for (key, value) in patch {
                if let Some(value) = value.as_object() {
                    self.apply_component(key, value, clock, limits);
                }
            }
        }
        clock
    }

    fn apply_component(&mut self, key: &str, value: &Fields, clock: u64, limits: &Limits) {
        let current = self.components.get_mut(key);
        match patch::action(current.as_ref().map(|c| &c.fields), value) {
            Action::Skip => {}
            Action::Merge => {
                if let Some(c) = current {
                    patch::write_fields(&mut c.fields, value, limits);
                    c.stamp_all(value, clock);
                }
            }
            Action::Delete => {
                let c = self.entry(key);
                c.fields = patch::tombstone();
                // A delete resets the stamps to the fields named in the deleting patch.
                c.stamps.clear();
                c.stamp_all(value, clock);
            }
            Action::Create => {
                let c = self.entry(key);
                c.fields = Fields::new();
                patch::write_fields(&mut c.fields, value, limits);
                c.stamp_all(value, clock);
            }
        }
    }

    fn entry(&mut self, key: &str) -> &mut Component {
        if !self.components.contains_key(key) {
            self.components.insert(key.to_owned(), Component::default());
        }
        &mut self.components[key]
    }

    /// Every field written after `since`, with its current value, tombstones included: the patch a
    /// client that has seen clock `since` needs to catch up. An empty object when nothing changed.
    pub fn diff_since(&self, since: u64) -> Value {
        let mut diff = Map::new();
        for (key, c) in &self.components {
            if c.latest <= since {
                continue;
            }
            let fields: Fields = c
                .stamps
                .iter()
                .filter(|(_, ts)| *ts > since)
                .filter_map(|(f, _)| c.fields.get(f).map(|v| (f.clone(), v.clone())))
                .collect();
            if !fields.is_empty() {
                diff.insert(key.clone(), Value::Object(fields));
            }
        }
        Value::Object(diff)
    }

    /// The snapshot in the reference server's `<roomId>.json` format (tombstones kept).
    pub fn encode_snapshot(&self) -> Vec<u8> {
        // Serializing plain maps and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a snapshot written by [`Document::encode_snapshot`] or by the reference server.
    /// Stamps without a component are dropped (no diff could ever return them), and a clock lower
    /// than a stamp is raised to it, so clock values are never reused.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<Document, SnapshotError> {
        let raw: RawSnapshot = serde_json::from_slice(bytes)?;
        let mut doc = Document {
            clock: raw.timestamp,
            components: IndexMap::with_capacity(raw.state.len()),
        };
        let mut timestamps = raw.timestamps;
        for (key, value) in raw.state {
            let Value::Object(fields) = value else {
                return Err(SnapshotError::ComponentNotObject(key));
            };
            let mut c = Component {
                fields,
                ..Component::default()
            };
            for (field, ts) in timestamps.swap_remove(&key).unwrap_or_default() {
                c.stamp(&field, ts);
            }
            doc.clock = doc.clock.max(c.latest);
            doc.components.insert(key, c);
        }
        Ok(doc)
    }
}

#[derive(Deserialize)]
struct RawSnapshot {
    timestamp: u64,
    #[serde(default)]
    state: IndexMap<String, Value>,
    #[serde(default)]
    timestamps: IndexMap<String, IndexMap<String, u64>>,
}

impl Serialize for Document {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct State<'a>(&'a IndexMap<String, Component>);
        impl Serialize for State<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(k, c)| (k, &c.fields)))
            }
        }
        struct Stamps<'a>(&'a [(String, u64)]);
        impl Serialize for Stamps<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(f, ts)| (f, ts)))
            }
        }
        struct Timestamps<'a>(&'a IndexMap<String, Component>);
        impl Serialize for Timestamps<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(k, c)| (k, Stamps(&c.stamps))))
            }
        }
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("timestamp", &self.clock)?;
        map.serialize_entry("state", &State(&self.components))?;
        map.serialize_entry("timestamps", &Timestamps(&self.components))?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const KEYS: [&str; 4] = ["a/Shape", "b/Shape", "c/Shape", "SINGLETON/Camera"];
    const FIELDS: [&str; 3] = ["x", "y", "pts"];

    /// One component write as a real client sends it: creates carry every field (the client
    /// snapshots the whole component), edits carry some, deletes carry `_exists: false`.
    fn arb_write() -> impl Strategy<Value = (usize, Value)> {
        let create = (
            0..100i64,
            0..100i64,
            proptest::collection::vec(0..9i64, 0..6),
        )
            .prop_map(|(x, y, pts)| json!({"_exists": true, "x": x, "y": y, "pts": pts}));
        let edit = (0..3usize, 0..100i64, 0..8usize).prop_map(|(f, v, len)| {
            let value = if FIELDS[f] == "pts" {
                json!({"__buf": 1, "len": len, "runs": [[len.saturating_sub(1), [v]]]})
            } else {
                json!(v)
            };
            json!({ FIELDS[f]: value })
        });
        let delete = Just(json!({"_exists": false}));
        (
            0..KEYS.len(),
            prop_oneof![3 => edit, 2 => create, 1 => delete],
        )
    }

    fn arb_requests() -> impl Strategy<Value = Vec<Vec<(usize, Value)>>> {
        proptest::collection::vec(proptest::collection::vec(arb_write(), 1..4), 0..30)
    }

    fn to_patch(writes: &[(usize, Value)]) -> Value {
        let mut patch = Map::new();
        for (k, v) in writes {
            patch.insert(KEYS[*k].to_owned(), v.clone());
        }
        Value::Object(patch)
    }

    proptest! {
        /// A replica holding the state at clock `t` that applies `diff_since(t)` (as a client does,
        /// with the same merge rules) ends up with the server's state, for every `t`.
        #[test]
        fn diff_since_brings_a_replica_up_to_date(requests in arb_requests(), cut in 0usize..30) {
            let limits = Limits::default();
            let mut server = Document::default();
            let cut = cut.min(requests.len());
            for writes in &requests[..cut] {
                server.apply(&[to_patch(writes)], &limits);
            }
            let mut replica = server.clone();
            let seen = server.clock();
            for writes in &requests[cut..] {
                server.apply(&[to_patch(writes)], &limits);
            }
            let diff = server.diff_since(seen);
            replica.apply(&[diff], &limits);
            for key in KEYS {
                prop_assert_eq!(replica.get(key), server.get(key), "key {}", key);
            }
            // And the diff from zero rebuilds the whole document from nothing.
            let mut fresh = Document::default();
            fresh.apply(&[server.diff_since(0)], &limits);
            for key in KEYS {
                let live = server.get(key).filter(|f| !patch::is_tombstone(f));
                prop_assert_eq!(fresh.get(key).filter(|f| !patch::is_tombstone(f)), live);
            }
        }

        /// A snapshot reads back as the same document.
        #[test]
        fn snapshot_round_trips(requests in arb_requests()) {
            let limits = Limits::default();
            let mut doc = Document::default();
            for writes in &requests {
                doc.apply(&[to_patch(writes)], &limits);
            }
            let back = Document::decode_snapshot(&doc.encode_snapshot()).expect("decodes");
            prop_assert_eq!(back, doc);
        }
    }

    /// One request advances the clock once, however many patches it carries; an empty one not at all.
    #[test]
    fn one_clock_step_per_request() {
        let limits = Limits::default();
        let mut doc = Document::default();
        assert_eq!(doc.apply(&[], &limits), 0);
        let two = [
            json!({"a/S": {"_exists": true}}),
            json!({"b/S": {"_exists": true}}),
        ];
        assert_eq!(doc.apply(&two, &limits), 1);
        assert_eq!(doc.apply(&[json!({})], &limits), 2);
        assert_eq!(doc.diff_since(1), json!({}));
    }

    /// Deleting keeps a tombstone whose stamps are reset to the deleting patch's fields; the
    /// snapshot keeps it too.
    #[test]
    fn tombstones_are_kept_and_saved() {
        let limits = Limits::default();
        let mut doc = Document::default();
        doc.apply(&[json!({"a/S": {"_exists": true, "x": 1}})], &limits);
        doc.apply(&[json!({"a/S": {"_exists": false}})], &limits);
        let snap: Value = serde_json::from_slice(&doc.encode_snapshot()).expect("json");
        assert_eq!(
            snap,
            json!({"timestamp": 2, "state": {"a/S": {"_exists": false}}, "timestamps": {"a/S": {"_exists": 2}}})
        );
        assert_eq!(doc.diff_since(1), json!({"a/S": {"_exists": false}}));
        assert_eq!((doc.live_components(), doc.tombstones()), (0, 1));
    }

    /// A partial write to an absent key is dropped (no state, no stamp), as in the reference.
    #[test]
    fn partial_write_to_absent_key_is_dropped() {
        let limits = Limits::default();
        let mut doc = Document::default();
        assert_eq!(doc.apply(&[json!({"a/S": {"x": 1}})], &limits), 1);
        assert_eq!(doc.get("a/S"), None);
        assert_eq!(doc.diff_since(0), json!({}));
    }

    /// Known limit of the protocol: a component deleted and re-created with fewer fields while a
    /// client was away keeps the old extra fields on that client, because a diff cannot say
    /// "replace". Real clients re-create with the full component, so this does not arise there.
    #[test]
    fn recreate_with_fewer_fields_leaves_extra_fields_on_replicas() {
        let limits = Limits::default();
        let mut server = Document::default();
        server.apply(
            &[json!({"a/S": {"_exists": true, "x": 1, "old": 1}})],
            &limits,
        );
        let mut replica = server.clone();
        server.apply(&[json!({"a/S": {"_exists": false}})], &limits);
        server.apply(&[json!({"a/S": {"_exists": true, "x": 2}})], &limits);
        replica.apply(&[server.diff_since(1)], &limits);
        assert_eq!(
            replica.get("a/S"),
            Some(
                json!({"_exists": true, "x": 2, "old": 1})
                    .as_object()
                    .expect("object")
            )
        );
    }

    /// Snapshots from the reference server load; stamps above the clock raise it; bad shapes fail.
    #[test]
    fn decodes_reference_snapshots_defensively() {
        let doc = Document::decode_snapshot(
            br#"{"timestamp":3,"state":{"a/S":{"_exists":true,"x":1}},"timestamps":{"a/S":{"_exists":2,"x":9},"gone/S":{"x":1}}}"#,
        )
        .expect("decodes");
        assert_eq!(doc.clock(), 9);
        assert_eq!(doc.diff_since(2), json!({"a/S": {"x": 1}}));
        assert!(Document::decode_snapshot(br#"{"timestamp":1,"state":{"a":1}}"#).is_err());
        assert!(Document::decode_snapshot(b"null").is_err());
        assert!(Document::decode_snapshot(br#"{"timestamp":-1,"state":{}}"#).is_err());
    }
}
