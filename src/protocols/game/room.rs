//! One game room: a task that owns its [`RoomContext`] and logic and handles one event at a time
//! (a command from a connection, a timer, a simulation tick, a clock callback, a flush, a save).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn, Instrument};

use super::context::{later, Connection, Due, Effect, Joining, RoomContext, Seat, Tracked};
use super::handle::{Command, JoinRefused, RoomHandle, RoomStatus};
use super::logic::{HandlerError, HandlerResult, LeaveReason, RoomLogic};
use super::options::NamespaceOptions;
use super::record::{self, unix_ms, Op};
use super::sender::Sender;
use super::wakeups::Wakeups;
use crate::ids::{RecordKey, RoomKey};
use crate::metrics::Metrics;
use crate::protocols::game::wire::{close, ErrorCode, ServerFrame};
use crate::rooms::{
    self, panicked, CloseReason, Journal, Outbox, Registration, RoomManager, RoomTask, Step,
};
use crate::storage::StorageError;

/// A room with no players and nothing pending is disposed of after this long (a player that
/// reconnects at once finds it still loaded).
const EMPTY_LINGER: Duration = Duration::from_secs(5);

/// Starts the room `key` (its load first) with its namespace's options and a fresh `logic`, in
/// `manager` (where it writes, where it runs: on the server's runtime, not on the HTTP worker
/// that loaded it, which stops before the rooms fold at shutdown).
pub(super) fn spawn(
    manager: &RoomManager,
    registration: Registration,
    wakeups: Arc<Wakeups>,
    key: RecordKey,
    options: Arc<NamespaceOptions>,
    logic: Box<dyn RoomLogic>,
) -> RoomHandle {
    let (tx, rx) = rooms::command_channel();
    let status = Arc::new(RoomStatus::new(options.max_players));
    let handle = RoomHandle {
        commands: tx,
        status: status.clone(),
    };
    // A root span: the room outlives the connection that happened to load it.
    let span = tracing::info_span!(parent: None, "game_room", room = %key);
    let journal = manager.journal_config().clone();
    manager.tasks().spawn(
        async move {
            let journal = Journal::new(
                RoomKey::Game(key.clone()),
                journal,
                options.state_save_interval,
            );
            let ctx = RoomContext::new(key.clone(), options, journal, status);
            let room = Room {
                logic,
                ctx,
                registration,
                wakeups,
                started: Instant::now(),
                closing: None,
                empty_since: None,
                had_players: false,
                stop: false,
            };
            room.run(rx).await;
        }
        .instrument(span),
    );
    handle
}

struct Room {
    logic: Box<dyn RoomLogic>,
    ctx: RoomContext,
    /// Its entry in the manager, to report its closing.
    registration: Registration,
    /// Saved rooms' wake-ups: a room closing with a pending timer adds its own.
    wakeups: Arc<Wakeups>,
    /// Patch-rate flushes fall on a fixed grid from here.
    started: Instant,
    /// The manager asked the room to close (shutdown, an operator): how to close its
    /// connections, and whom to tell once its final fold is done.
    closing: Option<(CloseReason, oneshot::Sender<Result<(), StorageError>>)>,
    /// Since when the room has had no seats and no connections.
    empty_since: Option<Instant>,
    /// Some player held a seat since the last `on_destroy`.
    had_players: bool,
    stop: bool,
}

/// Runs a hook under the namespace's handler timeout.
async fn guarded<T>(
    timeout: Duration,
    hook: impl std::future::Future<Output = HandlerResult<T>>,
) -> HandlerResult<T> {
    match tokio::time::timeout(timeout, hook).await {
        Ok(result) => result,
        Err(_) => Err(HandlerError::with_code(
            ErrorCode::ActionTimeout,
            format!("handler did not finish within {} ms", timeout.as_millis()),
        )),
    }
}

impl Room {
    async fn run(self, commands: mpsc::Receiver<Command>) {
        let metrics = self.ctx.journal.metrics().clone();
        Metrics::inc(&metrics.rooms_active);
        self.serve(commands).await;
        Metrics::dec(&metrics.rooms_active);
    }

