//! In-memory storage: the storage contract kept in a map. NOTHING survives the process: for
//! tests and throwaway rooms. Appends are "durable" as soon as they are in the map.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::{gapless_len, AppendDone, Storage, StorageError, Stored};
use crate::ids::RoomKey;

#[derive(Default)]
pub struct MemoryStorage {
    // A std Mutex: held only to copy bytes in or out, never across an await.
    rooms: Mutex<HashMap<RoomKey, Room>>,
}

#[derive(Default)]
struct Room {
    snapshot: Option<Vec<u8>>,
    log: BTreeMap<u64, Vec<u8>>,
}

impl MemoryStorage {
    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<RoomKey, Room>> {
        // A panic while holding the lock cannot leave the map half-written; keep serving.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Storage for MemoryStorage {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn load(&self, key: &RoomKey) -> Result<Option<Stored>, StorageError> {
        let mut rooms = self.rooms();
        let Some(room) = rooms.get_mut(key) else {
            return Ok(None);
        };
        let keep = gapless_len(room.log.keys().copied());
        if let Some(stale) = room.log.keys().nth(keep).copied() {
            tracing::warn!(room = %key, seq = stale, "log has a gap; dropping the unacknowledged tail");
            let _dropped = room.log.split_off(&stale);
        }
        Ok(Some(Stored {
            snapshot: room.snapshot.clone(),
            log: room.log.iter().map(|(s, b)| (*s, b.clone())).collect(),
        }))
    }

    fn append(&self, key: &RoomKey, seq: u64, bytes: Vec<u8>, done: AppendDone) {
        self.rooms()
            .entry(key.clone())
            .or_default()
            .log
            .insert(seq, bytes);
        done(Ok(()));
    }

    fn fold(&self, key: &RoomKey, seq: u64, snapshot: &[u8]) -> Result<(), StorageError> {
        let mut rooms = self.rooms();
        let room = rooms.entry(key.clone()).or_default();
        room.snapshot = Some(snapshot.to_vec());
        room.log = room.log.split_off(&seq.saturating_add(1));
        Ok(())
    }

    fn delete(&self, key: &RoomKey) -> Result<(), StorageError> {
        self.rooms().remove(key);
        Ok(())
    }

    fn list(&self) -> Result<Vec<RoomKey>, StorageError> {
        Ok(self.rooms().keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    /// The memory backend passes the storage contract.
    #[test]
    fn passes_the_contract() {
        super::super::contract::check(&super::MemoryStorage::default());
    }
}
