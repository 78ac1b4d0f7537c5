//! TLS on rustls (ring provider) for the Kafka listeners and the channels between cluster
//! nodes: PEM keystore and truststore files under Kafka's key names, client authentication
//! modes, and reload of changed files without a restart (the files are checked for a new
//! modification time, and a new configuration replaces the old one for new connections; a
//! broken new file keeps the old one).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::ServerName;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{info, warn};

/// `ssl.client.auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate asked for.
    None,
    /// Asked for; a client without one connects as `User:ANONYMOUS`.
    Requested,
    /// A trusted client certificate is required.
    Required,
}

/// The TLS settings of one listener, as configured (file paths, not yet loaded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `ssl.keystore.location`: PEM with the private key and the certificate chain.
    pub keystore: PathBuf,
    /// `ssl.key.password` was set.
    pub key_password_set: bool,
    /// `ssl.truststore.location`: PEM CA certificates trusted for client certificates.
    pub truststore: Option<PathBuf>,
    /// `ssl.client.auth`.
    pub client_auth: ClientAuth,
    /// `ssl.enabled.protocols` includes TLSv1.2.
    pub tls12: bool,
    /// `ssl.enabled.protocols` includes TLSv1.3.
    pub tls13: bool,
}

/// Errors loading TLS material; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file's contents are not what the key asks for.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Every `CERTIFICATE` block of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// The private key of a PEM keystore. Encrypted keys are refused with a clear message.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    if pem
        .windows(b"ENCRYPTED PRIVATE KEY".len())
        .any(|w| w == b"ENCRYPTED PRIVATE KEY")
        || pem
            .windows(b"Proc-Type: 4,ENCRYPTED".len())
            .any(|w| w == b"Proc-Type: 4,ENCRYPTED")
    {
        return Err(invalid(
            path,
            "the private key is encrypted; Sluice reads unencrypted PEM keys only \
             (decrypt it with `openssl pkey -in KEY -out KEY.plain` and protect the file \
             with its permissions)",
        ));
    }
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| invalid(path, format!("no private key: {e}")))
}

/// The trusted CA certificates of a truststore.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| invalid(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn versions(tls12: bool, tls13: bool) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let mut v = Vec::new();
    if tls13 {
        v.push(&rustls::version::TLS13);
    }
    if tls12 {
        v.push(&rustls::version::TLS12);
    }
    v
}

