//! SCRAM users: DescribeUserScramCredentials (API 50), AlterUserScramCredentials (API 51),
//! and the import of the bootstrap credentials `sluice format --add-scram` wrote.
//!
//! The credentials live in the cluster metadata (`controller::scram`,
//! `MetadataCommand::AlterScramCredentials`); SASL authentication reads them from this
//! broker's current image, so a change applies on every broker without a restart. An alter
//! request is one controller proposal and is answered once this broker's image has it.
//!
//! Kafka's semantics: per user, UNACCEPTABLE_CREDENTIAL (empty name, iterations outside
//! 4096..=16384), UNSUPPORTED_SASL_MECHANISM, RESOURCE_NOT_FOUND (deleting a credential that
//! does not exist, describing an unknown user), DUPLICATE_RESOURCE (a user named twice in one
//! request); ALTER (alter) or DESCRIBE (describe) on the cluster when an authorizer is on,
//! CLUSTER_AUTHORIZATION_FAILED otherwise. Without an authorizer both APIs are open, as
//! Kafka's.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use kafka_protocol::messages::{self as m};
use kafka_protocol::protocol::StrBytes;
use tracing::{info, warn};

use super::acls::{Authz, CLUSTER_AUTHORIZATION_FAILED};
use super::{controller_error, str_bytes};
use crate::broker::cluster::ClusterNode;
use crate::broker::protocol::error_code as ec;
use crate::broker::services::Services;
use crate::controller::{
    AlterScramCredentials, ControllerError, MetadataCommand, MetadataImage as ClusterImage,
    ScramCredentials, ScramDeletion, ScramUpsertion,
};
use crate::security::acl::AclOperation;
use crate::security::credentials::{FileCredentialStore, SCRAM_FILE};
use crate::security::scram::{ScramCredential, ScramMechanism, MAX_ITERATIONS, MIN_ITERATIONS};

/// Kafka error code UNSUPPORTED_SASL_MECHANISM.
pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
/// Kafka error code RESOURCE_NOT_FOUND.
pub const RESOURCE_NOT_FOUND: i16 = 91;
/// Kafka error code DUPLICATE_RESOURCE.
pub const DUPLICATE_RESOURCE: i16 = 92;
/// Kafka error code UNACCEPTABLE_CREDENTIAL.
pub const UNACCEPTABLE_CREDENTIAL: i16 = 93;

/// Suffix given to the bootstrap credential file once its credentials are in the metadata.
pub const IMPORTED_SUFFIX: &str = ".imported";

type Refusal = (i16, String);

fn mechanism(code: i8) -> Result<ScramMechanism, Refusal> {
    ScramMechanism::from_kafka_type(code).ok_or_else(|| {
        (
            UNSUPPORTED_SASL_MECHANISM,
            format!("unknown SCRAM mechanism type {code}"),
        )
    })
}

fn name_and_mechanism(name: &str, code: i8) -> Result<ScramMechanism, Refusal> {
    if name.is_empty() {
        return Err((
            UNACCEPTABLE_CREDENTIAL,
            "the user name must not be empty".into(),
        ));
    }
    mechanism(code)
}

fn deletion(
    d: &m::alter_user_scram_credentials_request::ScramCredentialDeletion,
    image: &ScramCredentials,
) -> Result<ScramDeletion, Refusal> {
    let mech = name_and_mechanism(d.name.as_str(), d.mechanism)?;
    if image.get(mech, d.name.as_str()).is_none() {
        return Err((
            RESOURCE_NOT_FOUND,
            format!(
                "user {:?} has no {} credential to delete",
                d.name.as_str(),
                mech.name()
            ),
        ));
    }
    Ok(ScramDeletion {
        user: d.name.to_string(),
        mechanism: mech,
    })
}

fn upsertion(
    u: &m::alter_user_scram_credentials_request::ScramCredentialUpsertion,
) -> Result<ScramUpsertion, Refusal> {
    let mech = name_and_mechanism(u.name.as_str(), u.mechanism)?;
    let unacceptable = |why: String| (UNACCEPTABLE_CREDENTIAL, why);
    let iterations = u32::try_from(u.iterations)
        .ok()
        .filter(|i| (MIN_ITERATIONS..=MAX_ITERATIONS).contains(i))
        .ok_or_else(|| {
            unacceptable(format!(
                "iterations must be in {MIN_ITERATIONS}..={MAX_ITERATIONS} (got {})",
                u.iterations
            ))
        })?;
    if u.salt.is_empty() {
        return Err(unacceptable("the salt must not be empty".into()));
    }
    if u.salted_password.len() != mech.key_len() {
        return Err(unacceptable(format!(
            "a {} salted password is {} bytes (got {})",
            mech.name(),
            mech.key_len(),
            u.salted_password.len()
        )));
    }
    let credential =
        ScramCredential::from_salted_password(mech, &u.salted_password, &u.salt, iterations);
    if let Some(why) = crate::controller::scram::unacceptable(u.name.as_str(), mech, &credential) {
        return Err(unacceptable(why));
    }
    Ok(ScramUpsertion {
        user: u.name.to_string(),
        mechanism: mech,
        credential,
    })
}