    async fn serve(mut self, mut commands: mpsc::Receiver<Command>) {
        if let Err(message) = self.load().await {
            error!(error = %message, "game room could not be loaded");
            self.refuse_all(commands, JoinRefused::Unavailable(message))
                .await;
            return;
        }
        let timeout = self.ctx.options.handler_timeout;
        if let Err(e) = guarded(timeout, self.logic.on_load(&mut self.ctx)).await {
            warn!(error = %e, "on_load failed");
        }
        if self.ctx.seats.is_empty() {
            self.empty_since = Some(Instant::now());
        }
        if let Some(at) = self.disposal_due() {
            self.ctx.schedule.set(Due::Dispose, at);
        }
        // However it ended, `finish` sees why: a failed write, a stop, or no handle left.
        let _ = rooms::serve(&mut self, &mut commands).await;
        self.finish(commands).await;
    }

    /// Restores the stored room (record + log), unless it has expired (then it is deleted and
    /// starts fresh).
    async fn load(&mut self) -> Result<(), String> {
        let storage = self.ctx.journal.storage().clone();
        let key = self.ctx.key.clone();
        let room_key = self.ctx.journal.key().clone();
        let restored = tokio::task::spawn_blocking(move || record::load(&*storage, &key))
            .await
            .unwrap_or_else(|e| Err(panicked(&room_key, e)))
            .map_err(|e| format!("{e} (left untouched)"))?;
        let Some(restored) = restored else {
            return Ok(());
        };
        if restored.expired(self.ctx.options.state_ttl.as_millis() as u64, unix_ms()) {
            info!("saved state expired (stateTTL); starting fresh");
            let storage = self.ctx.journal.storage().clone();
            let key = self.ctx.journal.key().clone();
            tokio::task::spawn_blocking(move || storage.delete(&key))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
        let ctx = &mut self.ctx;
        ctx.journal.resume(restored.seq);
        ctx.created = restored.created;
        ctx.shared = Tracked::new(restored.shared);
        ctx.server = restored.server;
        ctx.metadata = restored.metadata;
        ctx.status.set_metadata(ctx.metadata.value());
        ctx.timers = restored.timers;
        let (now, now_ms) = (Instant::now(), unix_ms());
        for (name, timer) in &ctx.timers {
            let delay = Duration::from_millis(timer.due_ms.saturating_sub(now_ms));
            ctx.schedule.set(Due::Timer(name.clone()), now + delay);
        }
        ctx.resume_clock(Duration::from_millis(restored.elapsed_ms));
        ctx.status.locked.store(restored.locked, Ordering::Relaxed);
        ctx.status
            .private
            .store(restored.private, Ordering::Relaxed);
        if let Some(max) = restored.max_players {
            let max = max.clamp(1, ctx.options.max_players);
            ctx.status.max_players.store(max, Ordering::Relaxed);
        }
        let grace = Instant::now() + ctx.options.reconnect_timeout;
        for (user, saved) in restored.players {
            // A seat saved before its player had any state has no state document.
            if saved.state.clock() > 0
                || saved
                    .state
                    .value()
                    .as_object()
                    .is_some_and(|m| !m.is_empty())
            {
                ctx.players.insert(user.clone(), Tracked::new(saved.state));
            }
            let sender = saved.sender.map_or_else(
                || Sender {
                    user_id: user.clone(),
                    connection_id: String::new(),
                    role: "user".into(),
                    email: None,
                    is_anonymous: false,
                    custom: Value::Null,
                },
                |s| s.into_sender(&user),
            );
            ctx.schedule.set(Due::Grace(user.clone()), grace);
            ctx.seats.insert(
                user,
                Seat {
                    sender,
                    connections: 0,
                },
            );
        }
        self.had_players = !ctx.seats.is_empty();
        publish_counts(ctx);
        info!(
            players = ctx.seats.len(),
            timers = ctx.timers.len(),
            seq = ctx.journal.last(),
            "restored from storage"
        );
        Ok(())
    }

    /// When an empty room is disposed of: [`EMPTY_LINGER`] after it emptied, but not before
    /// the seats matchmaking reserved in it have run out.
    fn disposal_due(&self) -> Option<Instant> {
        let since = self.empty_since.filter(|_| self.ctx.auto_dispose)?;
        let linger = since + EMPTY_LINGER;
        Some(match self.ctx.status.reserved_until() {
            Some(reserved) => linger.max(reserved),
            None => linger,
        })
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Join {
                sender,
                options,
                outbox,
                reply,
            } => {
                let result = self.join(sender, &options, outbox).await;
                let _ = reply.send(result);
            }
            Command::Action {
                connection_id,
                request_id,
                action_type,
                payload,
            } => {
                self.action(&connection_id, &request_id, &action_type, payload)
                    .await;
            }
            Command::Leave { connection_id } => {
                if let Some(connection) = self.ctx.remove_connection(&connection_id) {
                    let reason = CloseReason::new(close::LEFT, "left the room");
                    self.ctx.journal.let_go(connection.outbox, Some(reason));
                    self.connection_gone(&connection.user_id, true).await;
                }
            }
            Command::Disconnected { connection_id } => {
                if let Some(connection) = self.ctx.remove_connection(&connection_id) {
                    self.connection_gone(&connection.user_id, false).await;
                }
            }
            Command::Refreshed { sender } => {
                if let Some(seat) = self.ctx.seats.get_mut(&sender.user_id) {
                    seat.sender = Sender {
                        connection_id: seat.sender.connection_id.clone(),
                        ..sender
                    };
                    let sender = seat.sender.clone();
                    self.ctx.log_seat(&sender);
                }
            }
            Command::Wake => {}
            Command::Close { reason, done } => {
                self.closing = Some((reason, done));
                self.stop = true;
            }
        }
    }

