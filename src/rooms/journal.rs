//! [`Journal`]: a room's one path to storage, the same for canvas and game rooms.
//!
//! A room appends each batch of writes under a sequence number, and every frame it makes after
//! the batch is held in its [`Outbox`] until the append is durable (an ack is a promise; a
//! broadcast must not show a write a crash could undo). Appends take room in the shared
//! [`WriteBudget`] first; while one waits for it the room takes no new commands, so a flood waits
//! in the room's bounded queue. Now and then the room folds its state into a snapshot, which
//! trims the log: one fold in flight at a time, retried with backoff after failures.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tracing::{error, warn};

use super::session::{Delivery, Outbox};
use crate::ids::RoomKey;
use crate::metrics::Metrics;
use crate::storage::{BudgetPermit, Storage, StorageError, WriteBudget};

/// Appends a room may have in flight before it stops taking commands (backpressure to clients).
const MAX_APPENDS_IN_FLIGHT: usize = 1024;

/// How long a closing room waits for its appends in flight, so that the frames they hold reach
/// their clients before the close (a storage that takes longer has failed them anyway).
const SETTLE_APPENDS_LIMIT: Duration = Duration::from_secs(5);

/// What storage the journal writes to, shared by the rooms of a server.
#[derive(Clone)]
pub struct JournalConfig {
    pub storage: Arc<dyn Storage>,
    pub budget: WriteBudget,
    pub metrics: Arc<Metrics>,
}

/// Batches waiting for room in the write budget, in order, and the budget's answer for the
/// first (the budget serves its waiters in order, so only the first needs to ask).
#[derive(Default)]
struct Waiting {
    batches: VecDeque<(u64, Vec<u8>)>,
    permit: Option<Pin<Box<dyn Future<Output = BudgetPermit> + Send>>>,
}

/// Fold schedule: one fold per interval while the log grows, one in flight at a time.
#[derive(Default)]
struct Folds {
    /// Appended to since the last fold started.
    dirty: bool,
    /// When the next fold is due.
    at: Option<Instant>,
    in_flight: Option<JoinHandle<Result<(), StorageError>>>,
    /// Consecutive failures, for the retry backoff.
    failures: u32,
}

/// What the room must act on (see [`Journal::next`]).
#[derive(Debug)]
pub(crate) enum JournalEvent {
    /// More writes are durable: release the frames held for them ([`Journal::release`]).
    Durable,
    /// A fold is due: hand the room's state to [`Journal::fold`].
    FoldDue,
    /// A batch that waited for the write budget is queued (once none waits, the room takes
    /// commands again).
    Queued,
}

pub(crate) struct Journal {
    key: RoomKey,
    config: JournalConfig,
    fold_interval: Duration,
    /// The sequence number of the last batch appended (or waiting to be).
    last: u64,
    /// Every batch up to this one is durable; frames tagged later wait.
    durable: u64,
    /// Appends queued and not yet confirmed.
    appending: usize,
    waiting: Waiting,
    durable_tx: mpsc::Sender<Result<u64, StorageError>>,
    durable_rx: mpsc::Receiver<Result<u64, StorageError>>,
    /// Outboxes of connections that are gone from the room with frames still held: kept until
    /// those are released, so the connection sends them before its close.
    leaving: Vec<(Outbox, Option<super::CloseReason>)>,
    folds: Folds,
    /// An append failed: the room's state is ahead of storage and must be dropped.
    failed: bool,
}

impl Journal {
    pub(crate) fn new(key: RoomKey, config: JournalConfig, fold_interval: Duration) -> Journal {
        let (durable_tx, durable_rx) = mpsc::channel(MAX_APPENDS_IN_FLIGHT);
        Journal {
            key,
            config,
            fold_interval,
            last: 0,
            durable: 0,
            appending: 0,
            waiting: Waiting::default(),
            durable_tx,
            durable_rx,
            leaving: Vec::new(),
            folds: Folds::default(),
            failed: false,
        }
    }

    pub(crate) fn key(&self) -> &RoomKey {
        &self.key
    }

