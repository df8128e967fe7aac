//! `battle`: the "Full Example" of the EdgeBase Rooms server guide, written against weft's
//! [`RoomLogic`] trait. Differences are only where the guide calls into EdgeBase services weft
//! does not have: `onDestroy` logs the result instead of inserting it into a database table.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::protocols::game::{
    HandlerError, HandlerResult, LeaveReason, LogicFactory, NamespaceOptions, RoomContext,
    RoomLogic, Sender, StateError,
};

pub fn options() -> NamespaceOptions {
    NamespaceOptions {
        max_players: 10,
        max_state_size: 512 * 1024,
        reconnect_timeout: Duration::from_secs(15),
        actions_per_second: 20,
        state_save_interval: Duration::from_secs(30),
        state_ttl: Duration::from_secs(2 * 3600),
        ..NamespaceOptions::default()
    }
}

pub fn factory() -> LogicFactory {
    std::sync::Arc::new(|| Box::new(Battle) as Box<dyn RoomLogic>)
}

/// The turn timer `NEXT_ROUND` starts.
pub const TURN: Duration = Duration::from_secs(30);

struct Battle;

fn int(value: &Value) -> i64 {
    value.as_i64().unwrap_or(0)
}

/// `Math.random()`: a float in [0, 1) from the OS random source behind UUIDs.
fn random() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u64_pair().0 >> 11;
    bits as f64 / (1u64 << 53) as f64
}

fn adjust_player_count(room: &mut RoomContext, by: i64) -> Result<(), StateError> {
    let mut meta = room.metadata().clone();
    meta["playerCount"] = json!((int(&meta["playerCount"]) + by).max(0));
    room.set_metadata(meta)
}

#[async_trait]
impl RoomLogic for Battle {
    async fn on_create(&mut self, room: &mut RoomContext, _options: &Value) -> HandlerResult {
        room.set_shared(|s| *s = json!({"round": 0, "phase": "waiting", "players": []}))?;
        room.set_server_state(|s| *s = json!({"seed": random()}))?;
        room.set_metadata(json!({"mode": "battle", "playerCount": 0}))?;
        Ok(())
    }

    async fn on_join(
        &mut self,
        room: &mut RoomContext,
        sender: &Sender,
        _options: &Value,
    ) -> HandlerResult {
        if sender.role == "banned" {
            return Err("You are banned".into());
        }
        let id = sender.user_id.clone();
        room.set_shared(|s| {
            let mut players = s["players"].as_array().cloned().unwrap_or_default();
            players.push(json!({"id": id}));
            s["players"] = Value::Array(players);
        })?;
        room.set_player(&sender.user_id, |p| {
            *p = json!({"hp": 100, "position": {"x": 0, "y": 0}})
        })?;
        adjust_player_count(room, 1)?;
        Ok(())
    }

    async fn on_leave(
        &mut self,
        room: &mut RoomContext,
        sender: &Sender,
        reason: LeaveReason,
    ) -> HandlerResult {
        let id = sender.user_id.clone();
        room.set_shared(|s| {
            let players: Vec<Value> = s["players"]
                .as_array()
                .map(|p| p.iter().filter(|p| p["id"] != json!(id)).cloned().collect())
                .unwrap_or_default();
            s["players"] = Value::Array(players);
            s["lastLeave"] = json!({"userId": id, "reason": reason.as_str()});
        })?;
        adjust_player_count(room, -1)?;
        Ok(())
    }

    async fn on_destroy(&mut self, room: &mut RoomContext) -> HandlerResult {
        let state = room.shared();
        tracing::info!(
            room = room.room_id(),
            round = %state["round"],
            final_score = %state["score"],
            "battle finished (game_results)"
        );
        Ok(())
    }

    async fn on_timer(
        &mut self,
        room: &mut RoomContext,
        name: &str,
        _data: Value,
    ) -> HandlerResult {
        if name == "turnEnd" {
            room.set_shared(|s| {
                s["round"] = json!(int(&s["round"]) + 1);
                s["phase"] = json!("waiting");
            })?;
            let round = room.shared()["round"].clone();
            room.send_message("turn_ended", json!({"round": round}), &[]);
        }
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
            "ATTACK" => {
                let damage = 10;
                let target = payload["targetId"]
                    .as_str()
                    .ok_or("ATTACK needs a targetId")?
                    .to_owned();
                room.set_player(&target, |p| {
                    p["hp"] = json!((int(&p["hp"]) - damage).max(0));
                })?;
                room.send_message(
                    "player_attacked",
                    json!({"attacker": sender.user_id, "target": target, "damage": damage}),
                    &[&sender.user_id],
                );
                Ok(json!({"damage": damage}))
            }
            "MOVE" => {
                let (x, y) = (payload["x"].clone(), payload["y"].clone());
                room.set_player(&sender.user_id, |p| {
                    p["position"] = json!({"x": x, "y": y});
                })?;
                Ok(json!({"moved": true}))
            }
            "NEXT_ROUND" => {
                room.set_shared(|s| {
                    s["round"] = json!(int(&s["round"]) + 1);
                    s["phase"] = json!("playing");
                })?;
                room.set_timer("turnEnd", TURN, Value::Null)?;
                Ok(Value::Null)
            }
            "CRITICAL_UPDATE" => {
                let Value::Object(fields) = payload else {
                    return Err("CRITICAL_UPDATE needs an object payload".into());
                };
                room.set_shared(|s| {
                    if let Value::Object(state) = s {
                        state.extend(fields);
                    }
                })?;
                room.save_state()
                    .await
                    .map_err(|e| HandlerError::new(format!("saving failed: {e}")))?;
                Ok(Value::Null)
            }
            "KICK_PLAYER" => {
                if sender.role != "admin" {
                    return Err("Not authorized".into());
                }
                let target = payload["userId"]
                    .as_str()
                    .ok_or("KICK_PLAYER needs a userId")?;
                room.kick(target);
                Ok(Value::Null)
            }
            other => Err(HandlerError::no_handler(other)),
        }
    }
}
