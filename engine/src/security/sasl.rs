//! SASL on a Kafka connection: SaslHandshake (v0, v1) and SaslAuthenticate (v0-v2) with the
//! PLAIN and SCRAM-SHA-256/512 mechanisms, and KIP-368 re-authentication.
//!
//! [`SaslConnection`] is sans-IO: the connection feeds it every request frame in order and
//! carries out the [`Action`] it returns (forward the request to the broker, send a reply,
//! close). It owns no socket and no clock (the caller passes the time).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{self as m, ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, StrBytes};

use super::credentials::CredentialStore;
use super::scram::{constant_time_eq, ScramMechanism, ScramServer};

/// The one message every failed authentication gets, whatever was wrong (RFC 5802 and
/// Kafka: do not tell an attacker whether the user exists).
pub const AUTH_FAILED_MESSAGE: &str = "Authentication failed: Invalid username or password";

const NONE: i16 = 0;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const ILLEGAL_SASL_STATE: i16 = 34;
const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// Kafka's `sasl.server.max.receive.size` default: the largest frame before authentication.
pub const MAX_RECEIVE_BEFORE_AUTH: usize = 524_288;

/// A SASL mechanism Sluice serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// PLAIN (RFC 4616), users from the JAAS config.
    Plain,
    /// SCRAM-SHA-256 or SCRAM-SHA-512.
    Scram(ScramMechanism),
}

impl Mechanism {
    /// The SASL name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(s) => s.name(),
        }
    }

    /// Parses a SASL name.
    pub fn from_name(name: &str) -> Option<Mechanism> {
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            other => ScramMechanism::from_name(other).map(Mechanism::Scram),
        }
    }
}

/// The SASL settings of one listener.
pub struct SaslSettings {
    /// `sasl.enabled.mechanisms`, in order.
    pub mechanisms: Vec<Mechanism>,
    /// PLAIN users (`user_<name>` of the JAAS config).
    pub plain_users: BTreeMap<String, String>,
    /// SCRAM credentials.
    pub store: Arc<dyn CredentialStore>,
    /// `connections.max.reauth.ms` (0 = sessions do not expire).
    pub max_reauth_ms: i64,
    /// Key for the made-up salt of unknown SCRAM users (random per broker start).
    pub decoy_key: Vec<u8>,
}

impl std::fmt::Debug for SaslSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslSettings")
            .field("mechanisms", &self.mechanisms)
            .field("plain_users", &self.plain_users.len())
            .field("max_reauth_ms", &self.max_reauth_ms)
            .finish()
    }
}

/// What the connection must do with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// An authenticated (or ApiVersions) request: hand it to the broker.
    Forward,
    /// Send this response frame (size prefix included).
    Reply(BytesMut),
    /// Send this response frame, then close the connection; the string is for the log.
    ReplyAndClose(BytesMut, String),
    /// Close the connection without a reply; the string is for the log.
    Close(String),
    /// Authentication succeeded: send the response, the connection now acts as `principal`.
    Authenticated {
        /// The response frame.
        reply: BytesMut,
        /// `User:<name>`.
        principal: String,
    },
}

// One per connection and short-lived: boxing the large variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Exchange {
    Plain,
    /// The server exists once the client's first message (and a nonce) arrived.
    Scram(Option<ScramServer>),
}

// One per connection and short-lived: boxing the large variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum State {
    /// Waiting for SaslHandshake.
    Handshake,
    /// Handshake done; waiting for SaslAuthenticate (or a raw token after a v0 handshake).
    Authenticate {
        mech: Mechanism,
        exchange: Exchange,
        raw: bool,
    },
    /// Authenticated, maybe re-authenticating.
    Done,
}

/// The SASL state of one connection.
pub struct SaslConnection {
    settings: Arc<SaslSettings>,
    state: State,
    /// The authenticated principal and mechanism, once there is one.
    session: Option<(String, Mechanism)>,
    /// When the session expires (ms, caller's clock), if `connections.max.reauth.ms` is set.
    expires_at_ms: Option<i64>,
    /// The handshake version (v0 means raw tokens and no re-authentication).
    handshake_version: i16,
}

