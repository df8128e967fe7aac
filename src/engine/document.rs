//! The persistent document: components, per-field stamps, the room clock, snapshots.

use std::collections::BTreeSet;
use std::fmt;

use indexmap::IndexMap;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::limits::{self, LimitError, Limits, Stored};
use super::patch::{self, Action};
use super::size::{self, Size};
use super::work;
use super::{tombstone, Fields};

/// One component: its fields and the clock value of each field's last write.
#[derive(Debug, Clone, Default, PartialEq)]
struct Component {
    fields: Fields,
    stamps: Stamps,
    /// The largest stamp, so `diff_since` can skip untouched components cheaply.
    latest: u64,
    /// The sum of the fields' entry sizes (see [`size::entries`]).
    entries: Size,
}

/// Field -> clock of its last write, in the order fields were first written. A vector while a
/// component has few fields (searching a handful of names beats hashing one), an index map past
/// that, so writing `n` fields costs `O(n)` however many there are.
#[derive(Debug, Clone)]
enum Stamps {
    Few(Vec<(String, u64)>),
    Many(IndexMap<String, u64>),
}

/// Most stamps kept in a vector.
const FEW_STAMPS: usize = 16;

impl Default for Stamps {
    fn default() -> Self {
        Stamps::Few(Vec::new())
    }
}

impl PartialEq for Stamps {
    /// The same names with the same clocks in the same order, however they are held.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Stamps {
    fn len(&self) -> usize {
        match self {
            Stamps::Few(few) => few.len(),
            Stamps::Many(many) => many.len(),
        }
    }

    /// Where `field` is in a vector of stamps (counting each name compared as a step).
    fn position(few: &[(String, u64)], field: &str) -> Option<usize> {
        let found = few.iter().position(|(f, _)| f == field);
        work::step(found.map_or(few.len(), |i| i + 1));
        found
    }

    fn contains(&self, field: &str) -> bool {
        match self {
            Stamps::Few(few) => Stamps::position(few, field).is_some(),
            Stamps::Many(many) => {
                work::step(1);
                many.contains_key(field)
            }
        }
    }

    /// Stamps `field` with `clock`; a new name goes last.
    fn set(&mut self, field: &str, clock: u64) {
        match self {
            Stamps::Few(few) => match Stamps::position(few, field) {
                Some(i) => few[i].1 = clock,
                None => self.push(field.to_owned(), clock),
            },
            Stamps::Many(many) => {
                work::step(1);
                match many.get_mut(field) {
                    Some(ts) => *ts = clock,
                    None => {
                        many.insert(field.to_owned(), clock);
                    }
                }
            }
        }
    }

    /// [`Stamps::set`] with an owned name (as a snapshot is read).
    fn set_owned(&mut self, field: String, clock: u64) {
        match self {
            Stamps::Few(few) => match Stamps::position(few, &field) {
                Some(i) => few[i].1 = clock,
                None => self.push(field, clock),
            },
            Stamps::Many(many) => {
                work::step(1);
                many.insert(field, clock);
            }
        }
    }

    /// Appends a name known to be new, moving to a map past [`FEW_STAMPS`].
    fn push(&mut self, field: String, clock: u64) {
        match self {
            Stamps::Few(few) if few.len() < FEW_STAMPS => few.push((field, clock)),
            Stamps::Few(few) => {
                let mut many: IndexMap<String, u64> = std::mem::take(few).into_iter().collect();
                many.insert(field, clock);
                *self = Stamps::Many(many);
            }
            Stamps::Many(many) => {
                many.insert(field, clock);
            }
        }
    }

    fn clear(&mut self) {
        *self = Stamps::default();
    }

    fn latest(&self) -> u64 {
        self.iter().map(|(_, ts)| ts).max().unwrap_or(0)
    }

