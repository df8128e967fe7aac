//! Every task weft spawns, in one place: tracked, so that shutdown waits for all of them, and
//! cancelled through one token (long-lived background work stops when shutdown begins).

use std::future::Future;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The server's tasks: where they run, who tracks them, what cancels them. Cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// The server's main runtime: rooms and connections run here, whichever thread spawns them.
    runtime: Handle,
}

impl Tasks {
    /// Tasks on the current tokio runtime.
    pub fn current() -> Tasks {
        Tasks {
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            runtime: Handle::current(),
        }
    }

    /// Spawns a tracked task on the server's runtime.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn_on(task, &self.runtime)
    }

    /// Resolves once shutdown has begun: background loops end on it.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Tracked tasks still running.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }

    /// Cancels background work and waits for every tracked task to end, at most `limit`.
    /// Returns how many are still running then (0: all ended).
    pub async fn shutdown(&self, limit: Duration) -> usize {
        self.cancel.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(limit, self.tracker.wait()).await;
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shutdown cancels background loops and waits for tasks that end on their own; a task that
    /// ignores the token is reported as still running once the limit has passed.
    #[tokio::test(start_paused = true)]
    async fn shutdown_cancels_and_waits_for_every_task() {
        let tasks = Tasks::current();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let background = tasks.clone();
        let tx = done_tx.clone();
        tasks.spawn(async move {
            background.cancelled().await;
            let _ = tx.send("background");
        });
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let _ = done_tx.send("finite");
        });
        assert_eq!(tasks.running(), 2);
        assert_eq!(tasks.shutdown(Duration::from_secs(10)).await, 0);
        let mut ended = vec![done_rx.recv().await, done_rx.recv().await];
        ended.sort();
        assert_eq!(ended, vec![Some("background"), Some("finite")]);

        let tasks = Tasks::current();
        tasks.spawn(std::future::pending::<()>());
        assert_eq!(tasks.shutdown(Duration::from_secs(1)).await, 1);
    }
}
