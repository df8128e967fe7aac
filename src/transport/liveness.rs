//! Liveness of the main runtime, where rooms and WebSocket sessions run.
//!
//! A room task that never yields (a costly frame, a blocking call in a game handler) holds its
//! worker thread: every task queued on that worker waits, while the other workers, and so any
//! heartbeat task, go on. So liveness is judged per worker, from tokio's stable runtime metrics:
//! a worker makes progress when it parks (it ran out of work) or finishes a batch of polls (its
//! busy time and park count move at least every 61 polls). An unparked worker whose counters
//! have not moved for `stale_after` is stuck in one poll. A watcher thread of its own (not a
//! task: it must run while the runtime cannot) samples the counters every `stale_after / 4`;
//! `/healthz`, served by actix's worker threads, reads the result and answers 503.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::RuntimeMetrics;

/// Whether the main runtime still makes progress, and how long it may stand still.
pub struct Liveness {
    /// The longest any worker had gone without progress, at the watcher's last sample (ms).
    stuck_ms: AtomicU64,
    stale_after: Duration,
}

impl Liveness {
    /// Starts watching `runtime`'s workers. The watcher stops once the returned value is dropped.
    pub fn start(runtime: &tokio::runtime::Handle, stale_after: Duration) -> Arc<Liveness> {
        let liveness = Arc::new(Liveness {
            stuck_ms: AtomicU64::new(0),
            stale_after,
        });
        // Without a thread the server still serves; only this check is lost, so say so.
        if let Err(e) = watch(Arc::downgrade(&liveness), runtime.metrics()) {
            tracing::error!(error = %e, "liveness watcher not started: /healthz cannot see stalls");
        }
        liveness
    }

    /// How long a worker of the runtime has made no progress, once that is longer than allowed.
    pub fn stalled_for(&self) -> Option<Duration> {
        let stuck = Duration::from_millis(self.stuck_ms.load(Ordering::Relaxed));
        (stuck > self.stale_after).then_some(stuck)
    }
}

/// What a worker's metrics say at one moment.
#[derive(Clone, Copy, PartialEq)]
struct WorkerSample {
    park_unpark_count: u64,
    busy: Duration,
}

impl WorkerSample {
    fn of(metrics: &RuntimeMetrics, worker: usize) -> WorkerSample {
        WorkerSample {
            park_unpark_count: metrics.worker_park_unpark_count(worker),
            busy: metrics.worker_total_busy_duration(worker),
        }
    }

    /// An odd count: the worker is parked, waiting for work.
    fn parked(self) -> bool {
        self.park_unpark_count % 2 == 1
    }
}

/// Spawns the watcher thread; it ends at its first sample after `liveness` is dropped.
fn watch(liveness: Weak<Liveness>, metrics: RuntimeMetrics) -> std::io::Result<JoinHandle<()>> {
    let interval = match liveness.upgrade() {
        Some(l) => (l.stale_after / 4).max(Duration::from_millis(1)),
        None => Duration::from_millis(1),
    };
    std::thread::Builder::new()
        .name("weft-liveness".into())
        .spawn(move || {
            let start = Instant::now();
            let mut workers: Vec<(WorkerSample, Instant)> = (0..metrics.num_workers())
                .map(|w| (WorkerSample::of(&metrics, w), start))
                .collect();
            loop {
                std::thread::sleep(interval);
                let Some(liveness) = liveness.upgrade() else {
                    return;
                };
                let now = Instant::now();
                let mut stuck = Duration::ZERO;
                for (w, (last, progressed_at)) in workers.iter_mut().enumerate() {
                    let sample = WorkerSample::of(&metrics, w);
                    if sample != *last || sample.parked() {
                        (*last, *progressed_at) = (sample, now);
                    }
                    stuck = stuck.max(now - *progressed_at);
                }
                let stuck_ms = u64::try_from(stuck.as_millis()).unwrap_or(u64::MAX);
                liveness.stuck_ms.store(stuck_ms, Ordering::Relaxed);
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `check` until it holds; panics after 10 s (a bound, not a timing claim).
    fn wait_until(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// One task that never yields holds one worker of two, while the other worker (and any
    /// heartbeat task) goes on: that is reported as a stall; once the task returns, the runtime
    /// is live again.
    #[test]
    fn one_blocked_worker_of_two_is_reported_stalled_until_it_runs_again() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let liveness = Liveness::start(runtime.handle(), Duration::from_millis(40));
        wait_until("the runtime is live", || liveness.stalled_for().is_none());

        let (unblock_tx, unblock_rx) = std::sync::mpsc::channel::<()>();
        let (blocked_tx, blocked_rx) = std::sync::mpsc::channel::<()>();
        // Holds a worker thread: nothing else runs on that worker.
        runtime.spawn(async move {
            let _ = blocked_tx.send(());
            let _ = unblock_rx.recv();
        });
        blocked_rx.recv().expect("the task runs");
        // The other worker still runs tasks.
        let other = runtime.spawn(async { 42 });
        assert_eq!(runtime.block_on(other).expect("the other worker runs"), 42);
        wait_until("the stall is reported", || liveness.stalled_for().is_some());

        unblock_tx.send(()).expect("unblock");
        wait_until("the runtime is live again", || {
            liveness.stalled_for().is_none()
        });
    }

    /// A single-threaded runtime blocked by a task is reported stalled.
    #[test]
    fn a_blocked_current_thread_runtime_is_reported_stalled() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let handle = runtime.handle().clone();
        let liveness = Liveness::start(&handle, Duration::from_millis(40));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let driver = std::thread::spawn(move || {
            let _ = runtime.block_on(stop_rx);
        });
        wait_until("the runtime is live", || liveness.stalled_for().is_none());
        let (unblock_tx, unblock_rx) = std::sync::mpsc::channel::<()>();
        handle.spawn(async move {
            let _ = unblock_rx.recv();
        });
        wait_until("the stall is reported", || liveness.stalled_for().is_some());
        unblock_tx.send(()).expect("unblock");
        wait_until("the runtime is live again", || {
            liveness.stalled_for().is_none()
        });
        stop_tx.send(()).expect("stop");
        driver.join().expect("driver thread");
    }

    /// A worker kept busy by tasks that yield (load, not a stall) is never reported stalled.
    #[test]
    fn a_busy_runtime_that_yields_is_live() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let liveness = Liveness::start(runtime.handle(), Duration::from_millis(40));
        runtime.block_on(async {
            let busy = tokio::spawn(async {
                let until = Instant::now() + Duration::from_millis(400);
                while Instant::now() < until {
                    tokio::task::yield_now().await;
                }
            });
            while !busy.is_finished() {
                assert_eq!(liveness.stalled_for(), None);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }

    /// The watcher thread ends once nobody reads the liveness any more.
    #[test]
    fn the_watcher_stops_when_the_liveness_is_dropped() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let liveness = Arc::new(Liveness {
            stuck_ms: AtomicU64::new(0),
            stale_after: Duration::from_millis(4),
        });
        let watcher = watch(Arc::downgrade(&liveness), runtime.handle().metrics()).expect("thread");
        drop(liveness);
        watcher.join().expect("the watcher ends");
    }
}
