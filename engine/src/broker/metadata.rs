//! The topic registry the shards read: names, ids, partition counts and per-topic config
//! overrides, derived from the controller's metadata image.
//!
//! Readers take an immutable [`MetadataImage`] snapshot; each shard keeps its own copy
//! ([`ImageCache`]) refreshed when the controller's image changes, so the produce and fetch
//! paths never wait on an admin request or on another shard. Changes go through the
//! controller (`broker/cluster.rs`). The JSON registry of the release without a controller
//! (`__sluice_metadata.json`) is only read, once, by the migration into a cluster of one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use uuid::Uuid;

/// The legacy registry file of the release without a controller (read by the migration).
pub const METADATA_FILE: &str = "__sluice_metadata.json";

/// Errors of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// Reading or writing the metadata file failed.
    #[error("metadata file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The metadata file is not what Sluice wrote.
    #[error("metadata file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMeta {
    /// Topic name.
    pub name: String,
    /// Topic id (KIP-516).
    pub id: Uuid,
    /// Number of partitions, ids 0..partitions.
    pub partitions: i32,
    /// Topic-level config overrides (Kafka topic key -> value).
    pub configs: BTreeMap<String, String>,
}

/// An immutable snapshot of the registry.
#[derive(Debug, Clone, Default)]
pub struct MetadataImage {
    /// Cluster id reported to clients.
    pub cluster_id: String,
    topics: BTreeMap<String, Arc<TopicMeta>>,
    by_id: HashMap<Uuid, String>,
    /// The controller image this one was derived from (leaders, replicas, ISR); empty in a
    /// legacy registry read by the migration.
    pub cluster: Arc<crate::controller::MetadataImage>,
}

impl MetadataImage {
    /// The topic named `name`.
    pub fn topic(&self, name: &str) -> Option<&Arc<TopicMeta>> {
        self.topics.get(name)
    }

    /// The topic whose id is `id`.
    pub fn topic_by_id(&self, id: &Uuid) -> Option<&Arc<TopicMeta>> {
        self.by_id.get(id).and_then(|n| self.topics.get(n))
    }

    /// All topics, ordered by name.
    pub fn topics(&self) -> impl Iterator<Item = &Arc<TopicMeta>> {
        self.topics.values()
    }

    /// The registry view of a controller image.
    pub fn from_cluster(
        cluster_id: String,
        source: Arc<crate::controller::MetadataImage>,
    ) -> MetadataImage {
        let mut image = MetadataImage {
            cluster_id,
            ..Default::default()
        };
        for t in source.topics.values() {
            image.by_id.insert(t.topic_id, t.name.clone());
            image.topics.insert(
                t.name.clone(),
                Arc::new(TopicMeta {
                    name: t.name.clone(),
                    id: t.topic_id,
                    partitions: t.partitions.len() as i32,
                    configs: t.configs.clone(),
                }),
            );
        }
        image.cluster = source;
        image
    }

    fn with_topic(&self, t: TopicMeta) -> MetadataImage {
        let mut next = self.clone();
        if let Some(old) = next.topics.get(&t.name) {
            next.by_id.remove(&old.id);
        }
        next.by_id.insert(t.id, t.name.clone());
        next.topics.insert(t.name.clone(), Arc::new(t));
        next
    }
}

/// Checks a topic name as Kafka does: 1..=249 characters of `[a-zA-Z0-9._-]`, not `.`/`..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err("topic name cannot be `.` or `..`".into());
    }
    if name.len() > 249 {
        return Err("topic name is longer than 249 characters".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(format!(
            "topic name `{name}` has characters outside [a-zA-Z0-9._-]"
        ));
    }
    Ok(())
}

/// The shard that owns partition `partition` of `topic`: a stable FNV-1a hash of the name and
/// the partition id, modulo the shard count. Stable across restarts and processes.
pub fn owner_shard(topic: &str, partition: i32, shards: usize) -> usize {
    debug_assert!(shards > 0);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic
        .as_bytes()
        .iter()
        .chain(partition.to_be_bytes().iter())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % shards as u64) as usize
}

/// One shard's copy of the current image ([`super::shard::Shard::image`]). The produce and
/// fetch path reads it after one atomic version check and takes no lock shared with other
/// shards; only a changed image is fetched from the store (under its lock, once per change
/// per shard). A change is visible to every shard as soon as it is published (the version
/// moves with it), so an admin API that answers after publishing is never ahead of the
/// answering shard's reads.
#[derive(Default)]
pub struct ImageCache {
    cached: std::cell::RefCell<Option<Arc<MetadataImage>>>,
    /// This shard's receiver of controller images (`has_changed` is an atomic load of the
    /// watch's version).
    controller: std::cell::RefCell<
        Option<tokio::sync::watch::Receiver<Arc<crate::controller::MetadataImage>>>,
    >,
}

