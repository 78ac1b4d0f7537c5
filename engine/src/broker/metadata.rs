//! The topic registry: names, ids, partition counts and per-topic config overrides.
//!
//! Readers take an immutable [`MetadataImage`] snapshot (an `Arc` swapped on every change), so
//! the produce and fetch paths never wait on an admin request. Changes are serialised by the
//! admin lock and persisted (write temp file, fsync, rename) before they are published. A later
//! issue replaces the JSON file with a Raft metadata log; only this type changes then.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use uuid::Uuid;

/// File in the data directory holding the topic registry.
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
    /// Cluster mode: the controller image this one was derived from (leaders, replicas, ISR).
    pub cluster: Option<Arc<crate::controller::MetadataImage>>,
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

    /// The registry view of a controller image (cluster mode).
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
        image.cluster = Some(source);
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

    fn without_topic(&self, name: &str) -> MetadataImage {
        let mut next = self.clone();
        if let Some(old) = next.topics.remove(name) {
            next.by_id.remove(&old.id);
        }
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
    cached: std::cell::RefCell<Option<(u64, Arc<MetadataImage>)>>,
    /// Cluster mode: this shard's receiver of controller images (`has_changed` is an atomic
    /// load of the watch's version).
    controller: std::cell::RefCell<
        Option<tokio::sync::watch::Receiver<Arc<crate::controller::MetadataImage>>>,
    >,
}

