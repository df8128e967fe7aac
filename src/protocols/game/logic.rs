//! A namespace's logic: the [`RoomLogic`] trait (every hook a no-op by default) and
//! [`RoomBuilder`], the same hooks as closures for small rooms.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::context::{RoomContext, StateError};
use super::sender::Sender;
use crate::protocols::game::wire::ErrorCode;

/// Why a player left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The client left on purpose (`leave` frame).
    Leave,
    /// The connection dropped and the reconnect grace period ran out.
    Disconnect,
    /// Server code kicked the player.
    Kicked,
}

impl LeaveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Leave => "leave",
            LeaveReason::Disconnect => "disconnect",
            LeaveReason::Kicked => "kicked",
        }
    }
}

/// A handler's failure. Its message reaches the client (`action_error.message`, or the
/// `JOIN_DENIED` error of a refused join), so keep secrets out of it.
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerError {
    pub code: ErrorCode,
    pub message: String,
}

impl HandlerError {
    pub fn new(message: impl Into<String>) -> HandlerError {
        HandlerError {
            code: ErrorCode::ActionFailed,
            message: message.into(),
        }
    }

    pub fn with_code(code: ErrorCode, message: impl Into<String>) -> HandlerError {
        HandlerError {
            code,
            message: message.into(),
        }
    }

    /// No handler for this action type.
    pub fn no_handler(action: &str) -> HandlerError {
        HandlerError::with_code(
            ErrorCode::NoHandler,
            format!("no handler for action {action:?}"),
        )
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        HandlerError::new(message)
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        HandlerError::new(message)
    }
}

impl From<StateError> for HandlerError {
    fn from(e: StateError) -> Self {
        let code = match e {
            StateError::TooLarge { .. } | StateError::TooDeep { .. } => ErrorCode::StateTooLarge,
            StateError::NoSuchPlayer(_) => ErrorCode::ActionFailed,
        };
        HandlerError::with_code(code, e.to_string())
    }
}

impl From<serde_json::Error> for HandlerError {
    fn from(e: serde_json::Error) -> Self {
        HandlerError::new(format!("invalid payload: {e}"))
    }
}

pub type HandlerResult<T = ()> = Result<T, HandlerError>;

/// The server-side logic of one room. Each room gets its own instance (from the namespace's
/// factory), so it may keep in-memory fields; what must survive a restart belongs in the room's
/// state. A room runs one hook at a time; hooks may await (a slow hook delays the room's other
/// events, and is cut off after the namespace's `handler_timeout`).
#[async_trait]
pub trait RoomLogic: Send + 'static {
    /// Every time the room is loaded into memory (new, or restored from storage), before any
    /// other hook. Start what lives in memory only here: the simulation tick, the patch rate,
    /// clock callbacks.
    async fn on_load(&mut self, _room: &mut RoomContext) -> HandlerResult {
        Ok(())
    }

    /// Once per room lifetime, before the first player's join. A room restored from storage does
    /// not run it again. `options` are the first joiner's join options.
    async fn on_create(&mut self, _room: &mut RoomContext, _options: &Value) -> HandlerResult {
        Ok(())
    }

    /// A new player joins (not a reconnect within the grace period); it already counts in
    /// `player_count()`. An error refuses the join with `JOIN_DENIED` and its message; changes
    /// made before the error stay, so check first, then change.
    async fn on_join(
        &mut self,
        _room: &mut RoomContext,
        _sender: &Sender,
        _options: &Value,
    ) -> HandlerResult {
        Ok(())
    }

    /// A player left (it no longer counts in `player_count()`); its player state is removed
    /// after this returns.
    async fn on_leave(
        &mut self,
        _room: &mut RoomContext,
        _sender: &Sender,
        _reason: LeaveReason,
    ) -> HandlerResult {
        Ok(())
    }

    /// The last player left (the room is then saved and, with auto-dispose, evicted).
    async fn on_destroy(&mut self, _room: &mut RoomContext) -> HandlerResult {
        Ok(())
    }

    /// A client's `send`. The returned value is the `action_result`.
    async fn on_action(
        &mut self,
        _room: &mut RoomContext,
        _sender: &Sender,
        action: &str,
        _payload: Value,
    ) -> HandlerResult<Value> {
        Err(HandlerError::no_handler(action))
    }

    /// A named timer set with [`RoomContext::set_timer`] fired.
    async fn on_timer(
        &mut self,
        _room: &mut RoomContext,
        _name: &str,
        _data: Value,
    ) -> HandlerResult {
        Ok(())
    }

    /// One simulation step (see [`RoomContext::set_simulation_interval`]); `dt` is the time since
    /// the previous step.
    async fn on_tick(&mut self, _room: &mut RoomContext, _dt: Duration) -> HandlerResult {
        Ok(())
    }
}

/// Makes a new [`RoomLogic`] for each room of a namespace.
pub type LogicFactory = Arc<dyn Fn() -> Box<dyn RoomLogic> + Send + Sync>;

type LoadFn = dyn Fn(&mut RoomContext) -> HandlerResult + Send + Sync;
type CreateFn = dyn Fn(&mut RoomContext, &Value) -> HandlerResult + Send + Sync;
type JoinFn = dyn Fn(&mut RoomContext, &Sender, &Value) -> HandlerResult + Send + Sync;
type LeaveFn = dyn Fn(&mut RoomContext, &Sender, LeaveReason) -> HandlerResult + Send + Sync;
type DestroyFn = dyn Fn(&mut RoomContext) -> HandlerResult + Send + Sync;
type ActionFn = dyn Fn(&mut RoomContext, &Sender, Value) -> HandlerResult<Value> + Send + Sync;
type TimerFn = dyn Fn(&mut RoomContext, Value) -> HandlerResult + Send + Sync;
type TickFn = dyn Fn(&mut RoomContext, Duration) -> HandlerResult + Send + Sync;

