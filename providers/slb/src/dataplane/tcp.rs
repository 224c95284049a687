//! TCP listener: accept, access control, backend choice with fail-over on
//! connect errors, then a byte pump both ways with half-close.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info, trace, warn};

use super::backend::ActiveGuard;
use super::listener::ListenerShared;
use super::metrics::BackendMetrics;
use super::{CopyMode, DataPlaneConfig};

/// Accept connections until the listener is removed.
pub(crate) async fn serve(shared: Arc<ListenerShared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.stop.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let span = tracing::debug_span!("conn", client = %peer);
                tokio::spawn(handle(Arc::clone(&shared), stream, peer).instrument(span));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off a little
                // instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    debug!("listener closed");
}

async fn handle(shared: Arc<ListenerShared>, client: TcpStream, peer: SocketAddr) {
    if !shared.permits(peer.ip()) {
        shared.metrics.rejected.inc();
        debug!("refused by access control");
        // Reset rather than a clean close: the client sees "refused".
        if let Err(e) = client.set_zero_linger() {
            trace!(error = %e, "cannot set SO_LINGER");
        }
        return;
    }
    if let Err(e) = client.set_nodelay(true) {
        trace!(error = %e, "cannot set TCP_NODELAY on the client side");
    }

    let settings = &shared.settings;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let (active, upstream) = loop {
        if tried.len() >= settings.connect_attempts.max(1) {
            shared.metrics.no_backend.inc();
            debug!(?tried, "no backend accepted the connection");
            return;
        }
        let Some((backend, flight)) = shared.pick(peer.ip(), &tried) else {
            shared.metrics.no_backend.inc();
            debug!(?tried, "no backend available");
            return;
        };
        let addr = backend.addr;
        // Counted from the pick on, so a burst of accepts spreads (wlc).
        let active = ActiveGuard::tcp(backend);
        let connected =
            tokio::time::timeout(settings.connect_timeout, TcpStream::connect(addr)).await;
        // The connect is over (and the SYN sent, if it was): a change that
        // takes the backend out need not wait for it any more.
        drop(flight);
        match connected {
            Ok(Ok(upstream)) => break (active, upstream),
            Ok(Err(e)) => debug!(backend = %addr, error = %e, "connect failed"),
            Err(_) => debug!(backend = %addr, "connect timed out"),
        }
        active.backend().metrics.connect_failures.inc();
        if active.backend().record_failure(settings.outlier) {
            info!(backend = %addr, "connections keep failing: backend ejected (passive health check)");
        }
        tried.push(addr);
    };
    let backend = Arc::clone(active.backend());
    backend.metrics.connections.inc();
    if let Err(e) = upstream.set_nodelay(true) {
        trace!(error = %e, "cannot set TCP_NODELAY on the backend side");
    }
    trace!(backend = %backend.addr, "connected");

    let mut client = client;
    let mut upstream = upstream;
    let ends = backend.connections_end();
    let result = tokio::select! {
        r = forward(&mut client, &mut upstream, settings, &backend.metrics) => r,
        _ = ends.cancelled() => {
            debug!(backend = %backend.addr, "closed at the end of the drain");
            return;
        }
        _ = shared.hard_stop.cancelled() => return,
    };
    drop(active);
    match result {
        Ok((up, down)) => {
            backend.record_success();
            trace!(backend = %backend.addr, up, down, "connection done");
        }
        Err(e) => {
            // A reset from the backend counts against it; other errors
            // (the client went away) do not.
            if e.kind() == io::ErrorKind::ConnectionReset
                && backend.record_failure(settings.outlier)
            {
                info!(backend = %backend.addr, "connections keep being reset: backend ejected (passive health check)");
            }
            debug!(backend = %backend.addr, error = %e, "connection ended with an error");
        }
    }
}

async fn forward(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    settings: &DataPlaneConfig,
    m: &BackendMetrics,
) -> io::Result<(u64, u64)> {
    match settings.copy {
        #[cfg(target_os = "linux")]
        CopyMode::Splice => {
            super::splice::splice_bidirectional(
                client,
                upstream,
                settings.buffer_size,
                &m.bytes_in,
                &m.bytes_out,
            )
            .await
        }
        _ => {
            copy_bidirectional(
                client,
                upstream,
                settings.buffer_size,
                &m.bytes_in,
                &m.bytes_out,
            )
            .await
        }
    }
}

/// Copy both ways until both directions have seen end-of-stream, passing
/// each end-of-stream on as a write shutdown (half-close). Returns the bytes
/// copied client→backend and backend→client; the first error ends both.
async fn copy_bidirectional(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    buffer_size: usize,
    bytes_in: &Counter,
    bytes_out: &Counter,
) -> io::Result<(u64, u64)> {
    let (mut cr, mut cw) = client.split();
    let (mut ur, mut uw) = upstream.split();
    tokio::try_join!(
        pump(&mut cr, &mut uw, buffer_size, bytes_in),
        pump(&mut ur, &mut cw, buffer_size, bytes_out),
    )
}

async fn pump<R, W>(r: &mut R, w: &mut W, buffer_size: usize, counter: &Counter) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; buffer_size.max(1024)];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            // The peer may already be gone entirely; nothing left to tell it.
            if let Err(e) = w.shutdown().await {
                trace!(error = %e, "shutdown after end of stream");
            }
            return Ok(total);
        }
        w.write_all(&buf[..n]).await?;
        counter.inc_by(n as u64);
        total += n as u64;
    }
}
