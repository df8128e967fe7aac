//! [`GatedStorage`]: a storage double for tests of weft and of servers built on it. It is memory
//! storage whose appends can be held (unanswered, unwritten) until the test confirms them, or
//! refused, so a test can see what a room does before and after its writes are durable.

use std::sync::Mutex;

use super::{AppendDone, MemoryStorage, Storage, StorageError, Stored};
use crate::ids::RoomKey;

/// What [`GatedStorage`] does with an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appends {
    /// Written at once.
    Pass,
    /// Held until [`GatedStorage::confirm_held`].
    Hold,
    /// Refused with an IO error.
    Fail,
}

/// An append held back: its room, seq, bytes and completion.
type HeldAppend = (RoomKey, u64, Vec<u8>, AppendDone);

/// Memory storage whose appends pass, wait, or fail, as the test says.
pub struct GatedStorage {
    inner: MemoryStorage,
    mode: Mutex<Appends>,
    held: Mutex<Vec<HeldAppend>>,
    /// Seqs of the appends written so far, in order.
    written: Mutex<Vec<u64>>,
}

impl GatedStorage {
    pub fn new(mode: Appends) -> GatedStorage {
        GatedStorage {
            inner: MemoryStorage::default(),
            mode: Mutex::new(mode),
            held: Mutex::new(Vec::new()),
            written: Mutex::new(Vec::new()),
        }
    }

    /// What later appends meet.
    pub fn set(&self, mode: Appends) {
        *lock(&self.mode) = mode;
    }

    /// Appends held now.
    pub fn held(&self) -> usize {
        lock(&self.held).len()
    }

    /// Seqs of the appends written so far, in order.
    pub fn written(&self) -> Vec<u64> {
        lock(&self.written).clone()
    }

    /// Writes every append held so far (and answers them); later ones meet the mode as set.
    pub fn confirm_held(&self) {
        let held = std::mem::take(&mut *lock(&self.held));
        for (key, seq, bytes, done) in held {
            self.write(&key, seq, bytes, done);
        }
    }

    fn write(&self, key: &RoomKey, seq: u64, bytes: Vec<u8>, done: AppendDone) {
        lock(&self.written).push(seq);
        self.inner.append(key, seq, bytes, done);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Storage for GatedStorage {
    fn name(&self) -> &'static str {
        "gated"
    }

    fn load(&self, key: &RoomKey) -> Result<Option<Stored>, StorageError> {
        self.inner.load(key)
    }

    fn append(&self, key: &RoomKey, seq: u64, bytes: Vec<u8>, done: AppendDone) {
        let mode = *lock(&self.mode);
        match mode {
            Appends::Pass => self.write(key, seq, bytes, done),
            Appends::Hold => lock(&self.held).push((key.clone(), seq, bytes, done)),
            Appends::Fail => done(Err(StorageError::Io {
                room: key.to_string(),
                source: std::io::Error::other("append refused (GatedStorage)"),
            })),
        }
    }

    fn fold(&self, key: &RoomKey, seq: u64, snapshot: &[u8]) -> Result<(), StorageError> {
        self.inner.fold(key, seq, snapshot)
    }

    fn delete(&self, key: &RoomKey) -> Result<(), StorageError> {
        self.inner.delete(key)
    }

    fn list(&self) -> Result<Vec<RoomKey>, StorageError> {
        self.inner.list()
    }
}
