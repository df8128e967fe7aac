//! What every canvas room runs with.

use std::time::Duration;

use crate::engine::Limits;
use crate::storage::WriteBudget;

/// Settings every room runs with.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// An empty room is closed (saved and dropped from memory) after this long.
    pub idle_timeout: Duration,
    /// How often a changing room's log is folded into its snapshot.
    pub fold_interval: Duration,
    /// Commands a room queues before senders wait.
    pub command_queue: usize,
    pub limits: Limits,
    /// Bytes of appends queued for the storage writer at once, shared by every room of the
    /// manager: a room waits for room in it before it appends.
    pub write_budget: WriteBudget,
}

/// Default of the `storage_queue_bytes` setting.
pub const DEFAULT_STORAGE_QUEUE_BYTES: usize = 64 << 20;

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            idle_timeout: Duration::from_secs(30),
            fold_interval: Duration::from_secs(30),
            command_queue: 4096,
            limits: Limits::default(),
            write_budget: WriteBudget::new(DEFAULT_STORAGE_QUEUE_BYTES),
        }
    }
}