    pub(crate) fn storage(&self) -> &Arc<dyn Storage> {
        &self.config.storage
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.config.metrics
    }

    /// After a load: everything up to `seq` is stored.
    pub(crate) fn resume(&mut self, seq: u64) {
        self.last = seq;
        self.durable = seq;
    }

    /// The sequence number of the last batch appended.
    pub(crate) fn last(&self) -> u64 {
        self.last
    }

    /// Whether an append failed (the room must close without folding).
    pub(crate) fn failed(&self) -> bool {
        self.failed
    }

    /// Stops the room's writes for good (a batch it made cannot be stored): nothing more is
    /// released, and the room closes without folding.
    pub(crate) fn fail(&mut self) {
        self.failed = true;
        self.leaving.clear();
    }

    /// Whether the room may take another command: not while a batch waits for the budget or
    /// too many appends are in flight.
    pub(crate) fn accepting(&self) -> bool {
        self.waiting.batches.is_empty() && self.appending < MAX_APPENDS_IN_FLIGHT
    }

    /// Appends `bytes` as batch `seq` (after the last one) once the write budget has room.
    pub(crate) fn append(&mut self, seq: u64, bytes: Vec<u8>) {
        self.last = seq;
        self.mark_dirty();
        if self.waiting.batches.is_empty() {
            if let Some(permit) = self.config.budget.try_acquire(bytes.len()) {
                self.queue(seq, bytes, permit);
                return;
            }
        }
        Metrics::inc(&self.config.metrics.appends_waited);
        self.waiting.batches.push_back((seq, bytes));
        self.ask_budget();
    }

    /// Asks the budget for room for the first waiting batch, unless that is asked already.
    fn ask_budget(&mut self) {
        if self.waiting.permit.is_none() {
            if let Some((_, bytes)) = self.waiting.batches.front() {
                self.waiting.permit = Some(Box::pin(self.config.budget.acquire(bytes.len())));
            }
        }
    }

    /// The first waiting batch got room: it is queued.
    fn queue_first_waiting(&mut self, permit: BudgetPermit) {
        self.waiting.permit = None;
        if let Some((seq, bytes)) = self.waiting.batches.pop_front() {
            self.queue(seq, bytes, permit);
        }
        self.ask_budget();
    }

    /// Queues the batch; its room in the budget is given back once it is written (or failed).
    fn queue(&mut self, seq: u64, bytes: Vec<u8>, permit: BudgetPermit) {
        self.appending += 1;
        let durable_tx = self.durable_tx.clone();
        self.config.storage.append(
            &self.key,
            seq,
            bytes,
            Box::new(move |result| {
                drop(permit);
                // Capacity equals the in-flight limit, so this never finds the channel full.
                let _ = durable_tx.try_send(result.map(|()| seq));
            }),
        );
    }

    /// Sends a frame that shows the writes up to batch `tag`: it leaves once they are durable.
    pub(crate) fn send(&self, outbox: &mut Outbox, frame: &ByteString, tag: u64) -> Delivery {
        outbox.send(frame, tag, self.durable)
    }

    /// Sends the frames of `outbox` that are durable now.
    pub(crate) fn release(&self, outbox: &mut Outbox) {
        if outbox.has_held() {
            outbox.release(self.durable);
        }
    }

    /// Lets a connection go: closed with `reason` (or left to close itself) once the frames it
    /// holds are released.
    pub(crate) fn let_go(&mut self, mut outbox: Outbox, reason: Option<super::CloseReason>) {
        if outbox.has_held() {
            self.leaving.push((outbox, reason));
        } else if let Some(reason) = reason {
            outbox.close(reason);
        }
    }

    fn release_leaving(&mut self) {
        let durable = self.durable;
        self.leaving.retain_mut(|(outbox, reason)| {
            if outbox.release(durable) == Delivery::Queued && outbox.has_held() {
                return true;
            }
            if let Some(reason) = reason.take() {
                outbox.close(reason);
            }
            false
        });
    }

