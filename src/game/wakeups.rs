//! Wake-ups of saved game rooms whose timers fall due while they are not loaded: one scheduler
//! task for all of them (not a sleeping task per room), cancelled with the server's tasks.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use super::manager::GameRooms;
use super::record::unix_ms;
use super::room::Command;
use crate::ids::RecordKey;
use crate::rooms::Tasks;

/// Rooms to load when their earliest timer is due (wall-clock milliseconds, so a due time saved
/// before a restart means the same after it). One entry per room and due time.
#[derive(Default)]
pub(super) struct Wakeups {
    due: Mutex<BTreeSet<(u64, RecordKey)>>,
    changed: Notify,
}

impl Wakeups {
    /// Loads `key` at `due_ms` unless it is loaded by then.
    pub fn add(&self, key: RecordKey, due_ms: u64) {
        self.lock().insert((due_ms, key));
        self.changed.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<(u64, RecordKey)>> {
        self.due.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The due rooms, taken out of the schedule.
    fn take_due(&self, now_ms: u64) -> Vec<RecordKey> {
        let mut due = self.lock();
        let mut keys = Vec::new();
        while due.first().is_some_and(|(at, _)| *at <= now_ms) {
            if let Some((_, key)) = due.pop_first() {
                keys.push(key);
            }
        }
        keys
    }

    /// Runs the schedule until shutdown: sleeps until the earliest due time (or a new entry),
    /// then wakes every due room that is not loaded, each in a task of its own.
    pub async fn run(&self, rooms: GameRooms, tasks: Tasks) {
        loop {
            let next = self.lock().first().map(|(due, _)| *due);
            let wait = async {
                match next {
                    Some(due) => {
                        let ms = due.saturating_sub(unix_ms());
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tasks.cancelled() => return,
                () = self.changed.notified() => continue,
                () = wait => {}
            }
            for key in self.take_due(unix_ms()) {
                if rooms.status(&key).is_some() {
                    continue;
                }
                let rooms = rooms.clone();
                tasks.spawn(async move {
                    if let Ok(handle) = rooms.handle(&key).await {
                        let _ = handle.send(Command::Wake).await;
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> RecordKey {
        RecordKey::parse(&format!("battle/{id}")).expect("key")
    }

    /// Due rooms come out in one piece, later ones stay; the same room and time is one entry.
    #[test]
    fn take_due_takes_only_what_is_due() {
        let wakeups = Wakeups::default();
        wakeups.add(key("a"), 100);
        wakeups.add(key("a"), 100);
        wakeups.add(key("b"), 200);
        wakeups.add(key("c"), 300);
        assert_eq!(wakeups.lock().len(), 3);
        assert_eq!(wakeups.take_due(99), Vec::<RecordKey>::new());
        assert_eq!(wakeups.take_due(200), vec![key("a"), key("b")]);
        assert_eq!(wakeups.take_due(1000), vec![key("c")]);
        assert!(wakeups.lock().is_empty());
    }
}
