//! A custom game server built on weft as a library: two namespaces of its own, in-memory storage,
//! served until Ctrl-C.
//!
//! ```text
//! cargo run --example custom_server            # listens on 127.0.0.1:8787
//! cargo run --example custom_server -- 0.0.0.0:9000
//! ```
//!
//! Clients (the EdgeBase room SDKs) connect to `ws://ADDR/api/room?namespace=counter&id=ROOM`.
//! With no EdgeBase secret configured and auth mode `none` (the default settings), any token is
//! accepted and its `sub` is the user id: development only; set `settings.auth.edgebase_secret`
//! in production.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use weft::app::{run_until_signal, ServerBuilder};
use weft::config::{LogFormat, Settings};
use weft::protocols::game::{
    HandlerError, HandlerResult, LeaveReason, NamespaceOptions, RoomBuilder, RoomContext,
    RoomLogic, Sender,
};
use weft::storage::MemoryStorage;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    weft::telemetry::init(LogFormat::Text);
    let mut settings = Settings::default();
    if let Some(addr) = std::env::args().nth(1) {
        settings.addr = addr.parse()?;
    }

    // 1. A small room from closures: a shared counter anyone can increment.
    let counter = RoomBuilder::new()
        .on_create(|room, _options| {
            room.set_shared(|s| *s = json!({"count": 0}))?;
            Ok(())
        })
        .on_action("INCREMENT", |room, _sender, payload| {
            let by = payload["by"].as_i64().unwrap_or(1).clamp(1, 10);
            room.set_shared(|s| s["count"] = json!(s["count"].as_i64().unwrap_or(0) + by))?;
            Ok(room.shared()["count"].clone())
        });

    let builder = ServerBuilder::new(settings)
        // Rooms live in memory only; drop this line to use the configured storage (RocksDB).
        .storage(Arc::new(MemoryStorage::default()))
        .namespace(
            "counter",
            NamespaceOptions {
                max_players: 8,
                ..NamespaceOptions::default()
            },
            counter.into_factory(),
        )?
        // 2. A room from the RoomLogic trait: a chat with a short history.
        .namespace(
            "chat",
            NamespaceOptions {
                max_players: 50,
                reconnect_timeout: Duration::from_secs(10),
                ..NamespaceOptions::default()
            },
            Arc::new(|| Box::new(Chat::default()) as Box<dyn RoomLogic>),
        )?;

    // Builds, binds, prints `listening on ADDR`, serves until Ctrl-C, saves every room, exits.
    run_until_signal(builder).await
}

/// Each room gets its own `Chat` (so in-memory fields are per room); what must survive a restart
/// goes in the room's state instead.
#[derive(Default)]
struct Chat {
    /// Messages said since this room was loaded (in memory only).
    said: u64,
}

const HISTORY: usize = 20;

#[async_trait]
impl RoomLogic for Chat {
    async fn on_create(&mut self, room: &mut RoomContext, _options: &Value) -> HandlerResult {
        room.set_shared(|s| *s = json!({"history": []}))?;
        room.set_metadata(json!({"mode": "chat", "players": 0}))?;
        Ok(())
    }

    async fn on_join(
        &mut self,
        room: &mut RoomContext,
        sender: &Sender,
        options: &Value,
    ) -> HandlerResult {
        // The join gate: an error refuses the join with JOIN_DENIED and this message.
        let name = options["name"]
            .as_str()
            .unwrap_or(&sender.user_id)
            .to_owned();
        if name.is_empty() || name.len() > 32 {
            return Err("name must be 1 to 32 characters".into());
        }
        room.set_player(&sender.user_id, |p| *p = json!({"name": name}))?;
        room.set_metadata(json!({"mode": "chat", "players": room.player_count()}))?;
        room.send_message("joined", json!({"name": name}), &[&sender.user_id]);
        Ok(())
    }

    async fn on_leave(
        &mut self,
        room: &mut RoomContext,
        sender: &Sender,
        reason: LeaveReason,
    ) -> HandlerResult {
        room.set_metadata(json!({"mode": "chat", "players": room.player_count()}))?;
        room.broadcast(
            "left",
            json!({"userId": sender.user_id, "reason": reason.as_str()}),
        );
        Ok(())
    }

    async fn on_action(
        &mut self,
        room: &mut RoomContext,
        sender: &Sender,
        action: &str,
        payload: Value,
    ) -> HandlerResult<Value> {
        match action {
            "SAY" => {
                let text = payload["text"]
                    .as_str()
                    .filter(|t| !t.is_empty() && t.len() <= 500)
                    .ok_or("SAY needs {\"text\": \"...\"} (1 to 500 bytes)")?;
                let name = room
                    .player(&sender.user_id)
                    .map_or(Value::Null, |p| p["name"].clone());
                let line = json!({"from": name, "text": text});
                room.set_shared(|s| {
                    let history = s["history"].as_array_mut();
                    if let Some(history) = history {
                        history.push(line);
                        let excess = history.len().saturating_sub(HISTORY);
                        history.drain(..excess);
                    }
                })?;
                self.said += 1;
                Ok(json!({"said": self.said}))
            }
            other => Err(HandlerError::no_handler(other)),
        }
    }
}
