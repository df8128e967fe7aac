//! The HTTP side: the upgrade's refusals (unknown namespace, bad parameters, ROOM_FULL), refused
//! joins (ROOM_FULL, JOIN_DENIED, locked), the metadata endpoint, matchmaking, `/healthz`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{connect_url, send, test_settings, GameApp, WAIT};

const FULL_AT_UPGRADE: (u16, &str, &str) = (403, "ROOM_FULL", "Room at maxPlayers capacity");

fn refusal(status: u16, code: &str, message: &str) -> (u16, Value) {
    (status, json!({"code": code, "message": message}))
}

/// The upgrade is refused with a JSON body `{code, message}`: 404 for an unknown namespace, 400
/// for a missing parameter or an invalid room id.
#[tokio::test]
async fn upgrade_refuses_unknown_namespaces_and_bad_parameters() {
    let app = GameApp::start().await;
    let refused = |r: Result<_, (u16, Value)>| match r {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(refusal) => refusal,
    };
    assert_eq!(
        refused(app.try_connect("nope", "r1").await),
        refusal(
            404,
            "NAMESPACE_NOT_FOUND",
            "no room namespace \"nope\" on this server"
        )
    );
    let missing = refusal(
        400,
        "INVALID_REQUEST",
        "the namespace and id query parameters are required",
    );
    for query in ["namespace=arena", "id=r1", ""] {
        let url = format!("ws://{}/api/room?{query}", app.addr);
        assert_eq!(refused(connect_url(&url).await), missing, "{query}");
    }
    assert_eq!(
        refused(app.try_connect("arena", "..%2Fescape").await),
        refusal(
            400,
            "INVALID_REQUEST",
            "invalid room id: room id may contain only A-Z, a-z, 0-9, '_', '-', '.' and must not start with '.'"
        )
    );
    // A valid id of a known namespace upgrades.
    app.connect("arena", "r1").await.assert_alive().await;
}

/// A room whose seats are all held by connected players refuses the upgrade with HTTP 403
/// `ROOM_FULL`; once a player leaves, a newcomer gets in.
#[tokio::test]
async fn full_room_refuses_the_upgrade_with_403() {
    let app = GameApp::start().await;
    let (_a, _) = app.joined("duo", "full", "alice").await;
    let (mut b, _) = app.joined("duo", "full", "bob").await;
    app.wait_connected("duo", "full", 2).await;
    let (status, code, message) = FULL_AT_UPGRADE;
    assert_eq!(
        app.try_connect("duo", "full").await.err(),
        Some(refusal(status, code, message))
    );
    b.send(json!({"type": "leave"})).await;
    assert_eq!(b.frames_until_close().await.1 .0, 4005);
    app.wait_connected("duo", "full", 1).await;
    let (_c, sync) = app.joined("duo", "full", "carol").await;
    assert_eq!(sync["sharedState"]["players"], json!(["alice", "carol"]));
}

/// A newcomer that passed the upgrade while a seat was free but joins after it was taken gets
/// `error ROOM_FULL` and close 4003.
#[tokio::test]
async fn room_full_at_join_closes_with_4003() {
    let app = GameApp::start().await;
    let room = "race";
    let (_a, _) = app.joined("duo", room, "alice").await;
    let (mut c, _) = app.authed("duo", room, "carol").await;
    let (_b, _) = app.joined("duo", room, "bob").await;
    c.send(json!({"type": "join"})).await;
    let (frames, close) = c.frames_until_close().await;
    let message = "room is full (2 players)";
    assert_eq!(
        frames,
        vec![json!({"type": "error", "code": "ROOM_FULL", "message": message})]
    );
    assert_eq!(close, (4003, message.to_owned()));
    assert_eq!(app.hooks.of(room), vec!["create", "join alice", "join bob"]);
}

/// A player within its reconnect grace period still holds its seat: the upgrade lets a newcomer
/// in (the seat may free up), but its join is refused with ROOM_FULL; the player itself comes
/// back.
#[tokio::test]
async fn seat_in_grace_is_kept_against_newcomers() {
    let app = GameApp::start().await;
    let room = "held";
    let (a, _) = app.joined("duo", room, "alice").await;
    let (_b, _) = app.joined("duo", room, "bob").await;
    app.wait_connected("duo", room, 2).await;
    a.drop_connection().await;
    app.wait_connected("duo", room, 1).await;
    let (mut d, _) = app.authed("duo", room, "dave").await;
    d.send(json!({"type": "join"})).await;
    let (frames, close) = d.frames_until_close().await;
    assert_eq!(frames[0]["code"], "ROOM_FULL");
    assert_eq!(close.0, 4003);
    let (_a, back) = app.joined("duo", room, "alice").await;
    assert_eq!(back["sharedState"]["players"], json!(["alice", "bob"]));
    assert_eq!(app.hooks.of(room), vec!["create", "join alice", "join bob"]);
}