    async fn join(
        &mut self,
        sender: Sender,
        options: &Value,
        outbox: Outbox,
    ) -> Result<(), JoinRefused> {
        let user = sender.user_id.clone();
        self.ctx.joining = Some(Joining {
            user_id: user.clone(),
            connection_id: sender.connection_id.clone(),
            frames: Vec::new(),
        });
        let result = self.seat(&sender, options).await;
        let joining = self.ctx.joining.take();
        result?;
        // Earlier connections see the join's changes as deltas; this one gets them in its sync,
        // then the messages sent to it while it was joining.
        self.ctx.flush();
        let connection_id = sender.connection_id.clone();
        self.ctx.add_connection(
            connection_id.clone(),
            Connection {
                user_id: user,
                outbox,
            },
        );
        let sync = self.ctx.sync_frame_for(&connection_id);
        self.ctx.deliver(&connection_id, &sync);
        for frame in joining.map(|j| j.frames).unwrap_or_default() {
            self.ctx.deliver(&connection_id, &frame);
        }
        publish_counts(&self.ctx);
        Ok(())
    }

    /// Gives the sender a seat (running `on_create` and `on_join` for a new player) or resumes
    /// its seat (a reconnect within the grace period, or another connection of the same user).
    async fn seat(&mut self, sender: &Sender, options: &Value) -> Result<(), JoinRefused> {
        let user = sender.user_id.clone();
        let timeout = self.ctx.options.handler_timeout;
        if !self.ctx.seats.contains_key(&user) {
            // A newcomer uses up the seat matchmaking may have held for it.
            self.ctx.status.take_reservation();
            if self.ctx.seats.len() >= self.ctx.max_players() {
                return Err(denied(
                    ErrorCode::RoomFull,
                    &format!("room is full ({} players)", self.ctx.max_players()),
                ));
            }
            if self.ctx.is_locked() {
                return Err(denied(ErrorCode::JoinDenied, "room is locked"));
            }
            if !self.ctx.created {
                let created = guarded(timeout, self.logic.on_create(&mut self.ctx, options)).await;
                if let Err(e) = created {
                    warn!(error = %e, "on_create failed; the join is refused");
                    return Err(denied(ErrorCode::JoinDenied, &e.message));
                }
                self.ctx.created = true;
                self.ctx.log.push(Op::Created);
            }
            self.ctx.seats.insert(
                user.clone(),
                Seat {
                    sender: sender.clone(),
                    connections: 0,
                },
            );
            self.ctx.log_seat(sender);
            let joined = guarded(timeout, self.logic.on_join(&mut self.ctx, sender, options)).await;
            if let Err(e) = joined {
                self.ctx.seats.shift_remove(&user);
                self.ctx.players.shift_remove(&user);
                self.ctx.log.push(Op::Left { user });
                self.ctx.flush();
                return Err(denied(ErrorCode::JoinDenied, &e.message));
            }
            self.had_players = true;
        }
        let Some(seat) = self.ctx.seats.get_mut(&user) else {
            return Err(denied(
                ErrorCode::JoinDenied,
                "the join handler removed the player",
            ));
        };
        seat.connections += 1;
        seat.sender = sender.clone();
        self.ctx.schedule.clear(&Due::Grace(user));
        Ok(())
    }

