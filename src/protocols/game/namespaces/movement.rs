//! `movement`: real-time movement on the Colyseus room model: a **simulation tick** (every 50 ms)
//! integrates every moving player's position, and the **patch rate** (100 ms) batches the
//! resulting deltas; a **clock interval** updates `elapsedSeconds` once a second.
//!
//! - Action `INPUT {dx, dy}` (each -1..1; a longer vector is scaled to length 1): the player's
//!   velocity direction, kept in server state (`{dx: 0, dy: 0}` stops).
//! - Shared state: `{positions: {<userId>: {x, y}}, tick, elapsedSeconds}` in a 1000 x 1000
//!   world, 100 units per second at full input.
//!
//! Per-frame work: one read of the moving players' velocities, and one `set_shared` for the
//! whole step (every `set_shared` call copies and re-measures the shared state, so a tick never
//! makes one call per player). Players standing still cost nothing but the `tick` counter.
//!
//! The tick, patch rate and clock live in memory, so `on_load` starts them every time the room is
//! loaded (new or restored from storage).

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::protocols::game::{
    HandlerError, HandlerResult, LeaveReason, LogicFactory, NamespaceOptions, RoomContext,
    RoomLogic, Sender,
};

/// Side of the square world.
pub const WORLD: f64 = 1000.0;
/// Units per second at full input.
pub const SPEED: f64 = 100.0;
pub const TICK: Duration = Duration::from_millis(50);
pub const PATCH_RATE: Duration = Duration::from_millis(100);
/// Longest step integrated at once (after a stall, players do not jump across the world).
const MAX_STEP: f64 = 0.25;

pub fn options() -> NamespaceOptions {
    NamespaceOptions {
        max_players: 64,
        reconnect_timeout: Duration::from_secs(5),
        // Clients send INPUT when their stick moves, not every frame.
        actions_per_second: 30,
        patch_rate: PATCH_RATE,
        state_ttl: Duration::from_secs(600),
        ..NamespaceOptions::default()
    }
}

pub fn factory() -> LogicFactory {
    std::sync::Arc::new(|| Box::new(Movement) as Box<dyn RoomLogic>)
}

/// The direction of an `INPUT`: `dx` and `dy` each in -1..1, scaled down to length 1 at most
/// (diagonals are not faster).
pub fn parse_input(payload: &Value) -> Result<(f64, f64), String> {
    let axis = |name: &str| {
        payload
            .get(name)
            .and_then(Value::as_f64)
            .filter(|v| (-1.0..=1.0).contains(v))
            .ok_or_else(|| format!("INPUT needs {name} as a number from -1 to 1"))
    };
    let (dx, dy) = (axis("dx")?, axis("dy")?);
    let len = (dx * dx + dy * dy).sqrt();
    Ok(if len > 1.0 {
        (dx / len, dy / len)
    } else {
        (dx, dy)
    })
}

/// One step: `pos + dir * SPEED * dt`, kept inside the world, rounded to 0.01 (smaller deltas).
pub fn integrate(pos: (f64, f64), dir: (f64, f64), dt: f64) -> (f64, f64) {
    let step = |p: f64, d: f64| {
        let next = (p + d * SPEED * dt).clamp(0.0, WORLD);
        (next * 100.0).round() / 100.0
    };
    (step(pos.0, dir.0), step(pos.1, dir.1))
}

/// The `n`th spawn point: a spiral around the centre (golden angle), so newcomers do not stack.
pub fn spawn_point(n: u64) -> (f64, f64) {
    const GOLDEN_ANGLE: f64 = 2.399_963_229_728_653;
    let radius = 40.0 * ((n % 100) as f64 + 1.0).sqrt();
    let angle = n as f64 * GOLDEN_ANGLE;
    let centre = WORLD / 2.0;
    (
        ((centre + radius * angle.cos()) * 100.0).round() / 100.0,
        ((centre + radius * angle.sin()) * 100.0).round() / 100.0,
    )
}

fn position(value: &Value) -> Option<(f64, f64)> {
    Some((value.get("x")?.as_f64()?, value.get("y")?.as_f64()?))
}

#[derive(Default)]
struct Movement;

#[async_trait]
impl RoomLogic for Movement {
    async fn on_load(&mut self, room: &mut RoomContext) -> HandlerResult {
        room.set_simulation_interval(Some(TICK));
        room.set_patch_rate(PATCH_RATE);
        // The Colyseus clock: in memory, once a second.
        room.set_interval(Duration::from_secs(1), |room| {
            let secs = room.elapsed().as_secs();
            if let Err(e) = room.set_shared(|s| s["elapsedSeconds"] = json!(secs)) {
                tracing::warn!(error = %e, "elapsedSeconds not updated");
            }
        });
        Ok(())
    }

    async fn on_create(&mut self, room: &mut RoomContext, _options: &Value) -> HandlerResult {
        room.set_shared(|s| *s = json!({"positions": {}, "tick": 0, "elapsedSeconds": 0}))?;
        room.set_server_state(|s| *s = json!({"velocities": {}, "spawned": 0}))?;
        room.set_metadata(json!({"mode": "movement", "players": 0}))?;
        Ok(())
    }

