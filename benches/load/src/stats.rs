//! Measurements: HDR latency histograms and the server's CPU and memory from `/proc`.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// A latency histogram in microseconds (1 µs to 1 h, 3 significant digits).
#[derive(Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        // 1 µs .. 1 h at 3 significant figures: ~0.1% error, a few hundred KiB at most.
        Latency(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"))
    }
}

impl Latency {
    pub fn record(&mut self, d: Duration) {
        self.record_micros(d.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    pub fn record_micros(&mut self, us: u64) {
        // `saturating_record` clamps values above the top bound instead of failing.
        self.0.saturating_record(us.max(1));
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Milliseconds at quantile `q`; NaN when empty (serialized as null).
    pub fn ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.max() as f64 / 1000.0
    }

    /// `{"count", "p50", "p99", "p999", "max", "mean"}` in milliseconds.
    pub fn summary(&self) -> Value {
        let mean = if self.0.is_empty() {
            f64::NAN
        } else {
            self.0.mean() / 1000.0
        };
        json!({
            "count": self.count(),
            "p50": num(self.ms(0.5)),
            "p99": num(self.ms(0.99)),
            "p999": num(self.ms(0.999)),
            "max": num(self.max_ms()),
            "mean": num(mean),
        })
    }
}

/// A JSON number, or null for NaN/infinite (JSON has no NaN).
pub fn num(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// One reading of a process's CPU time and memory.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// User + system CPU time, seconds.
    pub cpu_secs: f64,
    /// Resident set size now, and its peak (VmHWM), KiB.
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; `None` if the process is not there.
pub fn usage(pid: u32) -> Option<Usage> {
    read_usage(&format!("/proc/{pid}"))
}

/// This process's own usage (to tell when the load generator is the bottleneck).
pub fn own_usage() -> Option<Usage> {
    read_usage("/proc/self")
}

fn read_usage(dir: &str) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // Fields after the `(comm)`, which may contain spaces: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some(Usage {
        cpu_secs: ticks / clock_ticks(),
        rss_kib: kib("VmRSS:")?,
        peak_rss_kib: kib("VmHWM:").unwrap_or(0),
    })
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU% (of one core) between two readings taken `secs` apart, with the later RSS.
pub fn cpu_between(before: Option<Usage>, after: Option<Usage>, secs: f64) -> Value {
    match (before, after) {
        (Some(a), Some(b)) if secs > 0.0 => json!({
            "cpu_percent": num((b.cpu_secs - a.cpu_secs) / secs * 100.0),
            "rss_kib": b.rss_kib,
            "peak_rss_kib": b.peak_rss_kib,
        }),
        _ => Value::Null,
    }
}

/// Raises the soft open-files limit to the hard limit so thousands of sockets fit; returns the
/// soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Buffers samples and adds them to a shared histogram in batches: one histogram per client
/// would cost megabytes with thousands of clients, one lock per sample would contend.
pub struct Batch<'a> {
    sink: &'a std::sync::Mutex<Latency>,
    buf: Vec<u64>,
}

impl<'a> Batch<'a> {
    const SIZE: usize = 256;

    pub fn new(sink: &'a std::sync::Mutex<Latency>) -> Self {
        Batch {
            sink,
            buf: Vec::with_capacity(Self::SIZE),
        }
    }

    pub fn record(&mut self, d: Duration) {
        self.record_micros(d.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    pub fn record_micros(&mut self, us: u64) {
        self.buf.push(us);
        if self.buf.len() >= Self::SIZE {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut hist = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        for us in self.buf.drain(..) {
            hist.record_micros(us);
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}
