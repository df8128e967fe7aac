//! One raw HTTP/1.1 exchange over a fresh TCP connection, for tests that need the exact status
//! and body (refused upgrades, error bodies). Included by path where needed.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` (whole, with `connection: close`) to `addr` and reads the response to its
/// end within `wait`; returns the status and the body (de-chunked when chunked).
pub async fn exchange(addr: SocketAddr, request: &str, wait: Duration) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("tcp connects");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("request sent");
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .expect("response read");
        response
    };
    let response = tokio::time::timeout(wait, exchange)
        .await
        .expect("response within the wait");
    let text = String::from_utf8(response).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

/// The value of the metric `name` at the server's `GET /metrics`.
pub async fn metric(addr: SocketAddr, name: &str, wait: Duration) -> u64 {
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (status, body) = exchange(addr, &request, wait).await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("metric {name} in {body}"))
        .parse()
        .expect("numeric metric")
}
