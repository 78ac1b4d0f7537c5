//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) as sans-IO state machines: the server
//! side the broker runs per connection, and the client side the tools and tests use.
//!
//! No sockets, clocks or randomness in here: the caller supplies the nonce and looks the
//! credential up. Every failure is one [`ScramError`]; the connection layer turns all of them
//! into the same SASL_AUTHENTICATION_FAILED message, so a client learns nothing about which
//! part was wrong.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

/// The smallest iteration count accepted for a stored credential (Kafka's minimum).
pub const MIN_ITERATIONS: u32 = 4096;
/// The largest iteration count accepted (Kafka's maximum).
pub const MAX_ITERATIONS: u32 = 16384;

/// Why a SCRAM exchange failed. The detail is for the broker's log only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message did not follow the RFC 5802 grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding or an extension Sluice does not offer.
    #[error("unsupported SCRAM feature: {0}")]
    Unsupported(&'static str),
    /// The nonce in the final message is not the one the server sent (nonces travel in the
    /// clear, so the log may show them).
    #[error("nonce mismatch: expected {expected:?}, got {got:?}")]
    NonceMismatch {
        /// The combined nonce the server sent.
        expected: String,
        /// The nonce in the client's message.
        got: String,
    },
    /// The client proof does not match the stored key (wrong password or unknown user).
    #[error("invalid proof")]
    InvalidProof,
    /// The server signature does not match (client side: the server does not know us).
    #[error("invalid server signature")]
    InvalidServerSignature,
    /// The server answered with `e=...`.
    #[error("server error: {0}")]
    ServerError(String),
    /// A message arrived in a state that does not expect it.
    #[error("unexpected SCRAM message")]
    OutOfOrder,
}

/// A SCRAM hash function.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum ScramMechanism {
    /// SCRAM-SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    Sha256,
    /// SCRAM-SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    Sha512,
}

impl ScramMechanism {
    /// Every mechanism, in Kafka's order.
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    /// The SASL mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// Parses a SASL mechanism name (case-sensitive, as Kafka).
    pub fn from_name(name: &str) -> Option<ScramMechanism> {
        ScramMechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Kafka's ScramMechanism type id (DescribeUserScramCredentials).
    pub fn kafka_type(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    /// The mechanism of a Kafka ScramMechanism type id (AlterUserScramCredentials).
    pub fn from_kafka_type(code: i8) -> Option<ScramMechanism> {
        ScramMechanism::ALL
            .into_iter()
            .find(|m| m.kafka_type() == code)
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => Sha256::digest(data).to_vec(),
            ScramMechanism::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC accepts keys of any length, so new_from_slice cannot fail.
        match self {
            ScramMechanism::Sha256 => match Hmac::<Sha256>::new_from_slice(key) {
                Ok(mut m) => {
                    m.update(data);
                    m.finalize().into_bytes().to_vec()
                }
                Err(_) => Vec::new(),
            },
            ScramMechanism::Sha512 => match Hmac::<Sha512>::new_from_slice(key) {
                Ok(mut m) => {
                    m.update(data);
                    m.finalize().into_bytes().to_vec()
                }
                Err(_) => Vec::new(),
            },
        }
    }

    /// RFC 5802 `Hi(password, salt, i)`: PBKDF2 with HMAC of this hash.
    fn hi(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => {
                let mut out = [0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
                out.to_vec()
            }
            ScramMechanism::Sha512 => {
                let mut out = [0u8; 64];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
                out.to_vec()
            }
        }
    }

    /// The length of this hash's output: of a salted password, a StoredKey and a ServerKey.
    pub fn key_len(self) -> usize {
        self.output_len()
    }

    fn output_len(self) -> usize {
        match self {
            ScramMechanism::Sha256 => 32,
            ScramMechanism::Sha512 => 64,
        }
    }
}

/// What the server stores for one user and mechanism: never the password.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScramCredential {
    /// The salt, raw bytes.
    #[serde(with = "b64")]
    pub salt: Vec<u8>,
    /// `H(ClientKey)`.
    #[serde(with = "b64")]
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    #[serde(with = "b64")]
    pub server_key: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: u32,
}

mod b64 {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;

    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        B64.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

impl ScramCredential {
    /// Derives the stored credential from a password.
    pub fn new(mech: ScramMechanism, password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = mech.hi(password.as_bytes(), salt, iterations);
        Self::from_salted_password(mech, &salted, salt, iterations)
    }

