//! The byte budget of the writer's queue: a room takes room in it for a batch before appending
//! the batch, and gives it back once the batch is written. A flood of writes then waits in its
//! room (which stops reading its bounded command queue) instead of queueing without bound.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default of the `storage_queue_bytes` setting.
pub const DEFAULT_STORAGE_QUEUE_BYTES: usize = 64 << 20;

/// Bytes that may be queued for the writer at once, shared by every room. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WriteBudget {
    bytes: Arc<Semaphore>,
    total: u32,
}

/// Room taken in the budget; given back when dropped (once its batch is written or failed).
#[derive(Debug)]
pub struct BudgetPermit(#[allow(dead_code)] OwnedSemaphorePermit);

impl WriteBudget {
    /// A budget of `total` bytes (at least 1, at most 4 GiB - 1).
    pub fn new(total: usize) -> WriteBudget {
        let total = u32::try_from(total).unwrap_or(u32::MAX).max(1);
        WriteBudget {
            bytes: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// What a batch of `len` bytes takes: a batch bigger than the whole budget takes all of it
    /// (it then waits for the queue to empty, and is written alone).
    fn share(&self, len: usize) -> u32 {
        u32::try_from(len).unwrap_or(u32::MAX).clamp(1, self.total)
    }

    /// Takes room for `len` bytes, waiting while the queue is full. Waiters are served in order.
    pub fn acquire(
        &self,
        len: usize,
    ) -> impl std::future::Future<Output = BudgetPermit> + Send + 'static {
        let (bytes, share) = (self.bytes.clone(), self.share(len));
        async move {
            match bytes.acquire_many_owned(share).await {
                Ok(permit) => BudgetPermit(permit),
                // The semaphore is never closed.
                Err(_) => unreachable!("the write budget is never closed"),
            }
        }
    }

    /// Takes room for `len` bytes if there is some now (and nobody waits before).
    pub fn try_acquire(&self, len: usize) -> Option<BudgetPermit> {
        self.bytes
            .clone()
            .try_acquire_many_owned(self.share(len))
            .ok()
            .map(BudgetPermit)
    }

    /// Bytes free right now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With a budget of 10 bytes, a third batch of 4 waits until an earlier one is written, and
    /// waiters are let through in order; a batch bigger than the budget waits for all of it.
    #[tokio::test]
    async fn batches_wait_for_room_and_go_in_order() {
        let budget = WriteBudget::new(10);
        let first = budget.acquire(4).await;
        let second = budget.acquire(4).await;
        assert!(budget.try_acquire(4).is_none(), "the budget is spent");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (name, len) in [("third", 4), ("huge", 1000), ("fourth", 1)] {
            let (wait, tx) = (budget.acquire(len), tx.clone());
            tokio::spawn(async move {
                let permit = wait.await;
                let _ = tx.send((name, permit));
            });
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err(), "nothing fits yet");
        drop(first);
        let (name, third) = rx.recv().await.expect("third");
        assert_eq!(name, "third");
        assert!(
            rx.try_recv().is_err(),
            "the huge batch waits for everything"
        );
        drop((second, third));
        let (name, huge) = rx.recv().await.expect("huge");
        assert_eq!(name, "huge");
        assert_eq!(budget.available(), 0);
        drop(huge);
        assert_eq!(rx.recv().await.expect("fourth").0, "fourth");
    }
}
