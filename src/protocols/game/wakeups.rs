//! Wake-ups of saved game rooms whose timers fall due while they are not loaded: one scheduler
//! task for all of them (not a sleeping task per room), cancelled with the server's tasks.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use super::record::unix_ms;
use crate::ids::RecordKey;
use crate::rooms::{Schedule, Tasks};

/// Rooms to load when their earliest timer is due (wall-clock milliseconds, so a due time saved
/// before a restart means the same after it). One entry per room: its latest due time.
#[derive(Default)]
pub(super) struct Wakeups {
    due: Mutex<Schedule<RecordKey, u64>>,
    changed: Notify,
}

impl Wakeups {
    /// Loads `key` at `due_ms` unless it is loaded by then.
    pub fn add(&self, key: RecordKey, due_ms: u64) {
        self.lock().set(key, due_ms);
        self.changed.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Schedule<RecordKey, u64>> {
        self.due.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The due rooms, taken out of the schedule.
    fn take_due(&self, now_ms: u64) -> Vec<RecordKey> {
        let due = self.lock().take_due(now_ms);
        due.into_iter().map(|(_, key)| key).collect()
    }

    /// Runs the schedule until shutdown: sleeps until the earliest due time (or a new entry),
    /// then calls `wake` for every due room.
    pub async fn run(&self, tasks: &Tasks, wake: impl Fn(RecordKey)) {
        loop {
            let next = self.lock().next();
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
                wake(key);
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

    /// Due rooms come out in one piece, later ones stay; a room is due once, at its latest time.
    #[test]
    fn take_due_takes_only_what_is_due() {
        let wakeups = Wakeups::default();
        wakeups.add(key("a"), 50);
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
