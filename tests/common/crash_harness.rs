//! The harness of the crash tests (`crash.rs`, `game_crash.rs`): the real `weft` binary run as
//! one process per incarnation on one data directory, a seeded random source, and failures that
//! carry the seed and the tail of the server log. Include it with
//! `#[path = "common/crash_harness.rs"] mod crash_harness;` beside `mod common;`.

// Not every crash test uses every helper.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{listening_addr, wait_with_deadline};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Writers must never be throttled or disconnected for their rate.
const UNTHROTTLED: [&str; 4] = [
    "--messages-per-second",
    "1000000",
    "--message-burst",
    "1000000",
];

/// The tests of one binary run one at a time: they measure recovery and drive timing-bounded
/// clients on a small machine.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// --- Randomness -------------------------------------------------------------------------------

/// xorshift64: small, seeded, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.next() as usize % items.len()]
    }
}

/// The seed of a randomized test: the environment variable `var` or the clock; printed either
/// way.
fn seed(test: &str, var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {seed} (replay with {var}={seed})");
    seed
}

// --- The server process -----------------------------------------------------------------------

/// One incarnation of the `weft` binary.
pub struct Weft {
    child: Child,
    /// `127.0.0.1:PORT`, as printed.
    pub addr: String,
    pub spawned: Instant,
    pub listening: Instant,
}

impl Weft {
    /// Spawns `weft serve --addr ADDR --data-dir DIR` (rate limits raised) with `extra` flags, its
    /// stderr appended to `log`; returns once it printed `listening on`, or why it did not.
    pub fn spawn(
        addr: &str,
        data_dir: &Path,
        extra: &[String],
        log: &Path,
        limit: Duration,
    ) -> Result<Weft, String> {
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("opening {}: {e}", log.display()))?;
        let spawned = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["serve", "--addr", addr, "--data-dir"])
            .arg(data_dir)
            .args(UNTHROTTLED)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            // glibc writes fatal heap errors to /dev/tty unless told otherwise: put them in the
            // log, so an abort says what it is.
            .env("LIBC_FATAL_STDERR_", "1")
            .spawn()
            .map_err(|e| format!("spawning weft: {e}"))?;
        match listening_addr(&mut child, limit) {
            Ok(addr) => Ok(Weft {
                child,
                addr,
                spawned,
                listening: Instant::now(),
            }),
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                Err(format!(
                    "weft did not print `listening on` ({e}); it ended with {status:?}"
                ))
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("ADDR ends with a port")
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Sends `signal` (`KILL`, `TERM`, `INT`) with `kill`. Fails if weft had already ended.
    fn send(&mut self, signal: &str) -> Result<(), String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!("weft ended by itself before SIG{signal}: {status}"));
        }
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid()])
            .status()
            .map_err(|e| format!("running kill: {e}"))?;
        if !status.success() {
            return Err(format!("kill -{signal} failed: {status}"));
        }
        Ok(())
    }

    /// `kill -9`, then reaps the process. Fails if it had already ended on its own.
    pub fn kill9(mut self) -> Result<(), String> {
        self.send("KILL")?;
        let status = wait_with_deadline(&mut self.child, Duration::from_secs(20))?;
        match status.signal() {
            Some(9) => Ok(()),
            _ => Err(format!("weft ended with {status} instead of SIGKILL")),
        }
    }

    /// SIGTERM, then `kill -9` after `grace` unless it exited by then (with 0, or it fails).
    pub fn term_then_kill(mut self, grace: Duration) -> Result<String, String> {
        self.send("TERM")?;
        std::thread::sleep(grace);
        // It may have exited by now: then there is nothing to kill.
        let _ = Command::new("kill").args(["-KILL", &self.pid()]).status();
        let status = wait_with_deadline(&mut self.child, Duration::from_secs(20))?;
        match (status.success(), status.signal()) {
            (true, _) => Ok(format!("SIGTERM (exit 0 within {grace:?})")),
            (_, Some(9)) => Ok(format!("SIGTERM, kill -9 {grace:?} later")),
            _ => Err(format!("after SIGTERM weft ended with {status}")),
        }
    }

    /// SIGTERM; the exit status once the process ended.
    pub fn terminate(self) -> Result<ExitStatus, String> {
        self.signal("TERM")
    }

    /// `kill -SIGNAL` (TERM or INT: a graceful stop); the exit status once the process ended.
    pub fn signal(mut self, signal: &str) -> Result<ExitStatus, String> {
        self.send(signal)?;
        wait_with_deadline(&mut self.child, Duration::from_secs(30))
    }
}

impl Drop for Weft {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A data directory that outlives the server incarnations, and their shared log.
pub struct Harness {
    test: &'static str,
    /// The seed of this run (see [`Harness::new`]).
    pub seed: u64,
    /// The variable that replays a seed.
    seed_var: &'static str,
    dir: tempfile::TempDir,
    pub starts: u32,
}

impl Harness {
    /// A fresh directory for `test`, whose seed comes from the environment variable `seed_var`
    /// (or the clock).
    pub fn new(test: &'static str, seed_var: &'static str) -> Harness {
        Harness {
            test,
            seed: seed(test, seed_var),
            seed_var,
            dir: tempfile::tempdir().expect("tempdir"),
            starts: 0,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("weft.log")
    }

    /// Starts the next incarnation on `addr` (port 0: any), retrying for up to 60 s while the
    /// port is still held by the previous one.
    pub fn start(&mut self, addr: &str, extra: &[String]) -> Weft {
        self.starts += 1;
        let banner = format!(
            "===== crash test: start #{} of weft {extra:?} on {addr} =====\n",
            self.starts
        );
        if let Ok(mut log) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
        {
            let _ = log.write_all(banner.as_bytes());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match Weft::spawn(addr, &self.data_dir(), extra, &self.log(), left) {
                Ok(weft) => return weft,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.fail(&[format!("start #{}: {last}", self.starts)]);
    }

    /// Panics with the errors, the seed and the end of the server log.
    pub fn fail(&self, errors: &[String]) -> ! {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        let shown = errors.len().min(40);
        panic!(
            "{}: {} problem(s) (seed {}, replay with {}={}):\n  {}{}\n--- end of the weft log ---\n{tail}",
            self.test,
            errors.len(),
            self.seed,
            self.seed_var,
            self.seed,
            errors[..shown].join("\n  "),
            if errors.len() > shown { "\n  ..." } else { "" },
        );
    }
}