    async fn action(
        &mut self,
        connection_id: &str,
        request_id: &str,
        action_type: &str,
        payload: Value,
    ) {
        let Some(connection) = self.ctx.connections.get(connection_id) else {
            return;
        };
        let Some(seat) = self.ctx.seats.get(&connection.user_id) else {
            return;
        };
        let sender = Sender {
            connection_id: connection_id.to_owned(),
            ..seat.sender.clone()
        };
        let timeout = self.ctx.options.handler_timeout;
        Metrics::inc(&self.ctx.journal.metrics().game_actions);
        let result = guarded(
            timeout,
            self.logic
                .on_action(&mut self.ctx, &sender, action_type, payload),
        )
        .await;
        // The action's changes go out before its result.
        self.ctx.flush();
        let frame = match &result {
            Ok(value) => ServerFrame::ActionResult {
                request_id,
                action_type,
                result: value,
            }
            .encode(),
            Err(e) => {
                debug!(action = action_type, error = %e, "action failed");
                ServerFrame::ActionError {
                    request_id,
                    action_type,
                    code: e.code.as_str(),
                    message: &e.message,
                }
                .encode()
            }
        };
        self.ctx.deliver(connection_id, &frame);
    }

    /// A connection of `user` ended; the seat is given up at once on `leave` (or with no grace
    /// period), else after the reconnect grace period.
    async fn connection_gone(&mut self, user: &str, left: bool) {
        let grace = self.ctx.options.reconnect_timeout;
        let Some(seat) = self.ctx.seats.get_mut(user) else {
            return;
        };
        seat.connections = seat.connections.saturating_sub(1);
        if seat.connections > 0 {
            return;
        }
        if left {
            self.remove_player(user, LeaveReason::Leave).await;
        } else if grace.is_zero() {
            self.remove_player(user, LeaveReason::Disconnect).await;
        } else {
            let at = Instant::now() + grace;
            self.ctx.schedule.set(Due::Grace(user.to_owned()), at);
            publish_counts(&self.ctx);
        }
    }

    /// Gives up a player's seat: `on_leave`, then its player state is dropped.
    async fn remove_player(&mut self, user: &str, reason: LeaveReason) {
        let Some(seat) = self.ctx.seats.shift_remove(user) else {
            return;
        };
        self.ctx.schedule.clear(&Due::Grace(user.to_owned()));
        let timeout = self.ctx.options.handler_timeout;
        if let Err(e) = guarded(
            timeout,
            self.logic.on_leave(&mut self.ctx, &seat.sender, reason),
        )
        .await
        {
            warn!(user, error = %e, "on_leave failed");
        }
        self.ctx.players.shift_remove(user);
        self.ctx.log.push(Op::Left {
            user: user.to_owned(),
        });
        self.ctx.flush();
        publish_counts(&self.ctx);
    }

    async fn kick(&mut self, user: &str) {
        let kicked = ServerFrame::Kicked.encode();
        for id in self.ctx.connections_of(user) {
            self.ctx.deliver(&id, &kicked);
            if let Some(connection) = self.ctx.remove_connection(&id) {
                let reason = CloseReason::new(close::KICKED, "kicked");
                self.ctx.journal.let_go(connection.outbox, Some(reason));
            }
        }
        self.remove_player(user, LeaveReason::Kicked).await;
    }

    /// Runs what is due: timers, the tick and clock callbacks first, then grace expiries, then
    /// the flush that sends their changes, then disposal.
    async fn run_due(&mut self) {
        let now = Instant::now();
        let timeout = self.ctx.options.handler_timeout;
        let mut due = self.ctx.schedule.take_due(now);
        due.sort_by_key(|(at, what)| (what.rank(), *at));
        for (at, what) in due {
            match what {
                Due::Timer(name) => {
                    let Some(timer) = self.ctx.timers.remove(&name) else {
                        continue;
                    };
                    self.ctx.log.push(Op::TimerDone { name: name.clone() });
                    let fired = self.logic.on_timer(&mut self.ctx, &name, timer.data);
                    if let Err(e) = guarded(timeout, fired).await {
                        warn!(timer = %name, error = %e, "timer handler failed");
                    }
                }
                Due::Tick => {
                    let dt = now - self.ctx.last_tick;
                    self.ctx.last_tick = now;
                    if let Err(e) = guarded(timeout, self.logic.on_tick(&mut self.ctx, dt)).await {
                        warn!(error = %e, "tick handler failed");
                    }
                }
                Due::Clock(id) => self.ctx.run_clock(id, at, now),
                Due::Grace(user) => {
                    if self
                        .ctx
                        .seats
                        .get(&user)
                        .is_some_and(|s| s.connections == 0)
                    {
                        self.remove_player(&user, LeaveReason::Disconnect).await;
                    }
                }
                Due::Flush => self.ctx.flush(),
                Due::Dispose => match self.disposal_due() {
                    Some(at) if at <= now => self.stop = true,
                    Some(at) => self.ctx.schedule.set(Due::Dispose, at),
                    None => {}
                },
            }
        }
    }

