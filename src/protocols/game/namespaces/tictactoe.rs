//! `tictactoe`: a two-player, turn-based game on **named timers** (persisted: a turn deadline
//! still fires after a server restart).
//!
//! - Join options of the first joiner: `{"turnSeconds": N}` (clamped to 1..=120, default 30).
//! - The first joiner plays `X`, the second `O`; a third is refused (`max_players: 2`). When the
//!   second player joins, a game starts and the room is locked (out of matchmaking).
//! - Action `MOVE {cell: 0..8}`, action `RESTART` (after a game finished).
//! - Timer `turnTimeout`: **the player to move loses the game** (`reason: "timeout"`). Passing
//!   the turn instead would only hand the opponent a free move, and two idle players would make
//!   the persisted timer wake the room forever.
//! - A player who leaves during a game (on purpose, kicked, or after the reconnect grace period)
//!   loses it by forfeit; the room unlocks so a new opponent can take the seat, and the next second
//!   player to join starts a fresh game.
//!
//! Shared state (`board` keeps `null` for an empty cell: nulls inside arrays are kept):
//! `{board: [null|"X"|"O"; 9], players: {X: userId, O: userId}, turn: "X"|"O",
//!   phase: "waiting"|"playing"|"finished", moves, turnDeadline?, winner?: "X"|"O"|"draw",
//!   reason?: "line"|"draw"|"timeout"|"forfeit", line?: [a, b, c]}`.
//! Player state: `{mark: "X"|"O"}`. Server state: `{turnSeconds, nextFirst}`.
//! Messages: `game_started {first}`, `turn_timeout {mark, userId, winner}`,
//! `opponent_left {mark, userId, winner}`.
//!
//! The rules are plain functions on [`Game`]; the [`RoomLogic`] hooks only load, call and store.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::protocols::game::{
    HandlerError, HandlerResult, LeaveReason, LogicFactory, NamespaceOptions, RoomContext,
    RoomLogic, Sender, StateError,
};

pub fn options() -> NamespaceOptions {
    NamespaceOptions {
        max_players: 2,
        max_state_size: 16 * 1024,
        reconnect_timeout: Duration::from_secs(20),
        actions_per_second: 5,
        state_save_interval: Duration::from_secs(10),
        state_ttl: Duration::from_secs(3600),
        ..NamespaceOptions::default()
    }
}

pub fn factory() -> LogicFactory {
    std::sync::Arc::new(|| Box::new(TicTacToe) as Box<dyn RoomLogic>)
}

/// The named timer of the current turn.
pub const TURN_TIMER: &str = "turnTimeout";
pub const DEFAULT_TURN_SECONDS: u64 = 30;
pub const MAX_TURN_SECONDS: u64 = 120;

/// The eight winning lines.
const LINES: [[usize; 3]; 8] = [
    [0, 1, 2],
    [3, 4, 5],
    [6, 7, 8],
    [0, 3, 6],
    [1, 4, 7],
    [2, 5, 8],
    [0, 4, 8],
    [2, 4, 6],
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mark {
    X,
    O,
}

impl Mark {
    pub fn other(self) -> Mark {
        match self {
            Mark::X => Mark::O,
            Mark::O => Mark::X,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mark::X => "X",
            Mark::O => "O",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    #[default]
    Waiting,
    Playing,
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Winner {
    X,
    O,
    #[serde(rename = "draw")]
    Draw,
}

impl From<Mark> for Winner {
    fn from(mark: Mark) -> Winner {
        match mark {
            Mark::X => Winner::X,
            Mark::O => Winner::O,
        }
    }
}

/// How a game ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    Line,
    Draw,
    Timeout,
    Forfeit,
}

pub type Board = [Option<Mark>; 9];

/// What a board says about the game.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    InProgress,
    Won(Mark, [usize; 3]),
    Draw,
}

/// Win (with its line), draw (board full) or still going.
pub fn outcome(board: &Board) -> Outcome {
    for line in LINES {
        if let Some(mark) = board[line[0]] {
            if board[line[1]] == Some(mark) && board[line[2]] == Some(mark) {
                return Outcome::Won(mark, line);
            }
        }
    }
    if board.iter().all(Option::is_some) {
        Outcome::Draw
    } else {
        Outcome::InProgress
    }
}

/// The turn length from the first joiner's options: `turnSeconds` clamped to 1..=120, 30 when
/// absent; anything but a number is refused.
pub fn turn_seconds(options: &Value) -> Result<u64, String> {
    match options.get("turnSeconds") {
        None | Some(Value::Null) => Ok(DEFAULT_TURN_SECONDS),
        Some(v) => {
            let secs = v
                .as_f64()
                .filter(|s| s.is_finite())
                .ok_or("turnSeconds must be a number of seconds (1 to 120)")?;
            Ok(secs.round().clamp(1.0, MAX_TURN_SECONDS as f64) as u64)
        }
    }
}

/// The `cell` of a `MOVE`.
pub fn parse_cell(payload: &Value) -> Result<usize, String> {
    payload
        .get("cell")
        .and_then(Value::as_u64)
        .filter(|c| *c < 9)
        .map(|c| c as usize)
        .ok_or_else(|| {
            "MOVE needs {\"cell\": 0..8} (an integer; 0 is top-left, 8 bottom-right)".into()
        })
}

/// Who sits where.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seats {
    #[serde(rename = "X", default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(rename = "O", default, skip_serializing_if = "Option::is_none")]
    pub o: Option<String>,
}

/// The shared state, typed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Game {
    pub board: Board,
    #[serde(default)]
    pub players: Seats,
    pub turn: Mark,
    pub phase: Phase,
    /// Marks placed in this game; also tells a stale turn timer from the current one.
    #[serde(default)]
    pub moves: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_deadline: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner: Option<Winner>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<[usize; 3]>,
}

