//! JSON Web Tokens, HS256 (shared secret) or RS256 (public key).
//!
//! Claims: `exp` (required), `nbf` (checked when present, same leeway as `exp`), `sub` (the user), `rooms` (patterns, `["*"]` for all) or `room`
//! (one id), `permission` (`readwrite` | `readonly`, default `readwrite`), optional `clientId`
//! (binds the token to one client), `aud` (checked when an audience is configured, ignored
//! otherwise). Every claim becomes the session's metadata.

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::{room_matches, AuthRequest, Authorizer, Denied, Grant, Permission};

/// The key that verifies signatures.
pub enum JwtKey {
    /// HS256 with a shared secret.
    Secret(Vec<u8>),
    /// RS256 with an RSA public key in PEM.
    RsaPublicPem(Vec<u8>),
}

pub struct JwtAuthorizer {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    permission: Option<Permission>,
    #[serde(rename = "clientId", default)]
    client_id: Option<String>,
}

impl JwtAuthorizer {
    /// With `audience`, tokens must carry it in `aud`; without, `aud` is not checked.
    pub fn new(
        key: JwtKey,
        audience: Option<&str>,
    ) -> Result<JwtAuthorizer, jsonwebtoken::errors::Error> {
        let (key, alg) = match key {
            JwtKey::Secret(secret) => (DecodingKey::from_secret(&secret), Algorithm::HS256),
            JwtKey::RsaPublicPem(pem) => (DecodingKey::from_rsa_pem(&pem)?, Algorithm::RS256),
        };
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims(&["exp"]);
        // `nbf`, when present, is checked with the same leeway as `exp`.
        validation.validate_nbf = true;
        validation.leeway = 5;
        match audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(JwtAuthorizer { key, validation })
    }
}

#[async_trait::async_trait]
impl Authorizer for JwtAuthorizer {
    async fn authorize(&self, request: AuthRequest<'_>) -> Result<Grant, Denied> {
        use jsonwebtoken::errors::ErrorKind;
        let token = request
            .token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Denied("missing token".into()))?;
        let data = decode::<Value>(token, &self.key, &self.validation).map_err(|e| {
            Denied(match e.kind() {
                ErrorKind::ExpiredSignature => "token expired".into(),
                ErrorKind::ImmatureSignature => "token not yet valid (nbf)".into(),
                ErrorKind::InvalidSignature => "token signature invalid".into(),
                ErrorKind::MissingRequiredClaim(c) => format!("token lacks claim {c}"),
                _ => "token invalid".into(),
            })
        })?;
        let claims: Claims = serde_json::from_value(data.claims.clone())
            .map_err(|_| Denied("token claims have the wrong types".into()))?;
        let patterns = claims
            .rooms
            .or(claims.room.map(|r| vec![r]))
            .ok_or_else(|| Denied("token names no rooms".into()))?;
        if !patterns.iter().any(|p| room_matches(p, request.room)) {
            return Err(Denied("token does not grant this room".into()));
        }
        if claims
            .client_id
            .is_some_and(|c| c != request.client.as_str())
        {
            return Err(Denied("token is for another client".into()));
        }
        Ok(Grant {
            permission: claims.permission.unwrap_or(Permission::Readwrite),
            metadata: data.claims,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ClientId, RoomId};
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    }

    fn sign(claims: Value, secret: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .expect("signs")
    }

