//! A namespace's options: the EdgeBase Rooms namespace options with their defaults and ranges,
//! plus the Colyseus-model settings weft adds.

use std::time::Duration;

/// Options of one namespace. Build with `NamespaceOptions::default()` and struct update syntax;
/// [`NamespaceOptions::validate`] runs when the namespace is registered.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceOptions {
    /// Players per room (1 to 32,768; default 100). A room can lower it at run time.
    pub max_players: usize,
    /// Largest combined size of the shared state and every player state, as compact JSON
    /// (1 KiB to 10 MiB; default 1 MiB). A mutation that would exceed it is refused.
    pub max_state_size: usize,
    /// How long a disconnected player keeps its seat before `on_leave(Disconnect)` (default 30 s;
    /// zero: at once).
    pub reconnect_timeout: Duration,
    /// `send` calls per second per connection (token bucket, capacity = rate; default 10).
    pub actions_per_second: u32,
    /// How often a changed room's log is folded into its record (default 60 s). Every write is
    /// appended to the log before clients see it, whatever this is.
    pub state_save_interval: Duration,
    /// How long saved state stays valid (default 24 h); older state is deleted, not restored.
    pub state_ttl: Duration,
    /// How long one handler may run (default 5 s). An action that times out gets an
    /// `action_error`; a join that times out is refused.
    pub handler_timeout: Duration,
    /// How often deltas made by ticks, timers and clock callbacks are flushed (default 50 ms).
    /// Changes made by an action, a join or a leave are flushed when that handler returns.
    pub patch_rate: Duration,
    /// Dispose of a room (after `on_destroy`) when its last player leaves (default true).
    pub auto_dispose: bool,
    /// Require an access token (`Authorization: Bearer`) on the metadata endpoint (default false).
    pub metadata_requires_auth: bool,
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        NamespaceOptions {
            max_players: 100,
            max_state_size: 1 << 20,
            reconnect_timeout: Duration::from_secs(30),
            actions_per_second: 10,
            state_save_interval: Duration::from_secs(60),
            state_ttl: Duration::from_secs(24 * 3600),
            handler_timeout: Duration::from_secs(5),
            patch_rate: Duration::from_millis(50),
            auto_dispose: true,
            metadata_requires_auth: false,
        }
    }
}

/// Bounds of the options.
pub const MAX_PLAYERS_LIMIT: usize = 32_768;
pub const MIN_STATE_SIZE: usize = 1024;
pub const MAX_STATE_SIZE: usize = 10 << 20;

impl NamespaceOptions {
    /// Checks every option against its allowed range.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_PLAYERS_LIMIT).contains(&self.max_players) {
            return Err(format!(
                "max_players must be 1 to {MAX_PLAYERS_LIMIT}, not {}",
                self.max_players
            ));
        }
        if !(MIN_STATE_SIZE..=MAX_STATE_SIZE).contains(&self.max_state_size) {
            return Err(format!(
                "max_state_size must be {MIN_STATE_SIZE} to {MAX_STATE_SIZE} bytes, not {}",
                self.max_state_size
            ));
        }
        if self.actions_per_second == 0 {
            return Err("actions_per_second must be at least 1".into());
        }
        let positive = [
            ("state_save_interval", self.state_save_interval),
            ("state_ttl", self.state_ttl),
            ("handler_timeout", self.handler_timeout),
            ("patch_rate", self.patch_rate),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(format!("{name} must be more than zero"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_specified_ones_and_ranges_are_enforced() {
        let d = NamespaceOptions::default();
        assert_eq!(d.validate(), Ok(()));
        assert_eq!(
            (d.max_players, d.max_state_size, d.actions_per_second),
            (100, 1_048_576, 10)
        );
        for bad in [
            NamespaceOptions {
                max_players: 0,
                ..d.clone()
            },
            NamespaceOptions {
                max_players: 32_769,
                ..d.clone()
            },
            NamespaceOptions {
                max_state_size: 1023,
                ..d.clone()
            },
            NamespaceOptions {
                max_state_size: (10 << 20) + 1,
                ..d.clone()
            },
            NamespaceOptions {
                patch_rate: Duration::ZERO,
                ..d.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