    /// The stored credential of a salted password (`Hi(password, salt, iterations)`), as
    /// AlterUserScramCredentials carries it: the password itself never reaches the broker.
    pub fn from_salted_password(
        mech: ScramMechanism,
        salted_password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Self {
        let client_key = mech.hmac(salted_password, b"Client Key");
        ScramCredential {
            salt: salt.to_vec(),
            stored_key: mech.hash(&client_key),
            server_key: mech.hmac(salted_password, b"Server Key"),
            iterations,
        }
    }

    /// `Hi(password, salt, iterations)`: what a client sends in AlterUserScramCredentials.
    pub fn salted_password(
        mech: ScramMechanism,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Vec<u8> {
        mech.hi(password.as_bytes(), salt, iterations)
    }
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Decodes a `saslname` (`=2C` is `,`, `=3D` is `=`; any other `=` is an error).
fn decode_saslname(s: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 3) {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in user name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn encode_saslname(s: &str) -> String {
    s.replace('=', "=3D").replace(',', "=2C")
}

/// A printable nonce (RFC 5802: printable ASCII except `,`).
fn valid_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

// One per connection and short-lived: boxing the large variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum ServerState {
    Initial,
    FirstSent {
        user: String,
        gs2_header: String,
        client_nonce: String,
        nonce: String,
        auth_prefix: String,
        credential: ScramCredential,
        known: bool,
    },
    Done,
}

/// The server side of one SCRAM exchange.
pub struct ScramServer {
    mech: ScramMechanism,
    server_nonce: String,
    state: ServerState,
}

/// A completed server exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramSuccess {
    /// The authenticated user name.
    pub user: String,
    /// The `server-final-message` to send.
    pub server_final: Vec<u8>,
}

impl ScramServer {
    /// A server for one exchange. `server_nonce` must be fresh random printable characters.
    pub fn new(mech: ScramMechanism, server_nonce: String) -> Self {
        debug_assert!(valid_nonce(&server_nonce));
        ScramServer {
            mech,
            server_nonce,
            state: ServerState::Initial,
        }
    }

    /// Handles the `client-first-message` and returns the `server-first-message`.
    ///
    /// `lookup` finds the user's credential. An unknown user gets a made-up credential
    /// (salt derived from `decoy_key` and the name, so it is stable across attempts) and fails
    /// only at the proof, exactly like a wrong password.
    pub fn client_first(
        &mut self,
        msg: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
        decoy_key: &[u8],
    ) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, ServerState::Initial) {
            return Err(ScramError::OutOfOrder);
        }
        self.state = ServerState::Done;
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (cb, rest) = msg
            .split_once(',')
            .ok_or(ScramError::Malformed("no gs2 header"))?;
        match cb {
            "n" | "y" => {}
            c if c.starts_with("p=") => return Err(ScramError::Unsupported("channel binding")),
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no gs2 header"))?;
        let gs2_header = format!("{cb},{authzid},");
        let mut parts = bare.split(',');
        let user = parts
            .next()
            .and_then(|p| p.strip_prefix("n="))
            .ok_or(ScramError::Malformed("no user name"))?;
        let user = decode_saslname(user)?;
        if user.is_empty() {
            return Err(ScramError::Malformed("empty user name"));
        }
        if !authzid.is_empty() {
            let authz = authzid
                .strip_prefix("a=")
                .ok_or(ScramError::Malformed("bad authzid"))?;
            if decode_saslname(authz)? != user {
                return Err(ScramError::Unsupported("authzid differs from user"));
            }
        }
        let client_nonce = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if !valid_nonce(client_nonce) {
            return Err(ScramError::Malformed("bad nonce"));
        }
        for ext in parts {
            // RFC 5802: an extension is `attr-val`, one letter (Kafka: a key) and `=`.
            let well_formed = ext.split_once('=').is_some_and(|(k, _)| {
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric())
            });
            if !well_formed {
                return Err(ScramError::Malformed("bad extension"));
            }
            if ext.starts_with("m=") {
                return Err(ScramError::Unsupported("mandatory extension"));
            }
            // Kafka's delegation-token extension: Sluice has no delegation tokens.
            if ext.starts_with("tokenauth=") && ext != "tokenauth=false" {
                return Err(ScramError::Unsupported("delegation tokens"));
            }
        }
        let (credential, known) = match lookup(&user) {
            Some(c) => (c, true),
            None => {
                let salt = self.mech.hmac(decoy_key, user.as_bytes());
                let fake = ScramCredential {
                    salt: salt[..16.min(salt.len())].to_vec(),
                    stored_key: vec![0; self.mech.output_len()],
                    server_key: vec![0; self.mech.output_len()],
                    iterations: MIN_ITERATIONS,
                };
                (fake, false)
            }
        };
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        let auth_prefix = format!("{bare},{server_first}");
        self.state = ServerState::FirstSent {
            user,
            gs2_header,
            client_nonce: client_nonce.to_string(),
            nonce,
            auth_prefix,
            credential,
            known,
        };
        Ok(server_first.into_bytes())
    }

