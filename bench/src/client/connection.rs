//! One connection to a broker (TCP, or TLS over it, with SASL authentication when the
//! listener asks for it; the settings and the SASL exchange are `sluice::security::client`'s,
//! which sluicectl uses too): length-prefixed frames, correlation ids, and pipelined
//! requests. Responses are matched by correlation id rather than by arrival order: Kafka
//! brokers answer in order anyway, and the in-process fake broker may answer out of order to
//! inject per-request latency without head-of-line blocking.

use super::ClientError;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslHandshakeRequest,
};
use kafka_protocol::protocol::{
    encode_request_header_into_buffer, Decodable, HeaderVersion, Request, StrBytes,
};
use sluice::security::client::{SaslAuth, SaslExchange, Security};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// The sending half of a connection: a TCP write half, or TLS's.
type Writer = Box<dyn AsyncWrite + Unpin + Send>;
/// The receiving half, read by the connection's reader task.
type Reader = Box<dyn AsyncRead + Unpin + Send>;

/// Largest response frame accepted (guards against garbage length prefixes).
const MAX_FRAME: usize = 256 * 1024 * 1024;

type Pending = Arc<Mutex<Option<HashMap<i32, (i16, oneshot::Sender<Bytes>)>>>>;

/// Versions negotiated with one broker.
#[derive(Debug, Clone, Default)]
pub struct ApiVersions {
    ranges: HashMap<i16, (i16, i16)>,
}

impl ApiVersions {
    /// The highest version of `api` within `ours` that the broker also supports.
    pub fn pick(
        &self,
        addr: &str,
        api: ApiKey,
        name: &'static str,
        ours: (i16, i16),
    ) -> Result<i16, ClientError> {
        let unsupported = || ClientError::UnsupportedApi {
            addr: addr.to_string(),
            api: name,
            min: ours.0,
            max: ours.1,
        };
        let (bmin, bmax) = *self.ranges.get(&(api as i16)).ok_or_else(unsupported)?;
        let v = bmax.min(ours.1);
        if v < bmin.max(ours.0) {
            return Err(unsupported());
        }
        Ok(v)
    }
}

/// A pipelined connection to one broker.
pub struct Connection {
    addr: String,
    writer: Writer,
    pending: Pending,
    next_correlation: i32,
    client_id: StrBytes,
    versions: ApiVersions,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A response that has not arrived yet.
pub struct ResponseFuture {
    addr: String,
    rx: oneshot::Receiver<Bytes>,
}

impl ResponseFuture {
    /// Waits for the raw response body (after the response header).
    pub async fn wait(self, timeout: Duration) -> Result<Bytes, ClientError> {
        match tokio::time::timeout(timeout, self.rx).await {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(_)) => Err(ClientError::Closed(self.addr)),
            Err(_) => Err(ClientError::Timeout(self.addr)),
        }
    }
}