fn response_frame<R: kafka_protocol::protocol::Encodable>(
    api: ApiKey,
    version: i16,
    cid: i32,
    body: &R,
) -> Result<BytesMut, String> {
    crate::broker::protocol::encode_response(api, version, cid, body).map_err(|e| e.to_string())
}

/// A raw SASL token frame (after a v0 handshake): 4-byte length and the bytes.
fn raw_token(bytes: &[u8]) -> BytesMut {
    let mut b = BytesMut::with_capacity(4 + bytes.len());
    b.put_u32(bytes.len() as u32);
    b.put_slice(bytes);
    b
}

impl SaslConnection {
    /// A new connection that has not authenticated.
    pub fn new(settings: Arc<SaslSettings>) -> Self {
        SaslConnection {
            settings,
            state: State::Handshake,
            session: None,
            expires_at_ms: None,
            handshake_version: 1,
        }
    }

    /// Whether the connection has authenticated (frames may be as large as any request).
    pub fn authenticated(&self) -> bool {
        self.session.is_some()
    }

    /// The authenticated principal.
    pub fn principal(&self) -> Option<&str> {
        self.session.as_ref().map(|(p, _)| p.as_str())
    }

    /// Decides what to do with one request frame (no size prefix). `nonce` is called for a
    /// fresh SCRAM server nonce; `now_ms` is the caller's clock.
    pub fn on_frame(
        &mut self,
        frame: &[u8],
        now_ms: i64,
        nonce: impl FnOnce() -> String,
    ) -> Action {
        if let State::Authenticate { raw: true, .. } = self.state {
            return self.raw_step(frame, nonce);
        }
        let Some(peek) = crate::broker::protocol::peek_header(frame) else {
            return Action::Close("request too short during SASL authentication".into());
        };
        let api = ApiKey::try_from(peek.api_key).ok();
        match api {
            Some(ApiKey::ApiVersions) => return self.forward_if_valid(now_ms),
            Some(ApiKey::SaslHandshake) => return self.handshake(frame, peek.api_version),
            Some(ApiKey::SaslAuthenticate) => {
                return self.authenticate(frame, peek.api_version, now_ms, nonce)
            }
            _ => {}
        }
        if self.session.is_none() {
            return Action::Close(format!(
                "unexpected request (api key {}) before SASL authentication",
                peek.api_key
            ));
        }
        self.forward_if_valid(now_ms)
    }

    fn forward_if_valid(&self, now_ms: i64) -> Action {
        match self.expires_at_ms {
            Some(t) if now_ms >= t && self.session.is_some() => Action::Close(format!(
                "SASL session of {} expired without re-authentication (connections.max.reauth.ms)",
                self.principal().unwrap_or("?")
            )),
            _ => Action::Forward,
        }
    }

    fn handshake(&mut self, frame: &[u8], version: i16) -> Action {
        let mut buf = Bytes::copy_from_slice(frame);
        let decoded = RequestHeader::decode(
            &mut buf,
            ApiKey::SaslHandshake.request_header_version(version),
        )
        .and_then(|h| Ok((h, m::SaslHandshakeRequest::decode(&mut buf, version)?)));
        let (header, req) = match decoded {
            Ok(x) if (0..=1).contains(&version) => x,
            _ => return Action::Close("malformed SaslHandshake request".into()),
        };
        let cid = header.correlation_id;
        let enabled: Vec<StrBytes> = self
            .settings
            .mechanisms
            .iter()
            .map(|m| StrBytes::from_static_str(m.name()))
            .collect();
        let reply = |code| {
            let body = m::SaslHandshakeResponse::default()
                .with_error_code(code)
                .with_mechanisms(enabled.clone());
            response_frame(ApiKey::SaslHandshake, version, cid, &body)
        };
        let reauth = self.session.is_some();
        let in_order = matches!(self.state, State::Handshake | State::Done);
        if !in_order || (reauth && (version == 0 || self.handshake_version == 0)) {
            return match reply(ILLEGAL_SASL_STATE) {
                Ok(f) => Action::ReplyAndClose(f, "SaslHandshake out of order".into()),
                Err(e) => Action::Close(e),
            };
        }
        let name = req.mechanism.as_str();
        let mech = Mechanism::from_name(name).filter(|m| self.settings.mechanisms.contains(m));
        let Some(mech) = mech else {
            return match reply(UNSUPPORTED_SASL_MECHANISM) {
                Ok(f) => Action::ReplyAndClose(f, format!("unsupported SASL mechanism {name:?}")),
                Err(e) => Action::Close(e),
            };
        };
        if let Some((_, old)) = &self.session {
            if *old != mech {
                return match reply(ILLEGAL_SASL_STATE) {
                    Ok(f) => Action::ReplyAndClose(
                        f,
                        "re-authentication must use the session's mechanism".into(),
                    ),
                    Err(e) => Action::Close(e),
                };
            }
        }
        if !reauth {
            self.handshake_version = version;
        }
        let exchange = match mech {
            Mechanism::Plain => Exchange::Plain,
            Mechanism::Scram(_) => Exchange::Scram(None),
        };
        self.state = State::Authenticate {
            mech,
            exchange,
            raw: version == 0,
        };
        match reply(NONE) {
            Ok(f) => Action::Reply(f),
            Err(e) => Action::Close(e),
        }
    }

