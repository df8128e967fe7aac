//! Ephemeral state: each client's presence (cursors, selections), merged with the document's
//! create/merge/delete rule but never stamped and never persisted.

use std::collections::HashMap;

use indexmap::IndexMap;
use serde_json::{Map, Value};

use super::limits::{self, LimitError, Limits, Stored};
use super::patch::{self, Action};
use super::size::{self, Size};
use super::{tombstone, Fields};

/// Ephemeral state of every session in a room, keyed by a session number the caller chooses.
///
/// Presence belongs to a session, not to a client id: two sessions of one client (a reconnect
/// whose old socket has not timed out yet, or a second tab) each keep their own, and a session
/// leaving takes only its own keys away.
#[derive(Debug, Default, Clone)]
pub struct Ephemeral {
    sessions: IndexMap<u64, Presence>,
    /// Key -> how many sessions hold it, so a leave tells which keys another session still has.
    holders: HashMap<String, usize>,
}

/// One session's presence: key -> fields and the sum of their entry sizes.
#[derive(Debug, Default, Clone)]
struct Presence {
    components: IndexMap<String, (Fields, Size)>,
    /// The sum of the components' `"key":{..}` entries, each with a comma.
    shares: Size,
}

impl Presence {
    fn share(key: &str, fields: &Fields, entries: Size) -> Size {
        size::component(key, entries, fields.len()) + Size::new(1, 0)
    }

    /// The JSON length of this presence as one patch object.
    fn size(&self) -> Size {
        let commas = usize::from(!self.components.is_empty());
        Size::new(2 + self.shares.bytes - commas, self.shares.values)
    }
}

impl Stored for Presence {
    fn fields(&self, key: &str) -> Option<&Fields> {
        self.components.get(key).map(|(fields, _)| fields)
    }

    fn component_size(&self, key: &str) -> Size {
        self.components
            .get(key)
            .map_or(Size::default(), |(f, e)| Presence::share(key, f, *e))
    }

    fn field_count(&self, key: &str) -> usize {
        self.components.get(key).map_or(0, |(f, _)| f.len())
    }

    fn has_field(&self, key: &str, name: &str) -> bool {
        self.components
            .get(key)
            .is_some_and(|(f, _)| f.contains_key(name))
    }
}

impl Ephemeral {
    /// Checks that merging `patches` (validated, one request) into `session`'s state keeps it
    /// within `max_presence_bytes` (and the request within its limits), in time linear in the
    /// request.
    pub fn check(
        &self,
        session: u64,
        patches: &[Value],
        limits: &Limits,
    ) -> Result<(), LimitError> {
        let empty = Presence::default();
        let presence = self.sessions.get(&session).unwrap_or(&empty);
        let projection = limits::project(presence, patches, limits)?;
        if projection.change.applied_to(presence.size()).bytes > limits.max_presence_bytes {
            return Err(LimitError::PresenceBytes {
                max: limits.max_presence_bytes,
            });
        }
        Ok(())
    }

    /// The JSON length of `session`'s presence (0 when it has none).
    pub fn size_of(&self, session: u64) -> Size {
        self.sessions
            .get(&session)
            .map_or(Size::default(), Presence::size)
    }

    /// Merges a session's ephemeral patches into its state.
    pub fn apply(&mut self, session: u64, patches: &[Value], limits: &Limits) {
        let state = self.sessions.entry(session).or_default();
        for patch in patches.iter().filter_map(Value::as_object) {
            for (key, value) in patch {
                let Some(value) = value.as_object() else {
                    continue;
                };
                let current = state.components.get(key).map(|(f, _)| f);
                let action = patch::action(current, value);
                if action == Action::Skip {
                    continue;
                }
                let before = state.component_size(key);
                let (fields, entries) = match state.components.get_mut(key) {
                    Some(entry) => entry,
                    None => {
                        *self.holders.entry(key.clone()).or_default() += 1;
                        state.components.entry(key.clone()).or_default()
                    }
                };
                match action {
                    Action::Skip => {}
                    Action::Delete => {
                        *fields = tombstone();
                        *entries = size::entries(fields);
                    }
                    Action::Create => {
                        *fields = Fields::new();
                        *entries =
                            patch::write_fields(fields, value, limits).applied_to(Size::default());
                    }
                    Action::Merge => {
                        *entries = patch::write_fields(fields, value, limits).applied_to(*entries);
                    }
                }
                let after = Presence::share(key, fields, *entries);
                state.shares = (state.shares + after).minus(before);
            }
        }
    }

    /// The merged state of every session except `except`, as one patch (empty object if none).
    /// A key several sessions hold shows the state of the session that joined last.
    pub fn merged_except(&self, except: u64) -> Value {
        let mut merged = Map::new();
        for (session, state) in &self.sessions {
            if *session != except {
                for (key, (fields, _)) in &state.components {
                    merged.insert(key.clone(), Value::Object(fields.clone()));
                }
            }
        }
        Value::Object(merged)
    }