impl Connection {
    /// Connects, starts TLS and authenticates as `security` says, and negotiates API
    /// versions.
    pub async fn connect(
        addr: &str,
        client_id: &str,
        security: &Security,
    ) -> Result<Self, ClientError> {
        let io = |source| ClientError::Io {
            addr: addr.to_string(),
            source,
        };
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout(addr.to_string()))?
            .map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let (mut read, writer): (Reader, Writer) = match &security.tls {
            None => {
                let (r, w) = stream.into_split();
                (Box::new(r), Box::new(w))
            }
            Some(config) => {
                let name =
                    Security::server_name(addr).map_err(|message| ClientError::Protocol {
                        addr: addr.to_string(),
                        message,
                    })?;
                let tls = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio_rustls::TlsConnector::from(config.clone()).connect(name, stream),
                )
                .await
                .map_err(|_| ClientError::Timeout(addr.to_string()))?
                .map_err(|source| ClientError::Tls {
                    addr: addr.to_string(),
                    source,
                })?;
                let (r, w) = tokio::io::split(tls);
                (Box::new(r), Box::new(w))
            }
        };
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let reader_pending = pending.clone();
        let reader_addr = addr.to_string();
        let reader = tokio::spawn(async move {
            if let Err(e) = read_loop(&mut read, &reader_pending).await {
                tracing::debug!(addr = %reader_addr, error = %e, "connection reader stopped");
            }
            // Dropping every sender fails the outstanding requests with `Closed`.
            if let Ok(mut g) = reader_pending.lock() {
                g.take();
            }
        });
        let mut conn = Connection {
            addr: addr.to_string(),
            writer,
            pending,
            next_correlation: 0,
            client_id: StrBytes::from_string(client_id.to_string()),
            versions: ApiVersions::default(),
            reader,
        };
        conn.negotiate().await?;
        if let Some(auth) = &security.sasl {
            conn.authenticate(auth).await?;
        }
        Ok(conn)
    }

    /// SaslHandshake, then SaslAuthenticate rounds until the mechanism is done (KIP-152).
    async fn authenticate(&mut self, auth: &SaslAuth) -> Result<(), ClientError> {
        let timeout = Duration::from_secs(10);
        let refused = |addr: &str, code: i16, detail: String| ClientError::Auth {
            addr: addr.to_string(),
            message: format!(
                "SASL {} as {:?}: {} ({code}){detail}",
                auth.mechanism.name(),
                auth.username,
                ResponseError::try_from_code(code)
                    .map_or_else(|| "NONE".to_string(), |e| e.to_string()),
            ),
        };
        let v = self
            .versions
            .pick(&self.addr, ApiKey::SaslHandshake, "SaslHandshake", (1, 1))?;
        let hs = SaslHandshakeRequest::default()
            .with_mechanism(StrBytes::from_static_str(auth.mechanism.name()));
        let resp = self.request(&hs, v, timeout).await?;
        if resp.error_code != 0 {
            let offered: Vec<String> = resp.mechanisms.iter().map(|m| m.to_string()).collect();
            let detail = format!(": the listener offers {}", offered.join(", "));
            return Err(refused(&self.addr, resp.error_code, detail));
        }
        let v = self.versions.pick(
            &self.addr,
            ApiKey::SaslAuthenticate,
            "SaslAuthenticate",
            (0, 2),
        )?;
        let mut exchange = SaslExchange::new(auth);
        let client_side =
            |addr: &str, e: sluice::security::client::SaslClientError| ClientError::Auth {
                addr: addr.to_string(),
                message: format!("SASL {} as {:?}: {e}", auth.mechanism.name(), auth.username),
            };
        let mut token = exchange
            .first_token()
            .map_err(|e| client_side(&self.addr, e))?;
        loop {
            let req = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(token));
            let resp = self.request(&req, v, timeout).await?;
            if resp.error_code != 0 {
                let detail = resp
                    .error_message
                    .as_deref()
                    .filter(|m| !m.is_empty())
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                return Err(refused(&self.addr, resp.error_code, detail));
            }
            match exchange
                .step(&resp.auth_bytes)
                .map_err(|e| client_side(&self.addr, e))?
            {
                Some(next) => token = next,
                None => return Ok(()),
            }
        }
    }

    /// The peer address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The negotiated versions.
    pub fn versions(&self) -> &ApiVersions {
        &self.versions
    }

    async fn negotiate(&mut self) -> Result<(), ClientError> {
        // v3 first (what librdkafka and the Java client send); a broker that does not know it
        // answers in v0 with UNSUPPORTED_VERSION (35), and v0 is then used.
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("sluice-bench"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let resp = match self
            .request::<ApiVersionsRequest>(&req, 3, Duration::from_secs(10))
            .await
        {
            Ok(r) if r.error_code == 0 => r,
            _ => {
                self.request::<ApiVersionsRequest>(&req, 0, Duration::from_secs(10))
                    .await?
            }
        };
        if resp.error_code != 0 {
            return Err(ClientError::Kafka {
                what: format!("ApiVersions to {}", self.addr),
                code: resp.error_code,
            });
        }
        self.versions.ranges = resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(())
    }

    /// Writes a request; the returned future yields the response body. With
    /// `expect_response == false` (Produce with acks=0) nothing is awaited and `None` returned.
    pub async fn send<R: Request>(
        &mut self,
        req: &R,
        version: i16,
        expect_response: bool,
    ) -> Result<Option<ResponseFuture>, ClientError> {
        let correlation_id = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let proto = |e: anyhow::Error| ClientError::Protocol {
            addr: self.addr.clone(),
            message: e.to_string(),
        };
        let body_size = req.compute_size(version).map_err(proto)?;
        let mut buf = BytesMut::with_capacity(body_size + 64);
        buf.put_i32(0);
        encode_request_header_into_buffer(&mut buf, &header).map_err(proto)?;
        req.encode(&mut buf, version).map_err(proto)?;
        let len = (buf.len() - 4) as i32;
        buf[0..4].copy_from_slice(&len.to_be_bytes());

        let rx = if expect_response {
            let (tx, rx) = oneshot::channel();
            let api_key = ApiKey::try_from(R::KEY).map_err(|_| ClientError::Protocol {
                addr: self.addr.clone(),
                message: format!("unknown api key {}", R::KEY),
            })?;
            let header_version = api_key.response_header_version(version);
            let mut guard = self
                .pending
                .lock()
                .map_err(|_| ClientError::Closed(self.addr.clone()))?;
            let Some(map) = guard.as_mut() else {
                return Err(ClientError::Closed(self.addr.clone()));
            };
            map.insert(correlation_id, (header_version, tx));
            Some(rx)
        } else {
            None
        };
        let io = |source| ClientError::Io {
            addr: self.addr.clone(),
            source,
        };
        self.writer.write_all(&buf).await.map_err(io)?;
        // TLS may keep encrypted records in its buffer when the socket was full; a flush
        // sends them (a no-op on plain TCP).
        self.writer.flush().await.map_err(io)?;
        Ok(rx.map(|rx| ResponseFuture {
            addr: self.addr.clone(),
            rx,
        }))
    }

    /// Sends a request and decodes its response.
    pub async fn request<R: Request>(
        &mut self,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, ClientError> {
        let fut = self
            .send(req, version, true)
            .await?
            .ok_or_else(|| ClientError::Closed(self.addr.clone()))?;
        let mut body = fut.wait(timeout).await?;
        decode_response::<R>(&self.addr, &mut body, version)
    }
}

/// Decodes a response body of request type `R`.
pub fn decode_response<R: Request>(
    addr: &str,
    body: &mut Bytes,
    version: i16,
) -> Result<R::Response, ClientError> {
    <R::Response as Decodable>::decode(body, version).map_err(|e| ClientError::Protocol {
        addr: addr.to_string(),
        message: format!("decoding api {} v{version}: {e}", R::KEY),
    })
}

async fn read_loop(read: &mut Reader, pending: &Pending) -> std::io::Result<()> {
    loop {
        let len = read.read_i32().await?;
        if len < 4 || len as usize > MAX_FRAME {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad frame length {len}"),
            ));
        }
        let mut frame = vec![0u8; len as usize];
        read.read_exact(&mut frame).await?;
        let mut frame = Bytes::from(frame);
        let correlation_id = (&frame[0..4]).get_i32();
        let entry = pending
            .lock()
            .ok()
            .and_then(|mut g| g.as_mut().and_then(|m| m.remove(&correlation_id)));
        let Some((header_version, tx)) = entry else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("response with unknown correlation id {correlation_id}"),
            ));
        };
        ResponseHeader::decode(&mut frame, header_version)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        // The requester may have given up (timeout); that is not an error for the connection.
        let _ = tx.send(frame);
    }
}

/// Response header version for a request type (for servers that encode responses).
pub fn response_header_version<R: Request>(version: i16) -> i16 {
    <R::Response as HeaderVersion>::header_version(version)
}