impl Default for Game {
    fn default() -> Game {
        Game {
            board: [None; 9],
            players: Seats::default(),
            turn: Mark::X,
            phase: Phase::Waiting,
            moves: 0,
            turn_deadline: None,
            winner: None,
            reason: None,
            line: None,
        }
    }
}

impl Game {
    pub fn seat(&self, mark: Mark) -> Option<&str> {
        match mark {
            Mark::X => self.players.x.as_deref(),
            Mark::O => self.players.o.as_deref(),
        }
    }

    fn seat_mut(&mut self, mark: Mark) -> &mut Option<String> {
        match mark {
            Mark::X => &mut self.players.x,
            Mark::O => &mut self.players.o,
        }
    }

    pub fn mark_of(&self, user_id: &str) -> Option<Mark> {
        [Mark::X, Mark::O]
            .into_iter()
            .find(|m| self.seat(*m) == Some(user_id))
    }

    /// The mark a newcomer gets: `X` if free, else `O`.
    pub fn free_mark(&self) -> Option<Mark> {
        [Mark::X, Mark::O]
            .into_iter()
            .find(|m| self.seat(*m).is_none())
    }

    pub fn is_full(&self) -> bool {
        self.free_mark().is_none()
    }

    /// Seats a user at the free mark.
    pub fn sit(&mut self, user_id: &str) -> Result<Mark, String> {
        if let Some(mark) = self.mark_of(user_id) {
            return Ok(mark);
        }
        let mark = self.free_mark().ok_or("both seats are taken (X and O)")?;
        *self.seat_mut(mark) = Some(user_id.to_owned());
        Ok(mark)
    }

    /// Frees a user's seat; returns the mark it had.
    pub fn stand(&mut self, user_id: &str) -> Option<Mark> {
        let mark = self.mark_of(user_id)?;
        *self.seat_mut(mark) = None;
        Some(mark)
    }

    /// A fresh game with `first` to move.
    pub fn start(&mut self, first: Mark) {
        *self = Game {
            players: std::mem::take(&mut self.players),
            turn: first,
            phase: Phase::Playing,
            ..Game::default()
        };
    }

    /// Places `mark` on `cell`, then ends the game or passes the turn.
    pub fn play(&mut self, mark: Mark, cell: usize) -> Result<Outcome, String> {
        match self.phase {
            Phase::Waiting => {
                return Err("the game has not started: waiting for an opponent".into())
            }
            Phase::Finished => return Err("the game is over: send RESTART to play again".into()),
            Phase::Playing => {}
        }
        if mark != self.turn {
            return Err(format!("not your turn: {} is to move", self.turn.as_str()));
        }
        let Some(slot) = self.board.get_mut(cell) else {
            return Err(format!("cell {cell} is off the board (0..8)"));
        };
        if let Some(taken) = slot {
            return Err(format!(
                "cell {cell} is already taken by {}",
                taken.as_str()
            ));
        }
        *slot = Some(mark);
        self.moves += 1;
        let result = outcome(&self.board);
        match result {
            Outcome::Won(winner, line) => {
                self.finish(winner.into(), Reason::Line);
                self.line = Some(line);
            }
            Outcome::Draw => self.finish(Winner::Draw, Reason::Draw),
            Outcome::InProgress => self.turn = self.turn.other(),
        }
        Ok(result)
    }

