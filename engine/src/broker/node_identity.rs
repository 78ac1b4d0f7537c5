//! Which cluster a data directory belongs to, and the one-time migration of a directory
//! written by a release that ran a single node without a controller.
//!
//! `meta.properties` (Kafka's file name and key names) records the `node.id`, the `cluster.id`
//! and the controller voter ids the directory's metadata log was formed with. A start with
//! another node id or another voter set is refused before anything is written: the metadata
//! log's membership cannot follow a changed flag (growing a cluster of one into three is not
//! supported yet; `docs/cluster.md` says what to do instead).
//!
//! Before this release a node without `controller.quorum.voters` kept its topics in
//! `__sluice_metadata.json` and its producer-id high-water mark in its own file. On the first
//! start of a cluster of one on such a directory, [`migrate_legacy`] proposes every topic
//! to the controller with its id, partition count and configs, moves producer-id allocation
//! past the old mark, keeps the cluster id, and renames both files with a `.migrated` suffix.
//! The partition directories are not touched: the replicas open them as they are.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tracing::info;

use super::metadata::{read_legacy_registry, METADATA_FILE};
use crate::controller::{ControllerError, MetadataCommand, Voter};
use crate::idempotence::producer_id::decode_high_water_mark;

/// The file in which the release without a controller kept its producer-id high-water mark
/// (read once, by the migration into a cluster of one).
pub const PRODUCER_ID_FILE: &str = "producer-id-high-water-mark";

/// The identity file in the data directory.
pub const META_PROPERTIES: &str = "meta.properties";

/// Suffix given to a migrated legacy file.
const MIGRATED_SUFFIX: &str = ".migrated";

/// What `meta.properties` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// `node.id`.
    pub node_id: i32,
    /// `cluster.id` reported to clients.
    pub cluster_id: String,
    /// The controller voter ids the metadata log was formed with.
    pub voter_ids: BTreeSet<u64>,
}

fn invalid(msg: String) -> ControllerError {
    ControllerError::InvalidConfig(msg)
}

fn parse(text: &str, path: &Path) -> Result<NodeIdentity, ControllerError> {
    let mut keys = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(invalid(format!(
                "{}: malformed line `{line}`",
                path.display()
            )));
        };
        keys.insert(k.trim().to_string(), v.trim().to_string());
    }
    let get = |k: &str| {
        keys.get(k)
            .ok_or_else(|| invalid(format!("{}: missing `{k}`", path.display())))
    };
    let node_id = get("node.id")?
        .parse()
        .map_err(|_| invalid(format!("{}: bad node.id", path.display())))?;
    let cluster_id = get("cluster.id")?.clone();
    let voter_ids = get("controller.quorum.voter.ids")?
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            invalid(format!(
                "{}: bad controller.quorum.voter.ids",
                path.display()
            ))
        })?;
    Ok(NodeIdentity {
        node_id,
        cluster_id,
        voter_ids,
    })
}

fn render(id: &NodeIdentity) -> String {
    let voters: Vec<String> = id.voter_ids.iter().map(u64::to_string).collect();
    format!(
        "# Written by sluice on first start; do not edit.\nversion=1\nnode.id={}\ncluster.id={}\ncontroller.quorum.voter.ids={}\n",
        id.node_id,
        id.cluster_id,
        voters.join(",")
    )
}

/// Reads `meta.properties` in `data_dir`, or writes it for a new directory, and refuses a
/// start whose node id or voter set differs from the one the directory was formed with.
/// `default_cluster_id` names a new directory's cluster unless a legacy registry holds one.
pub fn load_or_create(
    data_dir: &Path,
    node_id: i32,
    voters: &[Voter],
    implicit: bool,
    default_cluster_id: impl FnOnce() -> String,
) -> Result<NodeIdentity, ControllerError> {
    let path = data_dir.join(META_PROPERTIES);
    let voter_ids: BTreeSet<u64> = voters.iter().map(|v| v.id).collect();
    let io = |e: std::io::Error| invalid(format!("data directory {}: {e}", data_dir.display()));
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let stored = parse(&text, &path)?;
            if stored.node_id != node_id {
                return Err(invalid(format!(
                    "{} belongs to node.id {}; this broker was started as node.id {node_id} \
                     (start it with --node-id {} or give it an empty data directory)",
                    data_dir.display(),
                    stored.node_id,
                    stored.node_id
                )));
            }
            if stored.voter_ids != voter_ids {
                let was = if stored.voter_ids.len() == 1 {
                    "a cluster of one".to_string()
                } else {
                    format!("controller voters {:?}", stored.voter_ids)
                };
                let now = if implicit {
                    "no --controller-voters (a cluster of one)".to_string()
                } else {
                    format!("controller voters {voter_ids:?}")
                };
                return Err(invalid(format!(
                    "{} was formed as {was} and this start asks for {now}: a metadata quorum's \
                     voters cannot be changed by flags. Start with the voters it was formed with; \
                     to move its topics to a larger cluster, start the new cluster on empty data \
                     directories and copy the topics over (docs/cluster.md, \"Growing a cluster of one\")",
                    data_dir.display()
                )));
            }
            Ok(stored)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io)?;
            let legacy = if implicit {
                read_legacy_registry(data_dir).map_err(|e| invalid(e.to_string()))?
            } else {
                None
            };
            let cluster_id = match legacy {
                Some(image) => image.cluster_id.clone(),
                None => default_cluster_id(),
            };
            let id = NodeIdentity {
                node_id,
                cluster_id,
                voter_ids,
            };
            crate::controller::store::write_atomic(&path, render(&id).as_bytes()).map_err(io)?;
            Ok(id)
        }
        Err(e) => Err(io(e)),
    }
}