/// Whether `image` shows every change of `alter` (as far as a later change has not undone it).
fn applied(image: &ClusterImage, alter: &AlterScramCredentials) -> bool {
    alter
        .deletions
        .iter()
        .all(|d| image.scram.get(d.mechanism, &d.user).is_none())
        && alter
            .upsertions
            .iter()
            .all(|u| image.scram.get(u.mechanism, &u.user) == Some(&u.credential))
}

/// AlterUserScramCredentials: the valid deletions and upsertions of the request in one
/// controller proposal; one result per user named.
pub async fn alter_user_scram_credentials(
    svc: &Rc<Services>,
    node: &ClusterNode,
    req: m::AlterUserScramCredentialsRequest,
) -> m::AlterUserScramCredentialsResponse {
    let result = |user: &str, code: i16, msg: Option<String>| {
        m::alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default()
            .with_user(str_bytes(user))
            .with_error_code(code)
            .with_error_message(msg.map(|s| str_bytes(&s)))
    };
    let authz = Authz::current(svc);
    if !authz.allows_cluster(AclOperation::Alter) {
        // One result per user named, in request order.
        let mut seen = std::collections::BTreeSet::new();
        let results = req
            .deletions
            .iter()
            .map(|d| &d.name)
            .chain(req.upsertions.iter().map(|u| &u.name))
            .filter(|n| seen.insert(n.as_str()))
            .map(|n| result(n.as_str(), CLUSTER_AUTHORIZATION_FAILED, None))
            .collect();
        return m::AlterUserScramCredentialsResponse::default().with_results(results);
    }
    let image = node.cluster_image();
    // Per user: an error, or the one change the request makes to it (Kafka's order:
    // deletions first, then upsertions; a user seen twice is a DUPLICATE_RESOURCE).
    let mut errors: BTreeMap<String, Refusal> = BTreeMap::new();
    let mut deletions: BTreeMap<String, ScramDeletion> = BTreeMap::new();
    let mut upsertions: BTreeMap<String, ScramUpsertion> = BTreeMap::new();
    let duplicate = || {
        (
            DUPLICATE_RESOURCE,
            "a user's credentials can be altered only once per request".to_string(),
        )
    };
    for d in &req.deletions {
        let name = d.name.to_string();
        if errors.contains_key(&name) {
            continue;
        }
        if deletions.remove(&name).is_some() {
            errors.insert(name, duplicate());
            continue;
        }
        match deletion(d, &image.scram) {
            Ok(del) => {
                deletions.insert(name, del);
            }
            Err(e) => {
                errors.insert(name, e);
            }
        }
    }
    for u in &req.upsertions {
        let name = u.name.to_string();
        if errors.contains_key(&name) {
            continue;
        }
        if deletions.remove(&name).is_some() || upsertions.remove(&name).is_some() {
            errors.insert(name, duplicate());
            continue;
        }
        match upsertion(u) {
            Ok(up) => {
                upsertions.insert(name, up);
            }
            Err(e) => {
                errors.insert(name, e);
            }
        }
    }
    debug_assert!(deletions.keys().all(|n| !upsertions.contains_key(n)));
    let alter = AlterScramCredentials {
        deletions: deletions.into_values().collect(),
        upsertions: upsertions.into_values().collect(),
        keep_existing: false,
    };
    let outcome: Result<(), Refusal> = if alter.deletions.is_empty() && alter.upsertions.is_empty()
    {
        Ok(())
    } else {
        match node
            .controller
            .propose(MetadataCommand::AlterScramCredentials(alter.clone()))
            .await
        {
            Ok(_) if node.wait_for_image(|i| applied(i, &alter)).await => {
                info!(
                    principal = authz.principal(),
                    deleted = alter.deletions.len(),
                    upserted = alter.upsertions.len(),
                    "altered SCRAM credentials"
                );
                Ok(())
            }
            Ok(_) => Err((
                ec::REQUEST_TIMED_OUT,
                "SCRAM credentials not visible in time".to_string(),
            )),
            Err(e) => Err(controller_error(&e)),
        }
    };
    let mut results = Vec::new();
    for user in alter
        .deletions
        .iter()
        .map(|d| &d.user)
        .chain(alter.upsertions.iter().map(|u| &u.user))
    {
        results.push(match &outcome {
            Ok(()) => result(user, ec::NONE, None),
            Err((code, msg)) => result(user, *code, Some(msg.clone())),
        });
    }
    for (user, (code, msg)) in errors {
        results.push(result(&user, code, Some(msg)));
    }
    m::AlterUserScramCredentialsResponse::default().with_results(results)
}