    /// Handles the `client-final-message`: checks the nonce and the proof.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<ScramSuccess, ScramError> {
        let ServerState::FirstSent {
            user,
            gs2_header,
            client_nonce,
            nonce,
            auth_prefix,
            credential,
            known,
        } = std::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut parts = without_proof.split(',');
        let binding = parts
            .next()
            .and_then(|p| p.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding"))?;
        let binding = B64
            .decode(binding)
            .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
        if binding != gs2_header.as_bytes() {
            return Err(ScramError::Malformed(
                "channel binding differs from gs2 header",
            ));
        }
        let got_nonce = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        // librdkafka before 2.1 sends the client nonce twice (client + combined nonce); Kafka
        // accepts that (it checks the suffix), so do we, but nothing looser.
        let legacy = format!("{client_nonce}{nonce}");
        if !constant_time_eq(got_nonce.as_bytes(), nonce.as_bytes())
            && !constant_time_eq(got_nonce.as_bytes(), legacy.as_bytes())
        {
            return Err(ScramError::NonceMismatch {
                expected: nonce,
                got: got_nonce.to_string(),
            });
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        if proof.len() != self.mech.output_len() {
            return Err(ScramError::InvalidProof);
        }
        let auth_message = format!("{auth_prefix},{without_proof}");
        let signature = self
            .mech
            .hmac(&credential.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        let ok = constant_time_eq(&self.mech.hash(&client_key), &credential.stored_key);
        if !ok || !known {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = self
            .mech
            .hmac(&credential.server_key, auth_message.as_bytes());
        Ok(ScramSuccess {
            user,
            server_final: format!("v={}", B64.encode(server_signature)).into_bytes(),
        })
    }
}

enum ClientState {
    Initial,
    FirstSent { bare: String },
    FinalSent { server_signature: Vec<u8> },
    Done,
}

/// The client side of one SCRAM exchange (sluicectl, sluice-bench, tests).
pub struct ScramClient {
    mech: ScramMechanism,
    user: String,
    password: String,
    nonce: String,
    state: ClientState,
}

impl ScramClient {
    /// A client for `user`; `nonce` must be fresh random printable characters.
    pub fn new(mech: ScramMechanism, user: &str, password: &str, nonce: String) -> Self {
        ScramClient {
            mech,
            user: user.to_string(),
            password: password.to_string(),
            nonce,
            state: ClientState::Initial,
        }
    }

    /// The `client-first-message`.
    pub fn client_first(&mut self) -> Vec<u8> {
        let bare = format!("n={},r={}", encode_saslname(&self.user), self.nonce);
        let msg = format!("n,,{bare}");
        self.state = ClientState::FirstSent { bare };
        msg.into_bytes()
    }

    /// Handles the `server-first-message`, returns the `client-final-message`.
    pub fn server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let ClientState::FirstSent { bare } = std::mem::replace(&mut self.state, ClientState::Done)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        if let Some(e) = msg.strip_prefix("e=") {
            return Err(ScramError::ServerError(e.to_string()));
        }
        let mut parts = msg.split(',');
        let nonce = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::NonceMismatch {
                expected: self.nonce.clone(),
                got: nonce.to_string(),
            });
        }
        let salt = parts
            .next()
            .and_then(|p| p.strip_prefix("s="))
            .and_then(|s| B64.decode(s).ok())
            .ok_or(ScramError::Malformed("no salt"))?;
        let iterations: u32 = parts
            .next()
            .and_then(|p| p.strip_prefix("i="))
            .and_then(|i| i.parse().ok())
            .ok_or(ScramError::Malformed("no iteration count"))?;
        if !(1..=1_000_000).contains(&iterations) {
            return Err(ScramError::Malformed("iteration count out of range"));
        }
        let salted = self.mech.hi(self.password.as_bytes(), &salt, iterations);
        let client_key = self.mech.hmac(&salted, b"Client Key");
        let stored_key = self.mech.hash(&client_key);
        let without_proof = format!("c={},r={nonce}", B64.encode("n,,"));
        let auth_message = format!("{bare},{msg},{without_proof}");
        let signature = self.mech.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = self.mech.hmac(&salted, b"Server Key");
        self.state = ClientState::FinalSent {
            server_signature: self.mech.hmac(&server_key, auth_message.as_bytes()),
        };
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the `server-final-message`.
    pub fn server_final(&mut self, msg: &[u8]) -> Result<(), ScramError> {
        let ClientState::FinalSent { server_signature } =
            std::mem::replace(&mut self.state, ClientState::Done)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        if let Some(e) = msg.strip_prefix("e=") {
            return Err(ScramError::ServerError(e.to_string()));
        }
        let v = msg
            .split(',')
            .next()
            .and_then(|p| p.strip_prefix("v="))
            .and_then(|v| B64.decode(v).ok())
            .ok_or(ScramError::Malformed("no verifier"))?;
        if constant_time_eq(&v, &server_signature) {
            Ok(())
        } else {
            Err(ScramError::InvalidServerSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 section 3.
    const USER: &str = "user";
    const PASSWORD: &str = "pencil";
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SALT_B64: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_credential() -> ScramCredential {
        let salt = B64.decode(SALT_B64).unwrap();
        ScramCredential::new(ScramMechanism::Sha256, PASSWORD, &salt, 4096)
    }

    #[test]
    fn server_matches_rfc7677_vector() {
        let cred = rfc_credential();
        let mut server = ScramServer::new(ScramMechanism::Sha256, SERVER_NONCE.into());
        let first = server
            .client_first(
                CLIENT_FIRST.as_bytes(),
                |u| (u == USER).then(|| cred.clone()),
                b"k",
            )
            .unwrap();
        assert_eq!(std::str::from_utf8(&first).unwrap(), SERVER_FIRST);
        let done = server.client_final(CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(done.user, USER);
        assert_eq!(
            std::str::from_utf8(&done.server_final).unwrap(),
            SERVER_FINAL
        );
    }

    #[test]
    fn client_matches_rfc7677_vector() {
        let mut client =
            ScramClient::new(ScramMechanism::Sha256, USER, PASSWORD, CLIENT_NONCE.into());
        assert_eq!(client.client_first(), CLIENT_FIRST.as_bytes());
        let fin = client.server_first(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(std::str::from_utf8(&fin).unwrap(), CLIENT_FINAL);
        client.server_final(SERVER_FINAL.as_bytes()).unwrap();
    }

    fn exchange(
        mech: ScramMechanism,
        stored: Option<ScramCredential>,
        password: &str,
    ) -> Result<ScramSuccess, ScramError> {
        let mut client = ScramClient::new(mech, "alice", password, "clientnonce123".into());
        let mut server = ScramServer::new(mech, "servernonce456".into());
        let sf = server.client_first(&client.client_first(), |_| stored, b"decoy")?;
        let cf = client.server_first(&sf)?;
        let done = server.client_final(&cf)?;
        client.server_final(&done.server_final)?;
        Ok(done)
    }

    #[test]
    fn sha512_round_trip_and_failures_look_alike() {
        let mech = ScramMechanism::Sha512;
        let cred = ScramCredential::new(mech, "secret", b"0123456789abcdef", 4096);
        assert_eq!(cred.stored_key.len(), 64);
        let ok = exchange(mech, Some(cred.clone()), "secret").unwrap();
        assert_eq!(ok.user, "alice");
        assert_eq!(
            exchange(mech, Some(cred), "wrong"),
            Err(ScramError::InvalidProof)
        );
        // An unknown user fails at the same step with the same error.
        assert_eq!(
            exchange(mech, None, "secret"),
            Err(ScramError::InvalidProof)
        );
    }

    #[test]
    fn unknown_user_gets_a_stable_decoy_salt() {
        let first = |nonce: &str| {
            let mut s = ScramServer::new(ScramMechanism::Sha256, nonce.into());
            let m = s
                .client_first(b"n,,n=ghost,r=abc", |_| None, b"key")
                .unwrap();
            String::from_utf8(m).unwrap()
        };
        let (a, b) = (first("x1"), first("x2"));
        let salt = |m: &str| m.split(',').nth(1).unwrap().to_string();
        assert_eq!(salt(&a), salt(&b));
        assert!(a.ends_with(",i=4096"));
    }

    #[test]
    fn malformed_and_replayed_messages_are_refused() {
        let cred = rfc_credential();
        let lookup = |_: &str| Some(cred.clone());
        for bad in [
            &b""[..],
            b"garbage",
            b"p=tls-unique,,n=user,r=abc",
            b"n,,r=abc",
            b"n,,n=,r=abc",
            b"n,,n=us=ZZer,r=abc",
            b"n,a=other,n=user,r=abc",
            b"n,,n=user,r=a,b",
            b"n,,n=user,r=abc,tokenauth=true",
            &[0xff, 0xfe, b',', b','],
        ] {
            let mut s = ScramServer::new(ScramMechanism::Sha256, "srv".into());
            assert!(s.client_first(bad, lookup, b"k").is_err(), "{bad:?}");
        }
        let mut s = ScramServer::new(ScramMechanism::Sha256, SERVER_NONCE.into());
        s.client_first(CLIENT_FIRST.as_bytes(), lookup, b"k")
            .unwrap();
        let wrong_nonce = CLIENT_FINAL.replace("k0,p=", "k1,p=");
        assert!(matches!(
            s.client_final(wrong_nonce.as_bytes()),
            Err(ScramError::NonceMismatch { .. })
        ));
        // The exchange is over after a failure: a second final is out of order.
        assert_eq!(
            s.client_final(CLIENT_FINAL.as_bytes()),
            Err(ScramError::OutOfOrder)
        );
        let mut s = ScramServer::new(ScramMechanism::Sha256, SERVER_NONCE.into());
        s.client_first(CLIENT_FIRST.as_bytes(), lookup, b"k")
            .unwrap();
        assert!(s.client_final(b"c=biws,r=x").is_err());
    }

    #[test]
    fn librdkafka_2_0_doubled_client_nonce_is_accepted() {
        let cred = rfc_credential();
        let mut s = ScramServer::new(ScramMechanism::Sha256, SERVER_NONCE.into());
        s.client_first(CLIENT_FIRST.as_bytes(), |_| Some(cred.clone()), b"k")
            .unwrap();
        // The proof covers the message as sent, so recompute it for the doubled nonce.
        let doubled = format!("r={CLIENT_NONCE}{CLIENT_NONCE}{SERVER_NONCE}");
        let mech = ScramMechanism::Sha256;
        let salted = mech.hi(PASSWORD.as_bytes(), &B64.decode(SALT_B64).unwrap(), 4096);
        let client_key = mech.hmac(&salted, b"Client Key");
        let without_proof = format!("c=biws,{doubled}");
        let auth = format!("n=user,r={CLIENT_NONCE},{SERVER_FIRST},{without_proof}");
        let sig = mech.hmac(&mech.hash(&client_key), auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let msg = format!("{without_proof},p={}", B64.encode(proof));
        assert_eq!(s.client_final(msg.as_bytes()).unwrap().user, "user");
    }

    #[test]
    fn saslname_escapes_round_trip() {
        assert_eq!(decode_saslname("a=2Cb=3Dc").unwrap(), "a,b=c");
        assert_eq!(encode_saslname("a,b=c"), "a=2Cb=3Dc");
        assert!(decode_saslname("a=").is_err());
    }
}
