//! Edge limits: message rate, connection caps, frame size, slow readers and the heartbeat.
//!
//! These run against real sockets and the server's real clock (its connections live on actix
//! worker threads, which paused tokio time cannot reach), so the limits are set small and every
//! wait is bounded.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::MaybeTlsStream;

use crate::helpers::{
    ack, count, doc_patch, eventually, reconnect, spawn_app, spawn_app_with, synced as synced_at,
    test_settings, Client, TestApp, QUIET, WAIT,
};

/// The HTTP status and JSON body of a refused upgrade.
async fn refused_upgrade(app: &TestApp, query: &str) -> (u16, Value) {
    match app.try_connect(query).await {
        Ok(_) => panic!("upgrade of {query} was accepted"),
        Err(WsError::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            (
                response.status().as_u16(),
                serde_json::from_slice(&body).expect("json body"),
            )
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    }
}

/// Five messages pass (the burst); the sixth sent at once closes the socket with 1008
/// `rate limit exceeded` and is not applied. The five applied writes are acked before the close.
#[tokio::test]
async fn message_over_the_rate_limit_closes_with_1008() {
    let mut settings = test_settings();
    settings.limits.messages_per_second = 5.0;
    settings.limits.message_burst = 5;
    let app = spawn_app_with(settings).await;
    let room = "l-rate";
    let mut c = app.connect(room, "c").await;
    assert_eq!(c.recv().await, count(1));
    for i in 1..=6 {
        c.send(doc_patch(
            &format!("m{i}"),
            json!([{"e/S": {"_exists": true, "i": i}}]),
        ))
        .await;
    }
    let (frames, close) = c.frames_until_close().await;
    assert_eq!(close, (CloseCode::Policy, "rate limit exceeded".to_owned()));
    assert_eq!(app.metric("weft_rate_limited").await, 1);
    let doc = app.document(room).await;
    assert_eq!(
        (&doc["timestamp"], &doc["state"]["e/S"]["i"]),
        (&json!(5), &json!(5)),
        "exactly the first five are applied"
    );
    let acks: Vec<Value> = (1..=5).map(|i| ack(&format!("m{i}"), i)).collect();
    assert_eq!(
        frames, acks,
        "every applied write is acked before the close"
    );
}

/// A client that stays within its average rate is never limited: the bucket refills.
#[tokio::test]
async fn client_within_the_rate_is_not_limited() {
    let mut settings = test_settings();
    settings.limits.messages_per_second = 20.0;
    settings.limits.message_burst = 2;
    let app = spawn_app_with(settings).await;
    let mut c = app.connect("l-rate-ok", "c").await;
    assert_eq!(c.recv().await, count(1));
    for round in 0..3u64 {
        for i in 1..=2 {
            c.send(doc_patch(
                &format!("r{round}-{i}"),
                json!([{"e/S": {"_exists": true}}]),
            ))
            .await;
        }
        for i in 1..=2 {
            assert_eq!(c.recv().await, ack(&format!("r{round}-{i}"), round * 2 + i));
        }
        // Two tokens come back after 100 ms at 20 per second.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(app.metric("weft_rate_limited").await, 0);
}

/// With `max_connections = 2`, a third upgrade is refused with HTTP 503 and a JSON body; once a
/// connection ends, a new one is accepted.
#[tokio::test]
async fn upgrade_beyond_max_connections_gets_503() {
    let mut settings = test_settings();
    settings.limits.max_connections = 2;
    let app = spawn_app_with(settings).await;
    let (a, _) = app.join("l-max", "a").await;
    let (_b, _) = app.join("l-max", "b").await;
    let full = "server is at its connection limit";
    assert_eq!(
        refused_upgrade(&app, "roomId=l-max&clientId=c").await,
        (
            503,
            json!({"error": full, "code": "TOO_MANY_CONNECTIONS", "message": full})
        )
    );
    a.leave().await;
    let app = &app;
    eventually("a freed place is taken", || async move {
        app.try_connect("roomId=l-max&clientId=c").await.is_ok()
    })
    .await;
    // (Plain requests count toward the cap too: `/metrics` waits for a free place.)
    drop(_b);
    eventually("metrics are served", || async move {
        app.http_get("/metrics").await.0 == 200
    })
    .await;
    assert!(app.metric("weft_connections_refused").await >= 1);
}

/// With `max_connections_per_ip = 1`, a second upgrade from the same address gets HTTP 429.
#[tokio::test]
async fn upgrade_beyond_the_per_address_cap_gets_429() {
    let mut settings = test_settings();
    settings.limits.max_connections_per_ip = 1;
    let app = spawn_app_with(settings).await;
    let (_a, _) = app.join("l-per-ip", "a").await;
    let full = "too many connections from this address";
    assert_eq!(
        refused_upgrade(&app, "roomId=l-per-ip&clientId=b").await,
        (
            429,
            json!({"error": full, "code": "TOO_MANY_CONNECTIONS", "message": full})
        )
    );
    assert_eq!(
        metric_from_another_address(&app, "weft_connections_refused").await,
        1
    );
}

/// A metric read from 127.0.0.2, which has its own per-address count.
async fn metric_from_another_address(app: &TestApp, name: &str) -> u64 {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind 127.0.0.2");
    let mut stream = socket.connect(app.addr).await.expect("tcp connects");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: weft\r\n\r\n")
        .await
        .expect("sent");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("answer within the wait")
        .expect("read");
    let response = String::from_utf8(response).expect("utf-8");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("metric {name} in {response}"))
        .parse()
        .expect("numeric metric")
}

/// The caps count every connection, not only WebSockets: with `max_connections_per_ip = 1`, an
/// open plain HTTP connection (its request unfinished) makes the next request from the same
/// address get 429, and a WebSocket makes a plain request get 429 too. Once the connection
/// closes, requests are served again.
#[tokio::test]
async fn plain_http_connections_count_toward_the_caps() {
    let mut settings = test_settings();
    settings.limits.max_connections_per_ip = 1;
    let app = spawn_app_with(settings).await;
    let app = &app;
    let idle = std::cell::RefCell::new(None::<tokio::net::TcpStream>);
    let idle = &idle;
    // The server takes the idle connection's place when it accepts it. Two workers accept
    // concurrently, so a probe can take the place first and the idle connection is refused:
    // then it is opened again.
    eventually("a plain request is refused with 429", || async move {
        let refused = match idle.borrow_mut().as_mut() {
            None => true,
            Some(stream) => {
                let mut byte = [0u8; 1];
                stream.try_read(&mut byte).is_ok()
            }
        };
        if refused {
            let mut stream = tokio::net::TcpStream::connect(app.addr)
                .await
                .expect("tcp connects");
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\n")
                .await
                .expect("half a request");
            *idle.borrow_mut() = Some(stream);
        }
        app.http_get("/healthz").await.0 == 429
    })
    .await;
    let (status, body) = app.http_get("/healthz").await;
    let full = "too many connections from this address";
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).expect("json")),
        (
            429,
            json!({"error": full, "code": "TOO_MANY_CONNECTIONS", "message": full})
        )
    );
    drop(idle.borrow_mut().take());
    eventually("the place is free again", || async move {
        app.http_get("/healthz").await.0 == 200
    })
    .await;
    // The last probe's place is given back just after its answer: retry until it is.
    let socket = std::cell::RefCell::new(None);
    let socket = &socket;
    eventually("a websocket connects", || async move {
        *socket.borrow_mut() = app.try_connect("roomId=l-http-cap&clientId=a").await.ok();
        socket.borrow().is_some()
    })
    .await;
    assert_eq!(app.http_get("/healthz").await.0, 429);
}

