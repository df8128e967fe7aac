//! Interop: the real npm client (`@woven-ecs/canvas-store`) and the npm reference server
//! (`@woven-ecs/canvas-store-server`) against the real `weft` binary. The Node scripts live in
//! `tests/interop/`; they need Node.js and `npm ci` there (`scripts/test` does both). The tests
//! run one at a time: the differential test compares timing-bounded steps and the machine is small.

mod common;
use common::interop_dir;

use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn tokens_file() -> String {
    interop_dir().join("tokens.json").display().to_string()
}

/// Fails (rather than skips) when the npm packages are missing: CI must run these.
fn require_node_modules() {
    let modules = interop_dir().join("node_modules/@woven-ecs/canvas-store");
    assert!(
        modules.is_dir(),
        "npm packages missing: run `npm ci` in tests/interop (scripts/test does it)"
    );
}

/// A server process, stopped with SIGTERM (or killed) when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(mut command: Command) -> Server {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("server starts");
        let lines = common::stdout_lines(&mut child);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = lines
                .recv_timeout(left)
                .expect("server prints `listening on ADDR`");
            if let Some(addr) = line.strip_prefix("listening on ") {
                break addr.to_owned();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.into_iter().for_each(drop));
        Server { child, addr }
    }

    /// The weft binary with `args` after `serve --addr 127.0.0.1:0`.
    fn weft(args: &[&str]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_weft"));
        command.args(["serve", "--addr", "127.0.0.1:0"]).args(args);
        Server::start(command)
    }

    /// The npm reference server with `args` after `--port 0`.
    fn reference(args: &[&str]) -> Server {
        let mut command = Command::new("node");
        command
            .current_dir(interop_dir())
            .args(["reference-server.mjs", "--port", "0"])
            .args(args);
        Server::start(command)
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// SIGTERM, then the exit status (killed after 20 s).
    fn stop(mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        common::wait_with_deadline(&mut self.child, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a Node script in tests/interop; returns its output after checking it succeeded.
fn node(script: &str, args: &[&str], limit: Duration) -> String {
    let mut child = Command::new("node")
        .current_dir(interop_dir())
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    let status = common::wait_with_deadline(&mut child, limit).unwrap_or_else(|e| panic!("{e}"));
    let Output { stdout, stderr, .. } = Output {
        status,
        stdout: read_all(child.stdout.take()),
        stderr: read_all(child.stderr.take()),
    };
    let (stdout, stderr) = (
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    );
    assert!(
        status.success(),
        "node {script} {args:?} failed ({status}):\n{stdout}\n{stderr}"
    );
    stdout
}

fn read_all(pipe: Option<impl std::io::Read>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut out);
    }
    out
}

/// The npm client converges through weft (RocksDB storage) under concurrent edits to the same
/// fields, deletes and re-creates, offline edits and reconnects, late joiners, presence and
/// buffer-delta strokes.
#[test]
fn the_npm_client_converges_through_weft() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_node_modules();
    let data = tempfile::tempdir().expect("tempdir");
    let tokens = tokens_file();
    let weft = Server::weft(&[
        "--data-dir",
        &data.path().display().to_string(),
        "--auth",
        "tokens",
        "--tokens-file",
        &tokens,
    ]);
    let url = weft.url();
    let out = node(
        "woven-scenarios.mjs",
        &["--url", &url, "--scenario", "all", "--token", "rw-alice"],
        Duration::from_secs(120),
    );
    assert!(out.contains("scenario all: ok"), "{out}");
    let out = node(
        "woven-scenarios.mjs",
        &[
            "--url",
            &url,
            "--scenario",
            "token-refresh",
            "--token",
            "rw-alice",
            "--readonly-token",
            "ro-bob",
        ],
        Duration::from_secs(60),
    );
    assert!(out.contains("scenario token-refresh: ok"), "{out}");
    assert!(weft.stop().success(), "weft exits 0 on SIGTERM");
}

/// The same frame sequences (scripted, and randomized from seeds) sent to the npm reference
/// server and to weft get the same reply frames on every socket and leave the same document.
/// Left out: `buffer-nonarray-base`, where weft zero-fills a buffer delta on a non-array value
/// while the reference produces `null`s or copies a string's characters.
#[test]
fn weft_replies_frame_for_frame_like_the_reference_server() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_node_modules();
    let tokens = tokens_file();
    let reference = Server::reference(&["--tokens", &tokens]);
    let weft = Server::weft(&[
        "--storage",
        "memory",
        "--auth",
        "tokens",
        "--tokens-file",
        &tokens,
    ]);
    let out = node(
        "differential.mjs",
        &[
            "--a",
            &reference.url(),
            "--b",
            &weft.url(),
            "--tokens",
            &tokens,
            "--script",
            "all",
            "--skip",
            "buffer-nonarray-base",
            "--seed",
            "1,2",
            "--steps",
            "150",
        ],
        Duration::from_secs(300),
    );
    assert!(out.contains(" 0 mismatches"), "{out}");
    assert!(weft.stop().success());
    assert!(reference.stop().success());
}

/// A data directory of `<roomId>.json` files written by the reference server loads in weft's
/// file storage, and one written by weft loads in the reference server: same document either way.
#[test]
fn snapshot_files_move_between_weft_and_the_reference_server() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_node_modules();
    let expected = {
        // The document as the reference server itself serves it back.
        let reference = Server::reference(&[]);
        let url = reference.url();
        node(
            "snapshot-compat.mjs",
            &["write", "--url", &url, "--room", "expected"],
            Duration::from_secs(30),
        );
        node(
            "snapshot-compat.mjs",
            &["read", "--url", &url, "--room", "expected"],
            Duration::from_secs(30),
        )
    };
    assert!(expected.contains("e3/Stroke"), "{expected}");

    for (writer, reader) in [("reference", "weft"), ("weft", "reference")] {
        let dir = tempfile::tempdir().expect("tempdir");
        let dir_arg = dir.path().display().to_string();
        let start = |which: &str| match which {
            "weft" => Server::weft(&["--storage", "file", "--data-dir", &dir_arg]),
            _ => Server::reference(&["--storage", "file", "--data-dir", &dir_arg]),
        };
        let server = start(writer);
        node(
            "snapshot-compat.mjs",
            &["write", "--url", &server.url(), "--room", "moved"],
            Duration::from_secs(30),
        );
        assert!(server.stop().success(), "{writer} exits 0");
        assert!(
            dir.path().join("moved.json").is_file(),
            "{writer} wrote moved.json"
        );

        let server = start(reader);
        let read = node(
            "snapshot-compat.mjs",
            &["read", "--url", &server.url(), "--room", "moved"],
            Duration::from_secs(30),
        );
        let (got, want): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(&read).expect("json"),
            serde_json::from_str(&expected).expect("json"),
        );
        assert_eq!(got, want, "written by {writer}, read by {reader}");
        assert!(server.stop().success());
    }
}
