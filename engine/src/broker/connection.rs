//! One client connection: read frames ahead, process them in order, write responses in order.
//!
//! Per connection: the reader reads up to `queued.max.requests.per.connection` frames, and at
//! most `socket.request.max.bytes` bytes of them, ahead (a bounded queue and a byte budget are
//! the back-pressure); the processor starts each request as a task in arrival order; the
//! writer awaits those tasks in the same order and sends their responses.
//!
//! Requests take effect in the order the client sent them, as in Kafka (which mutes a
//! connection until its response is sent): a non-produce request starts only after every
//! earlier request has completed, and runs to completion before the next starts. Consecutive
//! produce requests are pipelined: the next one starts as soon as the previous one's appends
//! have taken their place in their logs' order, so they are appended in request order while
//! their writes (and fsyncs) overlap.
//!
//! Security: on a TLS listener the stream is wrapped by rustls first (the principal is the
//! client certificate's subject, if any), and fetch responses take the copy path (sendfile
//! cannot write through TLS). On a SASL listener every frame passes through the connection's
//! [`SaslConnection`] first: until it has authenticated, only ApiVersions, SaslHandshake and
//! SaslAuthenticate are served, and frames are limited to `sasl.server.max.receive.size`.

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::rc::Rc;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, WriteHalf};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};

use crate::security::principal::ANONYMOUS;
use crate::security::sasl::{Action, SaslConnection, SaslSettings, MAX_RECEIVE_BEFORE_AUTH};
use crate::security::tls::ReloadableAcceptor;

use super::api::{handle_request, RequestError, Response};
use super::protocol::{FramePart, RecordsSource};
use super::request_context::{wait_unmuted, ConnectionInfo, CONNECTION};
use super::services::Services;
use super::shard::Phase;

/// A started request, awaited by the writer in request order.
type InFlight = JoinHandle<Result<Option<Response>, RequestError>>;

/// A request frame and the read-ahead budget it holds until it has been handled.
type Frame = (BytesMut, OwnedSemaphorePermit);

/// Why reading the next frame stopped.
enum ReadEnd {
    Eof,
    Io(std::io::Error),
    BadSize(i32),
}

/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A listener as the shards serve it: its configuration (advertised port resolved) and its
/// loaded TLS and SASL state.
pub struct ListenerRuntime {
    /// The listener's configuration.
    pub config: super::listeners::ListenerConfig,
    /// The TLS acceptor (TLS listeners).
    pub tls: Option<Arc<ReloadableAcceptor>>,
    /// The SASL settings (SASL listeners).
    pub sasl: Option<Arc<SaslSettings>>,
}

/// The write side of a connection.
enum Writer {
    Plain(OwnedWriteHalf),
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

/// Serves `stream` until the peer closes it, a request is malformed, or the shard drains.
pub async fn serve_connection(
    svc: Rc<Services>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerRuntime>,
) {
    let shard = svc.shard.clone();
    shard.connections.set(shard.connections.get() + 1);
    crate::metrics::connection_opened();
    serve(&svc, stream, peer, &listener).await;
    shard.connections.set(shard.connections.get() - 1);
    crate::metrics::connection_closed();
    shard.connection_closed.notify_waiters();
    debug!(%peer, "connection closed");
}

async fn serve(svc: &Rc<Services>, stream: TcpStream, peer: SocketAddr, l: &Arc<ListenerRuntime>) {
    let _ = stream.set_nodelay(true);
    let name = l.config.name.as_str();
    let mut info = ConnectionInfo {
        peer,
        listener: name.to_string(),
        advertised: (l.config.advertised_host.clone(), l.config.advertised_port),
        zero_copy: l.tls.is_none(),
        principal: ANONYMOUS.to_string(),
        muted_until: Rc::new(Cell::new(None)),
    };
    let sasl = l.sasl.clone().map(SaslConnection::new);
    match &l.tls {
        None => {
            let (rd, wr) = stream.into_split();
            run(svc, rd, Writer::Plain(wr), peer, Rc::new(info), sasl).await;
        }
        Some(tls) => {
            let accepted =
                tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream)).await;
            let tls_stream = match accepted {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    warn!(%peer, listener = name, "closing connection: TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    warn!(%peer, listener = name, "closing connection: TLS handshake timed out");
                    return;
                }
            };
            let principal = tls_stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| crate::security::principal::subject_rfc2253(c.as_ref()));
            match principal {
                Some(Ok(dn)) => {
                    info.principal = format!("User:{dn}");
                    info!(%peer, listener = name, principal = %info.principal, "TLS client authenticated")
                }
                Some(Err(e)) => {
                    warn!(%peer, listener = name, "closing connection: client certificate: {e}");
                    return;
                }
                None => {
                    debug!(%peer, listener = name, principal = ANONYMOUS, "TLS connection")
                }
            }
            let (rd, wr) = tokio::io::split(tls_stream);
            run(svc, rd, Writer::Tls(wr), peer, Rc::new(info), sasl).await;
        }
    }
}

