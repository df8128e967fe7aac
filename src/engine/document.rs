//! The persistent document: components, per-field stamps, the room clock, snapshots.

use std::collections::BTreeSet;
use std::fmt;

use indexmap::IndexMap;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
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

    /// The fields written after `since` that the component still has, in stamp order.
    fn fields_since(&self, since: u64) -> impl Iterator<Item = (&String, &Value)> {
        // Fields are nearly always stored in stamp order (both follow the first write of each
        // field), so the field at the same place is tried before a lookup by name (hashing the
        // name costs more than comparing it). Either way the value is the one stored under `f`.
        let mut in_order = self.fields.iter();
        self.stamps.iter().filter_map(move |(f, ts)| {
            let same_place = in_order.next().filter(|(k, _)| *k == f);
            if *ts <= since {
                return None;
            }
            match same_place {
                Some((_, v)) => Some((f, v)),
                None => self.fields.get(f).map(|v| (f, v)),
            }
        })
    }
}

/// A room's document (see the module docs of [`crate::engine`] for the rules).
#[derive(Debug, Clone, Default)]
pub struct Document {
    clock: u64,
    components: IndexMap<String, Component>,
    /// `(latest, position)` of every component (position in `components`, which never removes
    /// one), so a diff finds the components written after a clock without reading the others.
    by_latest: BTreeSet<(u64, usize)>,
}

impl PartialEq for Document {
    /// Same clock and same components (their fields and stamps); the index follows from those.
    fn eq(&self, other: &Self) -> bool {
        self.clock == other.clock && self.components == other.components
    }
}

/// Past this share of the document (1/8), a diff reads every component in order instead of
/// sorting the positions it found in [`Document::by_latest`].
const SCAN_ALL_DIVISOR: usize = 8;

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
        let before = self.components.get(key).map(|c| c.latest);
        self.write_component(key, value, clock, limits);
        if let Some((index, _, c)) = self.components.get_full(key) {
            if before != Some(c.latest) {
                if let Some(old) = before {
                    self.by_latest.remove(&(old, index));
                }
                self.by_latest.insert((c.latest, index));
            }
        }
    }

    fn write_component(&mut self, key: &str, value: &Fields, clock: u64, limits: &Limits) {
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
    ///
    /// This builds a `Value` tree (a copy of every changed field); to send the diff, serialize
    /// [`Document::diff_view`] (or use [`Document::diff_since_raw`]), which gives the same JSON
    /// without the copy.
    pub fn diff_since(&self, since: u64) -> Value {
        let view = self.diff_view(since);
        let mut diff = Map::new();
        for (key, c) in view.components() {
            let fields: Fields = c
                .fields_since(since)
                .map(|(f, v)| (f.clone(), v.clone()))
                .collect();
            if !fields.is_empty() {
                diff.insert(key.clone(), Value::Object(fields));
            }
        }
        Value::Object(diff)
    }

    /// [`Document::diff_since`] as JSON text, serialized straight from the document: the same
    /// bytes as `serde_json::to_string(&doc.diff_since(since))`.
    pub fn diff_since_raw(&self, since: u64) -> Box<RawValue> {
        // Serializing maps of strings and JSON values cannot fail.
        serde_json::value::to_raw_value(&self.diff_view(since))
            .unwrap_or_else(|_| unreachable!("a diff always serializes"))
    }

    /// A borrowed view of [`Document::diff_since`]: serializes to the same JSON, and reads only
    /// the components written after `since` (see [`DiffView`]).
    pub fn diff_view(&self, since: u64) -> DiffView<'_> {
        DiffView {
            components: &self.components,
            since,
            positions: self.changed_positions(since),
        }
    }

    /// Positions of the components written after `since`, in document order, or `None` when
    /// there are so many that reading every component is cheaper.
    fn changed_positions(&self, since: u64) -> Option<Vec<usize>> {
        let Some(after) = since.checked_add(1) else {
            return Some(Vec::new());
        };
        let most = self.components.len() / SCAN_ALL_DIVISOR;
        let mut positions = Vec::new();
        for &(_, position) in self.by_latest.range((after, 0)..) {
            if positions.len() == most {
                return None;
            }
            positions.push(position);
        }
        positions.sort_unstable();
        Some(positions)
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
            by_latest: BTreeSet::new(),
        };
        let mut timestamps = raw.timestamps;
        let mut by_latest = Vec::with_capacity(raw.state.len());
        for (key, value) in raw.state {
            let Value::Object(fields) = value else {
                return Err(SnapshotError::ComponentNotObject(key));
            };
            let RawStamps(stamps) = timestamps.swap_remove(&key).unwrap_or_default();
            let latest = stamps.iter().map(|&(_, ts)| ts).max().unwrap_or(0);
            let c = Component {
                fields,
                stamps,
                latest,
            };
            doc.clock = doc.clock.max(latest);
            let (position, _) = doc.components.insert_full(key, c);
            by_latest.push((latest, position));
        }
        doc.by_latest = BTreeSet::from_iter(by_latest);
        Ok(doc)
    }
}

