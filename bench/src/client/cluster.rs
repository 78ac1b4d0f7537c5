//! Cluster view from Metadata, and the admin calls a run needs: create a topic, wait for its
//! leaders, list offsets.

use super::{ClientError, Connection};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, ListOffsetsRequest, MetadataRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice::security::client::Security;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Versions of each API this client speaks (capped below the topic-id-only versions).
pub const METADATA_VERSIONS: (i16, i16) = (1, 12);
/// Produce versions spoken.
pub const PRODUCE_VERSIONS: (i16, i16) = (3, 9);
/// Fetch versions spoken.
pub const FETCH_VERSIONS: (i16, i16) = (4, 12);
/// ListOffsets versions spoken.
pub const LIST_OFFSETS_VERSIONS: (i16, i16) = (1, 7);
/// CreateTopics versions spoken.
pub const CREATE_TOPICS_VERSIONS: (i16, i16) = (2, 7);

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Kafka error code TOPIC_ALREADY_EXISTS.
const TOPIC_ALREADY_EXISTS: i16 = 36;

/// Where one partition lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition index.
    pub partition: i32,
    /// Leader broker id (-1 if none).
    pub leader: i32,
}

/// Brokers and the partitions of the topics asked about.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// Broker id to "host:port".
    pub brokers: HashMap<i32, String>,
    /// Controller broker id.
    pub controller: i32,
    /// Topic name to its partitions, sorted by index.
    pub topics: HashMap<String, Vec<PartitionInfo>>,
}

impl Cluster {
    /// Address of a broker id.
    pub fn addr_of(&self, broker: i32) -> Option<&str> {
        self.brokers.get(&broker).map(String::as_str)
    }

    /// True when every partition of `topic` (expected `n`) has a known leader.
    pub fn topic_ready(&self, topic: &str, n: usize) -> bool {
        self.topics.get(topic).is_some_and(|ps| {
            ps.len() == n
                && ps
                    .iter()
                    .all(|p| p.leader >= 0 && self.brokers.contains_key(&p.leader))
        })
    }
}

/// Fetches metadata for `topics` through `conn`.
pub async fn metadata(conn: &mut Connection, topics: &[String]) -> Result<Cluster, ClientError> {
    let addr = conn.addr().to_string();
    let v = conn
        .versions()
        .pick(&addr, ApiKey::Metadata, "Metadata", METADATA_VERSIONS)?;
    let req = MetadataRequest::default()
        .with_topics(Some(
            topics
                .iter()
                .map(|t| {
                    MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
                })
                .collect(),
        ))
        .with_allow_auto_topic_creation(false);
    let resp = conn
        .request::<MetadataRequest>(&req, v, ADMIN_TIMEOUT)
        .await?;
    let mut cluster = Cluster {
        controller: resp.controller_id.0,
        ..Default::default()
    };
    for b in &resp.brokers {
        cluster
            .brokers
            .insert(b.node_id.0, format!("{}:{}", b.host.as_str(), b.port));
    }
    for t in &resp.topics {
        let Some(name) = &t.name else { continue };
        if t.error_code != 0 {
            continue;
        }
        let mut parts: Vec<PartitionInfo> = t
            .partitions
            .iter()
            .map(|p| PartitionInfo {
                partition: p.partition_index,
                leader: if p.error_code == 0 { p.leader_id.0 } else { -1 },
            })
            .collect();
        parts.sort_by_key(|p| p.partition);
        cluster.topics.insert(name.0.as_str().to_string(), parts);
    }
    Ok(cluster)
}

/// Creates a topic (sent to the controller when Metadata names one), tolerating
/// TOPIC_ALREADY_EXISTS, then waits until every partition has a leader. Bounded by 30 s.
pub async fn create_topic(
    bootstrap: &str,
    client_id: &str,
    topic: &str,
    partitions: i32,
    replication_factor: i16,
    security: &Security,
) -> Result<Cluster, ClientError> {
    let mut conn = Connection::connect(bootstrap, client_id, security).await?;
    let cluster = metadata(&mut conn, &[]).await?;
    // Kafka needs CreateTopics at the controller (else NOT_CONTROLLER); brokers that route it
    // themselves are fine either way.
    let mut admin = match cluster.addr_of(cluster.controller) {
        Some(a) if a != bootstrap => match Connection::connect(a, client_id, security).await {
            Ok(c) => c,
            Err(_) => Connection::connect(bootstrap, client_id, security).await?,
        },
        _ => Connection::connect(bootstrap, client_id, security).await?,
    };
    let addr = admin.addr().to_string();
    let v = admin.versions().pick(
        &addr,
        ApiKey::CreateTopics,
        "CreateTopics",
        CREATE_TOPICS_VERSIONS,
    )?;
    let req = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)])
        .with_timeout_ms(30_000);
    let resp = admin
        .request::<CreateTopicsRequest>(&req, v, ADMIN_TIMEOUT)
        .await?;
    for t in &resp.topics {
        if t.error_code != 0 && t.error_code != TOPIC_ALREADY_EXISTS {
            return Err(ClientError::Kafka {
                what: format!("CreateTopics {topic}"),
                code: t.error_code,
            });
        }
    }
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    loop {
        let c = metadata(&mut conn, &[topic.to_string()]).await?;
        if c.topic_ready(topic, partitions as usize) {
            return Ok(c);
        }
        if Instant::now() > deadline {
            return Err(ClientError::Timeout(format!(
                "{bootstrap}: leaders for {topic}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Latest offset (log end, `timestamp = -1`) or earliest (`-2`) of the given partitions.
pub async fn list_offsets(
    conn: &mut Connection,
    topic: &str,
    partitions: &[i32],
    timestamp: i64,
) -> Result<HashMap<i32, i64>, ClientError> {
    let addr = conn.addr().to_string();
    let v = conn.versions().pick(
        &addr,
        ApiKey::ListOffsets,
        "ListOffsets",
        LIST_OFFSETS_VERSIONS,
    )?;
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(
                partitions
                    .iter()
                    .map(|p| {
                        ListOffsetsPartition::default()
                            .with_partition_index(*p)
                            .with_current_leader_epoch(-1)
                            .with_timestamp(timestamp)
                    })
                    .collect(),
            )]);
    let resp = conn
        .request::<ListOffsetsRequest>(&req, v, ADMIN_TIMEOUT)
        .await?;
    let mut out = HashMap::new();
    for t in &resp.topics {
        for p in &t.partitions {
            if p.error_code != 0 {
                return Err(ClientError::Kafka {
                    what: format!("ListOffsets {topic}-{}", p.partition_index),
                    code: p.error_code,
                });
            }
            out.insert(p.partition_index, p.offset);
        }
    }
    Ok(out)
}