    /// After every event: carry out kicks, drop slow connections, schedule the flush, notice an
    /// emptied room, and append what the event wrote as one log entry.
    async fn settle_event(&mut self) {
        loop {
            let effects = std::mem::take(&mut self.ctx.effects);
            let slow = std::mem::take(&mut self.ctx.slow);
            if effects.is_empty() && slow.is_empty() {
                break;
            }
            for id in slow {
                Metrics::inc(&self.ctx.journal.metrics().slow_clients_disconnected);
                if let Some(connection) = self.ctx.remove_connection(&id) {
                    self.connection_gone(&connection.user_id, false).await;
                }
            }
            for effect in effects {
                match effect {
                    Effect::Kick(user) => self.kick(&user).await,
                    Effect::DisconnectAll => {
                        let users: Vec<String> = self.ctx.seats.keys().cloned().collect();
                        for user in users {
                            self.kick(&user).await;
                        }
                        self.ctx.auto_dispose = true;
                        self.empty_since = Some(Instant::now() - EMPTY_LINGER);
                    }
                }
            }
        }
        if let Some(every) = self.ctx.simulation {
            if self.ctx.schedule.get(&Due::Tick).is_none() {
                self.ctx
                    .schedule
                    .set(Due::Tick, later(self.ctx.last_tick, every));
            }
        }
        if self.ctx.is_dirty() && self.ctx.schedule.get(&Due::Flush).is_none() {
            let at = next_flush(self.started, self.ctx.patch_rate, Instant::now());
            self.ctx.schedule.set(Due::Flush, at);
        }
        let empty = self.ctx.seats.is_empty() && self.ctx.connections.is_empty();
        if empty && self.had_players {
            self.had_players = false;
            let timeout = self.ctx.options.handler_timeout;
            if let Err(e) = guarded(timeout, self.logic.on_destroy(&mut self.ctx)).await {
                warn!(error = %e, "on_destroy failed");
            }
            self.ctx.flush();
        }
        if !empty {
            self.empty_since = None;
        } else if self.empty_since.is_none() {
            self.empty_since = Some(Instant::now());
        }
        match self.disposal_due() {
            Some(at) => self.ctx.schedule.set(Due::Dispose, at),
            None => {
                self.ctx.schedule.clear(&Due::Dispose);
            }
        }
        if let Err(e) = self.ctx.write_log() {
            error!(error = %e, "the room's writes cannot be stored; closing it");
        }
    }

    /// Leaves the manager's map: no new commands; the frames of stored writes go out, then the
    /// connections close and the log is folded (unless a write failed: then storage keeps what
    /// it has, and nothing unstored is shown); then the room may load again.
    async fn finish(mut self, mut commands: mpsc::Receiver<Command>) {
        let closing = self.registration.begin_close();
        commands.close();
        while let Ok(command) = commands.try_recv() {
            match command {
                Command::Join { reply, .. } => {
                    let _ = reply.send(Err(JoinRefused::Retry));
                }
                Command::Close { done, .. } => {
                    let _ = done.send(Ok(()));
                }
                _ => {}
            }
        }
        let failed = self.ctx.journal.failed();
        if !failed {
            self.ctx.flush();
            if let Err(e) = self.ctx.write_log() {
                error!(error = %e, "the room's last writes cannot be stored");
            }
        }
        if !self.ctx.journal.settle().await && !failed {
            warn!("writes still unconfirmed at close; their frames are dropped");
        }
        self.ctx.release_held();
        let (reason, done) = match self.closing.take() {
            Some((reason, done)) => (reason, Some(done)),
            None => (CloseReason::room_closed(), None),
        };
        let reason = match self.ctx.journal.failed() {
            true => CloseReason::new(1011, "storage write failed; reconnect to retry"),
            false => reason,
        };
        let ids: Vec<String> = self.ctx.connections.keys().cloned().collect();
        for id in ids {
            if let Some(mut connection) = self.ctx.remove_connection(&id) {
                connection.outbox.close(reason.clone());
            }
        }
        let snapshot = self.ctx.record().encode().ok();
        let result = self.ctx.journal.close(|| snapshot).await;
        if let Err(e) = &result {
            error!(error = %e, "the game room's final fold failed; its log keeps its writes");
        }
        if let Some(done) = done {
            let _ = done.send(result);
        }
        drop(closing);
        if let Some(due) = self.ctx.timers.values().map(|t| t.due_ms).min() {
            self.wakeups.add(self.ctx.key.clone(), due);
        }
        debug!("game room closed");
    }