/// Room logic from closures, for small rooms:
///
/// ```
/// use weft::protocols::game::RoomBuilder;
/// use serde_json::json;
///
/// let counter = RoomBuilder::new()
///     .on_create(|room, _options| {
///         room.set_shared(|s| s["count"] = json!(0))?;
///         Ok(())
///     })
///     .on_action("INCREMENT", |room, _sender, _payload| {
///         room.set_shared(|s| s["count"] = json!(s["count"].as_i64().unwrap_or(0) + 1))?;
///         Ok(room.shared()["count"].clone())
///     });
/// let _factory = counter.into_factory();
/// ```
#[derive(Default, Clone)]
pub struct RoomBuilder {
    load: Option<Arc<LoadFn>>,
    create: Option<Arc<CreateFn>>,
    join: Option<Arc<JoinFn>>,
    leave: Option<Arc<LeaveFn>>,
    destroy: Option<Arc<DestroyFn>>,
    actions: HashMap<String, Arc<ActionFn>>,
    timers: HashMap<String, Arc<TimerFn>>,
    tick: Option<Arc<TickFn>>,
}

impl RoomBuilder {
    pub fn new() -> RoomBuilder {
        RoomBuilder::default()
    }

    pub fn on_load(
        mut self,
        f: impl Fn(&mut RoomContext) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        self.load = Some(Arc::new(f));
        self
    }

    pub fn on_create(
        mut self,
        f: impl Fn(&mut RoomContext, &Value) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        self.create = Some(Arc::new(f));
        self
    }

    pub fn on_join(
        mut self,
        f: impl Fn(&mut RoomContext, &Sender, &Value) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        self.join = Some(Arc::new(f));
        self
    }

    pub fn on_leave(
        mut self,
        f: impl Fn(&mut RoomContext, &Sender, LeaveReason) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        self.leave = Some(Arc::new(f));
        self
    }

    pub fn on_destroy(
        mut self,
        f: impl Fn(&mut RoomContext) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        self.destroy = Some(Arc::new(f));
        self
    }

    /// The handler of one action type.
    pub fn on_action(
        mut self,
        action: &str,
        f: impl Fn(&mut RoomContext, &Sender, Value) -> HandlerResult<Value> + Send + Sync + 'static,
    ) -> Self {
        self.actions.insert(action.to_owned(), Arc::new(f));
        self
    }

    /// The handler of one named timer.
    pub fn on_timer(
        mut self,
        name: &str,
        f: impl Fn(&mut RoomContext, Value) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        self.timers.insert(name.to_owned(), Arc::new(f));
        self
    }

    pub fn on_tick(
        mut self,
        f: impl Fn(&mut RoomContext, Duration) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        self.tick = Some(Arc::new(f));
        self
    }

    /// The factory to register the namespace with.
    pub fn into_factory(self) -> LogicFactory {
        let shared = Arc::new(self);
        Arc::new(move || Box::new(BuiltRoom(shared.clone())) as Box<dyn RoomLogic>)
    }
}

struct BuiltRoom(Arc<RoomBuilder>);

#[async_trait]
impl RoomLogic for BuiltRoom {
    async fn on_load(&mut self, room: &mut RoomContext) -> HandlerResult {
        self.0.load.as_ref().map_or(Ok(()), |f| f(room))
    }

    async fn on_create(&mut self, room: &mut RoomContext, options: &Value) -> HandlerResult {
        self.0.create.as_ref().map_or(Ok(()), |f| f(room, options))
    }

    async fn on_join(
        &mut self,
        room: &mut RoomContext,
        sender: &Sender,
        options: &Value,
    ) -> HandlerResult {
        self.0
            .join
            .as_ref()
            .map_or(Ok(()), |f| f(room, sender, options))
    }

    async fn on_leave(
        &mut self,
        room: &mut RoomContext,
        sender: &Sender,
        reason: LeaveReason,
    ) -> HandlerResult {
        self.0
            .leave
            .as_ref()
            .map_or(Ok(()), |f| f(room, sender, reason))
    }

    async fn on_destroy(&mut self, room: &mut RoomContext) -> HandlerResult {
        self.0.destroy.as_ref().map_or(Ok(()), |f| f(room))
    }

    async fn on_action(
        &mut self,
        room: &mut RoomContext,
        sender: &Sender,
        action: &str,
        payload: Value,
    ) -> HandlerResult<Value> {
        match self.0.actions.get(action) {
            Some(f) => f(room, sender, payload),
            None => Err(HandlerError::no_handler(action)),
        }
    }

    async fn on_timer(&mut self, room: &mut RoomContext, name: &str, data: Value) -> HandlerResult {
        match self.0.timers.get(name) {
            Some(f) => f(room, data),
            None => {
                tracing::warn!(timer = name, "a timer fired that has no handler");
                Ok(())
            }
        }
    }

    async fn on_tick(&mut self, room: &mut RoomContext, dt: Duration) -> HandlerResult {
        self.0.tick.as_ref().map_or(Ok(()), |f| f(room, dt))
    }
}
