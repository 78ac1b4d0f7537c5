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

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::rc::Rc;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::handlers::{handle_request, RequestError, Response};
use super::protocol::{FramePart, RecordsSource};
use super::shard::{Phase, Shard};

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

/// Serves `stream` until the peer closes it, a request is malformed, or the shard drains.
pub async fn serve_connection(shard: Rc<Shard>, stream: TcpStream, peer: SocketAddr) {
    shard.connections.set(shard.connections.get() + 1);
    crate::metrics::connection_opened();
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let (frames_tx, frames_rx) =
        mpsc::channel::<Frame>(shard.ctx.config.max_inflight_per_connection);
    let (responses_tx, responses_rx) =
        mpsc::channel::<InFlight>(shard.ctx.config.max_inflight_per_connection);
    let writer = crate::io::runtime::spawn(write_loop(responses_rx, wr, peer));
    let processor =
        crate::io::runtime::spawn(process_loop(shard.clone(), frames_rx, responses_tx, peer));
    read_loop(&shard, rd, frames_tx, peer).await;
    let _ = processor.await;
    let _ = writer.await;
    shard.connections.set(shard.connections.get() - 1);
    crate::metrics::connection_closed();
    shard.connection_closed.notify_waiters();
    debug!(%peer, "connection closed");
}

async fn read_loop(
    shard: &Rc<Shard>,
    rd: OwnedReadHalf,
    tx: mpsc::Sender<Frame>,
    peer: SocketAddr,
) {
    let max = shard.ctx.config.socket_request_max_bytes;
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let budget = Arc::new(Semaphore::new(max));
    let mut phase = shard.phase.subscribe();
    loop {
        if *phase.borrow() != Phase::Running {
            return;
        }
        let frame = tokio::select! {
            f = read_frame(&mut rd, max, &budget) => f,
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

/// Reads one size-prefixed frame. The size is checked before anything is allocated.
async fn read_frame(
    rd: &mut BufReader<OwnedReadHalf>,
    max: usize,
    budget: &Arc<Semaphore>,
) -> Result<Frame, ReadEnd> {
    let size = match rd.read_i32().await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(ReadEnd::Eof),
        Err(e) => return Err(ReadEnd::Io(e)),
    };
    if size < 8 || size as usize > max {
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

async fn process_loop(
    shard: Rc<Shard>,
    mut frames: mpsc::Receiver<Frame>,
    responses: mpsc::Sender<InFlight>,
    peer: SocketAddr,
) {
    // Completion signals of produce requests started but maybe not finished.
    let mut produces: Vec<oneshot::Receiver<bool>> = Vec::new();
    while let Some((frame, budget)) = frames.recv().await {
        let is_produce = frame.len() >= 2 && i16::from_be_bytes([frame[0], frame[1]]) == 0;
        if !is_produce {
            // A fetch, metadata or admin request sees every earlier produce's effect.
            for done in produces.drain(..) {
                let _ = done.await;
            }
        }
        let (submitted_tx, submitted_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let task_shard = shard.clone();
        let api_key = i16::from_be_bytes([
            frame.first().copied().unwrap_or(0xff),
            frame.get(1).copied().unwrap_or(0xff),
        ]);
        let task = crate::io::runtime::spawn(async move {
            let started = std::time::Instant::now();
            let handled = handle_request(task_shard, frame.freeze(), Some(submitted_tx));
            let result = super::groups::CLIENT_ADDR.scope(peer, handled).await;
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

async fn write_loop(mut rx: mpsc::Receiver<InFlight>, mut wr: OwnedWriteHalf, peer: SocketAddr) {
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
            Some(Response::Fetch(frame)) => write_fetch(&mut wr, frame.parts).await,
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
        RequestError::AcksZeroFailed(_) => return None,
        _ => "UNKNOWN_SERVER_ERROR",
    })
}

async fn write_fetch(wr: &mut OwnedWriteHalf, parts: Vec<FramePart>) -> std::io::Result<()> {
    for part in parts {
        match part {
            FramePart::Head(b) => wr.write_all(&b).await?,
            FramePart::Records(RecordsSource::Bytes(b)) => wr.write_all(&b).await?,
            FramePart::Records(RecordsSource::File { fd, position, len }) => {
                crate::io::net::sendfile_all(wr.as_ref(), fd.as_fd(), position, len as usize)
                    .await?
            }
        }
    }
    Ok(())
}
