//! Game state as a stamped document: a JSON value whose dot-paths carry the document's clock at
//! their last write.
//!
//! A game room keeps each of its states (shared, each player's, server-only, metadata) as one
//! [`StateDoc`]. A handler's result is committed with [`StateDoc::apply`]: the structural diff of
//! the committed value and the new one ([`tree::diff`], the dot-path rules of the wire) becomes
//! the batch's writes, the clock steps once, and every written path is stamped with it. The clock
//! is the version the EdgeBase clients see, so it steps once per non-empty batch and never for a
//! no-op.
//!
//! Stamps live in a tree beside the value, holding only paths that were written: a node's stamp
//! is the clock at which its path was last written whole (a path absent from the value is a
//! tombstone), `0` when only its members were written. Writing a path drops the stamps below it
//! (they are part of the new whole value), so [`StateDoc::diff_since`] is the set of highest
//! nodes stamped after a clock: disjoint paths, each sent with its value now (`null` if deleted).
//!
//! A batch can be replayed onto an older copy of the document ([`StateDoc::replay`]), which is
//! how a snapshot plus the batches applied after it give the same document back.
//!
//! ```
//! use weft::engine::state::{StateDoc, Writes};
//! use weft::engine::tree::Change;
//! use serde_json::json;
//!
//! let mut doc = StateDoc::new(json!({"hp": 100, "pos": {"x": 0, "y": 0}}), 0);
//! let saved = doc.clone();
//! let batch = doc.apply(json!({"hp": 100, "pos": {"x": 5, "y": 0}})).expect("a change");
//! assert_eq!(batch.clock, 1);
//! assert_eq!(batch.writes, Writes::Paths(json!({"pos.x": 5}).as_object().unwrap().clone()));
//!
//! // What a client that saw version 0 needs, and the same document from the saved copy.
//! assert_eq!(doc.diff_since(0), Change::Delta(json!({"pos.x": 5}).as_object().unwrap().clone()));
//! let mut copy = saved;
//! copy.replay(&batch).expect("the next batch");
//! assert_eq!(copy, doc);
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use super::tree::{self, Change, Delta, MAX_PATH_DEPTH};

/// One state document: the committed value, its clock and the stamps of its written paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SavedState")]
pub struct StateDoc {
    clock: u64,
    value: Value,
    stamps: PathStamps,
}

/// The stamps of a document's written paths (see the module docs). Saved beside the value; read
/// back through [`StateDoc::from_parts`], which checks them against the value's clock.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PathStamps {
    root: Node,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Node {
    /// The clock when this path was last written whole; `0` if only members were written.
    stamp: u64,
    /// The largest stamp in this subtree, so a diff skips untouched subtrees.
    latest: u64,
    /// Members written after `stamp`.
    children: BTreeMap<String, Node>,
}

/// What one batch wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Writes {
    /// Dot-paths and their new values (`null` deletes), as a `shared_delta`/`player_delta`.
    Paths(Delta),
    /// The whole value (a changed top-level key cannot be a path; clients get a full `sync`).
    Whole(Value),
}

/// One applied batch: the clock it was applied at (the new version) and its writes. This is what
/// a durable log appends; [`StateDoc::replay`] applies it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateBatch {
    pub clock: u64,
    pub writes: Writes,
}

/// What [`StateDoc::replay`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replayed {
    Applied,
    /// The batch's clock is not after the document's: it is already in (a log tail that
    /// overlaps the snapshot). Nothing changed.
    AlreadyIn,
}

/// A batch that cannot be replayed; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("batch at clock {batch} does not follow the document's clock {clock}")]
    Gap { clock: u64, batch: u64 },
    #[error("batch at clock {0} writes nothing")]
    Empty(u64),
    #[error("batch writes {path:?}, which is not a dot-path of at most {MAX_PATH_DEPTH} non-empty segments")]
    BadPath { path: String },
}