/// The diff of a document since a clock, borrowed from it: serializes to exactly the JSON of
/// [`Document::diff_since`] (components in document order, fields in stamp order), without
/// copying any value. Made by [`Document::diff_view`].
#[derive(Debug, Clone)]
pub struct DiffView<'a> {
    components: &'a IndexMap<String, Component>,
    since: u64,
    /// The components to read, in document order; `None` reads them all.
    positions: Option<Vec<usize>>,
}

impl<'a> DiffView<'a> {
    /// True when the diff is `{}`: nothing was written after `since` that is still there.
    pub fn is_empty(&self) -> bool {
        self.entries().next().is_none()
    }

    /// The components written after `since` (some may have no field left to send).
    fn components(&self) -> impl Iterator<Item = (&'a String, &'a Component)> + '_ {
        let since = self.since;
        let (all, some) = match &self.positions {
            None => (Some(self.components.iter()), None),
            Some(positions) => (None, Some(positions.iter())),
        };
        let all = all.into_iter().flatten();
        let some = some
            .into_iter()
            .flatten()
            .filter_map(|&p| self.components.get_index(p));
        all.chain(some).filter(move |(_, c)| c.latest > since)
    }

    /// The diff's entries: components with at least one field to send.
    fn entries(&self) -> impl Iterator<Item = (&'a String, &'a Component)> + '_ {
        let since = self.since;
        self.components()
            .filter(move |(_, c)| c.fields_since(since).next().is_some())
    }
}

impl Serialize for DiffView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct FieldsSince<'a>(&'a Component, u64);
        impl Serialize for FieldsSince<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.fields_since(self.1))
            }
        }
        let mut map = serializer.serialize_map(None)?;
        for (key, c) in self.entries() {
            map.serialize_entry(key, &FieldsSince(c, self.since))?;
        }
        map.end()
    }
}

#[derive(Deserialize)]
struct RawSnapshot {
    timestamp: u64,
    #[serde(default)]
    state: IndexMap<String, Value>,
    #[serde(default)]
    timestamps: IndexMap<String, RawStamps>,
}

/// One component's stamps in a snapshot (`{"field": clock, ..}`), read straight into the vector a
/// [`Component`] keeps: no map per component, and the names read are the names kept. A repeated
/// name replaces the earlier value where it is, as reading into a map does.
#[derive(Default)]
struct RawStamps(Vec<(String, u64)>);

