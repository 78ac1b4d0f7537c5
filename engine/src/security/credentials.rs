//! Where SASL credentials come from: SCRAM credentials behind [`CredentialStore`], and PLAIN
//! users from Kafka's JAAS `user_<name>="<password>"` entries.
//!
//! A broker's SCRAM store is its current cluster metadata image (`controller::scram`; the
//! broker gives SASL a closure over it). [`FileCredentialStore`] is the bootstrap file
//! `sluice format --add-scram` writes in the data directory; the broker imports it into the
//! metadata at its first start (`broker::api::users`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::scram::{ScramCredential, ScramMechanism, MAX_ITERATIONS, MIN_ITERATIONS};

/// The file in the data directory that holds the SCRAM credentials.
pub const SCRAM_FILE: &str = "scram-credentials.json";

/// Errors reading or writing credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The store file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The store file is not valid JSON of the expected shape.
    #[error("{path}: not a SCRAM credential file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
    /// An `--add-scram` argument or a JAAS text could not be parsed.
    #[error("{0}")]
    Syntax(String),
}

/// Looks SCRAM credentials up by mechanism and user name.
pub trait CredentialStore: Send + Sync {
    /// The credential of `user` for `mech`, if any.
    fn scram(&self, mech: ScramMechanism, user: &str) -> Option<ScramCredential>;
}

/// A lookup function is a store (the broker's: a read of its current metadata image).
impl<F> CredentialStore for F
where
    F: Fn(ScramMechanism, &str) -> Option<ScramCredential> + Send + Sync,
{
    fn scram(&self, mech: ScramMechanism, user: &str) -> Option<ScramCredential> {
        self(mech, user)
    }
}

/// The on-disk shape: mechanism name -> user -> credential.
type ScramMap = BTreeMap<ScramMechanism, BTreeMap<String, ScramCredential>>;

/// SCRAM credentials kept in `<data dir>/scram-credentials.json`, loaded at start-up.
#[derive(Debug, Default, Clone)]
pub struct FileCredentialStore {
    users: ScramMap,
}

impl FileCredentialStore {
    /// Loads the store of `data_dir` (empty when the file does not exist).
    pub fn open(data_dir: &Path) -> Result<Self, CredentialError> {
        let path = data_dir.join(SCRAM_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(CredentialError::Io { path, source }),
        };
        let users: ScramMap =
            serde_json::from_str(&text).map_err(|e| CredentialError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        for creds in users.values() {
            for (user, c) in creds {
                if c.iterations < MIN_ITERATIONS || c.salt.is_empty() {
                    return Err(CredentialError::Corrupt {
                        path,
                        reason: format!("credential of {user:?} is weaker than allowed"),
                    });
                }
            }
        }
        Ok(FileCredentialStore { users })
    }

    /// Adds or replaces a credential.
    pub fn upsert(&mut self, mech: ScramMechanism, user: &str, credential: ScramCredential) {
        self.users
            .entry(mech)
            .or_default()
            .insert(user.to_string(), credential);
    }

    /// Writes the store to `data_dir` atomically (temp file, fsync, rename), mode 0600.
    pub fn save(&self, data_dir: &Path) -> Result<(), CredentialError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = data_dir.join(SCRAM_FILE);
        let tmp = data_dir.join(format!("{SCRAM_FILE}.tmp"));
        let io = |source| CredentialError::Io {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_string_pretty(&self.users)
            .map_err(|e| CredentialError::Syntax(format!("cannot encode the credentials: {e}")))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(())
    }

    /// Every credential held, by mechanism then user.
    pub fn entries(&self) -> impl Iterator<Item = (ScramMechanism, &str, &ScramCredential)> {
        self.users
            .iter()
            .flat_map(|(m, users)| users.iter().map(move |(u, c)| (*m, u.as_str(), c)))
    }

    /// Every (mechanism, user, iterations) held, for listing.
    pub fn list(&self) -> Vec<(ScramMechanism, String, u32)> {
        self.users
            .iter()
            .flat_map(|(m, users)| users.iter().map(|(u, c)| (*m, u.clone(), c.iterations)))
            .collect()
    }
}

impl CredentialStore for FileCredentialStore {
    fn scram(&self, mech: ScramMechanism, user: &str) -> Option<ScramCredential> {
        self.users.get(&mech)?.get(user).cloned()
    }
}

/// One `--add-scram` argument, as kafka-storage.sh takes it:
/// `SCRAM-SHA-256=[name=alice,password=alice-secret]`, optionally with `iterations=8192` and
/// `salt=<base64>`; a password in double quotes may hold `,` and `]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddScram {
    /// The mechanism.
    pub mechanism: ScramMechanism,
    /// The user name.
    pub name: String,
    /// The password.
    pub password: String,
    /// PBKDF2 iterations (default 4096).
    pub iterations: u32,
    /// The salt (default: 32 random bytes).
    pub salt: Option<Vec<u8>>,
}