    /// The room could not load: refuse whatever arrives until the manager forgets it.
    async fn refuse_all(self, mut commands: mpsc::Receiver<Command>, reason: JoinRefused) {
        let closing = self.registration.begin_close();
        commands.close();
        while let Some(command) = commands.recv().await {
            match command {
                Command::Join { reply, .. } => {
                    let _ = reply.send(Err(reason.clone()));
                }
                Command::Close { done, .. } => {
                    let _ = done.send(Ok(()));
                }
                _ => {}
            }
        }
        drop(closing);
    }
}

/// The next patch-rate slot after `now`. Flushes keep a fixed cadence from the room's start (as
/// Colyseus's patch interval does), not "one rate after the first change since the last flush",
/// which stretched a 100 ms rate to 150 ms whenever a change came just after a flush.
fn next_flush(started: Instant, rate: Duration, now: Instant) -> Instant {
    let rate_ns = rate.as_nanos().max(1);
    let slot = now.saturating_duration_since(started).as_nanos() / rate_ns + 1;
    let offset = u64::try_from(slot * rate_ns).unwrap_or(u64::MAX);
    started + Duration::from_nanos(offset)
}

/// Publishes the seat counts the manager and the upgrade check read.
fn publish_counts(ctx: &RoomContext) {
    let connected = ctx.seats.values().filter(|s| s.connections > 0).count();
    ctx.status.players.store(ctx.seats.len(), Ordering::Relaxed);
    ctx.status.connected.store(connected, Ordering::Relaxed);
}

fn denied(code: ErrorCode, message: &str) -> JoinRefused {
    JoinRefused::Denied {
        code,
        message: message.to_owned(),
    }
}

impl RoomTask for Room {
    type Command = Command;
    type Stop = ();

    fn journal(&mut self) -> &mut Journal {
        &mut self.ctx.journal
    }

    fn released(&mut self) {
        self.ctx.release_held();
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        self.ctx
            .record()
            .encode()
            .map_err(|e| error!(error = %e, "the room cannot be folded; its log keeps growing"))
            .ok()
    }

    fn next_deadline(&self) -> Option<tokio::time::Instant> {
        self.ctx.schedule.next().map(tokio::time::Instant::from_std)
    }

    async fn on_command(&mut self, command: Command) -> Step<()> {
        self.handle(command).await;
        Step::Continue
    }

    async fn on_deadline(&mut self) -> Step<()> {
        self.run_due().await;
        Step::Continue
    }

    async fn after_event(&mut self) -> Step<()> {
        self.settle_event().await;
        if self.stop {
            Step::Stop(())
        } else {
            Step::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flushes fall on the grid of the patch rate from the room's start, whenever the change
    /// that asks for one comes.
    #[test]
    fn flushes_keep_a_fixed_cadence() {
        let started = Instant::now();
        let rate = Duration::from_millis(100);
        let at = |ms: u64| started + Duration::from_millis(ms);
        assert_eq!(next_flush(started, rate, at(0)), at(100));
        assert_eq!(next_flush(started, rate, at(1)), at(100));
        assert_eq!(next_flush(started, rate, at(99)), at(100));
        assert_eq!(next_flush(started, rate, at(100)), at(200));
        assert_eq!(next_flush(started, rate, at(152)), at(200));
        assert_eq!(
            next_flush(started, Duration::ZERO, at(5)),
            started + Duration::from_nanos(5_000_001)
        );
    }
}