    /// Ends the game.
    pub fn finish(&mut self, winner: Winner, reason: Reason) {
        self.phase = Phase::Finished;
        self.winner = Some(winner);
        self.reason = Some(reason);
        self.turn_deadline = None;
    }

    /// The player to move ran out of time: they lose. Returns the loser's mark.
    pub fn time_out(&mut self) -> Mark {
        let loser = self.turn;
        self.finish(loser.other().into(), Reason::Timeout);
        loser
    }

    fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| json!({}))
    }
}

/// Milliseconds since the Unix epoch (what clients compare `turnDeadline` with).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn load(room: &RoomContext) -> HandlerResult<Game> {
    serde_json::from_value(room.shared().clone())
        .map_err(|e| HandlerError::new(format!("the game state is unreadable: {e}")))
}

fn store(room: &mut RoomContext, game: &Game) -> HandlerResult {
    let value = game.to_value();
    room.set_shared(|s| *s = value)?;
    Ok(())
}

fn server_turn_seconds(room: &RoomContext) -> u64 {
    room.server_state()["turnSeconds"]
        .as_u64()
        .unwrap_or(DEFAULT_TURN_SECONDS)
}

/// Sets the deadline of the current turn and (re)arms its timer (`set_timer` replaces the
/// previous one); clears it when the game is not being played.
fn arm_turn_timer(room: &mut RoomContext, game: &mut Game) -> Result<(), StateError> {
    if game.phase != Phase::Playing {
        game.turn_deadline = None;
        room.clear_timer(TURN_TIMER);
        return Ok(());
    }
    let secs = server_turn_seconds(room);
    game.turn_deadline = Some(unix_ms() + secs * 1000);
    room.set_timer(
        TURN_TIMER,
        Duration::from_secs(secs),
        json!({"turn": game.turn, "moves": game.moves}),
    )
}

/// Starts a game (both seats taken), alternating who moves first from game to game.
fn start_game(room: &mut RoomContext, game: &mut Game) -> Result<(), StateError> {
    let first = match room.server_state()["nextFirst"].as_str() {
        Some("O") => Mark::O,
        _ => Mark::X,
    };
    room.set_server_state(|s| s["nextFirst"] = json!(first.other()))?;
    game.start(first);
    arm_turn_timer(room, game)
}

/// Lobby metadata, and the lock: a room with both seats taken is out of matchmaking.
fn publish(room: &mut RoomContext, game: &Game) -> Result<(), StateError> {
    room.set_metadata(json!({
        "mode": "tictactoe",
        "players": room.player_count(),
        "phase": game.phase,
        "turnSeconds": server_turn_seconds(room),
    }))?;
    if game.is_full() {
        room.lock();
    } else {
        room.unlock();
    }
    Ok(())
}

struct TicTacToe;

#[async_trait]
impl RoomLogic for TicTacToe {
    async fn on_create(&mut self, room: &mut RoomContext, options: &Value) -> HandlerResult {
        let secs = turn_seconds(options)?;
        room.set_server_state(|s| *s = json!({"turnSeconds": secs, "nextFirst": "X"}))?;
        let game = Game::default();
        store(room, &game)?;
        publish(room, &game)?;
        Ok(())
    }

    async fn on_join(
        &mut self,
        room: &mut RoomContext,
        sender: &Sender,
        _options: &Value,
    ) -> HandlerResult {
        // The join gate: everything that can refuse comes before any change, since a refused join
        // does not roll back what the handler already changed.
        let mut game = load(room)?;
        let mark = game.sit(&sender.user_id)?;
        room.set_player(&sender.user_id, |p| *p = json!({"mark": mark}))?;
        let started = game.is_full() && game.phase != Phase::Playing;
        if started {
            start_game(room, &mut game)?;
        }
        store(room, &game)?;
        publish(room, &game)?;
        if started {
            room.send_message("game_started", json!({"first": game.turn}), &[]);
        }
        Ok(())
    }

    async fn on_leave(
        &mut self,
        room: &mut RoomContext,
        sender: &Sender,
        reason: LeaveReason,
    ) -> HandlerResult {
        let mut game = load(room)?;
        let Some(mark) = game.stand(&sender.user_id) else {
            return Ok(());
        };
        let forfeit = game.phase == Phase::Playing;
        if forfeit {
            game.finish(mark.other().into(), Reason::Forfeit);
            arm_turn_timer(room, &mut game)?;
        }
        store(room, &game)?;
        publish(room, &game)?;
        if forfeit {
            room.send_message(
                "opponent_left",
                json!({
                    "mark": mark,
                    "userId": sender.user_id,
                    "reason": reason.as_str(),
                    "winner": game.winner,
                }),
                &[],
            );
        }
        Ok(())
    }