/// Saved stamps that do not fit their document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    #[error(
        "stamped path {path:?} is not a dot-path of at most {MAX_PATH_DEPTH} non-empty segments"
    )]
    BadPath { path: String },
    #[error("path {path:?} is stamped {stamp}, after the document's clock {clock}")]
    AfterClock {
        path: String,
        stamp: u64,
        clock: u64,
    },
    #[error("path {path:?} is stamped {stamp}, not after the write of its parent")]
    NotAfterParent { path: String, stamp: u64 },
    #[error("path {path:?} has neither a stamp nor stamped members")]
    Unstamped { path: String },
}

impl StateDoc {
    /// A document holding `value` as written whole at `clock` (a fresh state at 0, or a state
    /// saved without stamps). `null` members are dropped: on the wire `null` means deleted.
    pub fn new(mut value: Value, clock: u64) -> StateDoc {
        tree::strip_nulls(&mut value);
        let root = Node {
            stamp: clock,
            latest: clock,
            children: BTreeMap::new(),
        };
        StateDoc {
            clock,
            value,
            stamps: PathStamps { root },
        }
    }

    /// A saved document back: its value, clock and stamps, checked against each other.
    pub fn from_parts(
        value: Value,
        clock: u64,
        stamps: PathStamps,
    ) -> Result<StateDoc, StampError> {
        stamps.check(clock)?;
        let mut value = value;
        tree::strip_nulls(&mut value);
        Ok(StateDoc {
            clock,
            value,
            stamps,
        })
    }

    /// The document taken apart, as [`StateDoc::from_parts`] takes it back: value, clock, stamps.
    pub fn into_parts(self) -> (Value, u64, PathStamps) {
        (self.value, self.clock, self.stamps)
    }

    /// The committed value.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The clock of the last applied batch (the version clients see).
    pub fn clock(&self) -> u64 {
        self.clock
    }

    pub fn stamps(&self) -> &PathStamps {
        &self.stamps
    }

    /// Commits `new` (without `null` members, as [`tree::normalize_root`] leaves it): its diff
    /// from the committed value becomes one batch at the next clock, or nothing if they are
    /// equal. The writes are exactly what [`tree::diff`] gives for the pair.
    pub fn apply(&mut self, new: Value) -> Option<StateBatch> {
        let writes = match tree::diff(&self.value, &new) {
            Change::None => return None,
            Change::Delta(delta) => Writes::Paths(delta),
            Change::Whole => Writes::Whole(new.clone()),
        };
        self.clock += 1;
        self.stamps.stamp(&writes, self.clock);
        self.value = new;
        Some(StateBatch {
            clock: self.clock,
            writes,
        })
    }

    /// Applies a batch [`StateDoc::apply`] returned to a copy of the document from before it
    /// (the batches after a snapshot, in order). Paths are applied as the clients apply a delta.
    pub fn replay(&mut self, batch: &StateBatch) -> Result<Replayed, ReplayError> {
        if batch.clock <= self.clock {
            return Ok(Replayed::AlreadyIn);
        }
        if batch.clock != self.clock + 1 {
            return Err(ReplayError::Gap {
                clock: self.clock,
                batch: batch.clock,
            });
        }
        match &batch.writes {
            Writes::Paths(delta) => {
                if delta.is_empty() {
                    return Err(ReplayError::Empty(batch.clock));
                }
                if let Some(path) = delta.keys().find(|p| !is_path(p)) {
                    return Err(ReplayError::BadPath { path: path.clone() });
                }
                // Written values hold no `null` members (a log written by `apply` has none).
                let cleaned: Delta = delta
                    .iter()
                    .map(|(path, value)| {
                        let mut value = value.clone();
                        tree::strip_nulls(&mut value);
                        (path.clone(), value)
                    })
                    .collect();
                tree::apply_delta(&mut self.value, &cleaned);
            }
            Writes::Whole(value) => {
                self.value = value.clone();
                tree::strip_nulls(&mut self.value);
            }
        }
        self.clock = batch.clock;
        self.stamps.stamp(&batch.writes, self.clock);
        Ok(Replayed::Applied)
    }