    /// Waits for what the room must act on; meanwhile records finished folds. Pending while there is nothing to wait for. Cancel-safe.
    /// An `Err` is a failed append: the room must close without folding.
    pub(crate) async fn next(&mut self) -> Result<JournalEvent, StorageError> {
        loop {
            // No fold while a batch waits to be appended: the fold must follow it.
            let fold_at = self
                .folds
                .at
                .filter(|_| self.folds.in_flight.is_none() && self.waiting.batches.is_empty());
            tokio::select! {
                biased;
                Some(result) = self.durable_rx.recv(), if self.appending > 0 => {
                    self.appending -= 1;
                    return self.confirmed(result).map(|()| JournalEvent::Durable);
                }
                result = wait_fold(&mut self.folds.in_flight), if self.folds.in_flight.is_some() => {
                    self.folds.in_flight = None;
                    self.folded(result);
                }
                permit = wait_for_budget(&mut self.waiting), if self.waiting.permit.is_some() => {
                    self.queue_first_waiting(permit);
                    return Ok(JournalEvent::Queued);
                }
                () = sleep_until(fold_at.unwrap_or_else(Instant::now)), if fold_at.is_some() => {
                    self.folds.at = None;
                    return Ok(JournalEvent::FoldDue);
                }
                else => std::future::pending().await,
            }
        }
    }

    fn confirmed(&mut self, result: Result<u64, StorageError>) -> Result<(), StorageError> {
        match result {
            Ok(seq) => {
                self.durable = self.durable.max(seq);
                self.release_leaving();
                Ok(())
            }
            Err(e) => {
                error!(error = %e, "append failed; dropping the room's unsaved state");
                Metrics::inc(&self.config.metrics.storage_errors);
                self.fail();
                Err(e)
            }
        }
    }

    fn mark_dirty(&mut self) {
        self.folds.dirty = true;
        if self.folds.at.is_none() && self.folds.in_flight.is_none() {
            self.folds.at = Some(Instant::now() + self.fold_interval);
        }
    }

    /// Starts folding `snapshot` (the room's state after batch `seq`) into storage.
    pub(crate) fn fold(&mut self, seq: u64, snapshot: Vec<u8>) {
        self.folds.at = None;
        self.folds.dirty = false;
        let (storage, key) = (self.config.storage.clone(), self.key.clone());
        self.folds.in_flight = Some(tokio::task::spawn_blocking(move || {
            storage.fold(&key, seq, &snapshot)
        }));
    }

    fn folded(&mut self, result: Result<(), StorageError>) {
        match result {
            Ok(()) => {
                Metrics::inc(&self.config.metrics.snapshots_saved);
                self.folds.failures = 0;
                if self.folds.dirty && self.folds.at.is_none() {
                    self.folds.at = Some(Instant::now() + self.fold_interval);
                }
            }
            Err(e) => {
                Metrics::inc(&self.config.metrics.storage_errors);
                self.folds.failures += 1;
                let retry = retry_delay(self.folds.failures);
                error!(error = %e, retry_in = ?retry, "folding room failed; its log keeps the writes; retrying");
                self.folds.dirty = true;
                self.folds.at = Some(Instant::now() + retry);
            }
        }
    }

    /// Appends the batch waiting for budget and waits (at most [`SETTLE_APPENDS_LIMIT`]) until
    /// every batch is durable, then releases what the connections that left still hold. After
    /// a failed append nothing more is released: a later batch's success does not make the
    /// failed one durable. True if everything appended is durable (the caller says what a
    /// false means where it is).
    pub(crate) async fn settle(&mut self) -> bool {
        let settled = tokio::time::timeout(SETTLE_APPENDS_LIMIT, async {
            while self.waiting.permit.is_some() {
                let permit = wait_for_budget(&mut self.waiting).await;
                self.queue_first_waiting(permit);
            }
            while self.appending > 0 && !self.failed {
                let Some(result) = self.durable_rx.recv().await else {
                    return;
                };
                self.appending -= 1;
                let _ = self.confirmed(result);
            }
        })
        .await;
        settled.is_ok() && !self.failed && self.appending == 0 && self.waiting.batches.is_empty()
    }

