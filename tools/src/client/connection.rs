//! One blocking connection to a broker (TCP, or TLS over it): size-prefixed frames,
//! correlation ids, the version negotiated per API from the broker's ApiVersions answer, and
//! SASL authentication (PLAIN, SCRAM) when the listener asks for it.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslHandshakeRequest,
};
use kafka_protocol::protocol::{
    encode_request_header_into_buffer, Decodable, HeaderVersion, Request, StrBytes,
};

use super::security::{SaslAuth, SaslClientError, SaslExchange, Security};
use super::ClientError;

/// The bytes under a connection: plain TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => t.flush(),
        }
    }
}

/// Largest response frame accepted; a garbage length prefix must not allocate gigabytes.
const MAX_FRAME: usize = 128 * 1024 * 1024;

/// A blocking connection to one broker.
pub struct Connection {
    addr: String,
    stream: Stream,
    next_correlation: i32,
    client_id: StrBytes,
    timeout: Duration,
    /// api key -> (min, max) the broker serves.
    versions: HashMap<i16, (i16, i16)>,
}

fn api_name(key: i16) -> String {
    ApiKey::try_from(key)
        .map(|k| format!("{k:?}"))
        .unwrap_or_else(|_| format!("API key {key}"))
}

impl Connection {
    /// Connects within `timeout`, starts TLS and authenticates as `security` says, and
    /// negotiates API versions.
    pub fn connect(
        addr: &str,
        timeout: Duration,
        security: &Security,
    ) -> Result<Self, ClientError> {
        let connect_err = |source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        };
        let targets: Vec<_> = addr.to_socket_addrs().map_err(connect_err)?.collect();
        let mut last = std::io::Error::new(ErrorKind::NotFound, "address resolved to nothing");
        let mut stream = None;
        for target in targets {
            match TcpStream::connect_timeout(&target, timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let stream = stream.ok_or_else(|| connect_err(last))?;
        let io = |source| ClientError::Io {
            addr: addr.to_string(),
            source,
        };
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let stream = match &security.tls {
            None => Stream::Plain(stream),
            Some(config) => {
                let name =
                    Security::server_name(addr).map_err(|message| ClientError::Protocol {
                        addr: addr.to_string(),
                        message,
                    })?;
                let tls = rustls::ClientConnection::new(config.clone(), name).map_err(|e| {
                    ClientError::Protocol {
                        addr: addr.to_string(),
                        message: format!("TLS: {e}"),
                    }
                })?;
                // The handshake runs on the first request (ApiVersions below).
                Stream::Tls(Box::new(rustls::StreamOwned::new(tls, stream)))
            }
        };
        let mut conn = Connection {
            addr: addr.to_string(),
            stream,
            next_correlation: 1,
            client_id: StrBytes::from_static_str("sluicectl"),
            timeout,
            versions: HashMap::new(),
        };
        conn.negotiate()?;
        if let Some(auth) = &security.sasl {
            conn.authenticate(auth)?;
        }
        Ok(conn)
    }

    /// SaslHandshake v1, then SaslAuthenticate rounds until the mechanism is done (KIP-152).
    fn authenticate(&mut self, auth: &SaslAuth) -> Result<(), ClientError> {
        let what = || format!("SASL {} as {:?}", auth.mechanism.name(), auth.username);
        let hs = SaslHandshakeRequest::default()
            .with_mechanism(StrBytes::from_static_str(auth.mechanism.name()));
        let resp = self.call(&hs, 1)?;
        let enabled: Vec<String> = resp.mechanisms.iter().map(|m| m.to_string()).collect();
        super::check(
            resp.error_code,
            what,
            Some(&format!("the listener offers {}", enabled.join(", "))),
        )?;
        let mut exchange = SaslExchange::new(auth);
        let addr = self.addr.clone();
        let failed = |e: SaslClientError| ClientError::Protocol {
            addr: addr.clone(),
            message: format!("{}: {e}", what()),
        };
        let mut token = exchange.first_token().map_err(failed)?;
        loop {
            let reply = self.sasl_round(token, &what)?;
            match exchange.step(&reply).map_err(failed)? {
                Some(next) => token = next,
                None => return Ok(()),
            }
        }
    }

    /// One SaslAuthenticate exchange: sends `bytes`, returns the server's.
    fn sasl_round(
        &mut self,
        bytes: Vec<u8>,
        what: &dyn Fn() -> String,
    ) -> Result<Bytes, ClientError> {
        let req = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(bytes));
        let resp = self.call(&req, 2)?;
        super::check(resp.error_code, what, resp.error_message.as_deref())?;
        Ok(resp.auth_bytes)
    }