    /// One SASL token through the mechanism: Ok(Some(challenge)), Ok(None) = done as `user`
    /// with `final` bytes, Err = failure detail for the log.
    fn step(&mut self, token: &[u8], nonce: impl FnOnce() -> String) -> Result<Step, String> {
        let State::Authenticate { mech, exchange, .. } = &mut self.state else {
            return Err("SaslAuthenticate without SaslHandshake".into());
        };
        match (mech, exchange) {
            (Mechanism::Plain, Exchange::Plain) => {
                let user = check_plain(token, &self.settings.plain_users)?;
                Ok(Step::Done(user, Vec::new()))
            }
            (Mechanism::Scram(sm), Exchange::Scram(slot)) => match slot {
                None => {
                    let server = slot.insert(ScramServer::new(*sm, nonce()));
                    let store = &self.settings.store;
                    let sm = *sm;
                    let first = server
                        .client_first(token, |u| store.scram(sm, u), &self.settings.decoy_key)
                        .map_err(|e| e.to_string())?;
                    Ok(Step::Challenge(first))
                }
                Some(server) => {
                    let done = server.client_final(token).map_err(|e| e.to_string())?;
                    Ok(Step::Done(done.user, done.server_final))
                }
            },
            _ => Err("mechanism state mismatch".into()),
        }
    }

    fn finish(&mut self, user: String, now_ms: i64) -> Result<(String, i64), String> {
        let State::Authenticate { mech, .. } = self.state else {
            return Err("not authenticating".into());
        };
        let principal = super::principal::sasl_user(&user);
        if let Some((old, _)) = &self.session {
            if *old != principal {
                return Err(format!(
                    "re-authentication as {principal} on a connection of {old}"
                ));
            }
        }
        self.session = Some((principal.clone(), mech));
        self.state = State::Done;
        let lifetime = self.settings.max_reauth_ms.max(0);
        self.expires_at_ms = (lifetime > 0).then(|| now_ms.saturating_add(lifetime));
        Ok((principal, lifetime))
    }