    /// Every path written after `since` with its value now (`null` if deleted), by the wire's
    /// dot-path rules; [`Change::Whole`] if the root itself was written after `since` (send the
    /// whole value), [`Change::None`] if nothing was. Costs the stamps written after `since`.
    pub fn diff_since(&self, since: u64) -> Change {
        let root = &self.stamps.root;
        if root.stamp > since {
            return Change::Whole;
        }
        if root.latest <= since {
            return Change::None;
        }
        let mut delta = Delta::new();
        root.collect(Some(&self.value), &mut String::new(), since, &mut delta);
        Change::Delta(delta)
    }
}

/// Whether `path` is a dot-path a batch may write: 1 to [`MAX_PATH_DEPTH`] non-empty segments.
fn is_path(path: &str) -> bool {
    let mut segments = 0;
    for segment in path.split('.') {
        segments += 1;
        if segment.is_empty() || segments > MAX_PATH_DEPTH {
            return false;
        }
    }
    true
}

impl PathStamps {
    /// Whether these stamps could have been written by a document now at `clock`: stamps not
    /// after it, each written path after its ancestors' writes, paths the wire can carry.
    pub fn check(&self, clock: u64) -> Result<(), StampError> {
        self.root.check(&mut String::new(), 0, 0, clock)
    }

    /// Stamps every path of `writes` with `clock` (larger than every stamp so far).
    fn stamp(&mut self, writes: &Writes, clock: u64) {
        match writes {
            Writes::Whole(_) => self.root = Node::written(clock),
            Writes::Paths(delta) => {
                for path in delta.keys() {
                    self.root.stamp_path(path, clock);
                }
            }
        }
    }
}

impl Node {
    fn written(clock: u64) -> Node {
        Node {
            stamp: clock,
            latest: clock,
            children: BTreeMap::new(),
        }
    }

    /// Stamps the dot-path `path` below this node; the nodes on the way become its ancestors.
    #[allow(clippy::map_entry)] // the entry API allocates the key even when it is there
    fn stamp_path(&mut self, path: &str, clock: u64) {
        let mut node = self;
        for segment in path.split('.') {
            node.latest = clock;
            // Looked up before inserting: the entry API would allocate the key on every write.
            if !node.children.contains_key(segment) {
                node.children.insert(segment.to_owned(), Node::default());
            }
            // Just ensured.
            let Some(child) = node.children.get_mut(segment) else {
                return;
            };
            node = child;
        }
        *node = Node::written(clock);
    }

    /// Adds the highest paths below this node stamped after `since` (`value` is the node's).
    fn collect(&self, value: Option<&Value>, path: &mut String, since: u64, delta: &mut Delta) {
        let members = value.and_then(Value::as_object);
        for (key, child) in &self.children {
            if child.latest <= since {
                continue;
            }
            let child_value = members.and_then(|m| m.get(key));
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(key);
            if child.stamp > since {
                delta.insert(path.clone(), child_value.cloned().unwrap_or(Value::Null));
            } else {
                child.collect(child_value, path, since, delta);
            }
            path.truncate(len);
        }
    }

    /// Checks the loaded subtree at `path` (`depth` segments below the root; `after` = the
    /// largest stamp of its ancestors) against the document's `clock`.
    fn check(
        &self,
        path: &mut String,
        depth: usize,
        after: u64,
        clock: u64,
    ) -> Result<(), StampError> {
        if self.stamp > clock {
            return Err(StampError::AfterClock {
                path: path.clone(),
                stamp: self.stamp,
                clock,
            });
        }
        if depth > 0 && self.stamp != 0 && self.stamp <= after {
            return Err(StampError::NotAfterParent {
                path: path.clone(),
                stamp: self.stamp,
            });
        }
        if depth > 0 && self.stamp == 0 && self.children.is_empty() {
            return Err(StampError::Unstamped { path: path.clone() });
        }
        for (key, child) in &self.children {
            let len = path.len();
            if depth > 0 {
                path.push('.');
            }
            path.push_str(key);
            if depth + 1 > MAX_PATH_DEPTH || key.is_empty() || key.contains('.') {
                return Err(StampError::BadPath { path: path.clone() });
            }
            child.check(path, depth + 1, after.max(self.stamp), clock)?;
            path.truncate(len);
        }
        Ok(())
    }
}