impl std::str::FromStr for AddScram {
    type Err = CredentialError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| CredentialError::Syntax(format!("--add-scram {s:?}: {why}"));
        let (mech, rest) = s
            .split_once('=')
            .ok_or_else(|| bad("expected MECH=[...]"))?;
        let mechanism = ScramMechanism::from_name(mech.trim())
            .ok_or_else(|| bad("mechanism must be SCRAM-SHA-256 or SCRAM-SHA-512"))?;
        let body = rest
            .trim()
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .ok_or_else(|| bad("expected [name=...,password=...]"))?;
        let fields = split_fields(body).map_err(|e| bad(&e))?;
        let mut out = AddScram {
            mechanism,
            name: String::new(),
            password: String::new(),
            iterations: MIN_ITERATIONS,
            salt: None,
        };
        for (k, v) in fields {
            match k.as_str() {
                "name" => out.name = v,
                "password" => out.password = v,
                "iterations" => {
                    out.iterations = v.parse().map_err(|_| bad("iterations is not a number"))?
                }
                "salt" => {
                    use base64::Engine;
                    let salt = base64::engine::general_purpose::STANDARD
                        .decode(v.as_bytes())
                        .map_err(|_| bad("salt is not base64"))?;
                    out.salt = Some(salt);
                }
                other => return Err(bad(&format!("unknown field {other:?}"))),
            }
        }
        if out.name.is_empty() || out.password.is_empty() {
            return Err(bad("name and password are required"));
        }
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&out.iterations) {
            return Err(bad(&format!(
                "iterations must be in {MIN_ITERATIONS}..={MAX_ITERATIONS}"
            )));
        }
        Ok(out)
    }
}

/// Splits `a=1,b="x,y"` into pairs; a quoted value may hold `,`, and `\"` / `\\` escapes.
fn split_fields(body: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        let value = read_value(&mut chars, |c| c == ',')?;
        out.push((key.trim().to_string(), value));
    }
}

/// One JAAS login-module entry, as Kafka's `sasl.jaas.config` holds it:
/// `<module> <flag> k="v" k2=v2;`. Returns the module's class name and its options.
pub fn jaas_options(jaas: &str) -> Result<(String, BTreeMap<String, String>), CredentialError> {
    let bad = |why: &str| CredentialError::Syntax(format!("sasl.jaas.config: {why}"));
    let text = jaas.trim();
    let text = text.strip_suffix(';').unwrap_or(text).trim();
    let mut words = text.splitn(3, char::is_whitespace);
    let module = words.next().unwrap_or("");
    if module.is_empty() {
        return Err(bad("expected a login module class name"));
    }
    match words.next().map(str::trim) {
        Some("required" | "requisite" | "sufficient" | "optional") => {}
        _ => return Err(bad("expected a control flag (required) after the module")),
    }
    let options = split_jaas_options(words.next().unwrap_or("")).map_err(|e| bad(&e))?;
    Ok((module.to_string(), options.into_iter().collect()))
}

/// The `user_<name>="<password>"` options of a JAAS `PlainLoginModule` entry, as Kafka's
/// broker reads them: `org.apache.kafka.common.security.plain.PlainLoginModule required
/// username="admin" password="admin-secret" user_admin="admin-secret";`.
pub fn plain_users_from_jaas(jaas: &str) -> Result<BTreeMap<String, String>, CredentialError> {
    let (module, options) = jaas_options(jaas)?;
    if !module.ends_with("PlainLoginModule") {
        return Err(CredentialError::Syntax(
            "sasl.jaas.config: expected org.apache.kafka.common.security.plain.PlainLoginModule"
                .into(),
        ));
    }
    let mut users = BTreeMap::new();
    for (k, v) in options {
        if let Some(user) = k.strip_prefix("user_") {
            if user.is_empty() {
                return Err(CredentialError::Syntax(
                    "sasl.jaas.config: user_ with no name".into(),
                ));
            }
            users.insert(user.to_string(), v);
        }
    }
    Ok(users)
}

