//! A game room as stored: a snapshot (a [`RoomRecord`]) and a log of [`Entry`]s after it, under
//! the room's [`RoomKey::Game`].
//!
//! Every event of a room that changes what is saved (an action, a join, a flush of a tick's
//! changes, a timer firing) appends one entry of [`Op`]s before any frame it causes leaves; the
//! log is folded into a new record every `state_save_interval` and when the room closes.
//! [`load`] reads both back through [`Restored`] (one reader for every format).
//!
//! Record format 2 saves each state (shared, each player's, server, metadata) as a stamped
//! document: its value, its version (the document's clock) and its path stamps. Format 3 adds
//! the sequence number of the last entry it holds, and the room's player limit. Format 1 saved
//! values and the shared and player versions only; each state is then written whole at its
//! version (server state and metadata at version 0).

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::sender::Sender;
use crate::engine::state::{self, PathStamps, StampError, StateBatch, StateDoc};
use crate::ids::{RecordKey, RoomKey};
use crate::storage::{Storage, StorageError};

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
    /// Format 3 on: the last log entry the record holds.
    #[serde(default)]
    pub seq: u64,
    /// Format 3 on: the room's player limit, if a handler lowered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_players: Option<usize>,
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
    #[error("log entry {seq} is not a log entry: {source}")]
    Entry {
        seq: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("log entry {seq} does not apply to {state}: {source}")]
    Replay {
        seq: u64,
        state: String,
        #[source]
        source: state::ReplayError,
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
    pub const FORMAT: u32 = 3;

    /// The record as saved, if it loads again. State depth is limited where it changes
    /// ([`super::MAX_STATE_DEPTH`]); this also covers what has no such limit (server state,
    /// metadata, timer data, token claims).
    pub fn encode(&self) -> Result<Vec<u8>, RecordTooDeep> {
        loadable_json(self)
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
}

/// `value` as JSON, if it loads again (no deeper than [`MAX_RECORD_DEPTH`]).
fn loadable_json(value: &impl Serialize) -> Result<Vec<u8>, RecordTooDeep> {
    // Values and strings only: serializing cannot fail.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    match nesting(&bytes) {
        depth if depth > MAX_RECORD_DEPTH => Err(RecordTooDeep { depth }),
        _ => Ok(bytes),
    }
}

/// One write of a log entry, replayed in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Op {
    /// `on_create` ran.
    Created,
    Shared {
        batch: StateBatch,
    },
    /// A player's state (created empty at version 0 if the player has none).
    Player {
        user: String,
        batch: StateBatch,
    },
    /// A player took (or, with a refreshed token, kept) a seat.
    Seated {
        user: String,
        sender: SavedSender,
    },
    /// A player gave up its seat; its state is gone.
    Left {
        user: String,
    },
    Server {
        batch: StateBatch,
    },
    Metadata {
        batch: StateBatch,
    },
    /// A named timer was set (or replaced).
    Timer {
        name: String,
        timer: SavedTimer,
    },
    /// A named timer fired or was cleared.
    TimerDone {
        name: String,
    },
    Locked {
        locked: bool,
    },
    Private {
        private: bool,
    },
    MaxPlayers {
        max: usize,
    },
}

/// One log entry: what one event of the room wrote, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub ops: Vec<Op>,
    /// Unix milliseconds of the write (the TTL counts from the last one).
    pub at_ms: u64,
    /// The room's clock (`elapsed`) at the write.
    pub elapsed_ms: u64,
}

impl Entry {
    /// The entry as appended, if it loads again.
    pub fn encode(&self) -> Result<Vec<u8>, RecordTooDeep> {
        loadable_json(self)
    }
}

/// A player as restored.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoredPlayer {
    pub state: StateDoc,
    pub sender: Option<SavedSender>,
}

/// A stored room read back: its record with the log entries after it applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    /// The last log entry applied.
    pub seq: u64,
    pub created: bool,
    /// When it was last written, in Unix milliseconds (for the TTL).
    pub saved_at_ms: u64,
    pub elapsed_ms: u64,
    pub shared: StateDoc,
    pub players: IndexMap<String, RestoredPlayer>,
    pub server: StateDoc,
    pub metadata: StateDoc,
    pub timers: BTreeMap<String, SavedTimer>,
    pub locked: bool,
    pub private: bool,
    pub max_players: Option<usize>,
}

