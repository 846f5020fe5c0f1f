//! MQTT over TLS: the accept loop, packet reading with keep-alive, and a writer task per
//! connection so that any task (a request handler, a twin update) can send to the client.

use super::mqtt_codec::{self, CodecError, Connect, Packet};
use super::HANDSHAKE_TIMEOUT;
use bytes::BytesMut;
use rustls::ServerConfig;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

type Stream = TlsStream<TcpStream>;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The peer closed the socket.
    #[error("the client closed the connection")]
    Closed,
    /// The bytes were not MQTT.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Nothing arrived within the keep-alive allowance.
    #[error("keep-alive expired")]
    KeepAliveExpired,
    /// Socket error.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// The reading side of a connection.
pub struct PacketReader {
    read: ReadHalf<Stream>,
    buf: BytesMut,
    max_packet_size: usize,
    /// Allowed silence: 1.5 times the client's keep-alive, as Azure enforces. None: unlimited.
    idle_limit: Option<Duration>,
}

impl PacketReader {
    /// Reads the next packet.
    pub async fn next(&mut self) -> Result<Packet, ConnectionError> {
        loop {
            if let Some(packet) = mqtt_codec::decode(&mut self.buf, self.max_packet_size)? {
                return Ok(packet);
            }
            let read = self.read.read_buf(&mut self.buf);
            let n = match self.idle_limit {
                Some(limit) => tokio::time::timeout(limit, read)
                    .await
                    .map_err(|_| ConnectionError::KeepAliveExpired)??,
                None => read.await?,
            };
            if n == 0 {
                return Err(ConnectionError::Closed);
            }
        }
    }

    /// Applies the keep-alive the client asked for in CONNECT.
    pub fn set_keep_alive(&mut self, seconds: u16) {
        self.idle_limit = (seconds > 0).then(|| Duration::from_millis(u64::from(seconds) * 1500));
    }
}

/// A handle to send packets to one client; cloneable. Packets go out in the order they were
/// sent. The queue is unbounded because only server-originated packets (answers, twin updates,
/// methods, cloud messages) pass through it, and the socket's own backpressure holds the writer.
/// Sending after the connection closed is a no-op that reports false.
#[derive(Clone)]
pub struct PacketWriter {
    queue: mpsc::UnboundedSender<Outgoing>,
}

enum Outgoing {
    Packet(Packet),
    Close,
}

impl PacketWriter {
    /// Queues a packet; false when the connection is gone.
    pub fn send(&self, packet: Packet) -> bool {
        self.queue.send(Outgoing::Packet(packet)).is_ok()
    }

    /// Flushes what is queued, then closes the socket.
    pub fn close(&self) {
        let _ = self.queue.send(Outgoing::Close);
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }
}

/// An accepted connection whose first packet was a CONNECT.
pub struct Accepted {
    /// The CONNECT packet.
    pub connect: Connect,
    /// Reads the following packets.
    pub reader: PacketReader,
    /// Sends packets.
    pub writer: PacketWriter,
    /// The client's address.
    pub peer: SocketAddr,
}

/// Serves MQTT on `listener`: each connection that opens with a CONNECT is handed to `session`.
pub async fn serve<S, F>(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    max_packet_size: usize,
    session: S,
    shutdown: watch::Receiver<bool>,
) where
    S: Fn(Accepted) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    let connections = shutdown.clone();
    super::accept_each(listener, shutdown, move |tcp, peer| {
        let acceptor = acceptor.clone();
        let session = session.clone();
        let mut shutdown = connections.clone();
        async move {
            let accepted = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                open(acceptor, tcp, peer, max_packet_size),
            )
            .await;
            let accepted = match accepted {
                Ok(Ok(accepted)) => accepted,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "MQTT connection refused before CONNECT");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "no CONNECT within the handshake timeout");
                    return;
                }
            };
            let writer = accepted.writer.clone();
            tokio::select! {
                _ = session(accepted) => {}
                _ = shutdown.changed() => writer.close(),
            }
        }
    })
    .await;
}

async fn open(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    max_packet_size: usize,
) -> Result<Accepted, ConnectionError> {
    let stream = acceptor.accept(tcp).await?;
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = PacketReader {
        read,
        buf: BytesMut::with_capacity(1024),
        max_packet_size,
        idle_limit: None,
    };
    let connect = match reader.next().await? {
        Packet::Connect(connect) => *connect,
        _ => {
            return Err(ConnectionError::Codec(CodecError::Malformed(
                "the first packet must be CONNECT",
            )))
        }
    };
    let (queue, mut outgoing) = mpsc::unbounded_channel::<Outgoing>();
    tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(1024);
        while let Some(item) = outgoing.recv().await {
            let mut close = false;
            let mut next = Some(item);
            // Batch whatever is queued into one write.
            while let Some(item) = next {
                match item {
                    Outgoing::Packet(packet) => mqtt_codec::encode(&packet, &mut buf),
                    Outgoing::Close => close = true,
                }
                next = if close {
                    None
                } else {
                    outgoing.try_recv().ok()
                };
            }
            // Flush too: TLS may hold encrypted bytes back when the socket is momentarily full.
            if write.write_all(&buf).await.is_err() || write.flush().await.is_err() {
                break;
            }
            buf.clear();
            if close {
                break;
            }
        }
        let _ = write.shutdown().await;
    });
    Ok(Accepted {
        connect,
        reader,
        writer: PacketWriter { queue },
        peer,
    })
}