impl<'de> Deserialize<'de> for RawStamps {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StampsVisitor;
        impl<'de> Visitor<'de> for StampsVisitor {
            type Value = RawStamps;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawStamps, A::Error> {
                let mut stamps: Vec<(String, u64)> = Vec::new();
                while let Some((field, ts)) = map.next_entry::<String, u64>()? {
                    match stamps.iter_mut().find(|(f, _)| *f == field) {
                        Some((_, old)) => *old = ts,
                        None => stamps.push((field, ts)),
                    }
                }
                Ok(RawStamps(stamps))
            }
        }
        deserializer.deserialize_map(StampsVisitor)
    }
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

        /// On documents large enough for the stamp index to be used: for every clock, the raw
        /// diff is byte for byte the serialized `diff_since`, both equal the diff found by reading
        /// every component, `is_empty` tells an empty diff, and the index matches the components
        /// (also after a snapshot round trip).
        #[test]
        fn raw_diff_is_the_serialized_diff(requests in arb_many_requests()) {
            let limits = Limits::default();
            let mut doc = Document::default();
            for writes in &requests {
                let patch: Map<String, Value> = writes.iter().cloned().collect();
                doc.apply(&[Value::Object(patch)], &limits);
                doc.check_index();
            }
            let back = Document::decode_snapshot(&doc.encode_snapshot()).expect("decodes");
            back.check_index();
            for since in 0..=doc.clock() + 1 {
                let want = serde_json::to_string(&scan_diff(&doc, since)).expect("json");
                let value = serde_json::to_string(&doc.diff_since(since)).expect("json");
                prop_assert_eq!(&value, &want, "diff_since({})", since);
                prop_assert_eq!(doc.diff_since_raw(since).get().to_owned(), want.clone());
                prop_assert_eq!(back.diff_since_raw(since).get().to_owned(), want.clone());
                prop_assert_eq!(doc.diff_view(since).is_empty(), want == "{}");
            }
            prop_assert_eq!(doc.diff_since_raw(u64::MAX).get().to_owned(), "{}");
        }
    }

    impl Document {
        /// The stamp index holds exactly `(latest, position)` of every component.
        fn check_index(&self) {
            let want: BTreeSet<(u64, usize)> = self
                .components
                .values()
                .enumerate()
                .map(|(i, c)| (c.latest, i))
                .collect();
            assert_eq!(self.by_latest, want);
        }
    }

    /// `diff_since` as it was before the stamp index: every component read, in document order.
    fn scan_diff(doc: &Document, since: u64) -> Value {
        let mut diff = Map::new();
        for (key, c) in &doc.components {
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

    /// Field values of every JSON kind, strings with characters that JSON escapes.
    fn arb_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            "[a-z\"\\\n\u{7f}\u{e9}\u{1F600}]{0,6}".prop_map(Value::String),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Null),
            proptest::collection::vec(-9..9i64, 0..4).prop_map(|v| json!(v)),
            Just(json!({"nested": {"a": [1, "b"]}})),
        ]
    }

    /// Writes over 40 keys: edits, creates and deletes naming several fields (a delete stamps
    /// fields it does not keep), buffer deltas, and malformed deltas (stamped, never stored).
    fn arb_many_requests() -> impl Strategy<Value = Vec<Vec<(String, Value)>>> {
        let fields = || {
            let field = prop_oneof![Just("x"), Just("y"), Just("pts"), Just("label")];
            proptest::collection::vec((field, arb_value()), 0..4)
        };
        let object = |exists: Option<bool>, fields: Vec<(&str, Value)>| {
            let mut map = Map::new();
            if let Some(e) = exists {
                map.insert("_exists".to_owned(), Value::Bool(e));
            }
            for (f, v) in fields {
                map.insert(f.to_owned(), v);
            }
            Value::Object(map)
        };
        let value = prop_oneof![
            3 => fields().prop_map(move |f| object(None, f)),
            2 => fields().prop_map(move |f| object(Some(true), f)),
            1 => fields().prop_map(move |f| object(Some(false), f)),
            1 => (0..8usize, -2..8i64, proptest::collection::vec(-9..9i64, 0..3)).prop_map(
                |(len, at, v)| json!({"pts": {"__buf": 1, "len": len, "runs": [[at, v]]}})
            ),
            1 => Just(json!({"label": {"__buf": 1, "len": -1, "runs": []}})),
        ];
        let write = (0..40usize, value).prop_map(|(k, v)| (format!("k{k}/Shape"), v));
        proptest::collection::vec(proptest::collection::vec(write, 1..6), 0..40)
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
        // A repeated stamp name counts once, with its last value, as a JSON map reads.
        let doc = Document::decode_snapshot(
            br#"{"timestamp":1,"state":{"a/S":{"x":1,"y":2}},"timestamps":{"a/S":{"x":9,"y":2,"x":3}}}"#,
        )
        .expect("decodes");
        assert_eq!(doc.clock(), 3);
        assert_eq!(doc.diff_since(2), json!({"a/S": {"x": 1}}));
        let snap: Value = serde_json::from_slice(&doc.encode_snapshot()).expect("json");
        assert_eq!(snap["timestamps"], json!({"a/S": {"x": 3, "y": 2}}));
        assert!(
            Document::decode_snapshot(br#"{"timestamp":1,"state":{},"timestamps":{"a":5}}"#)
                .is_err()
        );
        assert!(Document::decode_snapshot(br#"{"timestamp":1,"state":{"a":1}}"#).is_err());
        assert!(Document::decode_snapshot(b"null").is_err());
        assert!(Document::decode_snapshot(br#"{"timestamp":-1,"state":{}}"#).is_err());
    }
}
