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

impl RoomRecord {
    pub const FORMAT: u32 = 1;

    pub fn encode(&self) -> Vec<u8> {
        // Values and strings only: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<RoomRecord, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Whether the record is older than the TTL at `now_ms`.
    pub fn expired(&self, ttl_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.saved_at_ms) > ttl_ms
    }
}