    fn authenticate(
        &mut self,
        frame: &[u8],
        version: i16,
        now_ms: i64,
        nonce: impl FnOnce() -> String,
    ) -> Action {
        let mut buf = Bytes::copy_from_slice(frame);
        let decoded = RequestHeader::decode(
            &mut buf,
            ApiKey::SaslAuthenticate.request_header_version(version),
        )
        .and_then(|h| Ok((h, m::SaslAuthenticateRequest::decode(&mut buf, version)?)));
        let (header, req) = match decoded {
            Ok(x) if (0..=2).contains(&version) => x,
            _ => return Action::Close("malformed SaslAuthenticate request".into()),
        };
        let cid = header.correlation_id;
        let respond = |code: i16, msg: Option<&str>, bytes: Vec<u8>, lifetime: i64| {
            let body = m::SaslAuthenticateResponse::default()
                .with_error_code(code)
                .with_error_message(msg.map(|s| StrBytes::from_string(s.to_string())))
                .with_auth_bytes(Bytes::from(bytes))
                .with_session_lifetime_ms(lifetime);
            response_frame(ApiKey::SaslAuthenticate, version, cid, &body)
        };
        if !matches!(self.state, State::Authenticate { raw: false, .. }) {
            return match respond(
                ILLEGAL_SASL_STATE,
                Some("SaslAuthenticate without a SaslHandshake"),
                Vec::new(),
                0,
            ) {
                Ok(f) => Action::ReplyAndClose(f, "SaslAuthenticate out of order".into()),
                Err(e) => Action::Close(e),
            };
        }
        let step = self.step(&req.auth_bytes, nonce);
        let result = match step {
            Ok(Step::Challenge(c)) => respond(NONE, None, c, 0).map(Action::Reply),
            Ok(Step::Done(user, fin)) => match self.finish(user, now_ms) {
                Ok((principal, lifetime)) => respond(NONE, None, fin, lifetime)
                    .map(|reply| Action::Authenticated { reply, principal }),
                Err(detail) => self.fail(respond, detail),
            },
            Err(detail) => self.fail(respond, detail),
        };
        result.unwrap_or_else(Action::Close)
    }

    fn fail(
        &mut self,
        respond: impl Fn(i16, Option<&str>, Vec<u8>, i64) -> Result<BytesMut, String>,
        detail: String,
    ) -> Result<Action, String> {
        self.state = State::Handshake;
        let f = respond(
            SASL_AUTHENTICATION_FAILED,
            Some(AUTH_FAILED_MESSAGE),
            Vec::new(),
            0,
        )?;
        Ok(Action::ReplyAndClose(
            f,
            format!("SASL authentication failed: {detail}"),
        ))
    }

    /// A raw token after a v0 handshake (no Kafka header around it).
    fn raw_step(&mut self, token: &[u8], nonce: impl FnOnce() -> String) -> Action {
        match self.step(token, nonce) {
            Ok(Step::Challenge(c)) => Action::Reply(raw_token(&c)),
            Ok(Step::Done(user, fin)) => match self.finish(user, 0) {
                Ok((principal, _)) => {
                    // v0 has no session lifetime in the protocol: no expiry either.
                    self.expires_at_ms = None;
                    Action::Authenticated {
                        reply: raw_token(&fin),
                        principal,
                    }
                }
                Err(d) => Action::Close(format!("SASL authentication failed: {d}")),
            },
            Err(d) => {
                self.state = State::Handshake;
                Action::Close(format!("SASL authentication failed: {d}"))
            }
        }
    }
}

enum Step {
    Challenge(Vec<u8>),
    Done(String, Vec<u8>),
}

/// Checks a PLAIN message `[authzid] NUL authcid NUL passwd` against the users.
fn check_plain(token: &[u8], users: &BTreeMap<String, String>) -> Result<String, String> {
    let mut parts = token.split(|b| *b == 0);
    let (Some(authz), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("PLAIN message is not authzid NUL user NUL password".into());
    };
    let user = std::str::from_utf8(user).map_err(|_| "PLAIN user is not UTF-8".to_string())?;
    if user.is_empty() {
        return Err("PLAIN user is empty".into());
    }
    if !authz.is_empty() && authz != user.as_bytes() {
        return Err("PLAIN authorization id differs from the user".into());
    }
    // Compare against something even for an unknown user, so timing tells nothing.
    let expected = users.get(user);
    let ok = constant_time_eq(
        expected
            .map(String::as_bytes)
            .unwrap_or(b"\0unknown-user\0"),
        pass,
    );
    match (expected, ok) {
        (Some(_), true) => Ok(user.to_string()),
        (None, _) => Err(format!("unknown PLAIN user {user:?}")),
        (Some(_), false) => Err(format!("wrong password for PLAIN user {user:?}")),
    }
}