    /// The end of the room's writes: waits for the fold in flight, then, unless an append failed,
    /// folds `snapshot()` (the state after the last batch) if anything was appended since the
    /// last fold, retrying a few times (the log holds the writes anyway).
    pub(crate) async fn close(
        &mut self,
        snapshot: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Result<(), StorageError> {
        self.leaving.clear();
        let mut result = Ok(());
        if let Some(in_flight) = self.folds.in_flight.take() {
            result = wait_fold(&mut Some(in_flight)).await;
            if result.is_ok() {
                Metrics::inc(&self.config.metrics.snapshots_saved);
            }
        }
        if self.failed || !(self.folds.dirty || result.is_err()) {
            return result;
        }
        let Some(bytes) = snapshot() else {
            return result;
        };
        let (bytes, seq) = (Arc::new(bytes), self.last);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (storage, key, bytes) =
                (self.config.storage.clone(), self.key.clone(), bytes.clone());
            let result = tokio::task::spawn_blocking(move || storage.fold(&key, seq, &bytes))
                .await
                .unwrap_or_else(|e| Err(panicked(&self.key, e)));
            match result {
                Ok(()) => {
                    Metrics::inc(&self.config.metrics.snapshots_saved);
                    self.folds.dirty = false;
                    return Ok(());
                }
                Err(e) if attempt < 3 => {
                    Metrics::inc(&self.config.metrics.storage_errors);
                    warn!(error = %e, attempt, "final fold failed, retrying");
                    tokio::time::sleep(retry_delay(attempt)).await;
                }
                Err(e) => {
                    Metrics::inc(&self.config.metrics.storage_errors);
                    error!(error = %e, "final fold failed; the room's log still holds its writes");
                    return Err(e);
                }
            }
        }
    }
}

/// The write budget's answer for the first waiting batch (pending forever when none waits).
async fn wait_for_budget(waiting: &mut Waiting) -> BudgetPermit {
    match waiting.permit.as_mut() {
        Some(permit) => permit.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn wait_fold(
    in_flight: &mut Option<JoinHandle<Result<(), StorageError>>>,
) -> Result<(), StorageError> {
    match in_flight.as_mut() {
        Some(handle) => handle.await.unwrap_or_else(|e| {
            Err(StorageError::Io {
                room: String::new(),
                source: std::io::Error::other(format!("fold task failed: {e}")),
            })
        }),
        None => std::future::pending().await,
    }
}

/// A storage task that panicked, as a storage error of the room.
pub(crate) fn panicked(key: &RoomKey, e: tokio::task::JoinError) -> StorageError {
    StorageError::Io {
        room: key.to_string(),
        source: std::io::Error::other(format!("storage task failed: {e}")),
    }
}

/// Backoff after `failures` consecutive storage failures: 0.5 s doubling, at most 30 s.
fn retry_delay(failures: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << failures.min(6)).min(30_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RoomId;
    use crate::storage::{Appends, GatedStorage};

    /// Batches that find the write budget full wait in order, however many there are (a room
    /// closing may append after one is waiting), and reach storage in seq order.
    #[tokio::test]
    async fn batches_waiting_for_the_budget_keep_their_order() {
        let storage = Arc::new(GatedStorage::new(Appends::Hold));
        let config = JournalConfig {
            storage: storage.clone(),
            budget: WriteBudget::new(10),
            metrics: Arc::new(Metrics::default()),
        };
        let key = RoomKey::Canvas(RoomId::parse("j").expect("id"));
        let mut journal = Journal::new(key, config, Duration::from_secs(60));
        for seq in 1..=3 {
            journal.append(seq, vec![b'x'; 10]);
        }
        assert!(!journal.accepting(), "two batches wait for the budget");
        assert_eq!(storage.held(), 1);
        while storage.written().len() < 3 {
            storage.confirm_held();
            let event = tokio::time::timeout(Duration::from_secs(5), journal.next())
                .await
                .expect("the journal moves on");
            assert!(event.is_ok());
        }
        assert_eq!(storage.written(), vec![1, 2, 3]);
        assert!(journal.settle().await);
        assert!(journal.accepting());
    }
}
