//! A game room as saved: one JSON record per room (`namespace/id`), written every
//! `state_save_interval` while changed, on `save_state()`, when the room empties and at shutdown.
//!
//! Format 2 saves each state (shared, each player's, server, metadata) as a stamped document:
//! its value, its version (the document's clock) and its path stamps. Format 1 saved values and
//! the shared and player versions only; it is read by the same reader, each state then being
//! written whole at its version (server state and metadata at version 0).

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::logic::Sender;
use crate::engine::state::{PathStamps, StampError, StateDoc};

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
    /// Format 2 on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_stamps: Option<PathStamps>,
    /// Players holding a seat when the room was saved; after a restart they get the reconnect
    /// grace period to come back.
    #[serde(default)]
    pub players: IndexMap<String, SavedPlayer>,
    #[serde(default = "empty_object")]
    pub server: Value,
    /// Format 2 on (and the stamps below).
    #[serde(default)]
    pub server_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_stamps: Option<PathStamps>,
    #[serde(default = "empty_object")]
    pub metadata: Value,
    #[serde(default)]
    pub metadata_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_stamps: Option<PathStamps>,
    #[serde(default)]
    pub timers: BTreeMap<String, SavedTimer>,
    #[serde(default)]
    pub locked: bool,
    #[serde(default)]
    pub private: bool,
    /// The room's clock (`elapsed`) when it was saved: a reload goes on from there.
    #[serde(default)]
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedPlayer {
    pub state: Value,
    pub version: u64,
    /// Format 2 on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamps: Option<PathStamps>,
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

/// Why saved bytes are not a room record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not a room record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown record format {0} (this server reads formats 1 to {max})", max = RoomRecord::FORMAT)]
    UnknownFormat(u32),
    #[error("the stamps of {state} do not fit it: {source}")]
    Stamps {
        state: String,
        #[source]
        source: StampError,
    },
}

/// A saved state back as a document: with its stamps (format 2), or written whole at its
/// version (format 1).
pub fn state_doc(
    value: Value,
    version: u64,
    stamps: Option<PathStamps>,
) -> Result<StateDoc, StampError> {
    match stamps {
        Some(stamps) => StateDoc::from_parts(value, version, stamps),
        None => Ok(StateDoc::new(value, version)),
    }
}

/// A record [`RoomRecord::decode`] could not read back; it is never written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the record would nest {depth} levels of arrays and objects; at most {MAX_RECORD_DEPTH} load again")]
pub struct RecordTooDeep {
    pub depth: usize,
}

impl RoomRecord {
    pub const FORMAT: u32 = 2;

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