/// Encodes a request frame (no size prefix) for tests and tools.
pub fn encode_request<R: kafka_protocol::protocol::Encodable>(
    api: ApiKey,
    version: i16,
    cid: i32,
    body: &R,
) -> Vec<u8> {
    use kafka_protocol::protocol::Encodable;
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(cid);
    let mut b = BytesMut::new();
    let _ = header.encode(&mut b, api.request_header_version(version));
    let _ = body.encode(&mut b, version);
    b.to_vec()
}

/// Decodes a response frame (size prefix included) for tests and tools.
pub fn decode_response<R: Decodable>(api: ApiKey, version: i16, frame: &[u8]) -> Option<R> {
    let mut b = Bytes::copy_from_slice(frame.get(4..)?);
    kafka_protocol::messages::ResponseHeader::decode(&mut b, api.response_header_version(version))
        .ok()?;
    let r = R::decode(&mut b, version).ok()?;
    (!b.has_remaining()).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::credentials::FileCredentialStore;
    use crate::security::scram::{ScramClient, ScramCredential};

    fn settings(reauth: i64) -> Arc<SaslSettings> {
        let mut store = FileCredentialStore::default();
        for m in ScramMechanism::ALL {
            store.upsert(
                m,
                "alice",
                ScramCredential::new(m, "alice-secret", b"salty-salt", 4096),
            );
        }
        Arc::new(SaslSettings {
            mechanisms: vec![
                Mechanism::Plain,
                Mechanism::Scram(ScramMechanism::Sha256),
                Mechanism::Scram(ScramMechanism::Sha512),
            ],
            plain_users: [("bob".to_string(), "bob-secret".to_string())].into(),
            store: Arc::new(store),
            max_reauth_ms: reauth,
            decoy_key: b"decoy".to_vec(),
        })
    }

    fn handshake(mech: &str, v: i16) -> Vec<u8> {
        let body =
            m::SaslHandshakeRequest::default().with_mechanism(StrBytes::from_string(mech.into()));
        encode_request(ApiKey::SaslHandshake, v, 1, &body)
    }

    fn auth(bytes: &[u8], v: i16) -> Vec<u8> {
        let body =
            m::SaslAuthenticateRequest::default().with_auth_bytes(Bytes::copy_from_slice(bytes));
        encode_request(ApiKey::SaslAuthenticate, v, 2, &body)
    }

    fn metadata() -> Vec<u8> {
        encode_request(ApiKey::Metadata, 12, 3, &m::MetadataRequest::default())
    }

    fn auth_response(a: &Action, v: i16) -> m::SaslAuthenticateResponse {
        let f = match a {
            Action::Reply(f) | Action::ReplyAndClose(f, _) => f,
            Action::Authenticated { reply, .. } => reply,
            other => panic!("no reply: {other:?}"),
        };
        decode_response(ApiKey::SaslAuthenticate, v, f).unwrap()
    }

    fn nonce() -> String {
        "srvnonce".into()
    }

    #[test]
    fn requests_before_authentication_close_the_connection() {
        let mut c = SaslConnection::new(settings(0));
        let api_versions =
            encode_request(ApiKey::ApiVersions, 3, 0, &m::ApiVersionsRequest::default());
        assert_eq!(c.on_frame(&api_versions, 0, nonce), Action::Forward);
        assert!(matches!(
            c.on_frame(&metadata(), 0, nonce),
            Action::Close(_)
        ));
        let mut c = SaslConnection::new(settings(0));
        let a = c.on_frame(&auth(b"x", 2), 0, nonce);
        assert!(matches!(a, Action::ReplyAndClose(..)));
        assert_eq!(auth_response(&a, 2).error_code, ILLEGAL_SASL_STATE);
    }

    #[test]
    fn unknown_mechanism_lists_the_enabled_ones() {
        let mut c = SaslConnection::new(settings(0));
        let Action::ReplyAndClose(f, _) = c.on_frame(&handshake("GSSAPI", 1), 0, nonce) else {
            panic!()
        };
        let r: m::SaslHandshakeResponse = decode_response(ApiKey::SaslHandshake, 1, &f).unwrap();
        assert_eq!(r.error_code, UNSUPPORTED_SASL_MECHANISM);
        let names: Vec<&str> = r.mechanisms.iter().map(|m| m.as_str()).collect();
        assert_eq!(names, ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]);
    }

    #[test]
    fn plain_success_and_uniform_failures() {
        let mut c = SaslConnection::new(settings(0));
        assert!(matches!(
            c.on_frame(&handshake("PLAIN", 1), 0, nonce),
            Action::Reply(_)
        ));
        let a = c.on_frame(&auth(b"\0bob\0bob-secret", 2), 0, nonce);
        assert!(matches!(&a, Action::Authenticated { principal, .. } if principal == "User:bob"));
        assert_eq!(c.on_frame(&metadata(), 0, nonce), Action::Forward);
        let mut messages = Vec::new();
        for token in [
            &b"\0bob\0wrong"[..],
            b"\0eve\0bob-secret",
            b"garbage",
            b"\0\0\0\0",
        ] {
            let mut c = SaslConnection::new(settings(0));
            c.on_frame(&handshake("PLAIN", 1), 0, nonce);
            let a = c.on_frame(&auth(token, 2), 0, nonce);
            assert!(matches!(a, Action::ReplyAndClose(..)));
            let r = auth_response(&a, 2);
            assert_eq!(r.error_code, SASL_AUTHENTICATION_FAILED);
            messages.push(r.error_message.map(|s| s.to_string()));
            assert!(!c.authenticated());
        }
        assert!(messages
            .iter()
            .all(|m| m.as_deref() == Some(AUTH_FAILED_MESSAGE)));
    }

    fn scram_login(c: &mut SaslConnection, mech: ScramMechanism, pw: &str, now: i64) -> Action {
        let a = c.on_frame(&handshake(mech.name(), 1), now, nonce);
        assert!(matches!(a, Action::Reply(_)), "{a:?}");
        let mut client = ScramClient::new(mech, "alice", pw, "cnonce".into());
        let a = c.on_frame(&auth(&client.client_first(), 2), now, nonce);
        let first = auth_response(&a, 2);
        assert_eq!(first.error_code, NONE);
        let fin = client.server_first(&first.auth_bytes).unwrap();
        let a = c.on_frame(&auth(&fin, 2), now, nonce);
        if let Action::Authenticated { .. } = &a {
            client
                .server_final(&auth_response(&a, 2).auth_bytes)
                .unwrap();
        }
        a
    }

    #[test]
    fn scram_both_hashes_and_reauthentication() {
        for mech in ScramMechanism::ALL {
            let mut c = SaslConnection::new(settings(1000));
            let a = scram_login(&mut c, mech, "alice-secret", 0);
            assert_eq!(auth_response(&a, 2).session_lifetime_ms, 1000);
            assert_eq!(c.principal(), Some("User:alice"));
            assert_eq!(c.on_frame(&metadata(), 999, nonce), Action::Forward);
            // Re-authenticating before expiry extends the session.
            let a = scram_login(&mut c, mech, "alice-secret", 900);
            assert!(matches!(a, Action::Authenticated { .. }));
            assert_eq!(c.on_frame(&metadata(), 1500, nonce), Action::Forward);
            assert!(matches!(
                c.on_frame(&metadata(), 1900, nonce),
                Action::Close(_)
            ));
            let mut c = SaslConnection::new(settings(0));
            let a = scram_login(&mut c, mech, "wrong", 0);
            assert_eq!(auth_response(&a, 2).error_code, SASL_AUTHENTICATION_FAILED);
        }
    }

    #[test]
    fn v0_handshake_uses_raw_tokens() {
        let mut c = SaslConnection::new(settings(0));
        assert!(matches!(
            c.on_frame(&handshake("PLAIN", 0), 0, nonce),
            Action::Reply(_)
        ));
        let a = c.on_frame(b"\0bob\0bob-secret", 0, nonce);
        let Action::Authenticated { reply, .. } = a else {
            panic!("{a:?}")
        };
        assert_eq!(&reply[..], &[0, 0, 0, 0]);
        let mut c = SaslConnection::new(settings(0));
        c.on_frame(&handshake("PLAIN", 0), 0, nonce);
        assert!(matches!(
            c.on_frame(b"\0bob\0x", 0, nonce),
            Action::Close(_)
        ));
    }
}
