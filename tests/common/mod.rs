//! Helpers shared by the integration tests that run processes (the weft binary, Node scripts).

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Waits for `child` to exit; kills it and reports an error past `limit`.
pub fn wait_with_deadline(child: &mut Child, limit: Duration) -> Result<ExitStatus, String> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for the process: {e}")),
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("process did not exit within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The Node interop scripts' folder.
#[allow(dead_code)] // not every test binary that includes this module runs Node
pub fn interop_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Forwards a process's stdout, line by line, to a channel (read on its own thread).
#[allow(dead_code)]
pub fn stdout_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads a `weft serve` child's stdout on its own thread until the line `listening on ADDR`;
/// returns ADDR, or why it did not come within `limit`. The thread reads on to the end, so the
/// server never writes to a closed pipe.
#[allow(dead_code)]
pub fn listening_addr(
    child: &mut Child,
    limit: Duration,
) -> Result<String, std::sync::mpsc::RecvTimeoutError> {
    use std::io::{BufRead, BufReader};
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    rx.recv_timeout(limit)
}
