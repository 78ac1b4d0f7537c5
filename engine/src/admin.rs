//! The admin HTTP listener (`admin.listener`): `GET /metrics`, `/health`, `/ready`.
//!
//! A deliberately small HTTP/1.1 server on its own thread, outside the shards: a scrape must
//! not queue behind Kafka traffic, and a misbehaving HTTP client must not touch a shard's
//! event loop. Each connection is one request and one response (`Connection: close`), the
//! request head is bounded in size and time, and only a few connections are served at once.
//! Parsing and response building are sans-IO (`parse_head`, `Response`); the thread is the
//! shell around them.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::broker::groups::Groups;
use crate::broker::services::ServicePeers;
use crate::broker::shard::{BrokerContext, Job};
use crate::metrics::encode::CONTENT_TYPE;
use crate::metrics::{GroupOffsetSnapshot, PartitionSnapshot, Readiness};

/// Largest request head accepted (request line and headers).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Time a client has to send its request head, and to read the response.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served concurrently; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a scrape waits for each shard's partition snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a request head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Not an HTTP/1.x request line, or not UTF-8.
    #[error("malformed request")]
    BadRequest,
    /// The head exceeds [`MAX_HEAD_BYTES`].
    #[error("request head too large")]
    TooLarge,
}

/// A parsed request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The path without its query string.
    pub path: String,
}

/// Parses the request head in `buf`: `Ok(None)` while the blank line ending it has not
/// arrived. Headers are skipped (no request body is ever read).
pub fn parse_head(buf: &[u8]) -> Result<Option<RequestHead>, HttpError> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let Some(end) = end else {
        return if buf.len() >= MAX_HEAD_BYTES {
            Err(HttpError::TooLarge)
        } else {
            Ok(None)
        };
    };
    if end + 4 > MAX_HEAD_BYTES {
        return Err(HttpError::TooLarge);
    }
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::BadRequest)?;
    let line = head.split("\r\n").next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::BadRequest);
    };
    if !version.starts_with("HTTP/1.")
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
    {
        return Err(HttpError::BadRequest);
    }
    let path = target.split('?').next().unwrap_or(target);
    Ok(Some(RequestHead {
        method: method.to_string(),
        path: path.to_string(),
    }))
}

/// An HTTP response about to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
    /// Omit the body (HEAD request).
    pub head_only: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
            head_only: false,
        }
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// Answers one request. `metrics` renders the exposition text (called only for `/metrics`).
pub fn route(
    head: &RequestHead,
    readiness: Readiness,
    metrics: impl FnOnce() -> String,
) -> Response {
    if head.method != "GET" && head.method != "HEAD" {
        return Response::text(405, "method not allowed");
    }
    let mut resp = match head.path.as_str() {
        "/metrics" => Response {
            status: 200,
            content_type: CONTENT_TYPE,
            body: metrics(),
            head_only: false,
        },
        "/health" => Response::text(200, "ok"),
        "/ready" => match readiness {
            Readiness::Ready => Response::text(200, "ready"),
            Readiness::Starting => Response::text(503, "starting"),
            Readiness::Draining => Response::text(503, "draining"),
        },
        _ => Response::text(404, "not found"),
    };
    resp.head_only = head.method == "HEAD";
    resp
}