/// `onJoin` refusing: `error JOIN_DENIED` with the handler's message, close 4003, no seat taken
/// (a later join works and `onCreate` does not run again). A locked room refuses newcomers the
/// same way, but not a player who holds a seat.
#[tokio::test]
async fn join_denied_closes_with_4003() {
    let app = GameApp::start().await;
    let room = "denied";
    let (mut c, _) = app.authed("arena", room, "alice").await;
    c.send(json!({"type": "join", "options": {"deny": "Not on the guest list"}}))
        .await;
    let (frames, close) = c.frames_until_close().await;
    assert_eq!(
        frames,
        vec![json!({"type": "error", "code": "JOIN_DENIED", "message": "Not on the guest list"})]
    );
    assert_eq!(close, (4003, "Not on the guest list".to_owned()));
    assert_eq!(app.hooks.of(room), vec!["create", "deny alice"]);

    let (mut a, sync) = app.joined("arena", room, "alice").await;
    assert_eq!(sync["sharedState"], json!({"players": ["alice"]}));
    assert_eq!(
        app.hooks.of(room),
        vec!["create", "deny alice", "join alice"]
    );

    a.action("LOCK", json!({}), "l").await;
    let (mut b, _) = app.authed("arena", room, "bob").await;
    b.send(json!({"type": "join"})).await;
    let (frames, close) = b.frames_until_close().await;
    assert_eq!(
        frames,
        vec![json!({"type": "error", "code": "JOIN_DENIED", "message": "room is locked"})]
    );
    assert_eq!(close, (4003, "room is locked".to_owned()));
    let (_a2, again) = app.joined("arena", room, "alice").await;
    assert_eq!(again["type"], "sync");
    a.action("UNLOCK", json!({}), "u").await;
    let (_b, _) = app.joined("arena", room, "bob").await;
}

/// `GET /api/room/metadata`: `{}` for a room without metadata (or unknown), what the room set
/// otherwise; 404 `NAMESPACE_NOT_FOUND` for an unknown namespace, 400 without the parameters; a
/// namespace can require a token (401 without one).
#[tokio::test]
async fn metadata_endpoint() {
    let app = GameApp::start().await;
    let path = |ns: &str, id: &str| format!("/api/room/metadata?namespace={ns}&id={id}");
    assert_eq!(
        app.get(&path("arena", "never-seen"), None).await,
        (200, json!({}))
    );
    let (mut a, _) = app.joined("arena", "meta", "alice").await;
    assert_eq!(
        app.get(&path("arena", "meta"), None).await,
        (200, json!({}))
    );
    a.action("META", json!({"mode": "classic", "playerCount": 5}), "m")
        .await;
    assert_eq!(
        app.get(&path("arena", "meta"), None).await,
        (200, json!({"mode": "classic", "playerCount": 5}))
    );
    assert_eq!(
        app.get(&path("nope", "meta"), None).await,
        refusal(
            404,
            "NAMESPACE_NOT_FOUND",
            "no room namespace \"nope\" on this server"
        )
    );
    let missing = refusal(
        400,
        "INVALID_REQUEST",
        "the namespace and id query parameters are required",
    );
    for query in ["namespace=arena", "id=meta", ""] {
        assert_eq!(
            app.get(&format!("/api/room/metadata?{query}"), None).await,
            missing
        );
    }
    assert_eq!(
        app.get(&path("guarded", "g"), None).await,
        refusal(
            401,
            "AUTH_FAILED",
            "an access token is required (Authorization: Bearer)"
        )
    );
    assert_eq!(
        app.get(&path("guarded", "g"), Some("alice")).await,
        (200, json!({}))
    );
}

/// `POST /api/room/matchmake`: needs a token; unknown namespace 404; join-or-create: a new room
/// (`created: true`) with a seat reserved, then the same room while it has seats, then a new one.
#[tokio::test]
async fn matchmaking_joins_or_creates() {
    let app = GameApp::start().await;
    let (status, body) = app
        .post("/api/room/matchmake", &json!({"namespace": "duo"}), None)
        .await;
    assert_eq!(
        (status, body),
        refusal(
            401,
            "AUTH_FAILED",
            "an access token is required (Authorization: Bearer)"
        )
    );
    let (status, body) = app
        .post(
            "/api/room/matchmake",
            &json!({"namespace": "nope"}),
            Some("alice"),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "NAMESPACE_NOT_FOUND");

    let first = app.matchmake("duo").await;
    let id = first["id"].as_str().expect("id").to_owned();
    assert_eq!(
        first,
        json!({"namespace": "duo", "id": id, "created": true})
    );
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    assert!(app.is_live("duo", &id));
    assert_eq!(
        app.matchmake("duo").await,
        json!({"namespace": "duo", "id": id, "created": false})
    );
    // Both seats are reserved now: the next request gets a new room.
    let third = app.matchmake("duo").await;
    assert_eq!(third["created"], true);
    assert_ne!(third["id"], json!(id));
}

