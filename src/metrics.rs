//! Process-wide counters and gauges, rendered in the Prometheus text format at `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! metrics {
    ($( $(#[doc = $doc:literal])* $name:ident : $kind:literal ),* $(,)?) => {
        /// Every metric weft exports. Gauges go up and down; counters only up.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $( $(#[doc = $doc])* pub $name: AtomicU64, )*
        }

        impl Metrics {
            /// The Prometheus text exposition of every metric.
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(
                    let help = concat!($($doc),*).trim();
                    let _ = writeln!(out, "# HELP weft_{} {}", stringify!($name), help);
                    let _ = writeln!(out, "# TYPE weft_{} {}", stringify!($name), $kind);
                    let _ = writeln!(out, "weft_{} {}", stringify!($name), self.$name.load(Ordering::Relaxed));
                )*
                out
            }
        }
    };
}

metrics! {
    /// Open WebSocket connections.
    connections_active: "gauge",
    /// WebSocket connections accepted since start.
    connections_total: "counter",
    /// Upgrades refused because the server or the peer address was at its connection cap.
    connections_refused: "counter",
    /// Connects refused by the authorizer or for bad query parameters.
    connects_denied: "counter",
    /// Rooms loaded in memory (canvas and game rooms).
    rooms_active: "gauge",
    /// Sessions joined to a room (canvas and game rooms).
    sessions_active: "gauge",
    /// Frames received from clients.
    frames_received: "counter",
    /// Frames ignored because they were not JSON frames or had an unknown type.
    frames_ignored: "counter",
    /// Connections closed because a frame had fields of the wrong shape.
    frames_invalid: "counter",
    /// Connections closed for sending a frame above the size limit.
    frames_oversized: "counter",
    /// Connections closed for exceeding the message rate limit.
    rate_limited: "counter",
    /// Requests whose document patches were applied.
    patches_applied: "counter",
    /// Game actions handled (answered with `action_result` or `action_error`).
    game_actions: "counter",
    /// Sessions closed (1009) for a request that would take the document or their presence
    /// past a limit (`max_document_bytes`, `max_request_values`, ...).
    requests_over_limit: "counter",
    /// Sessions disconnected because their outbound queue was full.
    slow_clients_disconnected: "counter",
    /// Connections closed because no frame or pong arrived within the heartbeat timeout.
    heartbeat_timeouts: "counter",
    /// Snapshots saved (folds of a room's log).
    snapshots_saved: "counter",
    /// Appends that waited for room in the storage writer's byte budget (`storage_queue_bytes`).
    appends_waited: "counter",
    /// Storage operations that failed (load or save).
    storage_errors: "counter",
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(gauge: &AtomicU64) {
        gauge.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition names every metric with its help and type.
    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::inc(&m.frames_received);
        let text = m.render();
        assert!(text.contains("# TYPE weft_frames_received counter\nweft_frames_received 1\n"));
        assert!(text
            .contains("# HELP weft_rooms_active Rooms loaded in memory (canvas and game rooms)."));
    }
}
