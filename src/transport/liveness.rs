//! Liveness of the main runtime, where rooms and WebSocket sessions run.
//!
//! A task on that runtime stamps the time every `stale_after / 4`; `/healthz`, served by actix's
//! worker threads (another runtime), reads the stamp. A runtime whose threads are all stuck (a
//! room task that never yields, a blocking call) cannot run the heartbeat, so its stamp ages and
//! `/healthz` answers 503. The stamp is wall-clock (`std::time::Instant`): a stall is real time
//! lost, whatever tokio's clock says.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// The main runtime's heartbeat, and how old it may get.
pub struct Liveness {
    origin: Instant,
    /// Milliseconds after `origin` of the last beat.
    last_beat_ms: AtomicU64,
    stale_after: Duration,
}

impl Liveness {
    /// Starts the heartbeat on `runtime`. It stops by itself once the returned value is dropped.
    pub fn start(runtime: &tokio::runtime::Handle, stale_after: Duration) -> Arc<Liveness> {
        let liveness = Arc::new(Liveness {
            origin: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            stale_after,
        });
        let interval = (stale_after / 4).max(Duration::from_millis(1));
        runtime.spawn(heartbeat(Arc::downgrade(&liveness), interval));
        liveness
    }

    /// How long the runtime has made no progress, once that is longer than allowed.
    pub fn stalled_for(&self) -> Option<Duration> {
        let last = Duration::from_millis(self.last_beat_ms.load(Ordering::Relaxed));
        let silent = self.origin.elapsed().saturating_sub(last);
        (silent > self.stale_after).then_some(silent)
    }

    fn beat(&self) {
        let now = self.origin.elapsed().as_millis();
        self.last_beat_ms
            .store(u64::try_from(now).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

async fn heartbeat(liveness: Weak<Liveness>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    // After a stall, beat once and go on; a burst of missed beats says nothing more.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match liveness.upgrade() {
            Some(liveness) => liveness.beat(),
            None => return,
        }
    }
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

    /// A runtime whose only thread is blocked by a task that never yields is reported stalled;
    /// once the task returns, the heartbeat runs again and the runtime is live.
    #[test]
    fn a_blocked_runtime_is_reported_stalled_until_it_runs_again() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
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
        // Blocks the runtime's thread: nothing else on it runs, the heartbeat included.
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

    /// The heartbeat task ends once nobody reads the liveness any more.
    #[tokio::test]
    async fn heartbeat_stops_when_the_liveness_is_dropped() {
        let liveness =
            Liveness::start(&tokio::runtime::Handle::current(), Duration::from_millis(4));
        let weak = Arc::downgrade(&liveness);
        let task = tokio::spawn(heartbeat(weak, Duration::from_millis(1)));
        drop(liveness);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("heartbeat ends")
            .expect("heartbeat task");
    }
}
