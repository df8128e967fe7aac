//! Plain-HTTP game room endpoints: metadata (`GET /api/room/metadata?namespace=&id=`) and
//! matchmaking (`POST /api/room/matchmake`).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use tracing::error;

use super::game_ws::{room_key, RoomQuery};
use super::{AppState, HttpError};
use crate::protocols::game::RoomUnavailable;

/// The bearer token of a request, if any.
fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Checks the request's access token; `Err` is the 401 to answer.
fn require_token(state: &AppState, req: &HttpRequest) -> Result<(), HttpError> {
    let refused =
        |message: &str| HttpError::coded(StatusCode::UNAUTHORIZED, "AUTH_FAILED", message);
    let token = bearer(req)
        .ok_or_else(|| refused("an access token is required (Authorization: Bearer)"))?;
    state
        .game_auth
        .verify(token)
        .map(|_| ())
        .map_err(|e| refused(&e.0))
}

/// A room's public metadata: `{}` when none was set or the room is unknown. Public unless the
/// namespace requires a token.
pub(super) async fn metadata(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let query = web::Query::<RoomQuery>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let key = match room_key(&state, &query) {
        Ok(key) => key,
        Err(response) => return response.into(),
    };
    let requires_auth = state
        .games
        .namespaces()
        .get(key.namespace.as_str())
        .is_some_and(|ns| ns.options.metadata_requires_auth);
    if requires_auth {
        if let Err(response) = require_token(&state, &req) {
            return response.into();
        }
    }
    match state.games.metadata(&key).await {
        Ok(metadata) => HttpResponse::Ok().json(metadata),
        Err(e) => {
            error!(room = %key, error = %e, "reading room metadata failed");
            HttpError::coded(
                StatusCode::SERVICE_UNAVAILABLE,
                "ROOM_UNAVAILABLE",
                "room storage unavailable, retry later",
            )
            .into()
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct MatchRequest {
    namespace: String,
}

/// Join-or-create: `{"namespace": NS}` -> `{"namespace", "id", "created"}`, the room to connect
/// to (not locked, not private, not full; a seat is held for 15 s). Needs an access token.
pub(super) async fn matchmake(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<MatchRequest>,
) -> HttpResponse {
    if let Err(response) = require_token(&state, &req) {
        return response.into();
    }
    match state.games.matchmake(&body.namespace).await {
        Ok(found) => HttpResponse::Ok().json(found),
        Err(e @ RoomUnavailable::UnknownNamespace(_)) => {
            HttpError::coded(StatusCode::NOT_FOUND, "NAMESPACE_NOT_FOUND", &e.to_string()).into()
        }
        Err(e @ RoomUnavailable::ShuttingDown) => HttpError::coded(
            StatusCode::SERVICE_UNAVAILABLE,
            "SHUTTING_DOWN",
            &e.to_string(),
        )
        .into(),
    }
}