/// Splits `k="v" k2=v2` (whitespace separated; quoted values may hold spaces).
fn split_jaas_options(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        let mut saw_eq = false;
        for c in chars.by_ref() {
            if c == '=' {
                saw_eq = true;
                break;
            }
            key.push(c);
        }
        if !saw_eq || key.trim().is_empty() {
            return Err(format!("option {key:?} has no value"));
        }
        let value = read_value(&mut chars, char::is_whitespace)?;
        out.push((key.trim().to_string(), value));
    }
}

/// Reads one option value: a quoted string (which may hold the separator, with `\"` and
/// `\\` escapes) or bare characters up to the first for which `ends` holds.
fn read_value(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    ends: impl Fn(char) -> bool,
) -> Result<String, String> {
    let mut value = String::new();
    if chars.peek() == Some(&'"') {
        chars.next();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.push(chars.next().ok_or("dangling escape")?),
                '"' => return Ok(value),
                c => value.push(c),
            }
        }
        return Err("unterminated quote".into());
    }
    while let Some(&c) = chars.peek() {
        if ends(c) {
            break;
        }
        value.push(c);
        chars.next();
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_scram_parses_kafka_storage_syntax() {
        let a: AddScram = "SCRAM-SHA-256=[name=admin,password=admin-secret]"
            .parse()
            .unwrap();
        assert_eq!(a.mechanism, ScramMechanism::Sha256);
        assert_eq!(
            (a.name.as_str(), a.password.as_str()),
            ("admin", "admin-secret")
        );
        assert_eq!(a.iterations, 4096);
        let b: AddScram = r#"SCRAM-SHA-512=[name=bob,password="a,b]c",iterations=8192]"#
            .parse()
            .unwrap();
        assert_eq!(b.password, "a,b]c");
        assert_eq!(b.iterations, 8192);
        for bad in [
            "SCRAM-SHA-1=[name=a,password=b]",
            "SCRAM-SHA-256=[name=a]",
            "SCRAM-SHA-256=[name=a,password=b,iterations=10]",
            "SCRAM-SHA-256=name=a,password=b",
            "SCRAM-SHA-256=[name=a,password=\"b]",
        ] {
            assert!(bad.parse::<AddScram>().is_err(), "{bad}");
        }
    }

    #[test]
    fn store_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileCredentialStore::open(dir.path()).unwrap();
        assert!(store.scram(ScramMechanism::Sha256, "a").is_none());
        let c = ScramCredential::new(ScramMechanism::Sha256, "pw", b"salt-salt", 4096);
        store.upsert(ScramMechanism::Sha256, "a", c.clone());
        store.save(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(SCRAM_FILE)).unwrap();
        assert!(!text.contains("\"pw\""), "the password is never stored");
        let back = FileCredentialStore::open(dir.path()).unwrap();
        assert_eq!(back.scram(ScramMechanism::Sha256, "a"), Some(c));
        assert!(back.scram(ScramMechanism::Sha512, "a").is_none());
        std::fs::write(dir.path().join(SCRAM_FILE), "{not json").unwrap();
        assert!(FileCredentialStore::open(dir.path()).is_err());
    }

    #[test]
    fn jaas_client_options() {
        let (module, o) = jaas_options(
            "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"alice\" password=\"a b=c\";",
        )
        .unwrap();
        assert!(module.ends_with("ScramLoginModule"));
        assert_eq!(
            (o["username"].as_str(), o["password"].as_str()),
            ("alice", "a b=c")
        );
        assert!(jaas_options("").is_err());
        assert!(jaas_options("Module sometimes a=1;").is_err());
    }

    #[test]
    fn jaas_plain_users() {
        let users = plain_users_from_jaas(
            r#"org.apache.kafka.common.security.plain.PlainLoginModule required
               username="admin" password="admin-secret"
               user_admin="admin-secret" user_alice="with space";"#,
        )
        .unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users["alice"], "with space");
        assert!(plain_users_from_jaas("Foo required;").is_err());
        assert!(plain_users_from_jaas(
            "org.apache.kafka.common.security.plain.PlainLoginModule required user_a=\"x;"
        )
        .is_err());
    }
}
