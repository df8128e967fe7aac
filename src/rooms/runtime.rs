//! The one shape of a live room, whatever its protocol: a task that owns its state and waits on
//! three things, in this order: its [`Journal`] (writes made durable, a fold due, room in the
//! write budget), its commands (only while the journal accepts more), and its next deadline.
//! One event is handled at a time; after each, the room settles what the event left to do.
//! Canvas rooms and game rooms implement [`RoomTask`]; [`serve`] is the loop both run.

use std::future::Future;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::journal::{Journal, JournalEvent};

/// What a handled event asks of the loop.
pub(crate) enum Step<S> {
    Continue,
    /// The room ends, for this reason.
    Stop(S),
}

/// Why [`serve`] returned.
pub(crate) enum Ended<S> {
    /// The room stopped itself.
    Stopped(S),
    /// Every handle is gone: nobody can send it commands any more.
    Unreachable,
    /// A write could not be stored: the room's state is ahead of storage and must be dropped.
    WriteFailed,
}

/// A room's protocol side, as the loop drives it.
pub(crate) trait RoomTask: Send {
    type Command: Send;
    /// Why the room stops (the protocol's close reason, and whom to tell).
    type Stop: Send;

    fn journal(&mut self) -> &mut Journal;

    /// Writes became durable: send the frames held for them.
    fn released(&mut self);

    /// The room as a snapshot after the last appended batch (what a due fold stores).
    fn snapshot(&self) -> Option<Vec<u8>>;

    /// When the room next has something to do on its own (timers, ticks, eviction).
    fn next_deadline(&self) -> Option<Instant>;

    fn on_command(
        &mut self,
        command: Self::Command,
    ) -> impl Future<Output = Step<Self::Stop>> + Send;

    /// The deadline came (it may have moved since: check what is due).
    fn on_deadline(&mut self) -> impl Future<Output = Step<Self::Stop>> + Send;

    /// After every event: carry out what it left to do (disconnect slow clients, append the
    /// event's writes).
    fn after_event(&mut self) -> impl Future<Output = Step<Self::Stop>> + Send;
}

/// Runs the room until it stops, its handles are gone, or a write fails.
pub(crate) async fn serve<R: RoomTask>(
    room: &mut R,
    commands: &mut mpsc::Receiver<R::Command>,
) -> Ended<R::Stop> {
    loop {
        let deadline = room.next_deadline();
        // While a batch waits for the write budget (or too many are in flight), no new event
        // starts: a flood waits in the room's bounded command queue.
        let accepting = room.journal().accepting();
        // Biased: storage first (rare, and must not starve), then commands, then deadlines, so
        // a join already queued keeps a room its idle deadline would evict.
        let step = tokio::select! {
            biased;
            event = room.journal().next() => match event {
                Ok(JournalEvent::Durable) => {
                    room.released();
                    Step::Continue
                }
                Ok(JournalEvent::FoldDue) => {
                    if let Some(snapshot) = room.snapshot() {
                        let seq = room.journal().last();
                        room.journal().fold(seq, snapshot);
                    }
                    Step::Continue
                }
                Ok(JournalEvent::Queued) => Step::Continue,
                Err(_) => return Ended::WriteFailed,
            },
            command = commands.recv(), if accepting => match command {
                Some(command) => room.on_command(command).await,
                None => return Ended::Unreachable,
            },
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if accepting && deadline.is_some() => {
                room.on_deadline().await
            }
        };
        if let Step::Stop(reason) = step {
            return Ended::Stopped(reason);
        }
        if let Step::Stop(reason) = room.after_event().await {
            return Ended::Stopped(reason);
        }
        if room.journal().failed() {
            return Ended::WriteFailed;
        }
    }
}

/// Commands a room queues before senders wait, for both protocols. A connection waits for its
/// command to be queued before reading its next frame, so the queue holds at most one command
/// per connection (plus the server's own): a burst from many connections waits here instead of
/// blocking each other.
const COMMAND_QUEUE: usize = 4096;

/// A room task's command channel.
pub(crate) fn command_channel<T>() -> (mpsc::Sender<T>, mpsc::Receiver<T>) {
    mpsc::channel(COMMAND_QUEUE)
}

/// Queues a command for a room task, waiting while its queue is full; false when the room is
/// gone. The command is queued when this is called (it is no `async fn`), and the rare wait is
/// boxed: the future a connection awaits, which the session boxes with every frame, holds no
/// copy of the command and no channel send future.
pub(crate) fn send_command<T: Send>(
    tx: &mpsc::Sender<T>,
    command: T,
) -> impl Future<Output = bool> + Send + '_ {
    let waiting = match tx.try_send(command) {
        Ok(()) => Ok(true),
        Err(mpsc::error::TrySendError::Closed(_)) => Ok(false),
        Err(mpsc::error::TrySendError::Full(command)) => Err(Box::pin(tx.send(command))),
    };
    async move {
        match waiting {
            Ok(sent) => sent,
            Err(wait) => wait.await.is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command is queued when `send_command` is called, and the future a connection awaits
    /// (the session boxes it with every frame) carries no copy of the command, also when the
    /// queue is full and it has to wait.
    #[tokio::test]
    async fn send_command_queues_when_called_and_carries_no_command() {
        let (tx, mut rx) = mpsc::channel::<[u8; 512]>(1);
        let sending = send_command(&tx, [1; 512]);
        assert!(std::mem::size_of_val(&sending) <= 32);
        assert_eq!(
            rx.try_recv().ok(),
            Some([1; 512]),
            "queued before it is awaited"
        );
        assert!(sending.await);

        assert!(send_command(&tx, [2; 512]).await);
        let waiting = send_command(&tx, [3; 512]);
        assert!(std::mem::size_of_val(&waiting) <= 32);
        assert_eq!(rx.recv().await, Some([2; 512]));
        assert!(waiting.await, "queued once there is room");
        assert_eq!(rx.recv().await, Some([3; 512]));
        drop(rx);
        assert!(!send_command(&tx, [4; 512]).await, "the room is gone");
    }
}
