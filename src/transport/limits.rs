//! Edge limits: connection caps (total and per peer address) and a per-connection message rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

use super::websocket::Message;

/// Caps open connections, in total and per peer address.
pub struct ConnectionLimiter {
    max_total: usize,
    max_per_ip: usize,
    // A std Mutex: two integer updates per connect and disconnect, never held across an await.
    open: Mutex<OpenConnections>,
}

#[derive(Default)]
struct OpenConnections {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("server is at its connection limit")]
    ServerFull,
    #[error("too many connections from this address")]
    PeerFull,
}

/// One open connection's place under the caps; released on drop.
pub struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    ip: Option<IpAddr>,
}

impl ConnectionLimiter {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(ConnectionLimiter {
            max_total,
            max_per_ip,
            open: Mutex::new(OpenConnections::default()),
        })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, OpenConnections> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<ConnectionPermit, LimitError> {
        let mut open = self.open();
        if open.total >= self.max_total {
            return Err(LimitError::ServerFull);
        }
        if let Some(ip) = ip {
            let count = open.per_ip.entry(ip).or_default();
            if *count >= self.max_per_ip {
                return Err(LimitError::PeerFull);
            }
            *count += 1;
        }
        open.total += 1;
        Ok(ConnectionPermit {
            limiter: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.limiter.open();
        open.total = open.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(count) = open.per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    open.per_ip.remove(&ip);
                }
            }
        }
    }
}

/// Whether `message` costs a token of its connection's message rate. One rule for both
/// endpoints: every frame the server must act on costs one (text and binary frames, and pings,
/// which are answered); pongs and the closing handshake do not.
pub(super) fn costs_a_token(message: &Message) -> bool {
    !matches!(message, Message::Pong | Message::Close(_))
}

/// A token bucket: `rate` messages per second on average, bursts of up to `burst`.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one message's token; false when the connection is over its rate.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The caps hold, and closing a connection frees its place.
    #[test]
    fn connection_caps() {
        let limiter = ConnectionLimiter::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let p1 = limiter.acquire(Some(a)).expect("first");
        let _p2 = limiter.acquire(Some(a)).expect("second");
        assert_eq!(limiter.acquire(Some(a)).err(), Some(LimitError::PeerFull));
        let _p3 = limiter.acquire(Some(b)).expect("other peer");
        assert_eq!(limiter.acquire(Some(b)).err(), Some(LimitError::ServerFull));
        drop(p1);
        assert!(limiter.acquire(Some(a)).is_ok());
    }

    /// Data frames and pings cost a token; pongs and close frames do not.
    #[test]
    fn pings_cost_a_token_pongs_and_closes_do_not() {
        assert!(costs_a_token(&Message::Ping(bytes::Bytes::new())));
        assert!(costs_a_token(&Message::Text("x".into())));
        assert!(costs_a_token(&Message::Binary(bytes::Bytes::new())));
        assert!(!costs_a_token(&Message::Pong));
        assert!(!costs_a_token(&Message::Close(1000)));
    }

    /// A burst passes, the next message is refused, and tokens come back with time.
    #[test]
    fn token_bucket() {
        let start = Instant::now();
        let mut bucket = RateLimiter::new(10.0, 3, start);
        assert!((0..3).all(|_| bucket.allow(start)));
        assert!(!bucket.allow(start));
        assert!(bucket.allow(start + Duration::from_millis(100)));
        assert!(!bucket.allow(start + Duration::from_millis(100)));
    }
}