/// A running admin listener; dropping it stops the thread.
#[derive(Debug)]
pub struct AdminServer {
    /// The bound address (the real port when 0 was configured).
    pub local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `addr` and serves on a new thread.
    pub fn start(
        addr: SocketAddr,
        ctx: Arc<BrokerContext>,
        peers: Arc<ServicePeers>,
    ) -> io::Result<AdminServer> {
        let broker = Arc::new(Broker { ctx, peers });
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("admin-http".into())
            .spawn(move || accept_loop(listener, broker, thread_stop))?;
        info!(addr = %local_addr, "admin listener (/metrics, /health, /ready)");
        Ok(AdminServer {
            local_addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the admin listener reads: the broker's shared state and its shards' services.
struct Broker {
    ctx: Arc<BrokerContext>,
    peers: Arc<ServicePeers>,
}

fn accept_loop(listener: TcpListener, broker: Arc<Broker>, stop: Arc<AtomicBool>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Acquire) {
        // Poll with a timeout so the stop flag is seen without a wake-up connection.
        let ready = {
            let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(200u16))
        };
        match ready {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                warn!("admin listener poll failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        let (stream, peer) = match listener.accept() {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on a readable listener.
                debug!("admin accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = (&stream).write_all(&Response::text(503, "busy").to_bytes());
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let broker = broker.clone();
        let done = active.clone();
        let spawned = std::thread::Builder::new()
            .name("admin-conn".into())
            .spawn(move || {
                if let Err(e) = serve(stream, &broker) {
                    debug!(%peer, "admin connection: {e}");
                }
                done.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            warn!("cannot start admin connection thread: {e}");
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn serve(mut stream: TcpStream, broker: &Broker) -> io::Result<()> {
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head = loop {
        match parse_head(&buf) {
            Ok(Some(head)) => break head,
            Ok(None) => {}
            Err(HttpError::TooLarge) => {
                return reply(stream, &Response::text(431, "request head too large"))
            }
            Err(HttpError::BadRequest) => {
                return reply(stream, &Response::text(400, "bad request"))
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return reply(stream, &Response::text(408, "request timeout"));
        }
        stream.set_read_timeout(Some(left))?;
        let want = (MAX_HEAD_BYTES - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return reply(stream, &Response::text(408, "request timeout"));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    let resp = route(&head, broker.ctx.metrics.readiness(), || {
        scrape(&broker.ctx, &broker.peers)
    });
    reply(stream, &resp)
}

/// Writes `resp` and closes without resetting: unread request bytes (a refused oversized
/// head, say) would otherwise make the kernel send RST and the client lose the response.
fn reply(mut stream: TcpStream, resp: &Response) -> io::Result<()> {
    stream.write_all(&resp.to_bytes())?;
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Write)?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < 64 * 1024 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

/// Renders `/metrics`: asks every shard for its partitions' state, then reads the counters.
pub fn scrape(ctx: &BrokerContext, peers: &ServicePeers) -> String {
    type Reply = (Vec<PartitionSnapshot>, Vec<GroupOffsetSnapshot>);
    let (tx, rx) = mpsc::channel::<Reply>();
    let mut asked = 0;
    for id in 0..ctx.shard_count() {
        let tx = tx.clone();
        let job: Job<Groups> = Box::new(move |groups: std::rc::Rc<Groups>| {
            Box::pin(async move {
                let partitions = groups.replicas.partition_snapshots();
                let _ = tx.send((partitions, groups.offset_snapshots()));
            })
        });
        if peers.groups.post(id, job).is_ok() {
            asked += 1;
        }
    }
    drop(tx);
    let deadline = Instant::now() + SNAPSHOT_TIMEOUT;
    let (mut partitions, mut group_offsets) = (Vec::new(), Vec::new());
    for _ in 0..asked {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((mut p, mut g)) => {
                partitions.append(&mut p);
                group_offsets.append(&mut g);
            }
            Err(_) => {
                warn!("a shard did not report its partitions in time; /metrics omits them");
                break;
            }
        }
    }
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    group_offsets
        .sort_by(|a, b| (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition)));
    let jobs: Vec<usize> = (0..ctx.shard_count()).map(|i| peers.queued(i)).collect();
    ctx.metrics.render(&partitions, &group_offsets, &jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing() {
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
            Ok(None)
        );
        assert_eq!(
            parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Some(RequestHead {
                method: "GET".into(),
                path: "/metrics".into()
            }))
        );
        assert_eq!(
            parse_head(b"\x16\x03\x01\x02\r\n\r\n"),
            Err(HttpError::BadRequest)
        );
        assert_eq!(
            parse_head(b"GET metrics HTTP/1.1\r\n\r\n"),
            Err(HttpError::BadRequest)
        );
        assert_eq!(
            parse_head(b"GET / SPDY\r\n\r\n"),
            Err(HttpError::BadRequest)
        );
        assert_eq!(
            parse_head(&vec![b'a'; MAX_HEAD_BYTES]),
            Err(HttpError::TooLarge)
        );
    }

    #[test]
    fn routing() {
        let get = |p: &str| RequestHead {
            method: "GET".into(),
            path: p.into(),
        };
        assert_eq!(
            route(&get("/health"), Readiness::Starting, String::new).status,
            200
        );
        assert_eq!(
            route(&get("/ready"), Readiness::Starting, String::new).status,
            503
        );
        assert_eq!(
            route(&get("/ready"), Readiness::Ready, String::new).status,
            200
        );
        assert_eq!(
            route(&get("/ready"), Readiness::Draining, String::new).status,
            503
        );
        assert_eq!(
            route(&get("/nope"), Readiness::Ready, String::new).status,
            404
        );
        let m = route(&get("/metrics"), Readiness::Ready, || "x 1\n".into());
        assert_eq!(m.body, "x 1\n");
        assert_eq!(m.content_type, CONTENT_TYPE);
        let post = RequestHead {
            method: "POST".into(),
            path: "/metrics".into(),
        };
        assert_eq!(route(&post, Readiness::Ready, String::new).status, 405);
        let head = RequestHead {
            method: "HEAD".into(),
            path: "/health".into(),
        };
        let bytes = route(&head, Readiness::Ready, String::new).to_bytes();
        assert!(String::from_utf8(bytes).unwrap().ends_with("\r\n\r\n"));
    }
}
