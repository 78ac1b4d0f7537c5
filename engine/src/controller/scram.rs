//! SCRAM credentials in the cluster metadata (Kafka's `UserScramCredentialRecord` and
//! `RemoveUserScramCredentialRecord`): per user and mechanism, the salt, StoredKey, ServerKey
//! and iteration count, never a password. Sans-IO: [`ScramCredentials::apply`] is called by
//! `MetadataImage::apply` on every voter and observer alike.
//!
//! One [`AlterScramCredentials`] command carries every upsertion and deletion of one
//! AlterUserScramCredentials request (so a request is one proposal), or the bootstrap
//! credentials of `sluice format --add-scram` (`keep_existing`: a credential already in the
//! metadata is never replaced by a bootstrap one).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::MetadataError;
use crate::security::scram::{ScramCredential, ScramMechanism, MAX_ITERATIONS, MIN_ITERATIONS};

/// Every user's SCRAM credentials, by user name then mechanism.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ScramCredentials {
    users: BTreeMap<String, BTreeMap<ScramMechanism, ScramCredential>>,
}

/// One credential to add or replace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramUpsertion {
    /// The user name.
    pub user: String,
    /// The mechanism.
    pub mechanism: ScramMechanism,
    /// Salt, StoredKey, ServerKey and iterations.
    pub credential: ScramCredential,
}

/// One credential to remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramDeletion {
    /// The user name.
    pub user: String,
    /// The mechanism.
    pub mechanism: ScramMechanism,
}

/// The metadata command's payload: deletions first, then upsertions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterScramCredentials {
    /// Credentials to add or replace.
    #[serde(default)]
    pub upsertions: Vec<ScramUpsertion>,
    /// Credentials to remove (one that does not exist is ignored: the handler answered
    /// RESOURCE_NOT_FOUND for it against its image).
    #[serde(default)]
    pub deletions: Vec<ScramDeletion>,
    /// Bootstrap credentials: an upsertion for a (user, mechanism) that already has a
    /// credential is skipped.
    #[serde(default)]
    pub keep_existing: bool,
}

/// Why a credential is refused (UNACCEPTABLE_CREDENTIAL), or `None`.
pub fn unacceptable(user: &str, mechanism: ScramMechanism, c: &ScramCredential) -> Option<String> {
    if user.is_empty() {
        return Some("the user name must not be empty".into());
    }
    if c.iterations < MIN_ITERATIONS {
        return Some(format!(
            "too few iterations ({}; at least {MIN_ITERATIONS})",
            c.iterations
        ));
    }
    if c.iterations > MAX_ITERATIONS {
        return Some(format!(
            "too many iterations ({}; at most {MAX_ITERATIONS})",
            c.iterations
        ));
    }
    if c.salt.is_empty() {
        return Some("the salt must not be empty".into());
    }
    let len = mechanism.key_len();
    if c.stored_key.len() != len || c.server_key.len() != len {
        return Some(format!("{} keys must be {len} bytes", mechanism.name()));
    }
    None
}

impl ScramCredentials {
    /// The credential of `user` for `mechanism`, if any.
    pub fn get(&self, mechanism: ScramMechanism, user: &str) -> Option<&ScramCredential> {
        self.users.get(user)?.get(&mechanism)
    }

    /// The mechanisms `user` has a credential for, with each one's iterations (Kafka's
    /// order: SCRAM-SHA-256 first); empty for an unknown user.
    pub fn describe(&self, user: &str) -> Vec<(ScramMechanism, u32)> {
        self.users
            .get(user)
            .map(|m| m.iter().map(|(mech, c)| (*mech, c.iterations)).collect())
            .unwrap_or_default()
    }