    /// HS256 tokens grant their rooms and permission; expiry, a future `nbf`, bad signatures,
    /// wrong room or client are refused with a reason.
    #[tokio::test]
    async fn hs256_claims_are_enforced() {
        let auth = JwtAuthorizer::new(JwtKey::Secret(b"s3cret".to_vec()), None).expect("key");
        let room = RoomId::parse("doc-1").expect("id");
        let client = ClientId::parse("c1").expect("id");
        let check = |token: String| {
            let auth = &auth;
            let (room, client) = (&room, &client);
            async move {
                auth.authorize(AuthRequest {
                    room,
                    client,
                    token: Some(&token),
                })
                .await
            }
        };
        let exp = now() + 600;
        let ok = check(sign(
            json!({"sub": "ann", "rooms": ["doc-*"], "permission": "readonly", "exp": exp}),
            b"s3cret",
        ))
        .await;
        let grant = ok.expect("granted");
        assert_eq!(grant.permission, Permission::Readonly);
        assert_eq!(grant.metadata["sub"], "ann");
        let ok = check(sign(
            json!({"room": "doc-1", "exp": exp, "clientId": "c1", "nbf": now()}),
            b"s3cret",
        ))
        .await;
        assert_eq!(ok.expect("granted").permission, Permission::Readwrite);

        for (claims, secret, why) in [
            (
                json!({"rooms": ["*"], "exp": now() - 60}),
                &b"s3cret"[..],
                "token expired",
            ),
            (
                json!({"rooms": ["*"], "exp": exp, "nbf": now() + 60}),
                b"s3cret",
                "token not yet valid (nbf)",
            ),
            (
                json!({"rooms": ["*"], "exp": exp}),
                b"other",
                "token signature invalid",
            ),
            (json!({"rooms": ["*"]}), b"s3cret", "token lacks claim exp"),
            (
                json!({"rooms": ["doc-2"], "exp": exp}),
                b"s3cret",
                "token does not grant this room",
            ),
            (json!({"exp": exp}), b"s3cret", "token names no rooms"),
            (
                json!({"rooms": ["*"], "exp": exp, "clientId": "c2"}),
                b"s3cret",
                "token is for another client",
            ),
            (
                json!({"rooms": "*", "exp": exp}),
                b"s3cret",
                "token claims have the wrong types",
            ),
        ] {
            assert_eq!(
                check(sign(claims.clone(), secret)).await,
                Err(Denied(why.into())),
                "{claims}"
            );
        }
        assert_eq!(
            check("not-a-jwt".into()).await,
            Err(Denied("token invalid".into()))
        );
    }

    /// RS256 tokens verify with the public key; a token signed with HS256 is refused.
    #[tokio::test]
    async fn rs256_uses_the_public_key() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/");
        let read = |name: &str| std::fs::read(format!("{fixtures}{name}")).expect("fixture");
        let auth =
            JwtAuthorizer::new(JwtKey::RsaPublicPem(read("rs256-public.pem")), None).expect("key");
        let signing = EncodingKey::from_rsa_pem(&read("rs256-private.pem")).expect("private key");
        let claims = json!({"sub": "ann", "rooms": ["*"], "exp": now() + 600});
        let token = encode(&Header::new(Algorithm::RS256), &claims, &signing).expect("signs");
        let (room, client) = (
            &RoomId::parse("r").expect("id"),
            &ClientId::parse("c").expect("id"),
        );
        let grant = auth
            .authorize(AuthRequest {
                room,
                client,
                token: Some(&token),
            })
            .await
            .expect("granted");
        assert_eq!(grant.metadata["sub"], "ann");
        let hs = sign(claims, b"secret");
        let refused = auth
            .authorize(AuthRequest {
                room,
                client,
                token: Some(&hs),
            })
            .await;
        assert_eq!(refused, Err(Denied("token invalid".into())));
    }

    /// `aud` is ignored unless an audience is configured; then it must match.
    #[tokio::test]
    async fn audience_is_checked_when_configured() {
        let (room, client) = (
            &RoomId::parse("r").expect("id"),
            &ClientId::parse("c").expect("id"),
        );
        let token = sign(
            json!({"rooms": ["*"], "aud": "weft", "exp": now() + 600}),
            b"k",
        );
        let open = JwtAuthorizer::new(JwtKey::Secret(b"k".to_vec()), None).expect("key");
        let strict = JwtAuthorizer::new(JwtKey::Secret(b"k".to_vec()), Some("weft")).expect("key");
        let other =
            JwtAuthorizer::new(JwtKey::Secret(b"k".to_vec()), Some("billing")).expect("key");
        let ask = || AuthRequest {
            room,
            client,
            token: Some(&token),
        };
        assert!(open.authorize(ask()).await.is_ok());
        assert!(strict.authorize(ask()).await.is_ok());
        assert_eq!(
            other.authorize(ask()).await,
            Err(Denied("token invalid".into()))
        );
    }
}