    fn iter(&self) -> impl Iterator<Item = (&String, u64)> + '_ {
        let (few, many) = match self {
            Stamps::Few(few) => (Some(few.iter().map(|(f, ts)| (f, *ts))), None),
            Stamps::Many(many) => (None, Some(many.iter().map(|(f, ts)| (f, *ts)))),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

impl Component {
    fn stamp_all(&mut self, value: &Fields, clock: u64) {
        for field in value.keys() {
            self.stamps.set(field, clock);
        }
        self.latest = self.latest.max(clock);
    }

    /// This component's share of its document's size: its `"key":{..}` entry and a comma.
    fn share(&self, key: &str) -> Size {
        size::component(key, self.entries, self.fields.len()) + Size::new(1, 1)
    }

    /// The fields written after `since` that the component still has, in stamp order.
    fn fields_since(&self, since: u64) -> impl Iterator<Item = (&String, &Value)> {
        // Fields are nearly always stored in stamp order (both follow the first write of each
        // field), so the field at the same place is tried before a lookup by name (hashing the
        // name costs more than comparing it). Either way the value is the one stored under `f`.
        let mut in_order = self.fields.iter();
        self.stamps.iter().filter_map(move |(f, ts)| {
            work::step(1);
            let same_place = in_order.next().filter(|(k, _)| *k == f);
            if ts <= since {
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
    /// The sum of the components' shares (see [`Component::share`]); [`Document::size`] from it.
    shares: Size,
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
    #[error("stored document is over a limit ({0}); raise the setting to load it")]
    OverLimit(#[from] LimitError),
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

    /// The document's size: its JSON as the `state` of a snapshot (tombstones included) and the
    /// values in it (each component object counts one).
    pub fn size(&self) -> Size {
        let commas = usize::from(!self.components.is_empty());
        Size::new(2 + self.shares.bytes - commas, self.shares.values)
    }

    /// Checks that applying `patches` (validated, one request) keeps the document within
    /// `limits`, in time linear in the request and before anything is allocated for it.
    pub fn check(&self, patches: &[Value], limits: &Limits) -> Result<(), LimitError> {
        let projection = limits::project(self, patches, limits)?;
        let after = projection.change.applied_to(self.size());
        if after.bytes > limits.max_document_bytes {
            return Err(LimitError::DocumentBytes {
                max: limits.max_document_bytes,
            });
        }
        if after.values > limits.max_document_values {
            return Err(LimitError::DocumentValues {
                max: limits.max_document_values,
            });
        }
        Ok(())
    }

    /// Whether the document is within the room bounds of `limits` (a stored document may not be:
    /// written before a limit existed, or under a higher one).
    pub fn within(&self, limits: &Limits) -> Result<(), LimitError> {
        let size = self.size();
        if size.bytes > limits.max_document_bytes {
            return Err(LimitError::DocumentBytes {
                max: limits.max_document_bytes,
            });
        }
        if size.values > limits.max_document_values {
            return Err(LimitError::DocumentValues {
                max: limits.max_document_values,
            });
        }
        if self
            .components
            .values()
            .any(|c| c.stamps.len().max(c.fields.len()) > limits.max_fields_per_component)
        {
            return Err(LimitError::ComponentFields {
                max: limits.max_fields_per_component,
            });
        }
        Ok(())
    }

    /// Current fields of a component, tombstones included.
    pub fn get(&self, key: &str) -> Option<&Fields> {
        self.components.get(key).map(|c| &c.fields)
    }

    /// Applies one request's document patches: the clock advances once (if there is at least one
    /// patch) and every write of the request is stamped with the new value, which is returned.
    /// Patches are expected to have passed [`patch::validate_patches`] (anything else is
    /// skipped) and, when they come from a client or from storage, [`Document::check`].
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
        let (before, share) = match self.components.get(key) {
            Some(c) => (Some(c.latest), c.share(key)),
            None => (None, Size::default()),
        };
        self.write_component(key, value, clock, limits);
        if let Some((index, _, c)) = self.components.get_full(key) {
            self.shares = (self.shares + c.share(key)).minus(share);
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
                    let change = patch::write_fields(&mut c.fields, value, limits);
                    c.entries = change.applied_to(c.entries);
                    c.stamp_all(value, clock);
                }
            }
            Action::Delete => {
                let c = self.entry(key);
                c.fields = tombstone();
                c.entries = size::entries(&c.fields);
                // A delete resets the stamps to the fields named in the deleting patch.
                c.stamps.clear();
                c.stamp_all(value, clock);
            }
            Action::Create => {
                let c = self.entry(key);
                c.fields = Fields::new();
                let change = patch::write_fields(&mut c.fields, value, limits);
                c.entries = change.applied_to(Size::default());
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
        Document::decode_snapshot_within(bytes, &Limits::UNBOUNDED)
    }

    /// [`Document::decode_snapshot`] of a room bounded by `limits`: a snapshot holding more values
    /// than `max_document_values` is refused after a counting pass that builds nothing, and one
    /// over another limit once read. Linear in the snapshot's length.
    pub fn decode_snapshot_within(
        bytes: &[u8],
        limits: &Limits,
    ) -> Result<Document, SnapshotError> {
        if limits.max_document_values != usize::MAX {
            let counted: StateValues = serde_json::from_slice(bytes)?;
            // The count includes the `state` object itself.
            if counted.state.0.saturating_sub(1) > limits.max_document_values {
                return Err(LimitError::DocumentValues {
                    max: limits.max_document_values,
                }
                .into());
            }
        }
        let raw: RawSnapshot = serde_json::from_slice(bytes)?;
        let mut doc = Document {
            clock: raw.timestamp,
            components: IndexMap::with_capacity(raw.state.len()),
            by_latest: BTreeSet::new(),
            shares: Size::default(),
        };
        let mut timestamps = raw.timestamps;
        let mut by_latest = Vec::with_capacity(raw.state.len());
        for (key, value) in raw.state {
            let Value::Object(fields) = value else {
                return Err(SnapshotError::ComponentNotObject(key));
            };
            let RawStamps(stamps) = timestamps.swap_remove(&key).unwrap_or_default();
            let latest = stamps.latest();
            let c = Component {
                entries: size::entries(&fields),
                fields,
                stamps,
                latest,
            };
            doc.clock = doc.clock.max(latest);
            doc.shares += c.share(&key);
            let (position, _) = doc.components.insert_full(key, c);
            by_latest.push((latest, position));
        }
        doc.by_latest = BTreeSet::from_iter(by_latest);
        doc.within(limits)?;
        Ok(doc)
    }
}

impl Stored for Document {
    fn fields(&self, key: &str) -> Option<&Fields> {
        self.get(key)
    }

    fn component_size(&self, key: &str) -> Size {
        self.components
            .get(key)
            .map_or(Size::default(), |c| c.share(key))
    }

    fn field_count(&self, key: &str) -> usize {
        self.components.get(key).map_or(0, |c| c.stamps.len())
    }

    fn has_field(&self, key: &str, name: &str) -> bool {
        self.components
            .get(key)
            .is_some_and(|c| c.stamps.contains(name))
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

/// One component's stamps in a snapshot (`{"field": clock, ..}`), read straight into the
/// [`Stamps`] a [`Component`] keeps. A repeated name replaces the earlier value where it is, as
/// reading into a map does.
#[derive(Default)]
struct RawStamps(Stamps);

impl<'de> Deserialize<'de> for RawStamps {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StampsVisitor;
        impl<'de> Visitor<'de> for StampsVisitor {
            type Value = RawStamps;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawStamps, A::Error> {
                let mut stamps = Stamps::default();
                while let Some((field, ts)) = map.next_entry::<String, u64>()? {
                    stamps.set_owned(field, ts);
                }
                Ok(RawStamps(stamps))
            }
        }
        deserializer.deserialize_map(StampsVisitor)
    }
}

/// The number of JSON values in a snapshot's `state`, counted without building them.
#[derive(Deserialize)]
struct StateValues {
    #[serde(default)]
    state: CountValues,
}

/// Counts the JSON values of whatever it reads (1 for a scalar, 1 + contents for the others).
#[derive(Default)]
struct CountValues(usize);

impl<'de> Deserialize<'de> for CountValues {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountVisitor;
        impl<'de> Visitor<'de> for CountVisitor {
            type Value = CountValues;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_bool<E>(self, _: bool) -> Result<CountValues, E> {
                Ok(CountValues(1))
            }
            fn visit_i64<E>(self, _: i64) -> Result<CountValues, E> {
                Ok(CountValues(1))
            }
            fn visit_u64<E>(self, _: u64) -> Result<CountValues, E> {
                Ok(CountValues(1))
            }
            fn visit_f64<E>(self, _: f64) -> Result<CountValues, E> {
                Ok(CountValues(1))
            }
            fn visit_str<E>(self, _: &str) -> Result<CountValues, E> {
                Ok(CountValues(1))
            }
            fn visit_unit<E>(self) -> Result<CountValues, E> {
                Ok(CountValues(1))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CountValues, A::Error> {
                let mut n = 1usize;
                while let Some(CountValues(inner)) = seq.next_element()? {
                    n = n.saturating_add(inner);
                }
                Ok(CountValues(n))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CountValues, A::Error> {
                let mut n = 1usize;
                while let Some((IgnoredAny, CountValues(inner))) = map.next_entry()? {
                    n = n.saturating_add(inner);
                }
                Ok(CountValues(n))
            }
        }
        deserializer.deserialize_any(CountVisitor)
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
        struct StampsOf<'a>(&'a Stamps);
        impl Serialize for StampsOf<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter())
            }
        }
        struct Timestamps<'a>(&'a IndexMap<String, Component>);
        impl Serialize for Timestamps<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(k, c)| (k, StampsOf(&c.stamps))))
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
    use crate::engine::limits;
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
                .filter(|&(_, ts)| ts > since)
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

    /// The JSON of a document's `state` and its number of values, measured from scratch.
    fn measured(doc: &Document) -> Size {
        let snap: Value = serde_json::from_slice(&doc.encode_snapshot()).expect("json");
        let state = &snap["state"];
        let full = size::of_value(state);
        Size::new(full.bytes, full.values - 1)
    }

    /// Limits small enough for generated requests to land on both sides of each.
    const SMALL: Limits = Limits {
        max_buffer_len: usize::MAX,
        max_document_bytes: 60_000,
        max_document_values: 20_000,
        max_request_values: 2_048,
        max_fields_per_component: 400,
        max_presence_bytes: 4_096,
    };

    /// Requests that stress amplification and complexity: components written with hundreds of
    /// fields, buffer deltas that grow and shrink long arrays, literal arrays, deletes.
    fn arb_heavy_request() -> impl Strategy<Value = Value> {
        let key = (0..3usize).prop_map(|k| format!("k{k}/Shape"));
        let many_fields = (key.clone(), 0..600usize, any::<bool>()).prop_map(|(k, n, create)| {
            let mut fields = Map::new();
            if create {
                fields.insert("_exists".into(), Value::Bool(true));
            }
            for i in 0..n {
                fields.insert(format!("f{i}"), json!(i));
            }
            json!({ k: fields })
        });
        let delta = (key.clone(), 0..5_000usize, 0..5_000i64, proptest::collection::vec(-9..9i64, 0..40))
            .prop_map(|(k, len, at, v)| json!({ k: {"_exists": true, "pts": {"__buf": 1, "len": len, "runs": [[at, v]]}}}));
        let literal = (key.clone(), 0..400usize)
            .prop_map(|(k, n)| json!({ k: {"arr": vec![1.5; n], "label": "x".repeat(n)}}));
        let delete = key.prop_map(|k| json!({ k: {"_exists": false} }));
        prop_oneof![2 => many_fields, 3 => delta, 2 => literal, 1 => delete]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// For any requests: a request `check` accepts keeps the document within the limits and
        /// below the bound the check computed, one it refuses is not applied; the kept size is
        /// always the measured size of the document's JSON (also after a snapshot round trip);
        /// and the engine's work (stamps compared, values measured or written, counted) stays
        /// within a constant factor of the bytes received plus the values requests create.
        #[test]
        fn work_and_size_stay_linear_in_the_input(
            requests in proptest::collection::vec(arb_heavy_request(), 1..24),
        ) {
            let mut doc = Document::default();
            let (mut received, mut created) = (0usize, 0usize);
            let start = work::steps();
            for patch in &requests {
                let patches = std::slice::from_ref(patch);
                received += serde_json::to_vec(patch).expect("json").len();
                let before = doc.size();
                match doc.check(patches, &SMALL) {
                    Ok(()) => {
                        let projection = limits::project(&doc, patches, &SMALL).expect("accepted");
                        let bound = projection.change.applied_to(before);
                        prop_assert!(projection.created <= SMALL.max_request_values);
                        created += projection.created;
                        doc.apply(patches, &SMALL);
                        let after = doc.size();
                        prop_assert!(after.bytes <= bound.bytes && after.values <= bound.values,
                            "{after:?} over the bound {bound:?}");
                        prop_assert!(doc.within(&SMALL).is_ok());
                        prop_assert!(after.values.saturating_sub(before.values) <= projection.created + 3);
                    }
                    Err(_) => prop_assert_eq!(doc.size(), before),
                }
            }
            let steps = (work::steps() - start) as usize;
            prop_assert!(steps <= 8 * (received + created), "{steps} steps for {received} bytes and {created} values");
            prop_assert_eq!(doc.size(), measured(&doc));
            let start = work::steps();
            let bytes = doc.encode_snapshot();
            let back = Document::decode_snapshot_within(&bytes, &SMALL).expect("within the limits");
            let diff = doc.diff_since_raw(0);
            let steps = (work::steps() - start) as usize;
            prop_assert!(steps <= 2 * bytes.len(), "load and diff: {steps} steps for {} bytes", bytes.len());
            prop_assert_eq!(back.size(), doc.size());
            prop_assert!(diff.get().len() <= doc.size().bytes);
        }
    }

    /// One request writing more fields than `max_fields_per_component` (here 90k, the ~1 MiB
    /// frame of the report) is refused by the check, before anything is stamped.
    #[test]
    fn a_component_over_the_field_cap_is_refused() {
        let limits = Limits::default();
        let mut fields = Map::new();
        fields.insert("_exists".into(), Value::Bool(true));
        for i in 0..90_000 {
            fields.insert(format!("f{i}"), json!(1));
        }
        let patch = [json!({ "a/S": fields })];
        let doc = Document::default();
        assert_eq!(
            doc.check(&patch, &limits),
            Err(LimitError::ComponentFields { max: 1024 })
        );
        // Stamped names count, not only stored fields: a delete naming many fields stamps them.
        let mut doc = Document::default();
        let small = Limits {
            max_fields_per_component: 3,
            ..limits
        };
        let ok = [json!({"a/S": {"_exists": true, "x": 1, "y": 2}})];
        doc.check(&ok, &small).expect("within the cap");
        doc.apply(&ok, &small);
        assert_eq!(
            doc.check(&[json!({"a/S": {"z": 1, "w": 2}})], &small),
            Err(LimitError::ComponentFields { max: 3 })
        );
        assert_eq!(
            doc.check(
                &[json!({"a/S": {"_exists": false, "a": 1, "b": 2, "c": 3}})],
                &small
            ),
            Err(LimitError::ComponentFields { max: 3 })
        );
        // Deleted then re-created in one request: the old names no longer count as known.
        let both = [
            json!({"a/S": {"_exists": false}}),
            json!({"a/S": {"_exists": true, "x": 1, "y": 2, "q": 3}}),
        ];
        assert_eq!(
            doc.check(&both, &small),
            Err(LimitError::ComponentFields { max: 3 })
        );
    }

    /// A component below the cap but past the vector of stamps (600 fields) applies with the
    /// same diffs and snapshot bytes as the vector gives, and written again costs steps linear
    /// in its fields (the vector alone would compare every name with every other).
    #[test]
    fn many_fields_apply_linearly_with_the_same_diffs() {
        let limits = Limits::default();
        let mut doc = Document::default();
        let mut fields = Map::new();
        fields.insert("_exists".into(), Value::Bool(true));
        for i in 0..600 {
            fields.insert(format!("f{i}"), json!(i));
        }
        let create = [json!({ "a/S": fields.clone() })];
        doc.check(&create, &limits).expect("below the cap");
        doc.apply(&create, &limits);
        // Rewrite every other field, in reverse order.
        let mut edit = Map::new();
        for i in (0..600).rev().step_by(2) {
            edit.insert(format!("f{i}"), json!(-1));
        }
        let start = work::steps();
        doc.apply(&[json!({ "a/S": edit })], &limits);
        let steps = work::steps() - start;
        assert!(
            steps < 600 * 4,
            "{steps} steps to rewrite 300 of 600 fields"
        );
        assert_eq!(
            serde_json::to_string(&doc.diff_since(1)).expect("json"),
            doc.diff_since_raw(1).get()
        );
        // The diff lists fields in the order they were first written, like the vector did.
        let diff = doc.diff_since(1);
        let names: Vec<&String> = diff["a/S"].as_object().expect("object").keys().collect();
        let want: Vec<String> = (0..600)
            .filter(|i| i % 2 == 1)
            .map(|i| format!("f{i}"))
            .collect();
        assert_eq!(names, want.iter().collect::<Vec<_>>());
        assert_eq!(scan_diff(&doc, 0), doc.diff_since(0));
        let back = Document::decode_snapshot(&doc.encode_snapshot()).expect("decodes");
        assert_eq!(back, doc);
        assert_eq!(back.encode_snapshot(), doc.encode_snapshot());
    }

    /// The report's 142-byte frame (a buffer delta of length 2^20 on a new component) is
    /// refused before any array is made; a smaller one is accepted until the document is full,
    /// then refused, and the refusals leave the document as it was.
    #[test]
    fn buffer_amplification_is_refused_before_allocating() {
        let limits = Limits::default();
        let attack = |k: usize, len: usize| {
            [
                json!({ format!("s{k}/Stroke"): {"_exists": true, "pts": {"__buf": 1, "len": len, "runs": []}}}),
            ]
        };
        let mut doc = Document::default();
        assert_eq!(
            doc.check(&attack(0, 1 << 20), &limits),
            Err(LimitError::RequestValues { max: 512 << 10 })
        );
        let mut accepted = 0;
        for k in 0..64 {
            match doc.check(&attack(k, 500_000), &limits) {
                Ok(()) => {
                    doc.apply(&attack(k, 500_000), &limits);
                    accepted += 1;
                }
                Err(e) => {
                    assert_eq!(e, LimitError::DocumentValues { max: 4 << 20 });
                    break;
                }
            }
        }
        assert_eq!(accepted, 8, "4Mi values hold 8 arrays of 500k");
        assert!(doc.size().values <= limits.max_document_values);
        // Appending to a long array costs what is appended.
        let start = work::steps();
        let append = [
            json!({"s0/Stroke": {"pts": {"__buf": 1, "len": 500_002, "runs": [[500_000, [1, 2]]]}}}),
        ];
        doc.check(
            &append,
            &Limits {
                max_document_values: usize::MAX,
                ..limits
            },
        )
        .expect("fits");
        doc.apply(&append, &limits);
        assert!(work::steps() - start < 100);
        assert_eq!(doc.size(), measured(&doc));
    }

    /// A document at its byte limit can still be edited in place and deleted from: a request
    /// is measured by what it adds minus what it certainly replaces.
    #[test]
    fn a_full_document_still_takes_edits_that_do_not_grow_it() {
        let mut doc = Document::default();
        let create = [json!({"a/S": {"_exists": true, "x": 1, "text": "y".repeat(100)}})];
        doc.apply(&create, &Limits::default());
        let full = Limits {
            max_document_bytes: doc.size().bytes,
            ..Limits::default()
        };
        doc.check(&[json!({"a/S": {"x": 2}})], &full)
            .expect("same size");
        doc.check(&[json!({"a/S": {"text": "z"}})], &full)
            .expect("smaller");
        doc.check(&[json!({"a/S": {"_exists": false}})], &full)
            .expect("a delete frees");
        assert_eq!(
            doc.check(&[json!({"a/S": {"x": 22}})], &full),
            Err(LimitError::DocumentBytes {
                max: full.max_document_bytes
            })
        );
    }

    /// A stored snapshot over the limits is refused by a counting pass (no values built), with
    /// an error naming the setting; under the limits it loads.
    #[test]
    fn snapshots_over_the_limits_are_refused() {
        let mut doc = Document::default();
        doc.apply(
            &[json!({"a/S": {"_exists": true, "pts": [1, 2, 3, 4, 5]}})],
            &Limits::default(),
        );
        let bytes = doc.encode_snapshot();
        let tight = |values, fields| Limits {
            max_document_values: values,
            max_fields_per_component: fields,
            ..Limits::default()
        };
        let err = Document::decode_snapshot_within(&bytes, &tight(5, 10)).unwrap_err();
        assert!(err.to_string().contains("max_document_values (5)"), "{err}");
        let err = Document::decode_snapshot_within(&bytes, &tight(100, 1)).unwrap_err();
        assert!(
            err.to_string().contains("max_fields_per_component (1)"),
            "{err}"
        );
        let back = Document::decode_snapshot_within(&bytes, &tight(8, 2)).expect("fits");
        assert_eq!(back.size(), measured(&doc));
        assert_eq!(back.size().values, 8);
    }
}