fn migrated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(MIGRATED_SUFFIX);
    PathBuf::from(name)
}

/// Moves a legacy single-node registry into the controller of a cluster of one (see the
/// module docs). Returns how many topics were migrated; 0 when there is nothing to migrate.
/// Idempotent: a topic already in the metadata image is skipped, so a crash halfway through
/// is finished by the next start.
pub async fn migrate_legacy(
    node: &super::cluster::ClusterNode,
    data_dir: &Path,
) -> Result<usize, ControllerError> {
    let registry_path = data_dir.join(METADATA_FILE);
    let Some(legacy) = read_legacy_registry(data_dir).map_err(|e| invalid(e.to_string()))? else {
        return Ok(0);
    };
    let pid_path = data_dir.join(PRODUCER_ID_FILE);
    match std::fs::read(&pid_path) {
        Ok(bytes) => {
            let mark = decode_high_water_mark(&bytes)
                .map_err(|e| invalid(format!("{}: {e}", pid_path.display())))?;
            node.controller
                .propose(MetadataCommand::ReserveProducerIds { below: mark })
                .await?;
            info!(
                high_water_mark = mark,
                "migrated the producer id high-water mark"
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ControllerError::Io(e)),
    }
    let mut created = 0;
    for topic in legacy.topics() {
        if node.cluster_image().topic(&topic.name).is_some() {
            continue;
        }
        node.controller
            .create_topic_with_id(
                &topic.name,
                topic.id,
                topic.partitions,
                1,
                topic.configs.clone(),
            )
            .await?;
        created += 1;
    }
    for path in [&registry_path, &pid_path] {
        if path.exists() {
            std::fs::rename(path, migrated(path)).map_err(ControllerError::Io)?;
        }
    }
    info!(
        topics = created,
        cluster_id = %legacy.cluster_id,
        "migrated {} into the metadata log of this cluster of one (kept as {}{MIGRATED_SUFFIX})",
        METADATA_FILE,
        METADATA_FILE
    );
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voter(id: u64) -> Voter {
        Voter {
            id,
            addr: "127.0.0.1:0".into(),
        }
    }

    #[test]
    fn identity_is_written_once_and_guards_node_id_and_voters() {
        let dir = tempfile::tempdir().unwrap();
        let id = load_or_create(dir.path(), 1, &[voter(1)], true, || "abc".into()).unwrap();
        assert_eq!(id.cluster_id, "abc");
        let again = load_or_create(dir.path(), 1, &[voter(1)], true, || "other".into()).unwrap();
        assert_eq!(again, id, "the stored identity wins over a new default");
        let e = load_or_create(dir.path(), 2, &[voter(2)], true, || "x".into()).unwrap_err();
        assert!(e.to_string().contains("node.id 1"), "{e}");
        let e = load_or_create(
            dir.path(),
            1,
            &[voter(1), voter(2), voter(3)],
            false,
            || "x".into(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("cluster of one"), "{e}");
    }

    #[test]
    fn a_legacy_registry_keeps_its_cluster_id_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(METADATA_FILE),
            br#"{"version":1,"cluster_id":"legacyClusterId012345","topics":[]}"#,
        )
        .unwrap();
        let id = load_or_create(dir.path(), 0, &[voter(0)], true, || "new".into()).unwrap();
        assert_eq!(id.cluster_id, "legacyClusterId012345");
        std::fs::write(dir.path().join(META_PROPERTIES), "node.id=zero\n").unwrap();
        assert!(load_or_create(dir.path(), 0, &[voter(0)], true, || "n".into()).is_err());
    }
}
