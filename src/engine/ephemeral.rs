//! Ephemeral state: each client's presence (cursors, selections), merged with the document's
//! create/merge/delete rule but never stamped and never persisted.

use indexmap::IndexMap;
use serde_json::{Map, Value};

use super::patch::{self, Action, Fields, Limits};

/// Ephemeral state of every client in a room, keyed by client id.
#[derive(Debug, Default, Clone)]
pub struct Ephemeral {
    clients: IndexMap<String, IndexMap<String, Fields>>,
}

impl Ephemeral {
    /// Merges a client's ephemeral patches into its state.
    pub fn apply(&mut self, client: &str, patches: &[Value], limits: &Limits) {
        if !self.clients.contains_key(client) {
            self.clients.insert(client.to_owned(), IndexMap::new());
        }
        let state = &mut self.clients[client];
        for patch in patches.iter().filter_map(Value::as_object) {
            for (key, value) in patch {
                let Some(value) = value.as_object() else {
                    continue;
                };
                match patch::action(state.get(key), value) {
                    Action::Skip => {}
                    Action::Delete => {
                        state.insert(key.clone(), patch::tombstone());
                    }
                    Action::Create => {
                        let mut fields = Fields::new();
                        patch::write_fields(&mut fields, value, limits);
                        state.insert(key.clone(), fields);
                    }
                    Action::Merge => {
                        if let Some(fields) = state.get_mut(key) {
                            patch::write_fields(fields, value, limits);
                        }
                    }
                }
            }
        }
    }

    /// The merged state of every client except `except`, as one patch (empty object if none).
    pub fn merged_except(&self, except: &str) -> Value {
        let mut merged = Map::new();
        for (client, state) in &self.clients {
            if client != except {
                for (key, fields) in state {
                    merged.insert(key.clone(), Value::Object(fields.clone()));
                }
            }
        }
        Value::Object(merged)
    }

    /// Drops a client's state and returns the patch that deletes its keys for everyone else
    /// (`None` when it had none).
    pub fn remove(&mut self, client: &str) -> Option<Value> {
        let state = self.clients.swap_remove(client)?;
        if state.is_empty() {
            return None;
        }
        let deletions: Map<String, Value> = state
            .into_keys()
            .map(|key| (key, Value::Object(patch::tombstone())))
            .collect();
        Some(Value::Object(deletions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Presence merges per client, is shown to others only, and leaves with deletions.
    #[test]
    fn presence_lifecycle() {
        let limits = Limits::default();
        let mut eph = Ephemeral::default();
        eph.apply(
            "alice",
            &[json!({"alice/Cursor": {"_exists": true, "x": 1}})],
            &limits,
        );
        eph.apply("alice", &[json!({"alice/Cursor": {"x": 2}})], &limits);
        eph.apply("bob", &[json!({"bob/Cursor": {"y": 1}})], &limits);
        assert_eq!(
            eph.merged_except("bob"),
            json!({"alice/Cursor": {"_exists": true, "x": 2}})
        );
        assert_eq!(eph.merged_except("alice"), json!({}));
        assert_eq!(
            eph.remove("alice"),
            Some(json!({"alice/Cursor": {"_exists": false}}))
        );
        assert_eq!(eph.remove("alice"), None);
        // Bob's partial patch to an absent key created an empty state: nothing to delete.
        assert_eq!(eph.remove("bob"), None);
    }
}
