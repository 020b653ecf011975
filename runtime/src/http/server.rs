//! The HTTP server around the router: accepts connections under a cap and serves each with
//! hyper's HTTP/1.1, with timeouts that no client can hold off.
//!
//! - **A connection cap** ([`ConnectionLimits::max_connections`]): past it, new connections
//!   wait in the kernel's backlog until one closes, so the process never runs out of file
//!   descriptors and the connections it has keep being served.
//! - **A header-read timeout**: a request's headers must arrive whole within
//!   [`ConnectionLimits::header_read_timeout`] of the first byte — and a kept-alive connection
//!   waiting for its next request is closed after that long too. A client sending one header a
//!   second, or opening connections and sending nothing, holds a slot for that long at most,
//!   before authentication ever runs.
//! - **A request-body timeout**: a body must be read whole within
//!   [`ConnectionLimits::request_body_timeout`] (`408` otherwise).
//!
//! A response that streams (SSE) is not cut short: these timeouts are about what the client
//! sends. With TLS, the handshake must end within the header-read timeout too.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use super::{AppState, app};

/// How long a shutdown waits for requests in flight to end before closing their connections.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// What one client may hold of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections at most; more wait to be accepted.
    pub max_connections: usize,
    /// Time to send a request's headers, and longest idle time between requests.
    pub header_read_timeout: Duration,
    /// Time to send a request's body.
    pub request_body_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            request_body_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves the API on `listener` (HTTPS when given `tls`, see [`super::tls_acceptor`]) until
/// `shutdown` completes, then lets requests in flight end (a connection's graceful shutdown)
/// before returning. Sets TCP_NODELAY on every connection: without it, small responses on
/// kept-alive connections wait out delayed ACKs (~40 ms each).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = app(state).layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.request_body_timeout,
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, _peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a connection reset before it was accepted: wait a
                    // moment rather than spin, and go on.
                    crate::throttle::warn(format!("accepting a connection failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            crate::throttle::warn(format!("cannot set TCP_NODELAY: {e}"));
        }
        let (router, stop, tls) = (router.clone(), stop_rx.clone(), tls.clone());
        connections.spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(tcp, router, limits, stop).await,
                Some(tls) => {
                    // A client that fails or stalls its handshake holds its slot no longer
                    // than one header-read timeout.
                    let handshake =
                        tokio::time::timeout(limits.header_read_timeout, tls.accept(tcp));
                    if let Ok(Ok(stream)) = handshake.await {
                        serve_connection(stream, router, limits, stop).await;
                    }
                }
            }
        });
        // Reap the connections that ended, so the set holds only live ones.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Requests in flight end; a stream that would not (an SSE follower) is cut after a while.
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_DRAIN, drained).await.is_err() {
        connections.abort_all();
    }
    Ok(())
}

/// Serves one connection's requests until it closes or the server stops (then gracefully).
async fn serve_connection<I>(
    io: I,
    router: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = async { let _ = stop.wait_for(|stop| *stop).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