    /// Every user with at least one credential, in name order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// Whether no credential is held.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Applies one command: every upsertion is validated first and one unacceptable
    /// credential rejects the whole command (INVALID_REQUEST), changing nothing.
    pub fn apply(&mut self, alter: &AlterScramCredentials) -> Result<(), MetadataError> {
        for u in &alter.upsertions {
            if let Some(why) = unacceptable(&u.user, u.mechanism, &u.credential) {
                return Err(MetadataError::InvalidRequest(format!(
                    "SCRAM credential of {:?}: {why}",
                    u.user
                )));
            }
        }
        for d in &alter.deletions {
            if let Some(mechs) = self.users.get_mut(&d.user) {
                mechs.remove(&d.mechanism);
                if mechs.is_empty() {
                    self.users.remove(&d.user);
                }
            }
        }
        for u in &alter.upsertions {
            let mechs = self.users.entry(u.user.clone()).or_default();
            if alter.keep_existing && mechs.contains_key(&u.mechanism) {
                continue;
            }
            mechs.insert(u.mechanism, u.credential.clone());
        }
        debug_assert!(self.users.values().all(|m| !m.is_empty()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(user: &str, mech: ScramMechanism, pw: &str, iterations: u32) -> ScramUpsertion {
        ScramUpsertion {
            user: user.into(),
            mechanism: mech,
            credential: ScramCredential::new(mech, pw, b"some-salt", iterations),
        }
    }

    #[test]
    fn upsert_delete_and_bootstrap_keep_existing() {
        use ScramMechanism::{Sha256, Sha512};
        let mut s = ScramCredentials::default();
        s.apply(&AlterScramCredentials {
            upsertions: vec![
                up("alice", Sha256, "a", 4096),
                up("alice", Sha512, "a", 8192),
            ],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.describe("alice"), vec![(Sha256, 4096), (Sha512, 8192)]);
        // A bootstrap credential never replaces one that exists.
        s.apply(&AlterScramCredentials {
            upsertions: vec![up("alice", Sha256, "b", 5000), up("bob", Sha256, "b", 4096)],
            keep_existing: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.get(Sha256, "alice").unwrap().iterations, 4096);
        assert!(s.get(Sha256, "bob").is_some());
        // Deleting the last mechanism forgets the user; a missing one is ignored.
        s.apply(&AlterScramCredentials {
            deletions: vec![
                ScramDeletion {
                    user: "bob".into(),
                    mechanism: Sha256,
                },
                ScramDeletion {
                    user: "nobody".into(),
                    mechanism: Sha512,
                },
            ],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.users().collect::<Vec<_>>(), vec!["alice"]);
        assert!(s.describe("bob").is_empty());
        // One unacceptable credential rejects the whole command.
        let before = s.clone();
        let mut bad = up("carol", Sha256, "c", 4096);
        bad.credential.iterations = 100;
        let err = s
            .apply(&AlterScramCredentials {
                upsertions: vec![up("dave", Sha256, "d", 4096), bad],
                deletions: vec![ScramDeletion {
                    user: "alice".into(),
                    mechanism: Sha256,
                }],
                keep_existing: false,
            })
            .unwrap_err();
        assert_eq!(err.code(), 42);
        assert_eq!(s, before);
    }

    #[test]
    fn unacceptable_credentials() {
        use ScramMechanism::Sha256;
        let good = ScramCredential::new(Sha256, "pw", b"salt", 4096);
        assert_eq!(unacceptable("u", Sha256, &good), None);
        assert!(unacceptable("", Sha256, &good).is_some());
        let mut c = good.clone();
        c.iterations = MAX_ITERATIONS + 1;
        assert!(unacceptable("u", Sha256, &c).is_some());
        let mut c = good.clone();
        c.salt.clear();
        assert!(unacceptable("u", Sha256, &c).is_some());
        // A SHA-256 credential presented as SHA-512 has keys of the wrong length.
        assert!(unacceptable("u", ScramMechanism::Sha512, &good).is_some());
    }

    #[test]
    fn image_applies_the_command_and_snapshots_keep_it() {
        use super::super::metadata::{Applied, MetadataCommand, MetadataImage};
        let mut image = MetadataImage::default();
        let cmd = MetadataCommand::AlterScramCredentials(AlterScramCredentials {
            upsertions: vec![up("alice", ScramMechanism::Sha512, "pw", 4096)],
            ..Default::default()
        });
        assert_eq!(image.apply(1, &cmd), Ok(Applied::Done));
        assert!(image.scram.get(ScramMechanism::Sha512, "alice").is_some());
        // The command goes through the log as JSON and comes back the same.
        let bytes = serde_json::to_vec(&cmd).unwrap();
        assert_eq!(
            serde_json::from_slice::<MetadataCommand>(&bytes).unwrap(),
            cmd
        );
        let snap = image.to_snapshot().unwrap();
        let text = String::from_utf8_lossy(&snap);
        assert!(!text.contains("\"pw\""), "no password in a snapshot");
        assert_eq!(MetadataImage::from_snapshot(&snap).unwrap(), image);
        // A snapshot written before credentials were stored loads with none.
        let mut json: serde_json::Value = serde_json::from_slice(&snap).unwrap();
        json.as_object_mut().unwrap().remove("scram");
        let old = MetadataImage::from_snapshot(&serde_json::to_vec(&json).unwrap()).unwrap();
        assert!(old.scram.is_empty());
    }
}