/// DescribeUserScramCredentials: the mechanisms and iterations of the users named (every user
/// when the list is null or empty), never a salt or key.
pub fn describe_user_scram_credentials(
    svc: &Rc<Services>,
    req: m::DescribeUserScramCredentialsRequest,
) -> m::DescribeUserScramCredentialsResponse {
    use m::describe_user_scram_credentials_response::{
        CredentialInfo, DescribeUserScramCredentialsResult as UserResult,
    };
    let authz = Authz::current(svc);
    if !authz.allows_cluster(AclOperation::Describe) {
        return m::DescribeUserScramCredentialsResponse::default()
            .with_error_code(CLUSTER_AUTHORIZATION_FAILED)
            .with_error_message(Some(str_bytes(
                "not authorized to describe SCRAM credentials (DESCRIBE on the cluster)",
            )));
    }
    let image = svc.shard.image().cluster.clone();
    // (name, named more than once), in request order.
    let mut names: Vec<(StrBytes, bool)> = Vec::new();
    match req.users.as_deref() {
        None | Some([]) => {
            names.extend(image.scram.users().map(|u| (str_bytes(u), false)));
        }
        Some(users) => {
            for u in users {
                match names.iter_mut().find(|(n, _)| *n == u.name) {
                    Some(entry) => entry.1 = true,
                    None => names.push((u.name.clone(), false)),
                }
            }
        }
    }
    let results = names
        .into_iter()
        .map(|(name, duplicated)| {
            let r = UserResult::default().with_user(name.clone());
            if duplicated {
                return r
                    .with_error_code(DUPLICATE_RESOURCE)
                    .with_error_message(Some(str_bytes(&format!(
                        "user {:?} is named more than once",
                        name.as_str()
                    ))));
            }
            let infos: Vec<CredentialInfo> = image
                .scram
                .describe(name.as_str())
                .into_iter()
                .map(|(mech, iterations)| {
                    CredentialInfo::default()
                        .with_mechanism(mech.kafka_type())
                        .with_iterations(i32::try_from(iterations).unwrap_or(i32::MAX))
                })
                .collect();
            if infos.is_empty() {
                r.with_error_code(RESOURCE_NOT_FOUND)
                    .with_error_message(Some(str_bytes(&format!(
                        "user {:?} has no SCRAM credential",
                        name.as_str()
                    ))))
            } else {
                r.with_credential_infos(infos)
            }
        })
        .collect();
    m::DescribeUserScramCredentialsResponse::default().with_results(results)
}

/// Proposes the credentials of `<data_dir>/scram-credentials.json` (written by `sluice format
/// --add-scram`, or by a release that kept credentials per broker) into the cluster metadata,
/// keeping any credential the metadata already holds for a user and mechanism, then renames
/// the file with [`IMPORTED_SUFFIX`] so that a credential deleted later does not come back at
/// the next start. Returns how many credentials the file held (0 when there is none).
pub async fn import_bootstrap_credentials(
    node: &ClusterNode,
    data_dir: &Path,
) -> Result<usize, ControllerError> {
    let path = data_dir.join(SCRAM_FILE);
    if !path.exists() {
        return Ok(0);
    }
    let store = FileCredentialStore::open(data_dir)
        .map_err(|e| ControllerError::InvalidConfig(e.to_string()))?;
    let upsertions: Vec<ScramUpsertion> = store
        .entries()
        .map(|(mechanism, user, credential)| ScramUpsertion {
            user: user.to_string(),
            mechanism,
            credential: credential.clone(),
        })
        .collect();
    let count = upsertions.len();
    if count > 0 {
        let alter = AlterScramCredentials {
            upsertions,
            deletions: Vec::new(),
            keep_existing: true,
        };
        node.controller
            .propose(MetadataCommand::AlterScramCredentials(alter.clone()))
            .await?;
        // Every (user, mechanism) of the file now has a credential (the file's, or one the
        // metadata held already).
        let present = |i: &ClusterImage| {
            alter
                .upsertions
                .iter()
                .all(|u| i.scram.get(u.mechanism, &u.user).is_some())
        };
        if !node.wait_for_image(present).await {
            return Err(ControllerError::NotAvailable(
                "bootstrap SCRAM credentials not visible in time".into(),
            ));
        }
    }
    let done = data_dir.join(format!("{SCRAM_FILE}{IMPORTED_SUFFIX}"));
    std::fs::rename(&path, &done).map_err(ControllerError::Io)?;
    info!(
        credentials = count,
        file = %done.display(),
        "bootstrap SCRAM credentials imported into the cluster metadata"
    );
    Ok(count)
}

/// [`import_bootstrap_credentials`] retried until it succeeds or `deadline` passes (a broker
/// of a cluster may start before the controller quorum has a leader).
pub async fn import_bootstrap_credentials_retrying(
    node: &ClusterNode,
    data_dir: &Path,
    deadline: std::time::Duration,
) -> bool {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        match import_bootstrap_credentials(node, data_dir).await {
            Ok(_) => return true,
            Err(ControllerError::Shutdown) => return false,
            Err(e) if tokio::time::Instant::now() < end => {
                info!("bootstrap SCRAM credentials not imported yet, retrying: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => {
                warn!("bootstrap SCRAM credentials not imported: {e}");
                return false;
            }
        }
    }
}
