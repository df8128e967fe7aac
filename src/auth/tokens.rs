//! A static token table loaded from a JSON file:
//! `{"tokens":[{"token":"…","permission":"readwrite","rooms":["*"],"metadata":{"user":"ann"}}]}`.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::{room_matches, AuthRequest, Authorizer, Denied, Grant, Permission};

#[derive(Debug, Deserialize)]
struct TokenFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    permission: Permission,
    /// Room patterns this token opens (`*`, `prefix*`, exact).
    rooms: Vec<String>,
    #[serde(default)]
    metadata: Value,
}

/// Tokens mapped to their permission and rooms.
#[derive(Debug)]
pub struct TokenTable {
    tokens: HashMap<String, TokenEntry>,
}

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("token file {path} is not valid: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("token file {path} lists a token twice")]
    Duplicate { path: String },
}

impl TokenTable {
    pub fn load(path: &Path) -> Result<TokenTable, TokenFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: shown.clone(),
            source,
        })?;
        let file: TokenFile =
            serde_json::from_str(&text).map_err(|source| TokenFileError::Parse {
                path: shown.clone(),
                source,
            })?;
        let mut tokens = HashMap::new();
        for entry in file.tokens {
            if tokens.insert(entry.token.clone(), entry).is_some() {
                return Err(TokenFileError::Duplicate { path: shown });
            }
        }
        Ok(TokenTable { tokens })
    }
}

#[async_trait::async_trait]
impl Authorizer for TokenTable {
    async fn authorize(&self, request: AuthRequest<'_>) -> Result<Grant, Denied> {
        let token = request
            .token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Denied("missing token".into()))?;
        let entry = self
            .tokens
            .get(token)
            .ok_or_else(|| Denied("unknown token".into()))?;
        if !entry.rooms.iter().any(|p| room_matches(p, request.room)) {
            return Err(Denied("token does not grant this room".into()));
        }
        Ok(Grant {
            permission: entry.permission,
            metadata: entry.metadata.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ClientId, RoomId};

    /// Known tokens grant their permission in their rooms; anything else is refused with a reason.
    #[tokio::test]
    async fn grants_and_refusals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.json");
        std::fs::write(
            &path,
            r#"{"tokens":[{"token":"rw","permission":"readwrite","rooms":["team-*"],"metadata":{"user":"ann"}},
                          {"token":"ro","permission":"readonly","rooms":["*"]}]}"#,
        )
        .expect("write");
        let table = TokenTable::load(&path).expect("loads");
        let room = RoomId::parse("team-1").expect("id");
        let other = RoomId::parse("other").expect("id");
        let client = ClientId::parse("c").expect("id");
        let ask = |room, token| AuthRequest {
            room,
            client: &client,
            token,
        };

        let grant = table
            .authorize(ask(&room, Some("rw")))
            .await
            .expect("granted");
        assert_eq!(grant.permission, Permission::Readwrite);
        assert_eq!(grant.metadata, serde_json::json!({"user": "ann"}));
        let grant = table
            .authorize(ask(&other, Some("ro")))
            .await
            .expect("granted");
        assert_eq!(grant.permission, Permission::Readonly);
        for (room, token, why) in [
            (&other, Some("rw"), "token does not grant this room"),
            (&room, Some("nope"), "unknown token"),
            (&room, None, "missing token"),
            (&room, Some(""), "missing token"),
        ] {
            assert_eq!(
                table.authorize(ask(room, token)).await,
                Err(Denied(why.into()))
            );
        }
    }

    /// A malformed or ambiguous token file is an error at startup, not a silent open door.
    #[test]
    fn bad_files_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.json");
        for text in [
            "{",
            r#"{"tokens":[{"token":"a","permission":"admin","rooms":["*"]}]}"#,
            r#"{"tokens":[{"token":"a","permission":"readonly","rooms":["*"],"typo":1}]}"#,
            r#"{"tokens":[{"token":"a","permission":"readonly","rooms":[]},{"token":"a","permission":"readonly","rooms":[]}]}"#,
        ] {
            std::fs::write(&path, text).expect("write");
            assert!(TokenTable::load(&path).is_err(), "{text}");
        }
        assert!(TokenTable::load(&dir.path().join("missing.json")).is_err());
    }
}
