//! gRPC over TLS: accepted TCP connections go through the TLS handshake in their own
//! task (a slow or failing client holds up no other), and the ones that complete reach
//! tonic as [`TlsConn`]s, whose [`ConnInfo`] (the verified client certificate's names)
//! tonic puts in every request's extensions. A refused handshake is logged with its
//! reason and the listener goes on accepting.

use crate::config::PeerIdentity;
use crate::tls::TlsServer;
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for tonic to take them.
const READY_QUEUE: usize = 64;

/// What a call's handlers learn of its connection (a request extension).
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// The verified client certificate's names; `None` without a client certificate.
    pub(crate) peer: Option<Arc<PeerIdentity>>,
}

/// A TLS connection as tonic serves it.
pub(crate) struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: ConnInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The stream of handshaken connections for tonic, fed from `tcp` until `shutdown`.
pub(crate) fn incoming<S>(
    tcp: S,
    tls: Arc<TlsServer>,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<TlsConn, std::io::Error>>
where
    S: Stream<Item = Result<TcpStream, std::io::Error>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(READY_QUEUE);
    tokio::spawn(async move {
        let mut tcp = std::pin::pin!(tcp);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                next = tcp.next() => next,
            };
            let stream = match next {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                None => return,
            };
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                let remote = stream.peer_addr().ok();
                match tls.accept(stream, HANDSHAKE_TIMEOUT).await {
                    Ok((stream, peer)) => {
                        let conn = TlsConn {
                            stream,
                            info: ConnInfo { peer },
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(e) => tls.log_refusal(remote, &e),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
