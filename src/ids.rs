//! Identifier newtypes. Room ids become file names and storage keys, so they are validated once,
//! here, and every layer below can trust them.

use std::fmt;
use std::sync::Arc;

/// Longest accepted room id, in bytes.
pub const MAX_ROOM_ID_LEN: usize = 128;
/// Longest accepted client id, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 256;

/// A validated room id: 1 to 128 of `A-Z a-z 0-9 _ - .`, not starting with `.`. Such an id is a
/// safe file name on every platform and can never name a path outside the data directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(Arc<str>);

/// Why a room or client id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("room id must not be empty")]
    EmptyRoom,
    #[error("room id is longer than {MAX_ROOM_ID_LEN} bytes")]
    RoomTooLong,
    #[error("room id may contain only A-Z, a-z, 0-9, '_', '-', '.' and must not start with '.'")]
    RoomCharacters,
    #[error("client id must be 1 to {MAX_CLIENT_ID_LEN} bytes without control characters")]
    Client,
}

impl RoomId {
    pub fn parse(id: &str) -> Result<RoomId, IdError> {
        if id.is_empty() {
            return Err(IdError::EmptyRoom);
        }
        if id.len() > MAX_ROOM_ID_LEN {
            return Err(IdError::RoomTooLong);
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if id.starts_with('.') || !id.chars().all(allowed) {
            return Err(IdError::RoomCharacters);
        }
        Ok(RoomId(Arc::from(id)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client id as the client chose it (the npm client uses a UUID). Ephemeral state and the
/// `clientId` of broadcasts are keyed by it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId(Arc<str>);

impl ClientId {
    pub fn parse(id: &str) -> Result<ClientId, IdError> {
        if id.is_empty() || id.len() > MAX_CLIENT_ID_LEN || id.chars().any(char::is_control) {
            return Err(IdError::Client);
        }
        Ok(ClientId(Arc::from(id)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a game room's record is stored: its namespace and id, both valid [`RoomId`]s, so the
/// key is a safe relative path `namespace/id` (`/` cannot occur in either part).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    pub namespace: RoomId,
    pub id: RoomId,
}

impl RecordKey {
    pub fn new(namespace: RoomId, id: RoomId) -> RecordKey {
        RecordKey { namespace, id }
    }

    /// Parses `namespace/id`.
    pub fn parse(key: &str) -> Option<RecordKey> {
        let (namespace, id) = key.split_once('/')?;
        Some(RecordKey {
            namespace: RoomId::parse(namespace).ok()?,
            id: RoomId::parse(id).ok()?,
        })
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.id)
    }
}

/// What storage keys a room by: a canvas room, or a game room (namespace + id).
///
/// Its [`RoomKey::storage_name`] is `<roomId>` or `<namespace>/<id>`: stable, and never the same
/// for two keys, since `/` cannot occur in a [`RoomId`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoomKey {
    Canvas(RoomId),
    Game(RecordKey),
}

impl RoomKey {
    /// `<roomId>` for a canvas room, `<namespace>/<id>` for a game room.
    pub fn storage_name(&self) -> String {
        self.to_string()
    }

    /// Parses a [`RoomKey::storage_name`].
    pub fn parse(name: &str) -> Option<RoomKey> {
        match name.contains('/') {
            true => RecordKey::parse(name).map(RoomKey::Game),
            false => RoomId::parse(name).ok().map(RoomKey::Canvas),
        }
    }

    /// The canvas room, if this is one.
    pub fn canvas(&self) -> Option<&RoomId> {
        match self {
            RoomKey::Canvas(id) => Some(id),
            RoomKey::Game(_) => None,
        }
    }

    /// The game room, if this is one.
    pub fn game(&self) -> Option<&RecordKey> {
        match self {
            RoomKey::Game(key) => Some(key),
            RoomKey::Canvas(_) => None,
        }
    }
}

impl fmt::Display for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoomKey::Canvas(id) => id.fmt(f),
            RoomKey::Game(key) => key.fmt(f),
        }
    }
}

impl From<RoomId> for RoomKey {
    fn from(id: RoomId) -> RoomKey {
        RoomKey::Canvas(id)
    }
}

impl From<RecordKey> for RoomKey {
    fn from(key: RecordKey) -> RoomKey {
        RoomKey::Game(key)
    }
}

/// One connection's session in a room; unique for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile room ids (path traversal, separators, control bytes, overlong) are refused.
    #[test]
    fn room_ids_cannot_escape_the_data_directory() {
        for ok in [
            "room-1",
            "a",
            "A_b.c-9",
            "550e8400-e29b-41d4-a716-446655440000",
        ] {
            assert!(RoomId::parse(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(MAX_ROOM_ID_LEN + 1);
        for bad in [
            "",
            "..",
            ".",
            ".hidden",
            "../etc/passwd",
            "a/b",
            "a\\b",
            "a\0b",
            "a b",
            "é",
            "a:b",
            long.as_str(),
        ] {
            assert!(RoomId::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// Room keys round-trip through their storage names, and a game key never parses as a canvas
    /// room (or the other way round).
    #[test]
    fn room_keys_have_distinct_storage_names() {
        let canvas = RoomKey::from(RoomId::parse("battle").expect("id"));
        let game = RoomKey::from(RecordKey::parse("battle/r1").expect("key"));
        for key in [&canvas, &game] {
            assert_eq!(RoomKey::parse(&key.storage_name()).as_ref(), Some(key));
        }
        assert_ne!(canvas.storage_name(), game.storage_name());
        assert_eq!(RoomKey::parse("a/b/c"), None);
        assert_eq!(RoomKey::parse("../x"), None);
    }

    /// Client ids are free-form but bounded and printable.
    #[test]
    fn client_ids_are_bounded() {
        assert!(ClientId::parse("0b6f-…-any text").is_ok());
        assert!(ClientId::parse("").is_err());
        assert!(ClientId::parse("a\nb").is_err());
        assert!(ClientId::parse(&"x".repeat(MAX_CLIENT_ID_LEN + 1)).is_err());
    }
}
