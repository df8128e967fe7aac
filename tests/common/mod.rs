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
