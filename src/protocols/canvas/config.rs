//! What every canvas room runs with.

use std::time::Duration;

use crate::engine::Limits;

/// Settings every room runs with.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// An empty room is closed (saved and dropped from memory) after this long.
    pub idle_timeout: Duration,
    /// How often a changing room's log is folded into its snapshot.
    pub fold_interval: Duration,
    pub limits: Limits,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            idle_timeout: Duration::from_secs(30),
            fold_interval: Duration::from_secs(30),
            limits: Limits::default(),
        }
    }
}