// --- saved form ---------------------------------------------------------------------------------
//
// A node is saved as its stamp (`5`), or `[stamp, {member: node, ..}]` when members were written
// after it; `latest` is recomputed on load.

impl Serialize for PathStamps {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.root.serialize(serializer)
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.children.is_empty() {
            serializer.serialize_u64(self.stamp)
        } else {
            (self.stamp, &self.children).serialize(serializer)
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SavedNode {
    Leaf(u64),
    Inner(u64, BTreeMap<String, SavedNode>),
}

impl From<SavedNode> for Node {
    /// `latest` is set by [`Node::check`], which every loaded tree goes through.
    fn from(saved: SavedNode) -> Node {
        match saved {
            SavedNode::Leaf(stamp) => Node {
                stamp,
                latest: stamp,
                children: BTreeMap::new(),
            },
            SavedNode::Inner(stamp, children) => {
                let children: BTreeMap<String, Node> = children
                    .into_iter()
                    .map(|(k, n)| (k, Node::from(n)))
                    .collect();
                let latest = children.values().map(|c| c.latest).fold(stamp, u64::max);
                Node {
                    stamp,
                    latest,
                    children,
                }
            }
        }
    }
}

impl<'de> Deserialize<'de> for PathStamps {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        SavedNode::deserialize(deserializer).map(|root| PathStamps { root: root.into() })
    }
}

/// A [`StateDoc`] as [`StateDoc`]'s own serde form reads it, checked by [`StateDoc::from_parts`].
#[derive(Deserialize)]
struct SavedState {
    clock: u64,
    value: Value,
    stamps: PathStamps,
}

impl TryFrom<SavedState> for StateDoc {
    type Error = StampError;
    fn try_from(saved: SavedState) -> Result<StateDoc, StampError> {
        StateDoc::from_parts(saved.value, saved.clock, saved.stamps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tree::tests::arb_value;
    use proptest::prelude::*;
    use serde_json::json;

    fn delta(value: Value) -> Delta {
        value.as_object().cloned().expect("an object")
    }

    fn normalized(mut value: Value) -> Value {
        tree::normalize_root(&mut value);
        value
    }

    /// What a client that holds `old` has after receiving `change` for `doc`.
    fn client_after(old: &Value, change: Change, doc: &StateDoc) -> Value {
        match change {
            Change::None => old.clone(),
            Change::Delta(d) => {
                let mut client = old.clone();
                tree::apply_delta(&mut client, &d);
                client
            }
            Change::Whole => doc.value().clone(),
        }
    }

    /// Deleted paths come back from `diff_since` as `null`, written paths with their value now,
    /// and a path rewritten whole replaces what was stamped below it.
    #[test]
    fn diff_since_sends_tombstones_and_the_highest_written_paths() {
        let mut doc = StateDoc::new(json!({"a": {"b": 1, "c": 2}, "d": 1}), 0);
        doc.apply(json!({"a": {"b": 1}, "d": 2})).expect("change");
        assert_eq!(
            doc.diff_since(0),
            Change::Delta(delta(json!({"a.c": null, "d": 2})))
        );
        doc.apply(json!({"a": [1], "d": 2})).expect("change");
        assert_eq!(doc.clock(), 2);
        assert_eq!(
            doc.diff_since(0),
            Change::Delta(delta(json!({"a": [1], "d": 2})))
        );
        assert_eq!(doc.diff_since(1), Change::Delta(delta(json!({"a": [1]}))));
        assert_eq!(doc.diff_since(2), Change::None);
        // A no-op is not a batch and does not step the clock.
        assert_eq!(doc.apply(json!({"a": [1], "d": 2})), None);
        assert_eq!(doc.clock(), 2);
        // An unsafe top-level key writes the root: every older client needs the whole value.
        let batch = doc.apply(json!({"a.b": 1})).expect("change");
        assert_eq!(batch.writes, Writes::Whole(json!({"a.b": 1})));
        assert_eq!(doc.diff_since(2), Change::Whole);
        assert_eq!(doc.diff_since(3), Change::None);
    }

    /// A document saved without stamps (format 1) answers every older clock with the whole value.
    #[test]
    fn a_document_without_stamps_is_written_whole_at_its_clock() {
        let doc = StateDoc::new(json!({"a": 1, "b": null}), 7);
        assert_eq!(doc.value(), &json!({"a": 1}));
        assert_eq!(doc.diff_since(6), Change::Whole);
        assert_eq!(doc.diff_since(7), Change::None);
    }

    /// Replay refuses a batch that skips a clock or writes no valid path, and skips one that is
    /// already in, leaving the document unchanged in every case.
    #[test]
    fn replay_refuses_gaps_and_bad_paths() {
        let mut doc = StateDoc::new(json!({"a": 1}), 3);
        let before = doc.clone();
        let at = |clock, writes| StateBatch { clock, writes };
        let gap = at(5, Writes::Paths(delta(json!({"a": 2}))));
        assert_eq!(
            doc.replay(&gap),
            Err(ReplayError::Gap { clock: 3, batch: 5 })
        );
        let old = at(3, Writes::Paths(delta(json!({"a": 2}))));
        assert_eq!(doc.replay(&old), Ok(Replayed::AlreadyIn));
        assert_eq!(
            doc.replay(&at(4, Writes::Paths(Delta::new()))),
            Err(ReplayError::Empty(4))
        );
        for path in ["", "a..b", ".a", "a.b.c.d.e.f"] {
            let bad = at(4, Writes::Paths(delta(json!({ path: 1 }))));
            assert_eq!(
                doc.replay(&bad),
                Err(ReplayError::BadPath {
                    path: path.to_owned()
                })
            );
        }
        assert_eq!(doc, before);
        assert_eq!(
            doc.replay(&at(4, Writes::Paths(delta(json!({"b.c": {"d": null}}))))),
            Ok(Replayed::Applied)
        );
        assert_eq!(doc.value(), &json!({"a": 1, "b": {"c": {}}}));
        assert_eq!(doc.clock(), 4);
    }

    /// Saved stamps that the document could not have written are refused on load.
    #[test]
    fn loading_refuses_stamps_that_do_not_fit() {
        let load = |clock: u64, stamps: Value| {
            let stamps: PathStamps = serde_json::from_value(stamps).expect("stamps shape");
            StateDoc::from_parts(json!({}), clock, stamps)
        };
        assert!(load(5, json!([0, {"a": 5, "b": [0, {"c": 3}]}])).is_ok());
        assert!(matches!(
            load(4, json!([0, {"a": 5}])),
            Err(StampError::AfterClock { .. })
        ));
        assert!(matches!(
            load(5, json!([3, {"a": 2}])),
            Err(StampError::NotAfterParent { .. })
        ));
        assert!(matches!(
            load(5, json!([0, {"a": [4, {"b": 4}]}])),
            Err(StampError::NotAfterParent { .. })
        ));
        assert!(matches!(
            load(5, json!([0, {"a": 0}])),
            Err(StampError::Unstamped { .. })
        ));
        assert!(matches!(
            load(5, json!([0, {"a.b": 1}])),
            Err(StampError::BadPath { .. })
        ));
        assert!(matches!(
            load(5, json!([0, {"": 1}])),
            Err(StampError::BadPath { .. })
        ));
        let deep = json!([0, {"a": [0, {"b": [0, {"c": [0, {"d": [0, {"e": [0, {"f": 1}]}]}]}]}]}]);
        assert!(matches!(load(5, deep), Err(StampError::BadPath { .. })));
    }

    /// The saved form: a node is its stamp, or `[stamp, {members}]`.
    #[test]
    fn snapshot_form_is_compact() {
        let mut doc = StateDoc::new(json!({"p": {"x": 0, "y": 0}}), 0);
        doc.apply(json!({"p": {"x": 1, "y": 0}})).expect("change");
        let saved = serde_json::to_value(&doc).expect("serializes");
        assert_eq!(
            saved,
            json!({"clock": 1, "value": {"p": {"x": 1, "y": 0}}, "stamps": [0, {"p": [0, {"x": 1}]}]})
        );
        let back: StateDoc = serde_json::from_value(saved).expect("loads");
        assert_eq!(back, doc);
        assert_eq!(back.diff_since(0), doc.diff_since(0));
        let bad = json!({"clock": 0, "value": {}, "stamps": [0, {"x": 1}]});
        assert!(serde_json::from_value::<StateDoc>(bad).is_err());
    }

    proptest! {
        /// `apply` writes exactly what `tree::diff` gives for the same pair, and steps the clock
        /// once for a change, never for a no-op.
        #[test]
        fn apply_writes_what_tree_diff_gives(old in arb_value(), new in arb_value(), clock in 0u64..5) {
            let (old, new) = (normalized(old), normalized(new));
            let mut doc = StateDoc::new(old.clone(), clock);
            let expected = tree::diff(&old, &new);
            match (doc.apply(new.clone()), expected) {
                (None, Change::None) => prop_assert_eq!(doc.clock(), clock),
                (Some(batch), Change::Delta(d)) => {
                    prop_assert_eq!(batch.writes, Writes::Paths(d));
                    prop_assert_eq!(batch.clock, clock + 1);
                }
                (Some(batch), Change::Whole) => {
                    prop_assert_eq!(batch.writes, Writes::Whole(new.clone()));
                    prop_assert_eq!(batch.clock, clock + 1);
                }
                (got, expected) => prop_assert!(false, "apply gave {:?}, diff {:?}", got, expected),
            }
            prop_assert_eq!(doc.value(), &new);
        }

        /// Over a run of states: a client holding the state of any earlier version catches up by
        /// applying `diff_since` of that version; a copy saved at any version (through its saved
        /// form) and replayed with the later batches is the same document.
        #[test]
        fn diff_since_and_replay_rebuild_every_version(states in prop::collection::vec(arb_value(), 1..6)) {
            let mut doc = StateDoc::new(json!({}), 0);
            let mut seen = vec![(doc.clone(), doc.value().clone())];
            let mut batches = Vec::new();
            for state in states {
                if let Some(batch) = doc.apply(normalized(state)) {
                    batches.push(batch);
                    seen.push((doc.clone(), doc.value().clone()));
                }
            }
            for (clock, (saved, value)) in seen.iter().enumerate() {
                let change = doc.diff_since(clock as u64);
                if let Change::Delta(d) = &change {
                    prop_assert!(d.keys().all(|k| is_path(k)));
                }
                prop_assert_eq!(&client_after(value, change, &doc), doc.value());
                let text = serde_json::to_string(saved).expect("serializes");
                let mut copy: StateDoc = serde_json::from_str(&text).expect("loads");
                for batch in &batches {
                    let expected = if batch.clock <= copy.clock() { Replayed::AlreadyIn } else { Replayed::Applied };
                    prop_assert_eq!(copy.replay(batch), Ok(expected));
                }
                prop_assert_eq!(&copy, &doc);
            }
        }
    }
}