impl ImageCache {
    /// The current image of `store`.
    pub fn get(&self, store: &MetadataStore) -> Arc<MetadataImage> {
        let version = match &store.cluster {
            Some(node) => {
                let mut rx = self.controller.borrow_mut();
                let rx = rx.get_or_insert_with(|| {
                    let mut rx = node.controller.watch_metadata();
                    rx.mark_changed();
                    rx
                });
                // A closed watch (controller stopping) keeps the last image.
                if rx.has_changed().unwrap_or(false) {
                    let _seen = rx.borrow_and_update();
                    None
                } else {
                    Some(0)
                }
            }
            None => Some(store.version.load(Ordering::Acquire)),
        };
        if let (Some(v), Some((cached_v, image))) = (version, self.cached.borrow().as_ref()) {
            if *cached_v == v {
                return image.clone();
            }
        }
        let image = store.image();
        *self.cached.borrow_mut() = Some((version.unwrap_or(0), image.clone()));
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

/// The persistent, shared topic registry.
#[derive(Debug)]
pub struct MetadataStore {
    path: PathBuf,
    image: RwLock<Arc<MetadataImage>>,
    /// Moves after every published change (single-node mode; [`ImageCache`] compares it).
    version: std::sync::atomic::AtomicU64,
    /// Serialises admin changes (create/delete/alter) across shards; never taken on the
    /// produce or fetch path.
    pub admin_lock: tokio::sync::Mutex<()>,
    /// Cluster mode: the controller quorum is the registry (the JSON file is not used).
    cluster: Option<Arc<super::cluster::ClusterNode>>,
}

impl MetadataStore {
    /// Loads the registry from `data_dir`, creating an empty one (with a new cluster id) if
    /// there is none. Runs at start-up, before any shard serves.
    pub fn open(data_dir: &Path) -> Result<MetadataStore, MetadataError> {
        let path = data_dir.join(METADATA_FILE);
        let io = |source| MetadataError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let image = match std::fs::read(&path) {
            Ok(bytes) => decode(&bytes).map_err(|reason| MetadataError::Corrupt {
                path: path.clone(),
                reason,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let image = MetadataImage {
                    cluster_id: new_cluster_id(),
                    ..Default::default()
                };
                persist(&path, &image).map_err(io)?;
                image
            }
            Err(e) => return Err(io(e)),
        };
        Ok(MetadataStore {
            path,
            image: RwLock::new(Arc::new(image)),
            version: std::sync::atomic::AtomicU64::new(0),
            admin_lock: tokio::sync::Mutex::new(()),
            cluster: None,
        })
    }

    /// A registry backed by the cluster's controller quorum.
    pub fn cluster(node: Arc<super::cluster::ClusterNode>) -> MetadataStore {
        MetadataStore {
            path: PathBuf::new(),
            image: RwLock::new(Arc::new(MetadataImage::default())),
            version: std::sync::atomic::AtomicU64::new(0),
            admin_lock: tokio::sync::Mutex::new(()),
            cluster: Some(node),
        }
    }

    /// The cluster membership, in cluster mode.
    pub fn cluster_node(&self) -> Option<&Arc<super::cluster::ClusterNode>> {
        self.cluster.as_ref()
    }

    /// The current snapshot.
    pub fn image(&self) -> Arc<MetadataImage> {
        if let Some(node) = &self.cluster {
            return node.image();
        }
        match self.image.read() {
            Ok(g) => g.clone(),
            // A panic while holding the lock cannot leave a half-written Arc; keep serving.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn publish(&self, next: MetadataImage) -> Result<Arc<MetadataImage>, MetadataError> {
        persist(&self.path, &next).map_err(|source| MetadataError::Io {
            path: self.path.clone(),
            source,
        })?;
        let next = Arc::new(next);
        match self.image.write() {
            Ok(mut g) => *g = next.clone(),
            Err(poisoned) => *poisoned.into_inner() = next.clone(),
        }
        // After the image: a shard that sees the new version reads the new image.
        self.version.fetch_add(1, Ordering::AcqRel);
        Ok(next)
    }

    /// Adds or replaces a topic. Callers hold `admin_lock`.
    pub fn put_topic(&self, topic: TopicMeta) -> Result<Arc<MetadataImage>, MetadataError> {
        let next = self.image().with_topic(topic);
        self.publish(next)
    }

    /// Removes a topic. Callers hold `admin_lock`.
    pub fn remove_topic(&self, name: &str) -> Result<Arc<MetadataImage>, MetadataError> {
        let next = self.image().without_topic(name);
        self.publish(next)
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

fn encode(image: &MetadataImage) -> Vec<u8> {
    let topics: Vec<serde_json::Value> = image
        .topics
        .values()
        .map(|t| {
            serde_json::json!({
                "name": t.name,
                "id": t.id.to_string(),
                "partitions": t.partitions,
                "configs": t.configs,
            })
        })
        .collect();
    let doc = serde_json::json!({ "version": 1, "cluster_id": image.cluster_id, "topics": topics });
    serde_json::to_vec_pretty(&doc).unwrap_or_default()
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

fn persist(path: &Path, image: &MetadataImage) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&encode(image))?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetadataStore::open(dir.path()).unwrap();
        let cluster = store.image().cluster_id.clone();
        assert_eq!(cluster.len(), 22);
        let mut configs = BTreeMap::new();
        configs.insert("retention.ms".to_string(), "1000".to_string());
        let t = TopicMeta {
            name: "orders".into(),
            id: new_topic_id(),
            partitions: 3,
            configs,
        };
        store.put_topic(t.clone()).unwrap();
        store
            .put_topic(TopicMeta {
                name: "gone".into(),
                id: new_topic_id(),
                partitions: 1,
                configs: BTreeMap::new(),
            })
            .unwrap();
        store.remove_topic("gone").unwrap();
        drop(store);
        let store = MetadataStore::open(dir.path()).unwrap();
        let image = store.image();
        assert_eq!(image.cluster_id, cluster);
        assert_eq!(
            image.topic("orders").map(|t| (**t).clone()),
            Some(t.clone())
        );
        assert_eq!(
            image.topic_by_id(&t.id).map(|t| t.name.as_str()),
            Some("orders")
        );
        assert!(image.topic("gone").is_none());
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(METADATA_FILE), b"{not json").unwrap();
        assert!(matches!(
            MetadataStore::open(dir.path()),
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