impl Restored {
    /// The documents of a decoded record.
    pub fn from_record(record: RoomRecord) -> Result<Restored, RecordError> {
        let doc = |state: &str, value, version, stamps| {
            state_doc(value, version, stamps).map_err(|source| RecordError::Stamps {
                state: state.to_owned(),
                source,
            })
        };
        let mut players = IndexMap::with_capacity(record.players.len());
        for (user, saved) in record.players {
            let state = doc(
                &format!("player {user:?}"),
                saved.state,
                saved.version,
                saved.stamps,
            )?;
            let sender = saved.sender;
            players.insert(user, RestoredPlayer { state, sender });
        }
        Ok(Restored {
            seq: record.seq,
            created: record.created,
            saved_at_ms: record.saved_at_ms,
            elapsed_ms: record.elapsed_ms,
            shared: doc(
                "the shared state",
                record.shared,
                record.shared_version,
                record.shared_stamps,
            )?,
            players,
            server: doc(
                "the server state",
                record.server,
                record.server_version,
                record.server_stamps,
            )?,
            metadata: doc(
                "the metadata",
                record.metadata,
                record.metadata_version,
                record.metadata_stamps,
            )?,
            timers: record.timers,
            locked: record.locked,
            private: record.private,
            max_players: record.max_players,
        })
    }

    /// A room nothing was stored for yet.
    fn empty() -> Restored {
        let empty = || StateDoc::new(empty_object(), 0);
        Restored {
            seq: 0,
            created: false,
            saved_at_ms: unix_ms(),
            elapsed_ms: 0,
            shared: empty(),
            players: IndexMap::new(),
            server: empty(),
            metadata: empty(),
            timers: BTreeMap::new(),
            locked: false,
            private: false,
            max_players: None,
        }
    }

    /// Applies log entry `seq` (the one after [`Restored::seq`]; older ones are already in).
    pub fn apply(&mut self, seq: u64, bytes: &[u8]) -> Result<(), RecordError> {
        if seq <= self.seq {
            return Ok(());
        }
        let entry: Entry =
            serde_json::from_slice(bytes).map_err(|source| RecordError::Entry { seq, source })?;
        let replay = |doc: &mut StateDoc, state: &str, batch: &StateBatch| {
            doc.replay(batch)
                .map(drop)
                .map_err(|source| RecordError::Replay {
                    seq,
                    state: state.to_owned(),
                    source,
                })
        };
        for op in entry.ops {
            match op {
                Op::Created => self.created = true,
                Op::Shared { batch } => replay(&mut self.shared, "the shared state", &batch)?,
                Op::Player { user, batch } => {
                    let name = format!("player {user:?}");
                    let player = self.players.entry(user).or_insert_with(|| RestoredPlayer {
                        state: StateDoc::new(empty_object(), 0),
                        sender: None,
                    });
                    replay(&mut player.state, &name, &batch)?;
                }
                Op::Seated { user, sender } => {
                    self.players
                        .entry(user)
                        .or_insert_with(|| RestoredPlayer {
                            state: StateDoc::new(empty_object(), 0),
                            sender: None,
                        })
                        .sender = Some(sender);
                }
                Op::Left { user } => {
                    self.players.shift_remove(&user);
                }
                Op::Server { batch } => replay(&mut self.server, "the server state", &batch)?,
                Op::Metadata { batch } => replay(&mut self.metadata, "the metadata", &batch)?,
                Op::Timer { name, timer } => {
                    self.timers.insert(name, timer);
                }
                Op::TimerDone { name } => {
                    self.timers.remove(&name);
                }
                Op::Locked { locked } => self.locked = locked,
                Op::Private { private } => self.private = private,
                Op::MaxPlayers { max } => self.max_players = Some(max),
            }
        }
        self.seq = seq;
        self.saved_at_ms = entry.at_ms;
        self.elapsed_ms = entry.elapsed_ms;
        Ok(())
    }

    /// As a record (what `weft snapshot` exports, and what a fold of it stores).
    pub fn into_record(self) -> RoomRecord {
        let (shared, shared_version, shared_stamps) = self.shared.into_parts();
        let (server, server_version, server_stamps) = self.server.into_parts();
        let (metadata, metadata_version, metadata_stamps) = self.metadata.into_parts();
        let players = self.players.into_iter().map(|(user, p)| {
            let (state, version, stamps) = p.state.into_parts();
            let stamps = Some(stamps);
            let player = SavedPlayer {
                state,
                version,
                stamps,
                sender: p.sender,
            };
            (user, player)
        });
        RoomRecord {
            format: RoomRecord::FORMAT,
            created: self.created,
            saved_at_ms: self.saved_at_ms,
            shared,
            shared_version,
            shared_stamps: Some(shared_stamps),
            players: players.collect(),
            server,
            server_version,
            server_stamps: Some(server_stamps),
            metadata,
            metadata_version,
            metadata_stamps: Some(metadata_stamps),
            timers: self.timers,
            locked: self.locked,
            private: self.private,
            elapsed_ms: self.elapsed_ms,
            seq: self.seq,
            max_players: self.max_players,
        }
    }