    /// Everyone left: back to an empty table, so a later join of this room id (its saved state is
    /// restored, `on_create` does not run again) starts clean, and no timer wakes the room.
    async fn on_destroy(&mut self, room: &mut RoomContext) -> HandlerResult {
        room.clear_timer(TURN_TIMER);
        let game = Game::default();
        store(room, &game)?;
        publish(room, &game)?;
        Ok(())
    }

    async fn on_timer(&mut self, room: &mut RoomContext, name: &str, data: Value) -> HandlerResult {
        if name != TURN_TIMER {
            return Ok(());
        }
        let mut game = load(room)?;
        // A timer of an earlier turn (cannot happen while every move re-arms it; cheap to check).
        let current = game.phase == Phase::Playing
            && data["turn"] == json!(game.turn)
            && data["moves"] == json!(game.moves);
        if !current {
            return Ok(());
        }
        let loser = game.time_out();
        store(room, &game)?;
        publish(room, &game)?;
        let user = game.seat(loser).unwrap_or_default().to_owned();
        room.send_message(
            "turn_timeout",
            json!({"mark": loser, "userId": user, "winner": game.winner}),
            &[],
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
        let mut game = load(room)?;
        let mark = game
            .mark_of(&sender.user_id)
            .ok_or("you have no seat in this game")?;
        match action {
            "MOVE" => {
                let cell = parse_cell(&payload)?;
                game.play(mark, cell)?;
                arm_turn_timer(room, &mut game)?;
                store(room, &game)?;
                if game.phase == Phase::Finished {
                    publish(room, &game)?;
                }
                Ok(json!({
                    "cell": cell,
                    "mark": mark,
                    "phase": game.phase,
                    "winner": game.winner,
                }))
            }
            "RESTART" => {
                match game.phase {
                    Phase::Playing => return Err("the game is still being played".into()),
                    Phase::Waiting => return Err("waiting for an opponent".into()),
                    Phase::Finished if !game.is_full() => {
                        return Err("waiting for an opponent to join".into())
                    }
                    Phase::Finished => {}
                }
                start_game(room, &mut game)?;
                store(room, &game)?;
                publish(room, &game)?;
                room.send_message("game_started", json!({"first": game.turn}), &[]);
                Ok(json!({"first": game.turn}))
            }
            other => Err(HandlerError::no_handler(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(cells: &str) -> Board {
        let mut b = [None; 9];
        for (i, c) in cells.chars().enumerate() {
            b[i] = match c {
                'X' => Some(Mark::X),
                'O' => Some(Mark::O),
                _ => None,
            };
        }
        b
    }

    #[test]
    fn outcome_finds_every_line_draws_and_games_in_progress() {
        assert_eq!(outcome(&board(".........")), Outcome::InProgress);
        for line in LINES {
            let mut b = [None; 9];
            for i in line {
                b[i] = Some(Mark::O);
            }
            assert_eq!(outcome(&b), Outcome::Won(Mark::O, line));
        }
        assert_eq!(outcome(&board("XOXXOOOXX")), Outcome::Draw);
        assert_eq!(outcome(&board("XOXXOOOX.")), Outcome::InProgress);
        // A full board with a line is a win, not a draw.
        assert_eq!(
            outcome(&board("XXXOOXOXO")),
            Outcome::Won(Mark::X, [0, 1, 2])
        );
    }

    #[test]
    fn turn_seconds_defaults_clamps_and_refuses_non_numbers() {
        assert_eq!(turn_seconds(&json!({})), Ok(30));
        assert_eq!(turn_seconds(&Value::Null), Ok(30));
        assert_eq!(turn_seconds(&json!({"turnSeconds": 5})), Ok(5));
        assert_eq!(turn_seconds(&json!({"turnSeconds": 0})), Ok(1));
        assert_eq!(turn_seconds(&json!({"turnSeconds": -3})), Ok(1));
        assert_eq!(turn_seconds(&json!({"turnSeconds": 500})), Ok(120));
        assert_eq!(turn_seconds(&json!({"turnSeconds": 2.6})), Ok(3));
        assert!(turn_seconds(&json!({"turnSeconds": "10"})).is_err());
    }

    #[test]
    fn parse_cell_accepts_0_to_8_only() {
        assert_eq!(parse_cell(&json!({"cell": 0})), Ok(0));
        assert_eq!(parse_cell(&json!({"cell": 8})), Ok(8));
        for bad in [
            json!({"cell": 9}),
            json!({"cell": -1}),
            json!({"cell": 1.5}),
            json!({"cell": "4"}),
            json!({}),
            json!(4),
        ] {
            assert!(parse_cell(&bad).is_err(), "{bad}");
        }
    }

    fn two_players() -> Game {
        let mut g = Game::default();
        assert_eq!(g.sit("alice"), Ok(Mark::X));
        assert_eq!(g.sit("bob"), Ok(Mark::O));
        assert!(g.sit("carol").is_err());
        g
    }

    #[test]
    fn a_game_is_played_to_a_win_with_turns_enforced() {
        let mut g = two_players();
        assert!(g.play(Mark::X, 0).unwrap_err().contains("waiting"));
        g.start(Mark::X);
        assert!(g.play(Mark::O, 4).unwrap_err().contains("not your turn"));
        assert_eq!(g.play(Mark::X, 0), Ok(Outcome::InProgress));
        assert!(g
            .play(Mark::O, 0)
            .unwrap_err()
            .contains("already taken by X"));
        g.play(Mark::O, 3).unwrap();
        g.play(Mark::X, 1).unwrap();
        g.play(Mark::O, 4).unwrap();
        assert_eq!(g.play(Mark::X, 2), Ok(Outcome::Won(Mark::X, [0, 1, 2])));
        assert_eq!(
            (g.phase, g.winner, g.reason, g.line, g.moves),
            (
                Phase::Finished,
                Some(Winner::X),
                Some(Reason::Line),
                Some([0, 1, 2]),
                5
            )
        );
        assert!(g.play(Mark::O, 8).unwrap_err().contains("RESTART"));
        // A restart keeps the seats and clears the rest.
        g.start(Mark::O);
        assert_eq!(g.players, two_players().players);
        assert_eq!(
            (g.turn, g.phase, g.moves, g.winner),
            (Mark::O, Phase::Playing, 0, None)
        );
        assert_eq!(g.board, [None; 9]);
    }

    #[test]
    fn a_full_board_without_a_line_is_a_draw() {
        let mut g = two_players();
        g.start(Mark::X);
        // X O X / X O O / O X X
        for (mark, cell) in [
            (Mark::X, 0),
            (Mark::O, 1),
            (Mark::X, 2),
            (Mark::O, 4),
            (Mark::X, 3),
            (Mark::O, 5),
            (Mark::X, 7),
            (Mark::O, 6),
        ] {
            assert_eq!(g.play(mark, cell), Ok(Outcome::InProgress));
        }
        assert_eq!(g.play(Mark::X, 8), Ok(Outcome::Draw));
        assert_eq!(
            (g.winner, g.reason),
            (Some(Winner::Draw), Some(Reason::Draw))
        );
    }

    #[test]
    fn a_timeout_loses_the_game_for_the_player_to_move() {
        let mut g = two_players();
        g.start(Mark::X);
        g.play(Mark::X, 4).unwrap();
        assert_eq!(g.time_out(), Mark::O);
        assert_eq!(
            (g.phase, g.winner, g.reason),
            (Phase::Finished, Some(Winner::X), Some(Reason::Timeout))
        );
    }

    #[test]
    fn seats_free_up_and_are_reused() {
        let mut g = two_players();
        assert_eq!(g.stand("alice"), Some(Mark::X));
        assert_eq!(g.stand("alice"), None);
        assert_eq!(g.free_mark(), Some(Mark::X));
        assert_eq!(g.sit("carol"), Ok(Mark::X));
        assert_eq!(g.mark_of("bob"), Some(Mark::O));
    }

    #[test]
    fn the_shared_state_has_the_documented_shape_and_round_trips() {
        let mut g = two_players();
        g.start(Mark::X);
        g.play(Mark::X, 4).unwrap();
        g.turn_deadline = Some(1_700_000_000_000);
        let v = g.to_value();
        assert_eq!(
            v,
            json!({
                "board": [null, null, null, null, "X", null, null, null, null],
                "players": {"X": "alice", "O": "bob"},
                "turn": "O",
                "phase": "playing",
                "moves": 1,
                "turnDeadline": 1_700_000_000_000u64,
            })
        );
        assert_eq!(serde_json::from_value::<Game>(v).unwrap(), g);
        g.finish(Winner::Draw, Reason::Draw);
        let v = g.to_value();
        assert_eq!(
            (&v["winner"], &v["reason"]),
            (&json!("draw"), &json!("draw"))
        );
        // What weft stores after stripping null members still loads.
        let empty = json!({"board": [null, null, null, null, null, null, null, null, null],
                           "players": {}, "turn": "X", "phase": "waiting"});
        assert_eq!(
            serde_json::from_value::<Game>(empty).unwrap(),
            Game::default()
        );
    }
}