/// A request whose body never finishes gets 408 once `http_request_timeout_ms` has passed and
/// its connection is closed (a fixed length or chunked); one whose head never finishes gets 408
/// after `http_head_timeout_ms`. Nothing holds the socket open.
#[tokio::test]
async fn unfinished_http_requests_get_408_and_are_closed() {
    let mut settings = test_settings();
    settings.limits.http_head_timeout_ms = 300;
    settings.limits.http_request_timeout_ms = 300;
    let app = spawn_app_with(settings).await;
    let post =
        "POST /api/room/matchmake HTTP/1.1\r\nHost: weft\r\nContent-Type: application/json\r\n";
    for (what, request) in [
        (
            "a body shorter than its length",
            format!("{post}Content-Length: 100\r\n\r\n{{\"namespace\": \"ar"),
        ),
        (
            "a chunked body without its last chunk",
            format!("{post}Transfer-Encoding: chunked\r\n\r\n5\r\n{{\"nam\r\n"),
        ),
        (
            "half a head",
            "GET /healthz HTTP/1.1\r\nHost: we".to_owned(),
        ),
    ] {
        let mut stream = tokio::net::TcpStream::connect(app.addr)
            .await
            .expect("tcp connects");
        stream.write_all(request.as_bytes()).await.expect("sent");
        // The request is never finished: the server answers and closes by itself.
        let mut response = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
            .await
            .unwrap_or_else(|_| panic!("{what}: the server closes the connection"))
            .expect("read");
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 408"), "{what}: {response}");
    }
}

