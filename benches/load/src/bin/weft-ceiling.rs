//! `weft-ceiling`: a bare WebSocket broadcast server, the throughput ceiling for weft.
//!
//! tokio + tokio-tungstenite and nothing else: no document, no validation, no storage, no
//! limits. It speaks just enough of the canvas-store protocol for `weft-load` to run unchanged:
//! `reconnect` is answered with `synced`, each `patch` is relayed to the other sockets of its room
//! (`roomId` query parameter) in weft's broadcast shape and acked to the sender. Whatever weft
//! spends beyond this is the cost of its logic.
//!
//! ```text
//! weft-ceiling --addr 127.0.0.1:0      # prints `listening on ADDR`
//! ```

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[derive(Parser)]
#[command(about = "Bare WebSocket broadcast server: the ceiling weft is measured against")]
struct Args {
    /// Listen address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8788")]
    addr: SocketAddr,
}

type Outbound = mpsc::UnboundedSender<Utf8Bytes>;

/// A room: its clock (so acks and broadcasts carry timestamps like weft's) and its sockets.
#[derive(Default)]
struct Room {
    clock: u64,
    peers: Vec<(u64, Outbound)>,
}

#[derive(Default)]
struct Server {
    rooms: Mutex<HashMap<String, Arc<Mutex<Room>>>>,
    next_id: AtomicU64,
}

/// The fields of a client frame this server looks at; patches stay raw text for relaying.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(rename = "messageId", borrow, default)]
    message_id: Option<&'a RawValue>,
    #[serde(rename = "documentPatches", borrow, default)]
    document: Option<&'a RawValue>,
    #[serde(rename = "ephemeralPatches", borrow, default)]
    ephemeral: Option<&'a RawValue>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.addr).await?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let server = Arc::new(Server::default());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: keep serving the connections we have.
            Err(_) => continue,
        };
        tokio::spawn(connection(server.clone(), stream));
    }
}

// The handshake callback's `Result<Response, ErrorResponse>` is tungstenite's signature.
#[allow(clippy::result_large_err)]
async fn connection(server: Arc<Server>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut query = String::new();
    let capture = |req: &Request, resp: Response| {
        query = req.uri().query().unwrap_or_default().to_owned();
        Ok(resp)
    };
    // tungstenite's default 128 KiB read buffer per socket would dwarf everything else an idle
    // connection costs; small frames need a few KiB (the buffer grows for larger ones).
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, capture, Some(config)).await
    else {
        return;
    };
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
            .unwrap_or_default()
    };
    let (room_id, client_id) = (param("roomId"), param("clientId"));
    let id = server.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel::<Utf8Bytes>();
    // Joins and leaves lock the room map first, so a leave that drops an empty room cannot
    // race a join into the dropped room.
    let room = {
        let mut rooms = server.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let room = rooms.entry(room_id.clone()).or_default().clone();
        let mut r = room.lock().unwrap_or_else(|e| e.into_inner());
        r.peers.push((id, tx.clone()));
        client_count(&r);
        drop(r);
        room
    };
    let (mut sink, mut stream) = ws.split();
    // Writer: drains the queue, writing everything queued before one flush (fewer syscalls).
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink.feed(Message::Text(frame)).await.is_err() {
                return;
            }
            while let Ok(frame) = rx.try_recv() {
                if sink.feed(Message::Text(frame)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        let text = match msg {
            Message::Text(text) => text,
            Message::Close(_) => break,
            _ => continue,
        };
        let Ok(frame) = serde_json::from_str::<Frame<'_>>(&text) else {
            continue;
        };
        match frame.kind {
            "reconnect" => {
                let clock = room.lock().unwrap_or_else(|e| e.into_inner()).clock;
                let _ = tx.send(format!(r#"{{"type":"synced","timestamp":{clock}}}"#).into());
            }
            "patch" if frame.document.is_some() || frame.ephemeral.is_some() => {
                relay(&room, id, &tx, &client_id, &frame);
            }
            _ => {}
        }
    }
    {
        let mut rooms = server.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let mut r = room.lock().unwrap_or_else(|e| e.into_inner());
        r.peers.retain(|(peer, _)| *peer != id);
        client_count(&r);
        if r.peers.is_empty() {
            rooms.remove(&room_id);
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Broadcasts a patch to the room's other sockets and acks it, under the room lock so every
/// socket sees one order (as weft guarantees).
fn relay(room: &Mutex<Room>, sender: u64, ack_to: &Outbound, client_id: &str, frame: &Frame<'_>) {
    let mut r = room.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = String::with_capacity(128);
    out.push_str(r#"{"type":"patch""#);
    if let Some(doc) = frame.document {
        r.clock += 1;
        out.push_str(r#","documentPatches":"#);
        out.push_str(doc.get());
    }
    if let Some(eph) = frame.ephemeral {
        out.push_str(r#","ephemeralPatches":"#);
        out.push_str(eph.get());
    }
    // Client ids from the query are used unescaped: weft-load's are plain alphanumerics.
    out.push_str(r#","clientId":""#);
    out.push_str(client_id);
    out.push('"');
    if frame.document.is_some() {
        out.push_str(&format!(r#","timestamp":{}"#, r.clock));
    }
    out.push('}');
    let broadcast = Utf8Bytes::from(out);
    for (peer, tx) in &r.peers {
        if *peer != sender {
            let _ = tx.send(broadcast.clone());
        }
    }
    let id = frame.message_id.map_or("\"\"", |m| m.get());
    let ack = format!(
        r#"{{"type":"ack","messageId":{id},"timestamp":{}}}"#,
        r.clock
    );
    let _ = ack_to.send(ack.into());
}

fn client_count(room: &Room) {
    let frame = Utf8Bytes::from(format!(
        r#"{{"type":"clientCount","count":{}}}"#,
        room.peers.len()
    ));
    for (_, tx) in &room.peers {
        let _ = tx.send(frame.clone());
    }
}
