//! A game room as saved: one JSON record per room (`namespace/id`), written every
//! `state_save_interval` while changed, on `save_state()`, when the room empties and at shutdown.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::logic::Sender;

/// Milliseconds since the Unix epoch (timers and the TTL are wall-clock, to survive restarts).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomRecord {
    pub format: u32,
    /// `on_create` has run for this room.
    pub created: bool,
    pub saved_at_ms: u64,
    pub shared: Value,
    pub shared_version: u64,
    /// Players holding a seat when the room was saved; after a restart they get the reconnect
    /// grace period to come back.
    #[serde(default)]
    pub players: IndexMap<String, SavedPlayer>,
    #[serde(default = "empty_object")]
    pub server: Value,
    #[serde(default = "empty_object")]
    pub metadata: Value,
    #[serde(default)]
    pub timers: BTreeMap<String, SavedTimer>,
    #[serde(default)]
    pub locked: bool,
    #[serde(default)]
    pub private: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedPlayer {
    pub state: Value,
    pub version: u64,
    #[serde(default)]
    pub sender: Option<SavedSender>,
}

/// Who a player was (its connection is gone after a restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedSender {
    pub role: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub is_anonymous: bool,
    #[serde(default)]
    pub custom: Value,
}

impl From<&Sender> for SavedSender {
    fn from(s: &Sender) -> Self {
        SavedSender {
            role: s.role.clone(),
            email: s.email.clone(),
            is_anonymous: s.is_anonymous,
            custom: s.custom.clone(),
        }
    }
}

impl SavedSender {
    pub fn into_sender(self, user_id: &str) -> Sender {
        Sender {
            user_id: user_id.to_owned(),
            connection_id: String::new(),
            role: self.role,
            email: self.email,
            is_anonymous: self.is_anonymous,
            custom: self.custom,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedTimer {
    /// When it fires, in Unix milliseconds.
    pub due_ms: u64,
    #[serde(default)]
    pub data: Value,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// How deeply a record may nest arrays and objects: the most [`RoomRecord::decode`] reads
/// (serde_json refuses the 128th level).
pub const MAX_RECORD_DEPTH: usize = 127;

/// A record [`RoomRecord::decode`] could not read back; it is never written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the record would nest {depth} levels of arrays and objects; at most {MAX_RECORD_DEPTH} load again")]
pub struct RecordTooDeep {
    pub depth: usize,
}

impl RoomRecord {
    pub const FORMAT: u32 = 1;

    /// The record as saved, if it loads again. State depth is limited where it changes
    /// ([`super::MAX_STATE_DEPTH`]); this also covers what has no such limit (server state,
    /// metadata, timer data, token claims).
    pub fn encode(&self) -> Result<Vec<u8>, RecordTooDeep> {
        // Values and strings only: serializing cannot fail.
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        match nesting(&bytes) {
            depth if depth > MAX_RECORD_DEPTH => Err(RecordTooDeep { depth }),
            _ => Ok(bytes),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<RoomRecord, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Whether the record is older than the TTL at `now_ms`.
    pub fn expired(&self, ttl_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.saved_at_ms) > ttl_ms
    }
}

/// How many arrays and objects the JSON text `json` nests, as its parser counts them.
fn nesting(json: &[u8]) -> usize {
    let (mut level, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &byte in json {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                level += 1;
                deepest = deepest.max(level);
            }
            b']' | b'}' => level = level.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(shared: Value) -> RoomRecord {
        RoomRecord {
            format: RoomRecord::FORMAT,
            created: true,
            saved_at_ms: 1,
            shared,
            shared_version: 1,
            players: IndexMap::new(),
            server: empty_object(),
            metadata: empty_object(),
            timers: BTreeMap::new(),
            locked: false,
            private: false,
        }
    }

    /// `value` wrapped in `levels` arrays.
    fn nested(levels: usize, value: Value) -> Value {
        (0..levels).fold(value, |inner, _| json!([inner]))
    }

    /// Nesting counts brackets outside strings only (escaped quotes included).
    #[test]
    fn nesting_counts_brackets_outside_strings() {
        assert_eq!(nesting(b"1"), 0);
        assert_eq!(nesting(br#"{"a":[1,{"b":{}}],"c":[]}"#), 4);
        assert_eq!(nesting(br#"{"a":"[[[{{{","b":"\"[[["}"#), 1);
        assert_eq!(nesting(br#"["\\",[[]]]"#), 3);
    }

    /// A record at the depth limit encodes and decodes again; one level more is refused at
    /// encoding, so no saved record is beyond what decoding reads.
    #[test]
    fn every_encoded_record_decodes() {
        // The record object is the first level.
        let deepest = record(nested(MAX_RECORD_DEPTH - 1, json!(1)));
        let bytes = deepest.encode().expect("at the limit");
        assert_eq!(RoomRecord::decode(&bytes).expect("decodes"), deepest);
        let too_deep = record(nested(MAX_RECORD_DEPTH, json!(1)));
        assert_eq!(
            too_deep.encode(),
            Err(RecordTooDeep {
                depth: MAX_RECORD_DEPTH + 1
            })
        );
        // What the limit stands for: the reader stops exactly there.
        let bytes = serde_json::to_vec(&too_deep).expect("serializes");
        assert!(RoomRecord::decode(&bytes).is_err());
    }
}