async fn run<R: AsyncRead + Unpin>(
    svc: &Rc<Services>,
    rd: R,
    wr: Writer,
    peer: SocketAddr,
    info: Rc<ConnectionInfo>,
    sasl: Option<SaslConnection>,
) {
    let shard = &svc.shard;
    let (frames_tx, frames_rx) =
        mpsc::channel::<Frame>(shard.ctx.config.max_inflight_per_connection);
    let (responses_tx, responses_rx) =
        mpsc::channel::<InFlight>(shard.ctx.config.max_inflight_per_connection);
    // Until SASL succeeds, frames are limited to `sasl.server.max.receive.size`.
    let authenticated = Rc::new(Cell::new(sasl.is_none()));
    let writer = crate::io::runtime::spawn(write_loop(responses_rx, wr, peer));
    let muted_until = info.muted_until.clone();
    let processor = crate::io::runtime::spawn(process_loop(
        svc.clone(),
        frames_rx,
        responses_tx,
        peer,
        info,
        sasl,
        authenticated.clone(),
    ));
    read_loop(shard, rd, frames_tx, peer, &authenticated, &muted_until).await;
    let _ = processor.await;
    let _ = writer.await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    shard: &Rc<super::shard::Shard>,
    rd: R,
    tx: mpsc::Sender<Frame>,
    peer: SocketAddr,
    authenticated: &Cell<bool>,
    muted_until: &Cell<Option<tokio::time::Instant>>,
) {
    let configured_max = shard.ctx.config.socket_request_max_bytes;
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let budget = Arc::new(Semaphore::new(configured_max));
    let mut phase = shard.phase.subscribe();
    loop {
        if *phase.borrow() != Phase::Running {
            return;
        }
        // Before SASL succeeds frames are capped, and may be shorter than a request header
        // (a raw token after a v0 SaslHandshake); otherwise a frame holds at least a header.
        // A quota muted the connection (KIP-219): read nothing more until it ends.
        tokio::select! {
            _ = wait_unmuted(muted_until) => {}
            _ = phase.changed() => return,
        }
        let (min, max) = if authenticated.get() {
            (MIN_REQUEST_FRAME, configured_max)
        } else {
            (1, configured_max.min(MAX_RECEIVE_BEFORE_AUTH))
        };
        let frame = tokio::select! {
            f = read_frame(&mut rd, min, max, &budget) => f,
            _ = phase.changed() => return,
            _ = tx.closed() => return,
        };
        let frame = match frame {
            Ok(f) => {
                crate::metrics::record_received(4 + f.0.len() as u64);
                f
            }
            Err(ReadEnd::Eof) => return,
            Err(ReadEnd::Io(e)) => {
                debug!(%peer, "read failed: {e}");
                return;
            }
            Err(ReadEnd::BadSize(size)) => {
                warn!(%peer, size, max, "closing connection: request frame size out of range");
                return;
            }
        };
        if tx.send(frame).await.is_err() {
            return;
        }
    }
}

/// The smallest request frame: a v0 request header (api key, version, correlation id).
const MIN_REQUEST_FRAME: i32 = 8;

