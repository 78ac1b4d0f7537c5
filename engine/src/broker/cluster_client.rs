//! A minimal Kafka-protocol client for broker-to-broker calls (follower Fetch and
//! OffsetForLeaderEpoch, forwarded DescribeQuorum): one connection, one request at a time,
//! every call bounded in time, over TLS when the inter-broker listener is SSL.

use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::security::tls::{connect_peer, PeerStream, PeerTls};

/// Largest response frame a replica accepts (a fetch answer is bounded by its max_bytes).
const MAX_RESPONSE: usize = 256 * 1024 * 1024;

/// A broker-to-broker call failed; the caller drops the connection and retries later.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, writing or reading failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The call did not complete in time.
    #[error("timed out")]
    Timeout,
    /// The request could not be encoded or the response not decoded.
    #[error("codec: {0}")]
    Codec(String),
}

/// One connection to another broker's Kafka listener.
pub struct KafkaClient {
    stream: Box<dyn PeerStream>,
    next_correlation_id: i32,
    client_id: String,
}

impl std::fmt::Debug for KafkaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaClient")
            .field("client_id", &self.client_id)
            .finish()
    }
}

impl KafkaClient {
    /// Connects to `addr` (`host:port`) within `timeout`, with TLS when `tls` is given (the
    /// inter-broker listener is SSL).
    pub async fn connect(
        addr: &str,
        tls: Option<&PeerTls>,
        client_id: String,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let stream = connect_peer(addr, tls, timeout).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::TimedOut {
                ClientError::Timeout
            } else {
                ClientError::Io(e)
            }
        })?;
        Ok(KafkaClient {
            stream,
            next_correlation_id: 0,
            client_id,
        })
    }

    /// Sends one request and waits (at most `timeout`) for its response.
    pub async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, ClientError> {
        tokio::time::timeout(timeout, self.call_inner(api, version, request))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn call_inner<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Resp, ClientError> {
        let codec = |e: anyhow::Error| ClientError::Codec(e.to_string());
        let cid = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(cid)
            .with_client_id(Some(StrBytes::from_string(self.client_id.clone())));
        let mut buf = BytesMut::with_capacity(256);
        buf.put_i32(0);
        header
            .encode(&mut buf, api.request_header_version(version))
            .map_err(codec)?;
        request.encode(&mut buf, version).map_err(codec)?;
        let len = i32::try_from(buf.len() - 4)
            .map_err(|_| ClientError::Codec("request too large".into()))?;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&buf).await?;
        self.stream.flush().await?;
        let size = self.stream.read_i32().await?;
        let size = usize::try_from(size)
            .ok()
            .filter(|&s| (4..=MAX_RESPONSE).contains(&s))
            .ok_or_else(|| ClientError::Codec(format!("bad response size {size}")))?;
        let mut body = BytesMut::zeroed(size);
        self.stream.read_exact(&mut body).await?;
        let mut body = body.freeze();
        let rh = ResponseHeader::decode(&mut body, api.response_header_version(version))
            .map_err(codec)?;
        if rh.correlation_id != cid {
            return Err(ClientError::Codec(format!(
                "correlation id {} for request {cid}",
                rh.correlation_id
            )));
        }
        let resp = Resp::decode(&mut body, version).map_err(codec)?;
        if body.has_remaining() {
            tracing::debug!(
                left = body.remaining(),
                "trailing bytes after {api:?} response"
            );
        }
        Ok(resp)
    }
}
