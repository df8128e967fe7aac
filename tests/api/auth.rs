//! Authorization at connect: token table and JWT. Refusals close with 1008 `unauthorized: ...`.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use weft::auth::Permission;
use weft::config::{AuthMode, Settings};

use crate::helpers::{
    ack, count, doc_patch, spawn_app_with, synced, test_settings, tokens_settings, QUIET,
};

const SECRET: &str = "test-secret-for-weft";

fn jwt_settings() -> Settings {
    let mut settings = test_settings();
    settings.auth.mode = AuthMode::Jwt;
    settings.auth.jwt_secret = Some(SECRET.into());
    settings
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn sign(claims: Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token signs")
}

/// Connects with `query` and expects the server to close with 1008 and `reason`.
async fn refused(app: &crate::helpers::TestApp, query: &str, reason: &str) {
    let mut c = app.connect_query(query).await;
    assert_eq!(
        c.closed().await,
        (CloseCode::Policy, reason.to_owned()),
        "{query}"
    );
}

/// With a token table, a connect without a token, with an unknown token, or with a token that
/// does not open the room is closed with 1008 and a reason; nobody in the room notices.
#[tokio::test]
async fn token_table_refuses_missing_unknown_and_foreign_tokens() {
    let (settings, _dir) = tokens_settings();
    let app = spawn_app_with(settings).await;
    let (mut inside, _) = app.join_token("a-auth-table", "in", "rw").await;
    let denied_before = app.metric("weft_connects_denied").await;
    let cases = [
        (
            "roomId=a-auth-table&clientId=x",
            "unauthorized: missing token",
        ),
        (
            "roomId=a-auth-table&clientId=x&token=",
            "unauthorized: missing token",
        ),
        (
            "roomId=a-auth-table&clientId=x&token=nope",
            "unauthorized: unknown token",
        ),
        (
            "roomId=a-auth-table&clientId=x&token=team",
            "unauthorized: token does not grant this room",
        ),
    ];
    for (query, reason) in cases {
        refused(&app, query, reason).await;
    }
    assert_eq!(
        app.metric("weft_connects_denied").await,
        denied_before + cases.len() as u64
    );
    assert!(inside.silent_for(QUIET).await);
    assert_eq!(app.sessions("a-auth-table").await.len(), 1);
}

/// A prefix-pattern token opens the rooms it matches.
#[tokio::test]
async fn token_with_a_room_prefix_opens_matching_rooms() {
    let (settings, _dir) = tokens_settings();
    let app = spawn_app_with(settings).await;
    let (mut c, frames) = app.join_token("team-a-auth", "c", "team").await;
    assert_eq!(frames, vec![count(1), synced(0)]);
    c.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(c.recv().await, ack("m1", 1));
}

/// A valid HS256 JWT opens the room with its permission, and its claims become the session's
/// metadata.
#[tokio::test]
async fn valid_jwt_opens_the_room_with_its_claims_as_metadata() {
    let app = spawn_app_with(jwt_settings()).await;
    let room = "a-jwt-ok";
    let exp = now() + 600;
    let claims = json!({"sub": "ann", "rooms": ["a-jwt-*"], "exp": exp});
    let (mut w, frames) = app
        .join_token(room, "w", &sign(claims.clone(), SECRET))
        .await;
    assert_eq!(frames, vec![count(1), synced(0)]);
    w.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(w.recv().await, ack("m1", 1));

    let readonly = json!({"sub": "bob", "room": room, "permission": "readonly", "exp": exp});
    let (mut r, _) = app.join_token(room, "r", &sign(readonly, SECRET)).await;
    r.send(doc_patch("m2", json!([{"e/S": {"x": 1}}]))).await;
    assert_eq!(r.recv().await, ack("m2", 1));

    let sessions = app.sessions(room).await;
    let summary: Vec<_> = sessions
        .iter()
        .map(|s| (s.client.as_str(), s.permission, s.metadata["sub"].clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("w", Permission::Readwrite, json!("ann")),
            ("r", Permission::Readonly, json!("bob")),
        ]
    );
    assert_eq!(sessions[0].metadata, claims);
}

/// Expired, wrongly signed, malformed, foreign-room and other-client JWTs are refused with 1008
/// and a reason.
#[tokio::test]
async fn bad_jwts_are_refused_with_a_reason() {
    let app = spawn_app_with(jwt_settings()).await;
    let room = "a-jwt-bad";
    let exp = now() + 600;
    let cases = [
        (
            sign(json!({"rooms": ["*"], "exp": now() - 120}), SECRET),
            "unauthorized: token expired",
        ),
        (
            sign(json!({"rooms": ["*"], "exp": exp}), "other-secret"),
            "unauthorized: token signature invalid",
        ),
        ("not-a-jwt".to_owned(), "unauthorized: token invalid"),
        (
            sign(json!({"rooms": ["elsewhere"], "exp": exp}), SECRET),
            "unauthorized: token does not grant this room",
        ),
        (
            sign(
                json!({"rooms": ["*"], "exp": exp, "clientId": "someone"}),
                SECRET,
            ),
            "unauthorized: token is for another client",
        ),
        (
            sign(json!({"rooms": ["*"]}), SECRET),
            "unauthorized: token lacks claim exp",
        ),
    ];
    for (token, reason) in cases {
        refused(
            &app,
            &format!("roomId={room}&clientId=c&token={token}"),
            reason,
        )
        .await;
    }
    refused(
        &app,
        &format!("roomId={room}&clientId=c"),
        "unauthorized: missing token",
    )
    .await;
}

/// A refresh with an expired JWT closes the socket with 1008 `auth refresh rejected: token expired`.
#[tokio::test]
async fn auth_refresh_with_an_expired_jwt_closes_the_socket() {
    let app = spawn_app_with(jwt_settings()).await;
    let room = "a-jwt-refresh";
    let token = sign(json!({"rooms": ["*"], "exp": now() + 600}), SECRET);
    let (mut c, _) = app.join_token(room, "c", &token).await;
    let expired = sign(json!({"rooms": ["*"], "exp": now() - 120}), SECRET);
    c.send(json!({"type": "auth-refresh", "token": expired}))
        .await;
    assert_eq!(
        c.closed().await,
        (
            CloseCode::Policy,
            "auth refresh rejected: token expired".to_owned()
        )
    );
}