    /// Drops a session's state and returns the patch that takes its keys away from everyone
    /// else (`None` when it had none): a deletion for each key no other session holds, and for a
    /// key another session still holds, that session's state (so the leave does not wipe it).
    pub fn remove(&mut self, session: u64) -> Option<Value> {
        let state = self.sessions.shift_remove(&session)?;
        let mut patch = Map::new();
        for key in state.components.into_keys() {
            let still_held = match self.holders.get_mut(&key) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    true
                }
                _ => {
                    self.holders.remove(&key);
                    false
                }
            };
            let value = match still_held {
                true => self
                    .sessions
                    .values()
                    .rev()
                    .find_map(|s| s.components.get(&key))
                    .map(|(fields, _)| Value::Object(fields.clone())),
                false => None,
            };
            let value = value.unwrap_or_else(|| Value::Object(tombstone()));
            patch.insert(key, value);
        }
        (!patch.is_empty()).then_some(Value::Object(patch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ALICE: u64 = 1;
    const BOB: u64 = 2;
    const ALICE_AGAIN: u64 = 3;

    /// Presence merges per session, is shown to others only, and leaves with deletions.
    #[test]
    fn presence_lifecycle() {
        let limits = Limits::default();
        let mut eph = Ephemeral::default();
        eph.apply(
            ALICE,
            &[json!({"alice/Cursor": {"_exists": true, "x": 1}})],
            &limits,
        );
        eph.apply(ALICE, &[json!({"alice/Cursor": {"x": 2}})], &limits);
        eph.apply(BOB, &[json!({"bob/Cursor": {"y": 1}})], &limits);
        assert_eq!(
            eph.merged_except(BOB),
            json!({"alice/Cursor": {"_exists": true, "x": 2}})
        );
        assert_eq!(eph.merged_except(ALICE), json!({}));
        assert_eq!(
            eph.remove(ALICE),
            Some(json!({"alice/Cursor": {"_exists": false}}))
        );
        assert_eq!(eph.remove(ALICE), None);
        // Bob's partial patch to an absent key created an empty state: nothing to delete.
        assert_eq!(eph.remove(BOB), None);
    }

    /// Two sessions of one client (a reconnect before the old socket timed out): the old one
    /// leaving does not delete a key the new one still holds; the leave shows the new state.
    #[test]
    fn leaving_keeps_keys_another_session_holds() {
        let limits = Limits::default();
        let mut eph = Ephemeral::default();
        let cursor = |x: i64| json!({"alice/Cursor": {"_exists": true, "x": x}});
        eph.apply(ALICE, &[cursor(1)], &limits);
        eph.apply(ALICE, &[json!({"alice/Sel": {"_exists": true}})], &limits);
        eph.apply(ALICE_AGAIN, &[cursor(2)], &limits);
        assert_eq!(
            eph.merged_except(ALICE_AGAIN),
            json!({"alice/Cursor": {"_exists": true, "x": 1}, "alice/Sel": {"_exists": true}})
        );
        assert_eq!(
            eph.remove(ALICE),
            Some(
                json!({"alice/Cursor": {"_exists": true, "x": 2}, "alice/Sel": {"_exists": false}})
            )
        );
        assert_eq!(
            eph.merged_except(BOB),
            json!({"alice/Cursor": {"_exists": true, "x": 2}})
        );
        assert_eq!(
            eph.remove(ALICE_AGAIN),
            Some(json!({"alice/Cursor": {"_exists": false}}))
        );
        assert_eq!(eph.merged_except(BOB), json!({}));
    }

    /// A session's presence is measured as its JSON; a request that would take it past
    /// `max_presence_bytes` is refused before it is merged, one within it is accepted.
    #[test]
    fn presence_is_bounded_in_bytes() {
        let limits = Limits {
            max_presence_bytes: 100,
            ..Limits::default()
        };
        let mut eph = Ephemeral::default();
        let small = [json!({"a/C": {"_exists": true, "x": 1}})];
        eph.check(ALICE, &small, &limits).expect("fits");
        eph.apply(ALICE, &small, &limits);
        let want = serde_json::to_vec(&eph.merged_except(BOB))
            .expect("json")
            .len();
        assert_eq!(eph.size_of(ALICE).bytes, want);
        let big = [json!({"a/C": {"text": "x".repeat(100)}})];
        assert_eq!(
            eph.check(ALICE, &big, &limits),
            Err(LimitError::PresenceBytes { max: 100 })
        );
        // Another session has its own budget.
        eph.check(BOB, &small, &limits).expect("fits");
    }
}
