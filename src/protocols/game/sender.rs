//! [`Sender`]: who a hook runs for.

use serde_json::Value;

/// Who triggered a hook: the player behind a connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Sender {
    /// The token's `sub`.
    pub user_id: String,
    /// Unique per WebSocket connection.
    pub connection_id: String,
    /// The token's `role` (`user` when the token has none).
    pub role: String,
    pub email: Option<String>,
    pub is_anonymous: bool,
    /// The token's `custom` claim.
    pub custom: Value,
}
