//! In-memory storage: snapshots kept as bytes, so it exercises the same encode/decode path as a
//! real backend. Nothing survives the process.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{decode_within, Storage, StorageError};
use crate::engine::{Document, Limits};
use crate::ids::{RecordKey, RoomId};

#[derive(Default)]
pub struct MemoryStorage {
    // A std Mutex: held only to copy bytes in or out, never across an await.
    rooms: Mutex<HashMap<RoomId, Vec<u8>>>,
    records: Mutex<HashMap<RecordKey, Vec<u8>>>,
}

impl MemoryStorage {
    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, Vec<u8>>> {
        // A panic while holding the lock cannot leave the map half-written; keep serving.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<RecordKey, Vec<u8>>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Storage for MemoryStorage {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn load(&self, room: &RoomId, limits: &Limits) -> Result<Option<Document>, StorageError> {
        let bytes = self.rooms().get(room).cloned();
        bytes.map(|b| decode_within(room, &b, limits)).transpose()
    }

    fn save(&self, room: &RoomId, snapshot: &[u8]) -> Result<(), StorageError> {
        self.rooms().insert(room.clone(), snapshot.to_vec());
        Ok(())
    }

    fn delete(&self, room: &RoomId) -> Result<(), StorageError> {
        self.rooms().remove(room);
        Ok(())
    }

    fn room_ids(&self) -> Result<Vec<RoomId>, StorageError> {
        Ok(self.rooms().keys().cloned().collect())
    }

    fn load_record(&self, key: &RecordKey) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.records().get(key).cloned())
    }

    fn save_record(&self, key: &RecordKey, bytes: &[u8]) -> Result<(), StorageError> {
        self.records().insert(key.clone(), bytes.to_vec());
        Ok(())
    }

    fn delete_record(&self, key: &RecordKey) -> Result<(), StorageError> {
        self.records().remove(key);
        Ok(())
    }

    fn record_keys(&self) -> Result<Vec<RecordKey>, StorageError> {
        Ok(self.records().keys().cloned().collect())
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