/// Reads one size-prefixed frame. The size is checked before anything is allocated.
async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    min: i32,
    max: usize,
    budget: &Arc<Semaphore>,
) -> Result<Frame, ReadEnd> {
    let size = match rd.read_i32().await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(ReadEnd::Eof),
        Err(e) => return Err(ReadEnd::Io(e)),
    };
    if size < min || size as usize > max {
        return Err(ReadEnd::BadSize(size));
    }
    let size = size as usize;
    // Wait for read-ahead budget before allocating; `max` fits in u32 (config checks it).
    let permit = budget
        .clone()
        .acquire_many_owned(size as u32)
        .await
        .map_err(|_| ReadEnd::Eof)?;
    let mut buf = BytesMut::with_capacity(size);
    let mut limited = rd.take(size as u64);
    while buf.len() < size {
        match limited.read_buf(&mut buf).await {
            Ok(0) => return Err(ReadEnd::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) => return Err(ReadEnd::Io(e)),
        }
    }
    debug_assert_eq!(buf.len(), size);
    Ok((buf, permit))
}

/// A response that is ready now (SASL replies), queued behind the earlier ones.
fn ready(frame: BytesMut) -> InFlight {
    crate::io::runtime::spawn(async move { Ok(Some(Response::Frame(frame))) })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn scram_nonce() -> String {
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

#[allow(clippy::too_many_arguments)]
async fn process_loop(
    svc: Rc<Services>,
    mut frames: mpsc::Receiver<Frame>,
    responses: mpsc::Sender<InFlight>,
    peer: SocketAddr,
    mut info: Rc<ConnectionInfo>,
    mut sasl: Option<SaslConnection>,
    authenticated: Rc<Cell<bool>>,
) {
    // Completion signals of produce requests started but maybe not finished.
    let mut produces: Vec<oneshot::Receiver<bool>> = Vec::new();
    while let Some((frame, budget)) = frames.recv().await {
        // A frame read before a quota muted the connection waits out the mute (or the drain).
        if info.muted_until.get().is_some() {
            let mut phase = svc.shard.phase.subscribe();
            tokio::select! {
                _ = wait_unmuted(&info.muted_until) => {}
                _ = phase.changed() => return,
            }
        }
        let is_produce = frame.len() >= 2 && i16::from_be_bytes([frame[0], frame[1]]) == 0;
        if !is_produce {
            // A fetch, metadata or admin request sees every earlier produce's effect.
            for done in produces.drain(..) {
                let _ = done.await;
            }
        }
        if let Some(s) = sasl.as_mut() {
            let listener = info.listener.as_str();
            let reply = match s.on_frame(&frame, now_ms(), scram_nonce) {
                Action::Forward => None,
                Action::Reply(f) => Some(f),
                Action::Authenticated { reply, principal } => {
                    info!(%peer, listener, %principal, "SASL authentication succeeded");
                    authenticated.set(true);
                    // Requests from now on run as this principal.
                    let mut next = (*info).clone();
                    next.principal = principal;
                    info = Rc::new(next);
                    Some(reply)
                }
                Action::ReplyAndClose(f, why) => {
                    warn!(%peer, listener, "closing connection: {why}");
                    let _ = responses.send(ready(f)).await;
                    return;
                }
                Action::Close(why) => {
                    warn!(%peer, listener, "closing connection: {why}");
                    return;
                }
            };
            if let Some(f) = reply {
                if responses.send(ready(f)).await.is_err() {
                    return;
                }
                continue;
            }
        }
        let (submitted_tx, submitted_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let task_svc = svc.clone();
        let task_info = info.clone();
        let api_key = i16::from_be_bytes([
            frame.first().copied().unwrap_or(0xff),
            frame.get(1).copied().unwrap_or(0xff),
        ]);
        let task = crate::io::runtime::spawn(async move {
            let started = std::time::Instant::now();
            let handled = handle_request(task_svc, frame.freeze(), Some(submitted_tx));
            let result = CONNECTION.scope(task_info, handled).await;
            crate::metrics::record_request(
                api_key,
                started.elapsed(),
                result.as_ref().err().and_then(request_error_name),
            );
            // The request's bytes are gone once it is handled: let the reader read ahead.
            drop(budget);
            let _ = done_tx.send(result.is_ok());
            result
        });
        if responses.send(task).await.is_err() {
            return;
        }
        // A request that fails closes the connection: nothing after it may take effect.
        if is_produce && submitted_rx.await.is_ok() {
            // Its appends are ordered; let it finish in the background.
            produces
                .retain_mut(|rx| matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
            produces.push(done_rx);
        } else if !matches!(done_rx.await, Ok(true)) {
            return;
        }
    }
}

async fn write_loop(mut rx: mpsc::Receiver<InFlight>, mut wr: Writer, peer: SocketAddr) {
    while let Some(task) = rx.recv().await {
        let response = match task.await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                warn!(%peer, "closing connection: {e}");
                return;
            }
            Err(e) => {
                warn!(%peer, "closing connection: request task failed: {e}");
                return;
            }
        };
        let (len, records) = match &response {
            None => (0, 0),
            Some(Response::Frame(bytes)) => (bytes.len(), 0),
            Some(Response::Fetch(frame)) => {
                let records = frame
                    .parts
                    .iter()
                    .map(|p| match p {
                        FramePart::Head(_) => 0,
                        FramePart::Records(r) => r.len(),
                    })
                    .sum();
                (frame.total_len, records)
            }
        };
        let result = match response {
            None => Ok(()),
            Some(Response::Frame(bytes)) => wr.write_all(&bytes).await,
            Some(Response::Fetch(frame)) => wr.write_fetch(frame.parts).await,
        };
        if result.is_ok() {
            crate::metrics::record_sent(len as u64);
            crate::metrics::record_fetch(records as u64);
        }
        if let Err(e) = result {
            debug!(%peer, "write failed: {e}");
            return;
        }
    }
}

/// The Kafka error name a request that closed its connection is counted under in
/// `sluice_request_errors_total` (an acks=0 produce's partition errors are counted already).
fn request_error_name(e: &RequestError) -> Option<&'static str> {
    Some(match e {
        RequestError::TooShort(_) | RequestError::Malformed { .. } => "INVALID_REQUEST",
        RequestError::UnknownApi(_) | RequestError::Unsupported { .. } => "UNSUPPORTED_VERSION",
        RequestError::ShardGone(_) => "BROKER_NOT_AVAILABLE",
        RequestError::NotAuthorised { .. } => "CLUSTER_AUTHORIZATION_FAILED",
        RequestError::AcksZeroFailed(_) => return None,
        _ => "UNKNOWN_SERVER_ERROR",
    })
}

impl Writer {
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Writer::Plain(w) => w.write_all(bytes).await,
            Writer::Tls(w) => {
                w.write_all(bytes).await?;
                w.flush().await
            }
        }
    }

    async fn write_fetch(&mut self, parts: Vec<FramePart>) -> std::io::Result<()> {
        for part in parts {
            match part {
                FramePart::Head(b) => self.write_part(&b).await?,
                FramePart::Records(RecordsSource::Bytes(b)) => self.write_part(&b).await?,
                FramePart::Records(RecordsSource::File { fd, position, len }) => match self {
                    Writer::Plain(wr) => {
                        crate::io::net::sendfile_all(
                            wr.as_ref(),
                            fd.as_fd(),
                            position,
                            len as usize,
                        )
                        .await?
                    }
                    Writer::Tls(wr) => {
                        // The handler takes the copy path on TLS connections; this only
                        // guards against a file slice reaching here anyway.
                        let bytes = crate::io::net::read_range(fd.as_fd(), position, len as usize)?;
                        wr.write_all(&bytes).await?
                    }
                },
            }
        }
        if let Writer::Tls(w) = self {
            w.flush().await?;
        }
        Ok(())
    }

    async fn write_part(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Writer::Plain(w) => w.write_all(bytes).await,
            Writer::Tls(w) => w.write_all(bytes).await,
        }
    }
}