/// A plain HTTP connection serves one request and is closed (no keep-alive: a later request's
/// head would have no deadline).
#[tokio::test]
async fn plain_http_connection_serves_one_request() {
    let app = spawn_app().await;
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("tcp connects");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: weft\r\n\r\n")
        .await
        .expect("sent");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("the server closes the connection")
        .expect("read");
    let response = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(response.contains("connection: close"), "{response}");
}

/// A text frame of `size` bytes: a patch whose padding field fills it up.
fn frame_of(size: usize, id: &str) -> String {
    let empty = doc_patch(id, json!([{"e/S": {"_exists": true, "pad": ""}}])).to_string();
    let pad = "p".repeat(size - empty.len());
    let text = doc_patch(id, json!([{"e/S": {"_exists": true, "pad": pad}}])).to_string();
    assert_eq!(text.len(), size);
    text
}

/// A frame up to `max_frame_bytes` is accepted; one byte more closes the socket with 1009 and a
/// reason giving the limit, and is not applied.
#[tokio::test]
async fn frame_over_max_frame_bytes_closes_with_1009() {
    let mut settings = test_settings();
    settings.limits.max_frame_bytes = 1024;
    let app = spawn_app_with(settings).await;
    let room = "l-frame";
    let (mut a, _) = app.join(room, "a").await;
    a.send_text(frame_of(1024, "fits")).await;
    assert_eq!(a.recv().await, ack("fits", 1));
    let (mut b, _) = app.join(room, "b").await;
    assert_eq!(a.recv().await, count(2));
    b.send_text(frame_of(1025, "big")).await;
    assert_eq!(
        b.closed().await,
        (
            CloseCode::Size,
            "message too big: limit is 1024 bytes".to_owned()
        )
    );
    assert_eq!(a.recv().await, count(1));
    assert_eq!(app.metric("weft_frames_oversized").await, 1);
    assert_eq!(app.document(room).await["timestamp"], 1);
    // A binary frame counts the same.
    let (mut c, _) = app.join(room, "c").await;
    c.send_message(Message::binary(frame_of(1500, "bin").into_bytes()))
        .await;
    assert_eq!(c.closed().await.0, CloseCode::Size);
    a.send(doc_patch("after", json!([{"e/S": {"x": 1}}]))).await;
    assert_eq!(a.recv_until("ack").await.last(), Some(&ack("after", 2)));
}

/// Sends `text` as a fragmented message of `parts` frames.
async fn send_fragmented(c: &mut Client, text: &str, parts: usize) {
    let bytes = text.as_bytes();
    let chunk = bytes.len().div_ceil(parts);
    let pieces: Vec<&[u8]> = bytes.chunks(chunk).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let last = i + 1 == pieces.len();
        c.send_message(Message::Frame(Frame::message(piece.to_vec(), opcode, last)))
            .await;
    }
}

/// A message split into continuation frames is joined and handled as one frame when the whole
/// fits in `max_frame_bytes`.
#[tokio::test]
async fn fragmented_message_within_the_limit_is_joined() {
    let mut settings = test_settings();
    settings.limits.max_frame_bytes = 1024;
    let app = spawn_app_with(settings).await;
    let (mut a, _) = app.join("l-fragments", "a").await;
    send_fragmented(&mut a, &frame_of(900, "joined"), 3).await;
    assert_eq!(a.recv().await, ack("joined", 1));
}

