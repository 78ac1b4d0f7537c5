//! The controller's RPC over TCP between voters (and from brokers to voters): one request,
//! one response, each a frame of `[u32 big-endian length][JSON body]`. Raft's AppendEntries,
//! Vote and InstallSnapshot travel here, and so do the client calls (propose a metadata
//! command, broker heartbeat, read the metadata image). Every call has a timeout.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::metadata::{ApplyResult, MetadataCommand, MetadataImage};
use super::store::NodeId;
use super::TypeConfig;
use crate::replication::BrokerId;
use crate::security::tls::{connect_peer, PeerStream, PeerTls};

/// A frame larger than this is a protocol error (snapshots are sent in smaller chunks).
const MAX_FRAME: usize = 64 << 20;

/// A broker's heartbeat to the controller (Kafka's BrokerHeartbeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// Broker id.
    pub broker_id: BrokerId,
    /// Its registration epoch.
    pub broker_epoch: i64,
    /// The metadata offset the broker has applied.
    pub metadata_offset: u64,
    /// Controlled shutdown: fence the broker now so its leaderships move before it stops.
    #[serde(default)]
    pub want_shutdown: bool,
}

/// The controller's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The broker is fenced (it may not lead); a heartbeat unfences it.
    pub fenced: bool,
    /// The controller's applied metadata offset.
    pub metadata_offset: u64,
}

/// Requests of the controller protocol.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcRequest {
    /// Raft AppendEntries.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft RequestVote.
    Vote(VoteRequest<NodeId>),
    /// Raft InstallSnapshot (one chunk).
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Write a metadata command (only the controller accepts it).
    Propose(MetadataCommand),
    /// Broker heartbeat (only the controller accepts it).
    Heartbeat(HeartbeatRequest),
    /// The receiving voter's current metadata image.
    ReadMetadata,
}

/// Why a client call was not served by the receiving node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Redirect {
    /// Not the controller; the leader it knows of, if any.
    NotController(Option<NodeId>),
}

/// Responses of the controller protocol.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcResponse {
    /// Raft AppendEntries.
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// Raft RequestVote.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// Raft InstallSnapshot.
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// A proposal's applied result.
    Propose(Result<ApplyResult, Redirect>),
    /// A heartbeat's answer (rejected by the state machine, or redirected).
    Heartbeat(Result<ApplyHeartbeat, Redirect>),
    /// The metadata image and the controller the answering voter follows.
    Metadata {
        /// The voter's applied image.
        image: Box<MetadataImage>,
        /// The controller it knows of.
        controller: Option<NodeId>,
    },
    /// The receiving node is not a controller voter.
    NotAVoter,
}

/// A heartbeat answer or the metadata error that refused it.
pub type ApplyHeartbeat = Result<HeartbeatResponse, super::error::MetadataError>;

/// Writes one frame.
pub async fn write_frame<T: Serialize, S: AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    value: &T,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(value)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let len = u32::try_from(body.len())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    stream.write_all(&buf).await?;
    stream.flush().await
}

/// Reads one frame; `Ok(None)` on a clean end of stream.
pub async fn read_frame<T: DeserializeOwned, S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
) -> std::io::Result<Option<T>> {
    let mut header = [0u8; 4];
    match stream.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("controller frame of {len} bytes exceeds {MAX_FRAME}"),
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// One request/response exchange on `stream`, bounded by `timeout`.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    request: &RpcRequest,
    timeout: Duration,
) -> std::io::Result<RpcResponse> {
    let fut = async {
        write_frame(stream, request).await?;
        read_frame::<RpcResponse, _>(stream).await?.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "controller closed")
        })
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, "controller rpc timed out")
    })?
}

/// One call on a fresh connection to `addr` (client calls: rare, so no pooling), over TLS
/// when the controller channel is SSL.
pub async fn call(
    addr: &str,
    tls: Option<&PeerTls>,
    request: &RpcRequest,
    timeout: Duration,
) -> std::io::Result<RpcResponse> {
    let mut stream = connect_peer(addr, tls, timeout).await?;
    exchange(&mut stream, request, timeout).await
}