    async fn on_join(
        &mut self,
        room: &mut RoomContext,
        sender: &Sender,
        _options: &Value,
    ) -> HandlerResult {
        let n = room.server_state()["spawned"].as_u64().unwrap_or(0);
        let (x, y) = spawn_point(n);
        let id = sender.user_id.clone();
        room.set_shared(|s| s["positions"][id.as_str()] = json!({"x": x, "y": y}))?;
        room.set_server_state(|s| s["spawned"] = json!(n + 1))?;
        room.set_metadata(json!({"mode": "movement", "players": room.player_count()}))?;
        Ok(())
    }

    async fn on_leave(
        &mut self,
        room: &mut RoomContext,
        sender: &Sender,
        _reason: LeaveReason,
    ) -> HandlerResult {
        let id = sender.user_id.as_str();
        room.set_server_state(|s| {
            if let Some(v) = s["velocities"].as_object_mut() {
                v.remove(id);
            }
        })?;
        room.set_shared(|s| {
            if let Some(p) = s["positions"].as_object_mut() {
                p.remove(id);
            }
        })?;
        room.set_metadata(json!({"mode": "movement", "players": room.player_count()}))?;
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
            "INPUT" => {
                let (dx, dy) = parse_input(&payload)?;
                let id = sender.user_id.as_str();
                room.set_server_state(|s| {
                    if !s["velocities"].is_object() {
                        s["velocities"] = Value::Object(Map::new());
                    }
                    if let Some(v) = s["velocities"].as_object_mut() {
                        if dx == 0.0 && dy == 0.0 {
                            v.remove(id);
                        } else {
                            v.insert(id.to_owned(), json!([dx, dy]));
                        }
                    }
                })?;
                Ok(json!({"dx": dx, "dy": dy}))
            }
            other => Err(HandlerError::no_handler(other)),
        }
    }

    async fn on_tick(&mut self, room: &mut RoomContext, dt: Duration) -> HandlerResult {
        let dt = dt.as_secs_f64().min(MAX_STEP);
        // Only the moving players: read their velocity and position, compute the step.
        let mut moved: Vec<(String, (f64, f64))> = Vec::new();
        if let Some(velocities) = room.server_state()["velocities"].as_object() {
            let positions = &room.shared()["positions"];
            for (id, v) in velocities {
                let (Some(dx), Some(dy)) = (v[0].as_f64(), v[1].as_f64()) else {
                    continue;
                };
                let Some(pos) = position(&positions[id.as_str()]) else {
                    continue;
                };
                let next = integrate(pos, (dx, dy), dt);
                if next != pos {
                    moved.push((id.clone(), next));
                }
            }
        }
        // One state update for the whole step.
        room.set_shared(|s| {
            s["tick"] = json!(s["tick"].as_u64().unwrap_or(0) + 1);
            for (id, (x, y)) in moved {
                s["positions"][id.as_str()] = json!({"x": x, "y": y});
            }
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_validated_and_diagonals_are_normalised() {
        assert_eq!(parse_input(&json!({"dx": 1, "dy": 0})), Ok((1.0, 0.0)));
        assert_eq!(
            parse_input(&json!({"dx": -0.5, "dy": 0.25})),
            Ok((-0.5, 0.25))
        );
        let (dx, dy) = parse_input(&json!({"dx": 1, "dy": -1})).unwrap();
        assert!(((dx * dx + dy * dy).sqrt() - 1.0).abs() < 1e-9);
        assert!(dx > 0.0 && dy < 0.0);
        for bad in [
            json!({"dx": 2, "dy": 0}),
            json!({"dx": 0, "dy": -1.01}),
            json!({"dx": "1", "dy": 0}),
            json!({"dx": 0}),
            json!(null),
        ] {
            assert!(parse_input(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn integration_moves_at_speed_and_stays_in_the_world() {
        assert_eq!(integrate((500.0, 500.0), (1.0, 0.0), 0.05), (505.0, 500.0));
        assert_eq!(integrate((500.0, 500.0), (0.0, -0.5), 1.0), (500.0, 450.0));
        assert_eq!(integrate((998.0, 1.0), (1.0, -1.0), 0.5), (WORLD, 0.0));
        assert_eq!(integrate((10.0, 10.0), (0.0, 0.0), 0.05), (10.0, 10.0));
        // A second at 20 ticks lands where one 1-second step does.
        let mut p = (100.0, 100.0);
        for _ in 0..20 {
            p = integrate(p, (0.6, 0.8), 0.05);
        }
        assert_eq!(p, integrate((100.0, 100.0), (0.6, 0.8), 1.0));
    }

    #[test]
    fn spawn_points_are_inside_the_world_and_distinct() {
        let points: Vec<_> = (0..200).map(spawn_point).collect();
        for (i, p) in points.iter().enumerate() {
            assert!(
                (0.0..=WORLD).contains(&p.0) && (0.0..=WORLD).contains(&p.1),
                "{p:?}"
            );
            assert!(!points[..i].contains(p), "spawn point {i} repeats");
        }
    }
}