/// Matchmaking never hands out a locked, a private or a full room.
#[tokio::test]
async fn matchmaking_skips_locked_private_and_full_rooms() {
    for (action, namespace) in [("LOCK", "arena"), ("PRIVATE", "arena"), ("", "duo")] {
        let app = GameApp::start().await;
        let (mut a, _) = app.joined(namespace, "taken", "alice").await;
        if action.is_empty() {
            let (_b, _) = app.joined(namespace, "taken", "bob").await;
            app.wait_connected(namespace, "taken", 2).await;
            let found = app.matchmake(namespace).await;
            assert_eq!(found["created"], true, "full room handed out: {found}");
            continue;
        }
        a.action(action, json!({}), "x").await;
        let found = app.matchmake(namespace).await;
        assert_eq!(found["created"], true, "{action}: {found}");
        assert_ne!(found["id"], "taken");
    }
    // And an open room with a free seat is handed out.
    let app = GameApp::start().await;
    let (_a, _) = app.joined("duo", "open", "alice").await;
    assert_eq!(
        app.matchmake("duo").await,
        json!({"namespace": "duo", "id": "open", "created": false})
    );
}

/// The clients matchmaking sent to a room get the seats reserved for them: with both seats of a
/// `duo` room reserved, both matched clients can connect and join.
#[tokio::test]
async fn matchmade_clients_get_their_reserved_seats() {
    let app = GameApp::start().await;
    let id = app.matchmake("duo").await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(app.matchmake("duo").await["id"], json!(id));
    let (_a, a) = app.joined("duo", &id, "alice").await;
    assert_eq!(a["sharedState"]["players"], json!(["alice"]));
    let (_b, b) = app.joined("duo", &id, "bob").await;
    assert_eq!(b["sharedState"]["players"], json!(["alice", "bob"]));
}

/// The last free seat of a room reserved by matchmaking: the matched client must get in.
#[tokio::test]
async fn matchmade_client_gets_the_last_seat() {
    let app = GameApp::start().await;
    let (_a, _) = app.joined("duo", "last-seat", "alice").await;
    assert_eq!(app.matchmake("duo").await["id"], "last-seat");
    let (_b, b) = app.joined("duo", "last-seat", "bob").await;
    assert_eq!(b["sharedState"]["players"], json!(["alice", "bob"]));
}

/// `/healthz` as a probe outside the server sees it (blocking std IO: while a worker is stuck,
/// the server's runtime may drive no IO or timers, and the test shares that runtime): the
/// status and the JSON body.
fn probe_healthz(addr: SocketAddr) -> (u16, Value) {
    let mut stream = std::net::TcpStream::connect(addr).expect("tcp connects");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: weft\r\nConnection: close\r\n\r\n")
        .expect("request sent");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("response within the wait");
    let (head, body) = response.split_once("\r\n\r\n").expect("http response");
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    (
        status.expect("status code"),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// Probes `/healthz` until it answers `status` with body field `status` = `word`.
fn probe_until(addr: SocketAddr, status: u16, word: &str) {
    let deadline = Instant::now() + 2 * WAIT;
    loop {
        let (got, body) = probe_healthz(addr);
        if got == status && body["status"] == word {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz never said {status} {word}; last {got} {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A room task that never yields (a handler holding its thread) stops a worker of the runtime
/// where rooms run: `/healthz` answers 503 `stalled` while it lasts, and 200 again once the
/// room runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_a_room_task_that_makes_no_progress() {
    let mut settings = test_settings();
    settings.limits.liveness_timeout_ms = 200;
    let app = GameApp::start_with(settings).await;
    probe_until(app.addr, 200, "ok");
    let (mut c, _) = app.joined("slow", "stuck", "alice").await;
    c.send(send("BLOCK", json!(null), "b1")).await;
    probe_until(app.addr, 503, "stalled");
    app.gate.open();
    let answer = c.until_answer("b1").await;
    assert_eq!(
        answer.last().map(|a| &a["result"]),
        Some(&json!("unblocked"))
    );
    probe_until(app.addr, 200, "ok");
}

/// A room made by matchmaking stays loaded for as long as the seat it reserved is held (15 s),
/// not only the 5 s an emptied room lingers: a second caller 7 s later gets the same room.
#[tokio::test]
async fn a_matchmade_room_keeps_its_reserved_seat() {
    let app = GameApp::start().await;
    let first = app.matchmake("arena").await;
    let id = first["id"].as_str().expect("id").to_owned();
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(app.is_live("arena", &id), "the reserved room was disposed");
    assert_eq!(
        app.matchmake("arena").await,
        json!({"namespace": "arena", "id": id, "created": false})
    );
}

/// Game rooms count in the server's metrics as canvas rooms do: the room loaded, its joined
/// session, and each action handled; the session stops counting when it leaves.
#[tokio::test]
async fn game_rooms_are_counted_in_the_metrics() {
    let app = GameApp::start().await;
    let (mut a, _) = app.joined("arena", "counted", "alice").await;
    a.action("ECHO", json!(1), "e1").await;
    a.action("FAIL", json!({"message": "no"}), "e2").await;
    assert_eq!(app.metric("weft_rooms_active").await, 1);
    assert_eq!(app.metric("weft_sessions_active").await, 1);
    assert_eq!(app.metric("weft_game_actions").await, 2);
    a.send(json!({"type": "leave"})).await;
    a.frames_until_close().await;
    assert_eq!(app.metric("weft_sessions_active").await, 0);
}