    /// Whether the room was last written longer than the TTL before `now_ms`.
    pub fn expired(&self, ttl_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.saved_at_ms) > ttl_ms
    }
}

/// Reads a game room back from storage: its record and the log entries after it. `None` if
/// nothing is stored; what cannot be read is [`StorageError::Corrupt`], never an empty room.
pub fn load(storage: &dyn Storage, key: &RecordKey) -> Result<Option<Restored>, StorageError> {
    let Some(stored) = storage.load(&RoomKey::Game(key.clone()))? else {
        return Ok(None);
    };
    let corrupt = |e: RecordError| StorageError::Corrupt {
        room: key.to_string(),
        reason: e.to_string(),
    };
    let mut room = match &stored.snapshot {
        Some(bytes) => RoomRecord::decode(bytes)
            .and_then(Restored::from_record)
            .map_err(corrupt)?,
        None => Restored::empty(),
    };
    for (seq, bytes) in &stored.log {
        room.apply(*seq, bytes).map_err(corrupt)?;
    }
    Ok(Some(room))
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
            seq: 0,
            max_players: None,
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
    const FORMAT1_BATTLE: &[u8] =
        include_bytes!("../../../tests/fixtures/game/battle-format1.json");

    /// The documents a record holds, as the room loads them.
    fn docs(record: &RoomRecord) -> Vec<(String, StateDoc)> {
        let room = Restored::from_record(record.clone()).expect("stamps fit");
        let mut docs = vec![
            ("shared".to_owned(), room.shared),
            ("server".to_owned(), room.server),
            ("metadata".to_owned(), room.metadata),
        ];
        docs.extend(room.players.into_iter().map(|(user, p)| (user, p.state)));
        docs
    }

    /// A format 1 record loads through the one reader with its states and versions (each state
    /// written whole at its version), and saved again in today's format it loads as the same
    /// documents.
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
        let again = RoomRecord::decode(&bytes).expect("today's format loads");
        assert_eq!(again.format, RoomRecord::FORMAT);
        assert_eq!(docs(&again), loaded);
    }

    /// Records of an unknown format, or whose stamps do not fit their state, are refused.
    #[test]
    fn unknown_formats_and_bad_stamps_are_refused() {
        let mut text: Value = serde_json::from_slice(FORMAT1_BATTLE).expect("json");
        text["format"] = json!(4);
        let bytes = serde_json::to_vec(&text).expect("json");
        assert!(matches!(
            RoomRecord::decode(&bytes),
            Err(RecordError::UnknownFormat(4))
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

    fn entry(ops: Vec<Op>, at_ms: u64) -> Vec<u8> {
        Entry {
            ops,
            at_ms,
            elapsed_ms: at_ms / 2,
        }
        .encode()
        .expect("encodes")
    }

    /// One batch of `doc` going to `value`.
    fn write(doc: &mut StateDoc, value: Value) -> StateBatch {
        doc.apply(value).expect("a change")
    }

    /// A stored room is its record plus the log after it: every kind of op replays onto the
    /// record's documents, entries the record already holds are skipped, and the result folded
    /// into a record (encoded and decoded again) is the same room.
    #[test]
    fn a_room_is_its_record_and_the_log_after_it() {
        let base = Restored::from_record(RoomRecord::decode(FORMAT1_BATTLE).expect("loads"))
            .expect("docs");
        // What the live room did after the record: its documents as the room has them.
        let (mut shared, mut server, mut metadata) = (
            base.shared.clone(),
            base.server.clone(),
            base.metadata.clone(),
        );
        let mut carol = StateDoc::new(empty_object(), 0);
        let sender = SavedSender {
            role: "user".into(),
            email: None,
            is_anonymous: true,
            custom: json!({"team": "red"}),
        };
        let log = vec![
            (
                1,
                entry(
                    vec![
                        Op::Seated {
                            user: "carol".into(),
                            sender: sender.clone(),
                        },
                        Op::Player {
                            user: "carol".into(),
                            batch: write(&mut carol, json!({"hp": 100})),
                        },
                        Op::Shared {
                            batch: write(&mut shared, json!({"round": 2, "phase": "playing"})),
                        },
                        Op::Timer {
                            name: "turnEnd".into(),
                            timer: SavedTimer {
                                due_ms: 99,
                                data: json!({"n": 1}),
                            },
                        },
                        Op::Left { user: "bob".into() },
                    ],
                    1_000,
                ),
            ),
            (
                2,
                entry(
                    vec![
                        Op::Player {
                            user: "carol".into(),
                            batch: write(&mut carol, json!({"hp": 90})),
                        },
                        Op::Server {
                            batch: write(&mut server, json!({"seed": 7})),
                        },
                        Op::Metadata {
                            batch: write(&mut metadata, json!({"mode": "battle"})),
                        },
                        Op::TimerDone {
                            name: "turnEnd".into(),
                        },
                        Op::Locked { locked: true },
                        Op::Private { private: true },
                        Op::MaxPlayers { max: 3 },
                    ],
                    2_000,
                ),
            ),
        ];
        let mut room = base.clone();
        for (seq, bytes) in &log {
            room.apply(*seq, bytes).expect("applies");
        }
        // A log tail the record already holds changes nothing.
        room.apply(2, &log[1].1).expect("skipped");
        room.apply(1, b"not even json").expect("skipped unread");

        assert_eq!(room.seq, 2);
        assert_eq!((room.saved_at_ms, room.elapsed_ms), (2_000, 1_000));
        assert_eq!(room.shared, shared);
        assert_eq!(room.shared.clock(), 4);
        assert_eq!(room.server, server);
        assert_eq!(room.metadata, metadata);
        assert_eq!(
            room.players.keys().collect::<Vec<_>>(),
            ["alice", "carol"],
            "bob left, carol came"
        );
        assert_eq!(room.players["carol"].state, carol);
        assert_eq!(room.players["carol"].sender, Some(sender));
        assert!(room.timers.is_empty(), "turnEnd fired");
        assert!(room.locked && room.private);
        assert_eq!(room.max_players, Some(3));

        let bytes = room.clone().into_record().encode().expect("encodes");
        let folded =
            Restored::from_record(RoomRecord::decode(&bytes).expect("decodes")).expect("docs");
        assert_eq!(folded, room);
    }

    /// What cannot be replayed is refused with the entry's seq, never skipped: an entry that is
    /// not one, and a batch that does not follow its document's version.
    #[test]
    fn entries_that_do_not_apply_are_refused() {
        let mut room = Restored::empty();
        assert!(matches!(
            room.apply(1, b"{\"ops\": 5}"),
            Err(RecordError::Entry { seq: 1, .. })
        ));
        let mut shared = StateDoc::new(empty_object(), 0);
        write(&mut shared, json!({"a": 1}));
        let second = write(&mut shared, json!({"a": 2}));
        let gap = entry(vec![Op::Shared { batch: second }], 5);
        assert!(matches!(
            room.apply(1, &gap),
            Err(RecordError::Replay { seq: 1, .. })
        ));
        assert_eq!(
            room,
            Restored {
                saved_at_ms: room.saved_at_ms,
                ..Restored::empty()
            }
        );
    }

    /// Loading reads the record and the log through storage; a log entry that does not apply
    /// makes the room Corrupt (never an empty or partial room).
    #[test]
    fn load_replays_the_log_and_refuses_damage() {
        use crate::storage::MemoryStorage;
        let storage = MemoryStorage::default();
        let key = RecordKey::parse("battle/r1").expect("key");
        let room_key = RoomKey::Game(key.clone());
        assert_eq!(load(&storage, &key).expect("load"), None);
        let mut shared = StateDoc::new(empty_object(), 0);
        let first = entry(
            vec![
                Op::Created,
                Op::Shared {
                    batch: write(&mut shared, json!({"a": 1})),
                },
            ],
            10,
        );
        crate::storage::contract::append_sync(&storage, &room_key, 1, &first).expect("append");
        let room = load(&storage, &key).expect("load").expect("stored");
        assert!(room.created);
        assert_eq!(room.shared, shared);
        crate::storage::contract::append_sync(&storage, &room_key, 2, b"[]").expect("append");
        assert!(matches!(
            load(&storage, &key),
            Err(StorageError::Corrupt { .. })
        ));
    }

    /// An entry that would nest deeper than the reader reads is refused when encoded.
    #[test]
    fn entries_that_would_not_load_are_refused() {
        let mut server = StateDoc::new(empty_object(), 0);
        let batch = write(
            &mut server,
            json!({"deep": nested(MAX_RECORD_DEPTH, json!(1))}),
        );
        let entry = Entry {
            ops: vec![Op::Server { batch }],
            at_ms: 1,
            elapsed_ms: 1,
        };
        assert!(entry.encode().is_err());
    }
}