impl ImageCache {
    /// The current image of `store`.
    pub fn get(&self, store: &MetadataStore) -> Arc<MetadataImage> {
        let changed = {
            let mut rx = self.controller.borrow_mut();
            let rx = rx.get_or_insert_with(|| {
                let mut rx = store.cluster_node().controller.watch_metadata();
                rx.mark_changed();
                rx
            });
            // A closed watch (controller stopping) keeps the last image.
            let changed = rx.has_changed().unwrap_or(false);
            if changed {
                let _seen = rx.borrow_and_update();
            }
            changed
        };
        if !changed {
            if let Some(image) = self.cached.borrow().as_ref() {
                return image.clone();
            }
        }
        let image = store.image();
        *self.cached.borrow_mut() = Some(image.clone());
        image
    }
}

/// The registry a release without a controller left in `data_dir` (`__sluice_metadata.json`),
/// if there is one; read once, by the migration into a cluster of one.
pub fn read_legacy_registry(data_dir: &Path) -> Result<Option<MetadataImage>, MetadataError> {
    let path = data_dir.join(METADATA_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => decode(&bytes)
            .map(Some)
            .map_err(|reason| MetadataError::Corrupt { path, reason }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(MetadataError::Io { path, source }),
    }
}

/// The topic registry every shard reads: the view of the controller's metadata image that
/// this broker's [`super::cluster::ClusterNode`] keeps (a broker with no cluster flags is a
/// cluster of one, so there is no other registry).
#[derive(Debug)]
pub struct MetadataStore {
    node: Arc<super::cluster::ClusterNode>,
}

impl MetadataStore {
    /// A registry backed by the cluster's controller quorum.
    pub fn cluster(node: Arc<super::cluster::ClusterNode>) -> MetadataStore {
        MetadataStore { node }
    }

    /// This broker's cluster membership.
    pub fn cluster_node(&self) -> &Arc<super::cluster::ClusterNode> {
        &self.node
    }

    /// The current snapshot.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.node.image()
    }
}

/// A fresh random topic id (never the all-zero id, which means "no id" on the wire).
pub fn new_topic_id() -> Uuid {
    loop {
        let id = Uuid::from_bytes(rand::random());
        if !id.is_nil() {
            return id;
        }
    }
}

/// A new random cluster id (Kafka's shape: 22 URL-safe base64 characters).
pub fn new_cluster_id() -> String {
    // Kafka cluster ids are 22-character URL-safe base64 of a UUID.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes: [u8; 16] = rand::random();
    let mut bits: u128 = u128::from_be_bytes(bytes);
    (0..22)
        .map(|_| {
            let c = ALPHABET[(bits & 63) as usize] as char;
            bits >>= 6;
            c
        })
        .collect()
}

fn decode(bytes: &[u8]) -> Result<MetadataImage, String> {
    let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let cluster_id = doc["cluster_id"]
        .as_str()
        .ok_or("missing cluster_id")?
        .to_string();
    let mut image = MetadataImage {
        cluster_id,
        ..Default::default()
    };
    for t in doc["topics"].as_array().ok_or("missing topics")? {
        let name = t["name"].as_str().ok_or("topic without name")?.to_string();
        let id = Uuid::parse_str(t["id"].as_str().ok_or("topic without id")?)
            .map_err(|e| e.to_string())?;
        let partitions = t["partitions"].as_i64().ok_or("topic without partitions")?;
        let partitions = i32::try_from(partitions).map_err(|_| "partition count out of range")?;
        let mut configs = BTreeMap::new();
        if let Some(map) = t["configs"].as_object() {
            for (k, v) in map {
                configs.insert(
                    k.clone(),
                    v.as_str().ok_or("config value not a string")?.to_string(),
                );
            }
        }
        image = image.with_topic(TopicMeta {
            name,
            id,
            partitions,
            configs,
        });
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_registry_reads_and_refuses_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_legacy_registry(dir.path()).unwrap().is_none());
        let id = new_topic_id();
        std::fs::write(
            dir.path().join(METADATA_FILE),
            format!(
                r#"{{"version":1,"cluster_id":"abc","topics":[{{"name":"orders","id":"{id}","partitions":3,"configs":{{"retention.ms":"1000"}}}}]}}"#
            ),
        )
        .unwrap();
        let image = read_legacy_registry(dir.path()).unwrap().unwrap();
        assert_eq!(image.cluster_id, "abc");
        let t = image.topic_by_id(&id).unwrap();
        assert_eq!((t.name.as_str(), t.partitions), ("orders", 3));
        assert_eq!(
            t.configs.get("retention.ms").map(String::as_str),
            Some("1000")
        );
        std::fs::write(dir.path().join(METADATA_FILE), b"{not json").unwrap();
        assert!(matches!(
            read_legacy_registry(dir.path()),
            Err(MetadataError::Corrupt { .. })
        ));
    }

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("a.b_c-1").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a/b").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }

    #[test]
    fn ownership_is_stable_and_spread() {
        assert_eq!(owner_shard("t", 0, 1), 0);
        let owners: Vec<usize> = (0..64).map(|p| owner_shard("topic", p, 2)).collect();
        assert_eq!(
            owners,
            (0..64)
                .map(|p| owner_shard("topic", p, 2))
                .collect::<Vec<_>>()
        );
        let on_zero = owners.iter().filter(|&&o| o == 0).count();
        assert!((16..=48).contains(&on_zero), "{on_zero} of 64 on shard 0");
    }
}