/// A message whose continuation frames are each small but together exceed `max_frame_bytes` is
/// refused like one big frame: 1009 with the limit in the reason, counted as oversized.
#[tokio::test]
async fn fragmented_message_over_the_limit_closes_with_1009() {
    let mut settings = test_settings();
    settings.limits.max_frame_bytes = 1024;
    let app = spawn_app_with(settings).await;
    let room = "l-fragments-big";
    let (mut a, _) = app.join(room, "a").await;
    let (mut b, _) = app.join(room, "b").await;
    assert_eq!(a.recv().await, count(2));
    send_fragmented(&mut b, &frame_of(1500, "big"), 3).await;
    assert_eq!(
        b.close_or_error().await,
        Ok((
            CloseCode::Size,
            "message too big: limit is 1024 bytes".to_owned()
        ))
    );
    assert_eq!(a.recv().await, count(1));
    assert_eq!(app.metric("weft_frames_oversized").await, 1);
    assert_eq!(app.document(room).await["timestamp"], 0);
}

/// Sends `part` as the first fragment of a text message (not finished), then a ping, and waits
/// for its pong: the server has read the fragment.
async fn send_first_fragment(c: &mut Client, part: &str) {
    c.send_message(Message::Frame(Frame::message(
        part.as_bytes().to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await;
    c.send_message(Message::Ping(b"sync".to_vec().into())).await;
    loop {
        let msg = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("the pong within the wait");
        match msg {
            Some(Ok(Message::Pong(payload))) if payload.as_ref() == b"sync" => return,
            Some(Ok(_)) => continue,
            other => panic!("expected the pong, got {other:?}"),
        }
    }
}

/// A fragmented message left unfinished is dropped `message_assembly_timeout_ms` after its
/// first bytes, with close 1008 and a reason, although the client keeps answering the server's
/// pings; nothing of it is applied.
#[tokio::test]
async fn unfinished_fragmented_message_is_dropped_at_its_deadline() {
    let mut settings = test_settings();
    settings.limits.message_assembly_timeout_ms = 300;
    // Pings keep coming (and are answered): only the deadline can end the connection.
    settings.limits.heartbeat_interval_ms = 50;
    settings.limits.heartbeat_timeout_ms = 60_000;
    let app = spawn_app_with(settings).await;
    let room = "l-assembly-deadline";
    let (mut a, _) = app.join(room, "a").await;
    send_first_fragment(&mut a, &frame_of(600, "never")[..300]).await;
    assert_eq!(
        a.closed().await,
        (
            CloseCode::Policy,
            "message not completed within 300 ms".to_owned()
        )
    );
    assert_eq!(app.document(room).await["timestamp"], 0);
}

/// While one client's unfinished message holds `assembly_budget_bytes`, another client's
/// unfinished message is refused before it is buffered: close 1013 (try again later). The
/// first message completes normally, and afterwards the budget is free again.
#[tokio::test]
async fn exhausted_assembly_budget_refuses_another_unfinished_message() {
    let mut settings = test_settings();
    settings.limits.assembly_budget_bytes = 1000;
    let app = spawn_app_with(settings).await;
    let room = "l-assembly-budget";
    let (mut a, _) = app.join(room, "a").await;
    let (mut b, _) = app.join(room, "b").await;
    assert_eq!(a.recv().await, count(2));
    let first = frame_of(1000, "a1");
    send_first_fragment(&mut a, &first[..800]).await;
    b.send_message(Message::Frame(Frame::message(
        frame_of(400, "b1").as_bytes()[..300].to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await;
    assert_eq!(
        b.closed().await,
        (
            CloseCode::Again,
            "server busy: no room for unfinished messages, retry later".to_owned()
        )
    );
    a.send_message(Message::Frame(Frame::message(
        first.as_bytes()[800..].to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await;
    assert_eq!(a.recv_until("ack").await.last(), Some(&ack("a1", 1)));
    let (mut c, _) = app.join(room, "c").await;
    send_fragmented(&mut c, &frame_of(900, "c1"), 3).await;
    assert_eq!(c.recv_until("ack").await.last(), Some(&ack("c1", 2)));
}

/// A client with a small receive buffer, so the kernel absorbs little of what the server
/// sends it while it does not read.
async fn connect_slow_reader(app: &TestApp, room: &str, client: &str) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(app.addr).await.expect("tcp connects");
    let (ws, _) = tokio_tungstenite::client_async(
        app.url(&format!("roomId={room}&clientId={client}")),
        MaybeTlsStream::Plain(stream),
    )
    .await
    .expect("upgrade");
    Client { ws }
}

/// Settings where a reader that stops reading is soon too slow, and a joined client `fast`
/// with a reader `slow` in `room` whose socket takes little before the server's queue fills.
async fn writer_and_slow_reader(
    heartbeat_timeout_ms: u64,
    room: &str,
) -> (TestApp, Client, Client) {
    let mut settings = test_settings();
    settings.limits.outbound_queue_bytes = 512 * 1024;
    settings.limits.messages_per_second = 100_000.0;
    settings.limits.message_burst = 100_000;
    settings.limits.heartbeat_timeout_ms = heartbeat_timeout_ms;
    let app = spawn_app_with(settings).await;
    let (mut fast, _) = app.join(room, "fast").await;
    let mut slow = connect_slow_reader(&app, room, "slow").await;
    slow.send(reconnect(0)).await;
    slow.recv_until("synced").await;
    assert_eq!(fast.recv().await, count(2));
    (app, fast, slow)
}

/// `fast` sends large patches, each acked, until the room reports the slow reader gone
/// (`clientCount` 1); returns the room clock (every ack read).
async fn flood_until_the_slow_reader_is_dropped(fast: &mut Client) -> u64 {
    let blob = "x".repeat(64 * 1024);
    let started = Instant::now();
    let mut clock = 0;
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "slow reader still connected after {clock} patches"
        );
        clock += 1;
        let id = format!("m{clock}");
        fast.send(doc_patch(
            &id,
            json!([{"e/S": {"_exists": true, "blob": blob}}]),
        ))
        .await;
        let mut dropped = false;
        loop {
            let frame = fast.recv().await;
            if frame == count(1) {
                dropped = true;
            } else {
                assert_eq!(frame, ack(&id, clock));
                break;
            }
        }
        if dropped {
            return clock;
        }
    }
}

/// A client that never reads, while another floods large patches, is closed with 1013 once its
/// outbound queue is full; the writer keeps getting its acks throughout and after.
#[tokio::test]
async fn slow_reader_is_closed_with_1013_and_the_writer_keeps_going() {
    let room = "l-slow";
    let (app, mut fast, mut slow) = writer_and_slow_reader(45_000, room).await;
    let clock = flood_until_the_slow_reader_is_dropped(&mut fast).await;
    fast.send(doc_patch("after", json!([{"e/S": {"n": 1}}])))
        .await;
    let frames = fast.recv_until("ack").await;
    assert_eq!(frames.last(), Some(&ack("after", clock + 1)));
    assert_eq!(app.metric("weft_slow_clients_disconnected").await, 1);
    assert_eq!(app.sessions(room).await.len(), 1);
    assert_eq!(
        slow.closed().await,
        (
            CloseCode::Again,
            "client too slow: outbound queue full".to_owned()
        )
    );
}

/// A reader closed for slowness that still does not read loses its socket within the closing
/// handshake's few seconds, not after the (here 10-minute) heartbeat timeout: its connection
/// stops waiting on the stuck write as soon as the room closes it.
#[tokio::test]
async fn slow_reader_socket_is_dropped_without_waiting_for_the_heartbeat_timeout() {
    let (app, mut fast, _slow) = writer_and_slow_reader(600_000, "l-stuck").await;
    flood_until_the_slow_reader_is_dropped(&mut fast).await;
    // The closing handshake gives a peer 5 s to take the close frame.
    let deadline = Instant::now() + Duration::from_secs(15);
    while app.metric("weft_connections_active").await != 1 {
        assert!(Instant::now() < deadline, "the stuck socket is still open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With a 100 ms heartbeat and a 300 ms timeout, a client that never answers pings is closed
/// with 1001 `heartbeat timeout` and counted; a client that answers them stays connected.
#[tokio::test]
async fn client_that_does_not_answer_pings_is_closed() {
    let mut settings = test_settings();
    settings.limits.heartbeat_interval_ms = 100;
    settings.limits.heartbeat_timeout_ms = 300;
    let app = spawn_app_with(settings).await;
    let room = "l-heartbeat";
    let (mut live, _) = app.join(room, "live").await;
    // The server last hears from `mute` after this instant (its `reconnect`); it is never polled
    // after its handshake, so its pings are never answered.
    let started = Instant::now();
    let (mut mute, _) = app.join(room, "mute").await;
    assert_eq!(live.recv().await, count(2));
    assert_eq!(live.recv().await, count(1));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(app.metric("weft_heartbeat_timeouts").await, 1);
    assert_eq!(
        mute.closed().await,
        (CloseCode::Away, "heartbeat timeout".to_owned())
    );
    // `live` has been answering pings all along (tungstenite answers while polled).
    assert!(live.silent_for(Duration::from_millis(800)).await);
    live.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    assert_eq!(live.recv().await, ack("m1", 1));
    assert_eq!(app.metric("weft_heartbeat_timeouts").await, 1);
}

/// A client that only sends frames (and never reads pongs or pings) counts as alive: any inbound
/// frame resets the heartbeat.
#[tokio::test]
async fn inbound_frames_keep_a_connection_alive() {
    let mut settings = test_settings();
    settings.limits.heartbeat_interval_ms = 100;
    settings.limits.heartbeat_timeout_ms = 300;
    let app = spawn_app_with(settings).await;
    let (mut c, _) = app.join("l-heartbeat-frames", "c").await;
    let until = Instant::now() + Duration::from_millis(900);
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        c.send(json!({"type": "patch", "messageId": format!("e{n}"), "ephemeralPatches": [{"c/c": {"_exists": true, "n": n}}]}))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every presence patch was acked, in order, and the socket is still open.
    for i in 1..=n {
        assert_eq!(c.recv().await, ack(&format!("e{i}"), 0));
    }
    assert!(c.silent_for(QUIET).await);
    assert_eq!(app.metric("weft_heartbeat_timeouts").await, 0);
}

/// Binary frames that are not UTF-8 are still messages: they count against the rate limit, so
/// a client cannot flood them for free.
#[tokio::test]
async fn invalid_binary_frames_count_against_the_rate_limit() {
    let mut settings = test_settings();
    settings.limits.messages_per_second = 5.0;
    settings.limits.message_burst = 5;
    let app = spawn_app_with(settings).await;
    let mut c = app.connect("l-rate-binary", "c").await;
    assert_eq!(c.recv().await, count(1));
    for _ in 0..20 {
        c.send_message(Message::binary(vec![0xff, 0xfe, 0xfd]))
            .await;
    }
    c.send(doc_patch("m1", json!([{"e/S": {"_exists": true}}])))
        .await;
    let first = tokio::time::timeout(WAIT, c.ws.next())
        .await
        .expect("a frame within the wait")
        .expect("a frame")
        .expect("no error");
    assert_eq!(
        first,
        Message::Close(Some(CloseFrame {
            code: CloseCode::Policy,
            reason: "rate limit exceeded".into()
        })),
        "the sixth message must close the socket, not be handled"
    );
    assert_eq!(app.metric("weft_rate_limited").await, 1);
}

/// Sends `frames` in one write (the server finds them all at once), without reading.
async fn send_at_once(client: &mut Client, frames: impl IntoIterator<Item = Value>) {
    for frame in frames {
        client
            .ws
            .feed(Message::text(frame.to_string()))
            .await
            .expect("frame queued");
    }
    client.ws.flush().await.expect("frames sent");
}

/// A room whose document took `writes` patches of `blob_bytes` each (clock = `writes`).
async fn room_with_large_writes(app: &TestApp, room: &str, writes: usize, blob_bytes: usize) {
    let (mut writer, _) = app.join(room, "writer").await;
    for i in 0..writes {
        let blob = format!("{i:04}").repeat(blob_bytes / 4);
        writer
            .send(doc_patch(
                &format!("w{i}"),
                json!([{ format!("e/{i}"): {"_exists": true, "blob": blob} }]),
            ))
            .await;
        writer.recv_until("ack").await;
    }
    writer.leave().await;
}

/// A socket that sends 150 `reconnect`s at once on a large document and does not read gets the
/// document once: one diff and 150 `synced` (it is not closed, and nothing more is queued).
#[tokio::test]
async fn reconnect_flood_from_a_reader_that_does_not_read_queues_the_document_once() {
    let mut settings = test_settings();
    settings.limits.messages_per_second = 100_000.0;
    settings.limits.message_burst = 100_000;
    let app = spawn_app_with(settings).await;
    let room = "l-reconnect-flood";
    room_with_large_writes(&app, room, 4, 200_000).await;
    let mut flood = connect_slow_reader(&app, room, "flood").await;
    send_at_once(&mut flood, (0..150).map(|_| reconnect(0))).await;
    let mut diffs = 0;
    let mut synced = 0;
    while synced < 150 {
        let frame = flood.recv().await;
        match frame["type"].as_str() {
            Some("patch") => {
                assert_eq!(
                    frame["documentPatches"][0].as_object().map(|d| d.len()),
                    Some(4)
                );
                diffs += 1;
            }
            Some("synced") => {
                assert_eq!(frame, synced_at(4));
                synced += 1;
            }
            _ => {}
        }
    }
    assert_eq!(diffs, 1, "one diff for 150 reconnects");
    assert!(flood.silent_for(QUIET).await);
    assert_eq!(app.metric("weft_slow_clients_disconnected").await, 0);
}

/// `reconnect`s that each need a new diff (from ever older timestamps) to a socket that does
/// not read fill its outbound queue by bytes, not by frame count: the session is closed with
/// 1013 once the diffs waiting for it pass `outbound_queue_bytes`, long before 1024 frames.
#[tokio::test]
async fn diffs_waiting_for_a_reader_that_does_not_read_are_capped_in_bytes() {
    let mut settings = test_settings();
    settings.limits.outbound_queue_bytes = 1 << 20;
    settings.limits.messages_per_second = 100_000.0;
    settings.limits.message_burst = 100_000;
    let app = spawn_app_with(settings).await;
    let room = "l-reconnect-bytes";
    room_with_large_writes(&app, room, 40, 64 * 1024).await;
    let mut flood = connect_slow_reader(&app, room, "flood").await;
    // 40 diffs of 64 KiB to 2.5 MiB each: 52 MiB in 80 frames.
    send_at_once(&mut flood, (0..40).rev().map(reconnect)).await;
    let app_ref = &app;
    eventually("the reader is closed as too slow", || async move {
        app_ref.metric("weft_slow_clients_disconnected").await == 1
    })
    .await;
    let (_, close) = flood.frames_until_close().await;
    assert_eq!(
        close,
        (
            CloseCode::Again,
            "client too slow: outbound queue full".to_owned()
        )
    );
}

/// With RocksDB (an ack waits for the write-ahead log), a client that exceeds the rate limit
/// gets an ack for every write the server applied before the 1008 close, and nothing else.
#[tokio::test]
async fn rate_limited_client_gets_the_ack_of_every_applied_write_with_rocksdb() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = test_settings();
    settings.storage = weft::storage::StorageKind::Rocksdb;
    settings.data_dir = dir.path().to_path_buf();
    settings.limits.messages_per_second = 1.0;
    settings.limits.message_burst = 199;
    let app = spawn_app_with(settings).await;
    let room = "l-rate-rocksdb";
    let mut c = app.connect(room, "c").await;
    assert_eq!(c.recv().await, count(1));
    let patches = (1..=200).map(|i| {
        doc_patch(
            &format!("m{i}"),
            json!([{"e/S": {"_exists": true, "i": i}}]),
        )
    });
    send_at_once(&mut c, patches).await;
    let (frames, close) = c.frames_until_close().await;
    assert_eq!(close, (CloseCode::Policy, "rate limit exceeded".to_owned()));
    let doc = app.document(room).await;
    let applied = doc["timestamp"].as_u64().expect("clock");
    assert_eq!(applied, 199, "the burst is applied, the 200th is not");
    let acks: Vec<Value> = (1..=applied).map(|i| ack(&format!("m{i}"), i)).collect();
    assert_eq!(
        frames, acks,
        "every applied write is acked before the close"
    );
}
