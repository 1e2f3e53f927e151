//! MLLP over TCP (HL7 v2.5 Appendix C): a client that sends one message and reads its one reply,
//! and a server that answers each frame of each connection through a handler.
//!
//! Both speak bytes: the caller encodes with [`crate::charset::encode_declared`] before sending
//! and decodes with [`crate::charset::decode`] after receiving, so a handler can answer a frame
//! that is not HL7 at all (with an AR, or by closing the connection).
//!
//! MLLP is at-least-once: when a reply is lost the sender cannot tell whether the receiver
//! processed the message, and sends it again. Receivers de-duplicate on MSH-10.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::error::{Hl7Error, Result};
use crate::mllp::{DEFAULT_MAX_FRAME_SIZE, MllpCodec};

/// How long each step of an exchange may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MllpTimeouts {
    /// Establishing the TCP connection.
    pub connect: Duration,
    /// Writing the framed message.
    pub write: Duration,
    /// From the end of the write to the complete reply frame.
    pub reply: Duration,
}

impl Default for MllpTimeouts {
    /// 5 s to connect, 10 s to write, 30 s for the reply: a lab system validating an order
    /// against its masters before answering can take seconds.
    fn default() -> Self {
        Self { connect: Duration::from_secs(5), write: Duration::from_secs(10), reply: Duration::from_secs(30) }
    }
}

/// Opens a connection, sends one message (unframed bytes, already in their character set) and
/// returns the reply's bytes, unframed. The connection is closed afterwards.
pub async fn send_message(addr: impl ToSocketAddrs, message: &[u8], timeouts: MllpTimeouts) -> Result<Vec<u8>> {
    MllpConnection::connect(addr, timeouts).await?.exchange(message).await
}

/// One open MLLP connection; messages are exchanged one at a time, each waiting for its reply.
///
/// After any error the connection's state is unknown (a late reply could be read as the next
/// message's), so it should be dropped; [`MllpClient`] does that.
#[derive(Debug)]
pub struct MllpConnection {
    framed: Framed<TcpStream, MllpCodec>,
    timeouts: MllpTimeouts,
    peer: SocketAddr,
}

impl MllpConnection {
    /// Connects within `timeouts.connect`; frames are limited to the default 1 MiB.
    pub async fn connect(addr: impl ToSocketAddrs, timeouts: MllpTimeouts) -> Result<Self> {
        Self::connect_with_limit(addr, timeouts, DEFAULT_MAX_FRAME_SIZE).await
    }

    /// Connects, refusing replies longer than `max_frame_size` bytes.
    pub async fn connect_with_limit(
        addr: impl ToSocketAddrs,
        timeouts: MllpTimeouts,
        max_frame_size: usize,
    ) -> Result<Self> {
        let stream = timeout(timeouts.connect, TcpStream::connect(addr))
            .await
            .map_err(|_| Hl7Error::Timeout { phase: "connect" })?
            .map_err(Hl7Error::ConnectFailed)?;
        // Messages are small and answered one by one: do not wait to fill a segment.
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        Ok(Self { framed: Framed::new(stream, MllpCodec::with_max_frame_size(max_frame_size)), timeouts, peer })
    }

    /// The address of the peer.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Sends one message and reads exactly one reply frame.
    pub async fn exchange(&mut self, message: &[u8]) -> Result<Vec<u8>> {
        timeout(self.timeouts.write, self.framed.send(message))
            .await
            .map_err(|_| Hl7Error::Timeout { phase: "write" })??;
        match timeout(self.timeouts.reply, self.framed.next()).await {
            Err(_) => Err(Hl7Error::Timeout { phase: "reply" }),
            Ok(None) => Err(Hl7Error::ClosedWithoutReply),
            Ok(Some(reply)) => Ok(reply?.to_vec()),
        }
    }
}

/// A sender that keeps its connection open between messages and reconnects when needed.
///
/// A kept connection may have been closed by the peer while idle; that is only seen when it is
/// used. So a message whose exchange fails on a *reused* connection with a transport failure is
/// sent once more on a fresh connection (the receiver de-duplicates on MSH-10 if the first copy
/// did arrive). Any other failure drops the connection and is returned.
#[derive(Debug)]
pub struct MllpClient {
    addr: String,
    timeouts: MllpTimeouts,
    max_frame_size: usize,
    connection: Option<MllpConnection>,
}

impl MllpClient {
    /// A client for `addr` (`host:port`); nothing is connected until the first message.
    pub fn new(addr: impl Into<String>, timeouts: MllpTimeouts) -> Self {
        Self { addr: addr.into(), timeouts, max_frame_size: DEFAULT_MAX_FRAME_SIZE, connection: None }
    }