/// Creates one [`VoterConnection`] per target voter.
#[derive(Debug, Clone, Default)]
pub struct Network {
    /// TLS of the controller channel (SSL), `None` for PLAINTEXT.
    pub tls: Option<Arc<PeerTls>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = VoterConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        VoterConnection {
            target,
            addr: node.addr.clone(),
            tls: self.tls.clone(),
            stream: None,
        }
    }
}

/// A cached connection to one voter, reopened after any error.
pub struct VoterConnection {
    target: NodeId,
    addr: String,
    tls: Option<Arc<PeerTls>>,
    stream: Option<Box<dyn PeerStream>>,
}

impl std::fmt::Debug for VoterConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoterConnection")
            .field("target", &self.target)
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl VoterConnection {
    async fn send(
        &mut self,
        request: RpcRequest,
        timeout: Duration,
    ) -> std::io::Result<RpcResponse> {
        if self.stream.is_none() {
            let stream = connect_peer(&self.addr, self.tls.as_deref(), timeout)
                .await
                .map_err(|e| match e.kind() {
                    // Backed off as unreachable (see `network_error`).
                    std::io::ErrorKind::TimedOut => {
                        std::io::Error::new(std::io::ErrorKind::NotConnected, e.to_string())
                    }
                    _ => e,
                })?;
            self.stream = Some(stream);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "no stream",
            ));
        };
        let result = exchange(stream, &request, timeout).await;
        if result.is_err() {
            // A timed-out exchange may leave half a frame in flight: never reuse the stream.
            self.stream = None;
        }
        result
    }

    fn unexpected<E: std::error::Error>(
        &self,
        got: &RpcResponse,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        let e = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "unexpected controller response from {}: {got:?}",
                self.target
            ),
        );
        RPCError::Network(NetworkError::new(&e))
    }
}

/// A voter that refuses or cannot take a connection is `Unreachable`, so openraft backs off
/// (500 ms by default) instead of retrying in a tight loop while it is down; any other failure
/// is a plain network error, retried at once.
fn network_error<E: std::error::Error>(
    e: std::io::Error,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    use std::io::ErrorKind::{ConnectionRefused, NotConnected};
    if matches!(e.kind(), ConnectionRefused | NotConnected) {
        return RPCError::Unreachable(openraft::error::Unreachable::new(&e));
    }
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetwork<TypeConfig> for VoterConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let response = self
            .send(RpcRequest::AppendEntries(rpc), option.hard_ttl())
            .await
            .map_err(network_error)?;
        match response {
            RpcResponse::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        let response = self
            .send(RpcRequest::InstallSnapshot(rpc), option.hard_ttl())
            .await
            .map_err(network_error)?;
        match response {
            RpcResponse::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        let response = self
            .send(RpcRequest::Vote(rpc), option.hard_ttl())
            .await
            .map_err(network_error)?;
        match response {
            RpcResponse::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn frames_round_trip_and_bad_frames_are_errors() {
        let (mut a, mut b) = pair().await;
        let request = RpcRequest::Heartbeat(HeartbeatRequest {
            broker_id: 3,
            broker_epoch: 17,
            metadata_offset: 99,
            want_shutdown: true,
        });
        write_frame(&mut a, &request).await.unwrap();
        match read_frame::<RpcRequest, _>(&mut b).await.unwrap() {
            Some(RpcRequest::Heartbeat(h)) => {
                assert_eq!(
                    (h.broker_id, h.broker_epoch, h.want_shutdown),
                    (3, 17, true)
                )
            }
            other => panic!("unexpected {other:?}"),
        }
        // Oversized length prefix: refused before allocating.
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(read_frame::<RpcRequest, _>(&mut b).await.is_err());

        let (mut a, mut b) = pair().await;
        a.write_all(&5u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{bad}").await.unwrap();
        assert!(read_frame::<RpcRequest, _>(&mut b).await.is_err());

        let (a, mut b) = pair().await;
        drop(a);
        assert!(read_frame::<RpcRequest, _>(&mut b).await.unwrap().is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn exchange_times_out_on_a_silent_peer() {
        let (mut a, _b) = pair().await;
        let started = std::time::Instant::now();
        let result = exchange(
            &mut a,
            &RpcRequest::ReadMetadata,
            Duration::from_millis(100),
        )
        .await;
        assert_eq!(
            result.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::TimedOut)
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
