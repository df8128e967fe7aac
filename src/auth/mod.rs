//! Who may connect to which room, with which permission.
//!
//! An [`Authorizer`] runs on every connect and on every `auth-refresh` frame. It decides the
//! session's [`Permission`] and metadata, or refuses with a reason that is sent to the client as
//! the WebSocket close reason (code 1008).

mod edgebase;
mod jwt;
mod tokens;

pub use edgebase::{GameAuth, Identity, TokenRefused};
pub use jwt::{JwtAuthorizer, JwtKey};
pub use tokens::TokenTable;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{ClientId, RoomId};

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Patches are applied and broadcast.
    Readwrite,
    /// Patches are acked but dropped; the session still receives everything.
    Readonly,
}

/// A connect or refresh to decide on.
#[derive(Debug, Clone)]
pub struct AuthRequest<'a> {
    pub room: &'a RoomId,
    pub client: &'a ClientId,
    pub token: Option<&'a str>,
}

/// A positive decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub permission: Permission,
    /// Free-form data about the session (user id, claims), readable through the room API.
    pub metadata: Value,
}

/// A refusal; the text becomes the close reason, so keep it short and free of secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Decides connects and token refreshes. Implementations may do IO (ask an auth service).
#[async_trait::async_trait]
pub trait Authorizer: Send + Sync + 'static {
    async fn authorize(&self, request: AuthRequest<'_>) -> Result<Grant, Denied>;
}

/// Lets everyone in with `readwrite`. For development only: the server warns loudly at startup.
pub struct AllowAll;

#[async_trait::async_trait]
impl Authorizer for AllowAll {
    async fn authorize(&self, _request: AuthRequest<'_>) -> Result<Grant, Denied> {
        Ok(Grant {
            permission: Permission::Readwrite,
            metadata: Value::Null,
        })
    }
}

/// True when `room` matches a pattern: `*` (any room), `prefix*`, or an exact id.
pub fn room_matches(pattern: &str, room: &RoomId) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.as_str().starts_with(prefix),
        None => pattern == room.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Room patterns: wildcard, prefix, exact.
    #[test]
    fn room_patterns() {
        let room = RoomId::parse("team-a.board").expect("id");
        assert!(room_matches("*", &room));
        assert!(room_matches("team-a*", &room));
        assert!(room_matches("team-a.board", &room));
        assert!(!room_matches("team-b*", &room));
        assert!(!room_matches("team-a", &room));
    }
}
