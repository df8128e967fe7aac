//! [`Registry`]: the live rooms by [`RoomKey`], for canvas and game rooms alike. Each room is
//! loaded once, even under concurrent connects; a room being closed finishes its final fold
//! before its key loads again (so the new one reads what the old one stored); shutdown refuses
//! new rooms and closes every room at once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

use crate::ids::RoomKey;

enum Slot<H> {
    Open {
        handle: H,
        generation: u64,
    },
    /// Closing: folding its last state. Waiters wake when the room drops the sender.
    Closing(watch::Receiver<()>),
}

/// The server is shutting down and loads no more rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("server shutting down")]
pub struct ShuttingDown;

/// Held by a closing room until its final fold is done; dropped, it lets the key load again.
pub(crate) struct ClosingGuard(#[allow(dead_code)] watch::Sender<()>);

pub(crate) struct Registry<H> {
    slots: Mutex<HashMap<RoomKey, Slot<H>>>,
    shutting_down: AtomicBool,
    next_generation: AtomicU64,
}

impl<H: Clone> Default for Registry<H> {
    fn default() -> Self {
        Registry {
            slots: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            next_generation: AtomicU64::new(1),
        }
    }
}

impl<H: Clone> Registry<H> {
    fn slots(&self) -> MutexGuard<'_, HashMap<RoomKey, Slot<H>>> {
        // Held only for map lookups and inserts, never across an await; a panic elsewhere cannot
        // leave the map inconsistent, so a poisoned lock is still usable.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live room's handle, or a new room's: `spawn(generation)` starts it (and its load).
    /// Waits while the key's previous room is closing.
    pub(crate) async fn get_or_spawn(
        &self,
        key: &RoomKey,
        spawn: impl FnOnce(u64) -> H,
    ) -> Result<H, ShuttingDown> {
        loop {
            let mut closing = {
                let mut slots = self.slots();
                if self.shutting_down.load(Ordering::SeqCst) {
                    return Err(ShuttingDown);
                }
                match slots.get(key) {
                    Some(Slot::Open { handle, .. }) => return Ok(handle.clone()),
                    Some(Slot::Closing(done)) => done.clone(),
                    None => {
                        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                        let handle = spawn(generation);
                        let slot = Slot::Open {
                            handle: handle.clone(),
                            generation,
                        };
                        slots.insert(key.clone(), slot);
                        return Ok(handle);
                    }
                }
            };
            // Resolves (with an error) once the closing room dropped its guard.
            let _ = closing.changed().await;
        }
    }

    /// The room's handle if it is live; never loads.
    pub(crate) fn existing(&self, key: &RoomKey) -> Option<H> {
        match self.slots().get(key) {
            Some(Slot::Open { handle, .. }) => Some(handle.clone()),
            _ => None,
        }
    }

    /// Every live room.
    pub(crate) fn open(&self) -> Vec<(RoomKey, H)> {
        self.slots()
            .iter()
            .filter_map(|(key, slot)| match slot {
                Slot::Open { handle, .. } => Some((key.clone(), handle.clone())),
                Slot::Closing(_) => None,
            })
            .collect()
    }

    /// The room of `generation` starts closing: no new handle for its key until the guard is
    /// dropped (after its final fold) and [`Registry::finish_close`] is called.
    pub(crate) fn begin_close(&self, key: &RoomKey, generation: u64) -> ClosingGuard {
        let (tx, rx) = watch::channel(());
        let mut slots = self.slots();
        if matches!(slots.get(key), Some(Slot::Open { generation: g, .. }) if *g == generation) {
            slots.insert(key.clone(), Slot::Closing(rx));
        }
        ClosingGuard(tx)
    }

    /// Forgets a room that finished closing.
    pub(crate) fn finish_close(&self, key: &RoomKey, generation: u64) {
        let mut slots = self.slots();
        let this_room = match slots.get(key) {
            Some(Slot::Closing(_)) => true,
            Some(Slot::Open { generation: g, .. }) => *g == generation,
            None => false,
        };
        if this_room {
            slots.remove(key);
        }
    }

    /// Shutdown: refuses new rooms, closes every live room with `close`, all at once, and waits
    /// for those already closing. Returns what the closes failed with.
    pub(crate) async fn close_all<F, Fut, E>(&self, close: F) -> Vec<E>
    where
        F: Fn(RoomKey, H) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Send + 'static,
    {
        self.shutting_down.store(true, Ordering::SeqCst);
        let mut closing = Vec::new();
        let mut open = Vec::new();
        for (key, slot) in self.slots().iter() {
            match slot {
                Slot::Open { handle, .. } => open.push((key.clone(), handle.clone())),
                Slot::Closing(done) => closing.push(done.clone()),
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (key, handle) in open {
            tasks.spawn(close(key, handle));
        }
        for mut done in closing {
            tasks.spawn(async move {
                let _ = done.changed().await;
                Ok(())
            });
        }
        let mut errors = Vec::new();
        while let Some(result) = tasks.join_next().await {
            if let Ok(Err(e)) = result {
                errors.push(e);
            }
        }
        errors
    }
}