/// Builds the rustls server configuration of a listener.
pub fn server_config(s: &TlsSettings) -> Result<rustls::ServerConfig, TlsError> {
    let chain = load_certs(&s.keystore)?;
    let key = load_key(&s.keystore)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions(s.tls12, s.tls13))?;
    let builder =
        match (s.client_auth, &s.truststore) {
            (ClientAuth::None, _) => builder.with_no_client_auth(),
            (mode, Some(trust)) => {
                let roots = Arc::new(load_roots(trust)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
                let verifier = if mode == ClientAuth::Requested {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| invalid(trust, format!("cannot verify clients with it: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            (_, None) => return Err(invalid(
                &s.keystore,
                "ssl.client.auth needs ssl.truststore.location (the CAs of client certificates)",
            )),
        };
    Ok(builder.with_single_cert(chain, key)?)
}

/// Builds a rustls client configuration (sluicectl, tests): trusts the CAs of `truststore` and,
/// when `identity` is given, presents the chain of its first file and the key of its second
/// (the same path twice for a PEM keystore that holds both).
pub fn client_config(
    truststore: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let roots = load_roots(truststore)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match identity {
        Some((chain, key)) => builder.with_client_auth_cert(load_certs(chain)?, load_key(key)?)?,
        None => builder.with_no_client_auth(),
    })
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A TLS configuration built from files and rebuilt when one of their modification times
/// changes; a file that does not load keeps the previous configuration (and is logged).
struct Reloading<T: Clone> {
    settings: TlsSettings,
    build: fn(&TlsSettings) -> Result<T, TlsError>,
    current: RwLock<T>,
    stamps: RwLock<Vec<Option<SystemTime>>>,
}

impl<T: Clone> Reloading<T> {
    fn new(
        settings: TlsSettings,
        build: fn(&TlsSettings) -> Result<T, TlsError>,
    ) -> Result<Self, TlsError> {
        let current = build(&settings)?;
        let stamps = Self::stamps_of(&settings);
        Ok(Reloading {
            settings,
            build,
            current: RwLock::new(current),
            stamps: RwLock::new(stamps),
        })
    }

    fn stamps_of(s: &TlsSettings) -> Vec<Option<SystemTime>> {
        let mut v = vec![mtime(&s.keystore)];
        if let Some(t) = &s.truststore {
            v.push(mtime(t));
        }
        v
    }

    fn get(&self) -> T {
        match self.current.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn reload_if_changed(&self, what: &str) -> bool {
        let now = Self::stamps_of(&self.settings);
        let changed = match self.stamps.read() {
            Ok(s) => *s != now,
            Err(_) => true,
        };
        if !changed {
            return false;
        }
        if let Ok(mut s) = self.stamps.write() {
            *s = now;
        }
        match (self.build)(&self.settings) {
            Ok(config) => {
                if let Ok(mut a) = self.current.write() {
                    *a = config;
                }
                info!(what, keystore = %self.settings.keystore.display(), "TLS certificates reloaded");
                true
            }
            Err(e) => {
                warn!(
                    what,
                    "TLS files changed but do not load; keeping the previous certificates: {e}"
                );
                false
            }
        }
    }
}

/// A listener's acceptor, replaced when its files change.
pub struct ReloadableAcceptor(Reloading<TlsAcceptor>);

impl ReloadableAcceptor {
    /// Loads the listener's TLS files; errors are fatal at start-up.
    pub fn new(settings: TlsSettings) -> Result<Self, TlsError> {
        Reloading::new(settings, |s| {
            Ok(TlsAcceptor::from(Arc::new(server_config(s)?)))
        })
        .map(ReloadableAcceptor)
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.0.get()
    }

    /// Reloads when a file's modification time changed. Returns whether a new configuration
    /// is in use; a file that does not load keeps the old configuration (and is logged).
    pub fn reload_if_changed(&self, listener: &str) -> bool {
        self.0.reload_if_changed(listener)
    }
}

/// A byte stream that may or may not be TLS, for the channels between cluster nodes.
pub trait PeerStream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> PeerStream for T {}

/// TLS on a channel between cluster nodes (the controller's Raft channel, the follower
/// fetcher and forwarded calls between brokers). Each node presents its keystore's certificate
/// on both ends and trusts the truststore's CAs for the other's: mutual TLS. The files are
/// checked for changes at every new connection, so rotated certificates apply without restart.
pub struct PeerTls {
    what: &'static str,
    connector: Reloading<TlsConnector>,
    acceptor: Option<Reloading<TlsAcceptor>>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("channel", &self.what)
            .field("keystore", &self.connector.settings.keystore)
            .finish()
    }
}

fn peer_connector(s: &TlsSettings) -> Result<TlsConnector, TlsError> {
    let trust = s.truststore.as_deref().ok_or_else(|| {
        invalid(
            &s.keystore,
            "TLS between cluster nodes needs ssl.truststore.location (the CAs of the other nodes)",
        )
    })?;
    let roots = load_roots(trust)?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions(s.tls12, s.tls13))?
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(&s.keystore)?, load_key(&s.keystore)?)?;
    Ok(TlsConnector::from(Arc::new(config)))
}

impl PeerTls {
    /// The client side only (a channel this node connects out on: the follower fetcher).
    pub fn client(what: &'static str, settings: TlsSettings) -> Result<Self, TlsError> {
        Ok(PeerTls {
            what,
            connector: Reloading::new(settings, peer_connector)?,
            acceptor: None,
        })
    }

    /// Both sides; the server side requires a client certificate from the truststore's CAs
    /// whatever `ssl.client.auth` says (the controller channel).
    pub fn mutual(what: &'static str, settings: TlsSettings) -> Result<Self, TlsError> {
        let required = TlsSettings {
            client_auth: ClientAuth::Required,
            ..settings
        };
        Ok(PeerTls {
            what,
            connector: Reloading::new(required.clone(), peer_connector)?,
            acceptor: Some(Reloading::new(required, |s| {
                Ok(TlsAcceptor::from(Arc::new(server_config(s)?)))
            })?),
        })
    }

    /// Opens TLS on `tcp`, connected to `host` (an IP address or a DNS name the other node's
    /// certificate must name).
    pub async fn connect(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.connector.reload_if_changed(self.what);
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{host} is not a host name TLS can verify: {e}"),
            )
        })?;
        self.connector.get().connect(name, tcp).await
    }

    /// Accepts TLS on `tcp` (the server side of [`PeerTls::mutual`]).
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        let Some(acceptor) = &self.acceptor else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "this channel only connects out",
            ));
        };
        acceptor.reload_if_changed(self.what);
        acceptor.get().accept(tcp).await
    }
}

/// Connects to `addr` (`host:port`) within `timeout`, with TLS when `tls` is given; `Nagle`
/// off either way.
pub async fn connect_peer(
    addr: &str,
    tls: Option<&PeerTls>,
    timeout: std::time::Duration,
) -> std::io::Result<Box<dyn PeerStream>> {
    let fut = async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok::<Box<dyn PeerStream>, std::io::Error>(match tls {
            None => Box::new(tcp),
            Some(tls) => {
                let host = addr
                    .rsplit_once(':')
                    .map_or(addr, |(h, _)| h)
                    .trim_matches(['[', ']']);
                Box::new(tls.connect(tcp, host).await?)
            }
        })
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connecting to {addr} timed out"),
        )
    })?
}