    /// The broker address this connection talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Changes the per-request timeout (a long-poll Fetch needs its wait time on top).
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.timeout = timeout;
        self.stream
            .tcp()
            .set_read_timeout(Some(timeout))
            .map_err(|source| ClientError::Io {
                addr: self.addr.clone(),
                source,
            })
    }

    /// Whether the broker advertises `R` at all.
    pub fn supports<R: Request>(&self) -> bool {
        self.versions.contains_key(&R::KEY)
    }

    fn negotiate(&mut self) -> Result<(), ClientError> {
        // v3 first, as the Java client does; a broker that does not know v3 answers in v0 with
        // UNSUPPORTED_VERSION and its ranges, and v0 is then used.
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("sluicectl"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let resp = match self.call_version(&req, 3) {
            Ok(r) if r.error_code == 0 => r,
            Ok(_) | Err(ClientError::Protocol { .. }) => self.call_version(&req, 0)?,
            Err(e) => return Err(e),
        };
        super::check(
            resp.error_code,
            || format!("ApiVersions to broker {}", self.addr),
            None,
        )?;
        self.versions = resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(())
    }

    /// The highest version of `R` both sides speak, capped at `cap` (some newer versions
    /// address topics by id only, which this tool does not do).
    pub fn version_for<R: Request>(&self, cap: i16) -> Result<i16, ClientError> {
        let ours = (R::VERSIONS.min, R::VERSIONS.max.min(cap));
        let unsupported = || ClientError::Unsupported {
            addr: self.addr.clone(),
            api: api_name(R::KEY),
            min: ours.0,
            max: ours.1,
        };
        let (lo, hi) = *self.versions.get(&R::KEY).ok_or_else(unsupported)?;
        let v = hi.min(ours.1);
        if v < lo.max(ours.0) {
            return Err(unsupported());
        }
        Ok(v)
    }

    /// Sends `req` at the highest common version up to `cap` and waits for the response.
    pub fn call<R: Request>(&mut self, req: &R, cap: i16) -> Result<R::Response, ClientError> {
        let v = self.version_for::<R>(cap)?;
        self.call_version(req, v)
    }

    /// Sends `req` at `version` and waits for the response.
    pub fn call_version<R: Request>(
        &mut self,
        req: &R,
        version: i16,
    ) -> Result<R::Response, ClientError> {
        let correlation_id = self.send(req, version)?;
        let mut body = self.read_frame(api_name(R::KEY))?;
        let header_version = if R::KEY == ApiKey::ApiVersions as i16 {
            // ApiVersions responses always use header v0 so old clients can read them.
            0
        } else {
            R::Response::header_version(version)
        };
        let header =
            ResponseHeader::decode(&mut body, header_version).map_err(|e| self.proto(e))?;
        if header.correlation_id != correlation_id {
            return Err(ClientError::Protocol {
                addr: self.addr.clone(),
                message: format!(
                    "response correlation id {} does not match request {correlation_id}",
                    header.correlation_id
                ),
            });
        }
        R::Response::decode(&mut body, version).map_err(|e| self.proto(e))
    }

    /// Sends `req` without waiting for an answer (Produce with acks=0 gets none).
    pub fn send<R: Request>(&mut self, req: &R, version: i16) -> Result<i32, ClientError> {
        let correlation_id = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let mut buf = BytesMut::with_capacity(256);
        buf.extend_from_slice(&[0; 4]);
        encode_request_header_into_buffer(&mut buf, &header).map_err(|e| self.proto(e))?;
        req.encode(&mut buf, version).map_err(|e| self.proto(e))?;
        let len = i32::try_from(buf.len() - 4).map_err(|_| ClientError::Protocol {
            addr: self.addr.clone(),
            message: "request larger than 2 GiB".into(),
        })?;
        buf[0..4].copy_from_slice(&len.to_be_bytes());
        self.stream
            .write_all(&buf)
            .map_err(|e| self.io(e, api_name(R::KEY)))?;
        Ok(correlation_id)
    }

    fn read_frame(&mut self, api: String) -> Result<Bytes, ClientError> {
        let mut len = [0u8; 4];
        self.stream
            .read_exact(&mut len)
            .map_err(|e| self.io(e, api.clone()))?;
        let len = i32::from_be_bytes(len);
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= MAX_FRAME)
            .ok_or_else(|| ClientError::Protocol {
                addr: self.addr.clone(),
                message: format!("invalid response size {len}"),
            })?;
        let mut body = vec![0u8; len];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| self.io(e, api))?;
        Ok(Bytes::from(body))
    }

    fn io(&self, source: std::io::Error, api: String) -> ClientError {
        match source.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => ClientError::Timeout {
                addr: self.addr.clone(),
                api,
                timeout_ms: self.timeout.as_millis() as u64,
            },
            _ => ClientError::Io {
                addr: self.addr.clone(),
                source,
            },
        }
    }

    fn proto(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Protocol {
            addr: self.addr.clone(),
            message: e.to_string(),
        }
    }
}
