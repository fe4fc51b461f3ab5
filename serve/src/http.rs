//! The connection loop (hyper, without `axum::serve`, which sets no timer): a cap on open
//! connections past which new ones are answered 503 and closed at once, a deadline for each
//! request's headers, a deadline on any write that makes no progress (a client that stopped
//! reading), and the phases of a bounded shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::state::Shared;

/// Where the server is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// SIGTERM: connections close after their current request; new requests get 503.
    Draining,
    /// The grace period is over: every connection is dropped.
    Closed,
}

/// What a connection past the cap is told before it is closed.
fn refused() -> Vec<u8> {
    const BODY: &str = r#"{"error":{"message":"too many open connections; retry later","type":"server_error","param":null,"code":"too_many_connections"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
    .into_bytes()
}

/// Each connection's kernel send buffer. Left to autotuning, loopback and LAN sockets grow to 4 MiB,
/// so a client that stops reading would absorb megabytes before a write blocks and
/// --write-timeout-s could notice; streamed tokens need a few KiB a second. Bounded, a thousand
/// stalled connections also hold a bounded amount of kernel memory.
const SEND_BUFFER: usize = 128 << 10;

/// How long connections get to close once the server is closing, before they are dropped.
pub const CLOSE_WAIT: Duration = Duration::from_millis(300);

/// A socket whose writes fail once they have made no progress for `timeout`: a peer that stops
/// reading fills its buffers, and its response (a stream above all) must not wait forever.
struct StallGuard {
    inner: TcpStream,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl StallGuard {
    fn write_with(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match write(Pin::new(&mut self.inner), cx) {
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client read nothing for --write-timeout-s",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for StallGuard {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallGuard {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.write_with(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.write_with(cx, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts a connection as open until dropped.
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepts connections until the phase is [`Phase::Closed`], then gives open ones
/// [`CLOSE_WAIT`] to finish before returning (dropping them).
pub async fn serve(listener: TcpListener, app: Router, shared: Arc<Shared>, phase: watch::Receiver<Phase>) {
    let limit = shared.options.max_connections;
    let permits = Arc::new(Semaphore::new(limit));
    let mut watch_phase = phase.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = closed(&mut watch_phase) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, or a connection reset before it was taken: not fatal.
                tracing::warn!(target: "gpt2c::http", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shared.metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
            let _ = stream.try_write(&refused());
            continue;
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let open = Open(shared.clone());
        let (app, shared, phase) = (app.clone(), shared.clone(), phase.clone());
        tokio::spawn(async move {
            connection(stream, peer, app, &shared, phase).await;
            drop((permit, open));
        });
    }
    drop(listener);
    let deadline = Instant::now() + CLOSE_WAIT;
    while permits.available_permits() < limit && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Resolves once the phase is [`Phase::Closed`] (or its sender is gone).
async fn closed(phase: &mut watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p == Phase::Closed).await;
}

/// The peer's address, for handlers that want it.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    shared: &Shared,
    mut phase: watch::Receiver<Phase>,
) {
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
    let io = TokioIo::new(StallGuard { inner: stream, timeout: shared.options.write_timeout(), stalled: None });
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(Peer(peer));
        app.clone().oneshot(request.map(Body::new))
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(shared.options.header_timeout());
    let draining = *phase.borrow() != Phase::Serving;
    builder.keep_alive(!draining);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut graceful = draining;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(target: "gpt2c::http", %peer, error = %e, "connection ended");
                }
                return;
            }
            changed = phase.changed() => {
                let now = if changed.is_ok() { *phase.borrow_and_update() } else { Phase::Closed };
                match now {
                    Phase::Closed => return,
                    Phase::Draining if !graceful => {
                        graceful = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ => {}
                }
            }
        }
    }
}