    /// Refuses replies longer than `max_frame_size` bytes (1 MiB by default).
    pub fn with_max_frame_size(mut self, max_frame_size: usize) -> Self {
        self.max_frame_size = max_frame_size;
        self
    }

    /// The address messages go to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether a connection is currently open.
    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    /// Sends one message and returns its reply, connecting first if needed.
    pub async fn send(&mut self, message: &[u8]) -> Result<Vec<u8>> {
        if let Some(mut connection) = self.connection.take() {
            match connection.exchange(message).await {
                Ok(reply) => {
                    self.connection = Some(connection);
                    return Ok(reply);
                }
                Err(err) if err.is_transport_failure() && !matches!(err, Hl7Error::Timeout { phase: "reply" }) => {
                    // Most likely closed while idle: try once on a fresh connection. A reply
                    // timeout is not retried here: the peer got the message and is slow.
                    tracing::debug!(code = "stale-connection", "mllp connection was closed; reconnecting");
                }
                Err(err) => return Err(err),
            }
        }
        let mut connection =
            MllpConnection::connect_with_limit(&*self.addr, self.timeouts, self.max_frame_size).await?;
        let reply = connection.exchange(message).await?;
        self.connection = Some(connection);
        Ok(reply)
    }

    /// Closes the open connection, if any.
    pub fn disconnect(&mut self) {
        self.connection = None;
    }
}

/// Answers the frames an [`serve`] loop receives.
///
/// `handle` gets one frame's bytes, unframed and not decoded, and returns the reply bytes (to be
/// framed and written), or `None` to close the connection without replying. It is called for
/// every frame, HL7 or not: deciding what garbage deserves is the handler's job.
pub trait MllpHandler: Send + Sync + 'static {
    /// Answers one frame from `peer`.
    fn handle(&self, frame: Vec<u8>, peer: SocketAddr) -> impl Future<Output = Option<Vec<u8>>> + Send;
}

/// Any `async` closure of the right shape is a handler.
impl<F, Fut> MllpHandler for F
where
    F: Fn(Vec<u8>, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Vec<u8>>> + Send,
{
    fn handle(&self, frame: Vec<u8>, peer: SocketAddr) -> impl Future<Output = Option<Vec<u8>>> + Send {
        self(frame, peer)
    }
}

/// Limits of an [`serve`] loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MllpServerOptions {
    /// A connection with no complete frame for this long is closed.
    pub idle_timeout: Duration,
    /// Writing one reply may take this long before the connection is dropped.
    pub write_timeout: Duration,
    /// The largest frame accepted; a larger one closes the connection.
    pub max_frame_size: usize,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for MllpServerOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(10),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_connections: 64,
        }
    }
}

/// Accepts connections on `listener` and answers each frame through `handler` until `shutdown`
/// is cancelled.
///
/// On shutdown the listener stops accepting (and is closed when this returns); each connection
/// finishes the frame it is handling, writes its reply and closes; this returns when all have.
/// Connection failures are logged (peer address and error code, never content) and never end
/// the loop.
pub async fn serve<H: MllpHandler>(
    listener: TcpListener,
    handler: Arc<H>,
    options: MllpServerOptions,
    shutdown: CancellationToken,
) -> Result<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(options.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections so the set does not grow with the server's lifetime.
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(error.kind = %err.kind(), "mllp accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = Arc::clone(&handler);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            serve_connection(stream, peer, handler.as_ref(), options, &shutdown).await;
            drop(permit);
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn serve_connection<H: MllpHandler>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: &H,
    options: MllpServerOptions,
    shutdown: &CancellationToken,
) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error.kind = %err.kind(), "mllp set_nodelay failed");
    }
    let mut framed = Framed::new(stream, MllpCodec::with_max_frame_size(options.max_frame_size));
    tracing::debug!(%peer, "mllp connection opened");
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = timeout(options.idle_timeout, framed.next()) => next,
        };
        let frame = match next {
            Err(_) => {
                tracing::debug!(%peer, "mllp connection idle; closing");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(err))) => {
                // Too large, truncated or broken: nothing can be answered on this connection.
                tracing::warn!(%peer, code = ehr_core::Classify::code(&err), "mllp frame refused; closing");
                break;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Some(reply) = handler.handle(frame.to_vec(), peer).await else {
            tracing::debug!(%peer, "mllp handler closed the connection");
            break;
        };
        match timeout(options.write_timeout, framed.send(reply)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(%peer, code = ehr_core::Classify::code(&err), "mllp reply not written; closing");
                break;
            }
            Err(_) => {
                tracing::warn!(%peer, "mllp reply write timed out; closing");
                break;
            }
        }
    }
    tracing::debug!(%peer, "mllp connection closed");
}
