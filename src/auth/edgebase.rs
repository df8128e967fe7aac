//! EdgeBase access tokens, for game rooms: HS256 JWTs signed with the server's user secret (its
//! raw UTF-8 bytes are the HMAC key), claims `sub` (the user), `iss` = `edgebase:user`, `exp`,
//! `iat`, `jti`, optional `nbf` (checked with the same leeway as `exp`), optional `role` (default `user`), `email`, `isAnonymous`, `custom`. Refresh tokens
//! (`type` = `refresh`) are refused.

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

/// Who a game connection is, as its token says.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub user_id: String,
    pub role: String,
    pub email: Option<String>,
    pub is_anonymous: bool,
    /// The token's `custom` claim (`null` when absent).
    pub custom: Value,
}

/// How game connections authenticate.
pub enum GameAuth {
    /// Tokens are verified with the EdgeBase user secret.
    Verified(Box<(DecodingKey, Validation)>),
    /// No secret is configured on a server with authorization on: every token is refused.
    Disabled,
    /// Development only: any token is accepted. A token that looks like a JWT names its `sub`
    /// (unverified); any other string is the user id itself.
    Insecure,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(rename = "isAnonymous", default)]
    is_anonymous: bool,
    #[serde(default)]
    custom: Value,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

/// Why a token was refused (the message goes to the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenRefused(pub String);

/// Longest accepted user id, in bytes.
const MAX_USER_ID_LEN: usize = 256;

impl GameAuth {
    /// Verifies with the EdgeBase user secret.
    pub fn with_secret(secret: &[u8]) -> GameAuth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        validation.set_issuer(&["edgebase:user"]);
        validation.validate_aud = false;
        // `nbf`, when present, is checked with the same leeway as `exp`.
        validation.validate_nbf = true;
        validation.leeway = 5;
        GameAuth::Verified(Box::new((DecodingKey::from_secret(secret), validation)))
    }

    pub fn verify(&self, token: &str) -> Result<Identity, TokenRefused> {
        use jsonwebtoken::errors::ErrorKind;
        if token.is_empty() {
            return Err(TokenRefused("missing token".into()));
        }
        let claims = match self {
            GameAuth::Verified(verifier) => {
                let (key, validation) = &**verifier;
                let data = decode::<Value>(token, key, validation).map_err(|e| {
                    TokenRefused(match e.kind() {
                        ErrorKind::ExpiredSignature => "Invalid or expired token".into(),
                        ErrorKind::ImmatureSignature => "token not yet valid (nbf)".into(),
                        ErrorKind::InvalidSignature => "token signature invalid".into(),
                        ErrorKind::InvalidIssuer => "token is not an EdgeBase user token".into(),
                        ErrorKind::MissingRequiredClaim(c) => format!("token lacks claim {c}"),
                        _ => "Invalid or expired token".into(),
                    })
                })?;
                data.claims
            }
            GameAuth::Disabled => return Err(TokenRefused(
                "game room tokens cannot be verified: the server has no EdgeBase secret configured"
                    .into(),
            )),
            GameAuth::Insecure => match unverified_claims(token) {
                Some(claims) => claims,
                None => serde_json::json!({ "sub": token }),
            },
        };
        let claims: Claims = serde_json::from_value(claims)
            .map_err(|_| TokenRefused("token claims have the wrong types".into()))?;
        if claims.kind.as_deref() == Some("refresh") {
            return Err(TokenRefused(
                "refresh tokens cannot open rooms; use an access token".into(),
            ));
        }
        if claims.sub.is_empty()
            || claims.sub.len() > MAX_USER_ID_LEN
            || claims.sub.chars().any(char::is_control)
        {
            return Err(TokenRefused("token subject is not a valid user id".into()));
        }
        Ok(Identity {
            user_id: claims.sub,
            role: claims.role.unwrap_or_else(|| "user".into()),
            email: claims.email,
            is_anonymous: claims.is_anonymous,
            custom: claims.custom,
        })
    }
}

/// The claims of a JWT-shaped token, without checking its signature.
fn unverified_claims(token: &str) -> Option<Value> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    }

    fn sign(claims: Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("signs")
    }

    /// A signed access token gives its user, role and custom claims; a past `nbf` is fine.
    #[test]
    fn accepts_edgebase_access_tokens() {
        let auth = GameAuth::with_secret(b"user-secret");
        let token = sign(
            json!({"sub": "u1", "iss": "edgebase:user", "exp": now() + 60, "iat": now(),
                   "jti": "j", "role": "admin", "custom": {"team": "red"}}),
            "user-secret",
        );
        let id = auth.verify(&token).expect("valid");
        assert_eq!(id.user_id, "u1");
        assert_eq!(id.role, "admin");
        assert_eq!(id.custom, json!({"team": "red"}));

        let plain = sign(
            json!({"sub": "u2", "iss": "edgebase:user", "exp": now() + 60, "nbf": now()}),
            "user-secret",
        );
        assert_eq!(auth.verify(&plain).expect("valid").role, "user");
    }

    /// Expired, foreign-issuer, issuer-less, refresh, subject-less and not-yet-valid (`nbf`)
    /// tokens and forged signatures are refused.
    #[test]
    fn refuses_bad_tokens() {
        let auth = GameAuth::with_secret(b"user-secret");
        let cases = [
            json!({"sub": "u", "iss": "edgebase:user", "exp": now() - 600}),
            json!({"sub": "u", "iss": "someone-else", "exp": now() + 60}),
            json!({"sub": "u", "exp": now() + 60}),
            json!({"sub": "u", "iss": "edgebase:user", "exp": now() + 60, "type": "refresh"}),
            json!({"sub": "", "iss": "edgebase:user", "exp": now() + 60}),
            json!({"sub": "u", "iss": "edgebase:user", "exp": now() + 600, "nbf": now() + 60}),
        ];
        for claims in cases {
            assert!(
                auth.verify(&sign(claims.clone(), "user-secret")).is_err(),
                "{claims}"
            );
        }
        let forged = sign(
            json!({"sub": "u", "iss": "edgebase:user", "exp": now() + 60}),
            "wrong",
        );
        assert!(auth.verify(&forged).is_err());
        assert!(auth.verify("").is_err());
        assert!(auth.verify("not-a-jwt").is_err());
    }

    /// Without a secret (development), a JWT's `sub` or else the token itself is the user id.
    #[test]
    fn insecure_mode_takes_the_subject_or_the_token() {
        let token = sign(json!({"sub": "alice", "exp": 1}), "anything");
        assert_eq!(
            GameAuth::Insecure.verify(&token).expect("ok").user_id,
            "alice"
        );
        assert_eq!(GameAuth::Insecure.verify("bob").expect("ok").user_id, "bob");
    }
}
