//! Every accepted TCP connection, before it is HTTP or WebSocket: its place under the connection
//! caps, and the deadlines of its HTTP phase.
//!
//! - **One cap for every connection.** `max_connections` and `max_connections_per_ip` count
//!   every open TCP connection, from accept to close, whether it stays plain HTTP or becomes a
//!   WebSocket. The place is taken at accept, before a byte is read, and travels with the socket
//!   ([`Admitted`]) into the WebSocket session after an upgrade. A connection over a cap is
//!   answered at once (HTTP 503 server full, 429 per address) and closed.
//! - **Deadlines for the HTTP phase.** The head must arrive within `http_head_timeout` (actix's
//!   client request timeout: 408), the body and the answer within `http_request_timeout` after it
//!   ([`within_request_deadline`]: 408). A plain HTTP connection serves one request and is closed
//!   (no keep-alive: actix's head deadline covers only a connection's first request), and
//!   [`serve`] drops any connection still in its HTTP phase after the sum of the deadlines, so
//!   none outlives them whatever a client does.
//!
//! Why not actix's own settings alone: `client_request_timeout` (used: the head deadline) covers
//! only the head, and actix-http has no deadline for a body; actix-server's `max_connections` is
//! per worker thread, has no per-address cap, and stops accepting silently (connections wait in
//! the backlog) instead of answering 503/429.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future;

use actix_http::body::{BoxBody, MessageBody};
use actix_http::header::{HeaderValue, CONTENT_TYPE};
use actix_http::{ConnectionType, Response};
use actix_rt::net::TcpStream;
use actix_service::Service;
use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::web;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::{debug, warn};

use super::limits::ConnectionPermit;
use super::{AppState, HttpError, LimitError};
use crate::metrics::Metrics;

/// How long a closing connection's late bytes are read and discarded, so that closing it does
/// not reset the connection before the peer has read the answer.
pub(crate) const LINGER: Duration = Duration::from_secs(1);

/// An accepted socket and its place under the connection caps.
pub struct Admitted {
    io: TcpStream,
    permit: ConnectionPermit,
}

impl Admitted {
    pub(super) fn into_parts(self) -> (TcpStream, ConnectionPermit) {
        (self.io, self.permit)
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Serves one accepted connection with `http` (actix-http's HTTP/1 service): takes its place
/// under the caps or refuses it, and bounds its HTTP phase (see the module docs).
pub(crate) async fn serve<S>(state: web::Data<AppState>, http: Rc<S>, io: TcpStream)
where
    S: Service<(Admitted, Option<SocketAddr>)>,
    S::Error: std::fmt::Debug,
{
    let peer = io.peer_addr().ok();
    let permit = match state.limiter.acquire(peer.map(|p| p.ip())) {
        Ok(permit) => permit,
        Err(e) => {
            Metrics::inc(&state.metrics.connections_refused);
            warn!(peer = ?peer, error = %e, "connection refused");
            refuse(io, e).await;
            return;
        }
    };
    let config = &state.config;
    let limit = config.http_head_timeout + config.http_request_timeout + LINGER;
    match tokio::time::timeout(limit, http.call((Admitted { io, permit }, peer))).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => debug!(error = ?e, "http connection failed"),
        Err(_) => debug!(peer = ?peer, "http connection dropped at its deadline"),
    }
}

/// Answers a connection over a cap before reading its request, and closes it.
async fn refuse(mut io: TcpStream, error: LimitError) {
    let status = match error {
        LimitError::ServerFull => StatusCode::SERVICE_UNAVAILABLE,
        LimitError::PeerFull => StatusCode::TOO_MANY_REQUESTS,
    };
    let message = error.to_string();
    // Both shapes: `error` (canvas clients), `code` and `message` (the EdgeBase SDKs).
    let body = json!({ "error": message, "code": "TOO_MANY_CONNECTIONS", "message": message });
    let answer = HttpError::new(status, body).http1();
    let close = async {
        io.write_all(&answer).await?;
        io.shutdown().await?;
        // Discard the request until the peer closes.
        let mut sink = [0u8; 1024];
        while io.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(LINGER, close).await;
}

/// The answer of a request's service `call` (its body read, its handler run), or 408 if it is
/// not ready within `limit`; the connection is then closed (actix closes a connection whose
/// request body was not read to its end, and keeps none alive).
pub(crate) async fn within_request_deadline<B, E>(
    limit: Duration,
    call: impl Future<Output = Result<ServiceResponse<B>, E>>,
) -> Result<Response<BoxBody>, E>
where
    B: MessageBody + 'static,
{
    match tokio::time::timeout(limit, call).await {
        Ok(answer) => answer.map(|response| response.map_into_boxed_body().into()),
        Err(_) => {
            debug!("request not complete within its deadline");
            let body = json!({
                "error": format!("request not complete within {} ms", limit.as_millis()),
            });
            let mut response =
                Response::with_body(StatusCode::REQUEST_TIMEOUT, BoxBody::new(body.to_string()));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
                .head_mut()
                .set_connection_type(ConnectionType::Close);
            Ok(response)
        }
    }
}