    /// Reads a record of any format this server wrote (the one reader of saved game rooms).
    pub fn decode(bytes: &[u8]) -> Result<RoomRecord, RecordError> {
        let record: RoomRecord = serde_json::from_slice(bytes)?;
        if !(1..=RoomRecord::FORMAT).contains(&record.format) {
            return Err(RecordError::UnknownFormat(record.format));
        }
        let check = |state: &str, version: u64, stamps: &Option<PathStamps>| {
            stamps
                .as_ref()
                .map_or(Ok(()), |s| s.check(version))
                .map_err(|source| RecordError::Stamps {
                    state: state.to_owned(),
                    source,
                })
        };
        check(
            "the shared state",
            record.shared_version,
            &record.shared_stamps,
        )?;
        check(
            "the server state",
            record.server_version,
            &record.server_stamps,
        )?;
        check(
            "the metadata",
            record.metadata_version,
            &record.metadata_stamps,
        )?;
        for (user, player) in &record.players {
            check(&format!("player {user:?}"), player.version, &player.stamps)?;
        }
        Ok(record)
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
            shared_stamps: None,
            players: IndexMap::new(),
            server: empty_object(),
            server_version: 0,
            server_stamps: None,
            metadata: empty_object(),
            metadata_version: 0,
            metadata_stamps: None,
            timers: BTreeMap::new(),
            locked: false,
            private: false,
            elapsed_ms: 0,
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

    /// A battle room saved by format 1 (the record as the server wrote it before stamps).
    const FORMAT1_BATTLE: &[u8] = include_bytes!("../../tests/fixtures/game/battle-format1.json");

    /// The documents a record holds, as the room loads them.
    fn docs(record: &RoomRecord) -> Vec<(String, StateDoc)> {
        let doc = |value: &Value, version, stamps: &Option<PathStamps>| {
            state_doc(value.clone(), version, stamps.clone()).expect("stamps fit")
        };
        let mut docs = vec![
            (
                "shared".to_owned(),
                doc(&record.shared, record.shared_version, &record.shared_stamps),
            ),
            (
                "server".to_owned(),
                doc(&record.server, record.server_version, &record.server_stamps),
            ),
            (
                "metadata".to_owned(),
                doc(
                    &record.metadata,
                    record.metadata_version,
                    &record.metadata_stamps,
                ),
            ),
        ];
        for (user, p) in &record.players {
            docs.push((user.clone(), doc(&p.state, p.version, &p.stamps)));
        }
        docs
    }

    /// A format 1 record loads through the one reader with its states and versions (each state
    /// written whole at its version), and saved again as format 2 it loads as the same documents.
    #[test]
    fn a_format_1_record_loads_with_its_states_and_versions() {
        let record = RoomRecord::decode(FORMAT1_BATTLE).expect("format 1 loads");
        assert_eq!(record.format, 1);
        let loaded = docs(&record);
        let by_name = |name: &str| {
            &loaded
                .iter()
                .find(|(n, _)| n == name)
                .expect("a document")
                .1
        };
        let shared = by_name("shared");
        assert_eq!(
            shared.value(),
            &json!({"round": 1, "phase": "playing", "players": [{"id": "alice"}, {"id": "bob"}]})
        );
        assert_eq!(shared.clock(), 3);
        assert_eq!(shared.diff_since(2), crate::engine::tree::Change::Whole);
        assert_eq!(
            by_name("alice").value(),
            &json!({"hp": 90, "position": {"x": 3, "y": 4}})
        );
        assert_eq!(by_name("alice").clock(), 3);
        assert_eq!(by_name("bob").clock(), 1);
        assert_eq!(
            by_name("server").value(),
            &json!({"seed": 0.4219527355071213})
        );
        assert_eq!(
            by_name("metadata").value(),
            &json!({"mode": "battle", "playerCount": 2})
        );
        assert_eq!(record.timers["turnEnd"].due_ms, 1764859230000);
        let alice = record.players["alice"].sender.clone().expect("a sender");
        assert_eq!(alice.email.as_deref(), Some("alice@example.com"));

        let mut resaved = record.clone();
        resaved.format = RoomRecord::FORMAT;
        resaved.shared_stamps = Some(shared.stamps().clone());
        let bytes = resaved.encode().expect("encodes");
        let again = RoomRecord::decode(&bytes).expect("format 2 loads");
        assert_eq!(again.format, 2);
        assert_eq!(docs(&again), loaded);
    }

    /// Records of an unknown format, or whose stamps do not fit their state, are refused.
    #[test]
    fn unknown_formats_and_bad_stamps_are_refused() {
        let mut text: Value = serde_json::from_slice(FORMAT1_BATTLE).expect("json");
        text["format"] = json!(3);
        let bytes = serde_json::to_vec(&text).expect("json");
        assert!(matches!(
            RoomRecord::decode(&bytes),
            Err(RecordError::UnknownFormat(3))
        ));
        text["format"] = json!(2);
        text["sharedStamps"] = json!([0, {"round": 4}]);
        let bytes = serde_json::to_vec(&text).expect("json");
        assert!(matches!(
            RoomRecord::decode(&bytes),
            Err(RecordError::Stamps { .. })
        ));
        text["sharedStamps"] = json!([0, {"round": 3}]);
        let bytes = serde_json::to_vec(&text).expect("json");
        assert!(RoomRecord::decode(&bytes).is_ok());
    }
}
