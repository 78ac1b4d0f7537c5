//! The cluster as the CLI sees it: a bootstrap connection, the brokers from Metadata, one
//! lazily opened connection per broker, and routing to partition leaders and group
//! coordinators.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    FindCoordinatorRequest, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use super::security::Security;
use super::{check, ClientError, Connection};

/// Highest Metadata version used (all versions up to it address topics by name).
const METADATA_CAP: i16 = 12;

/// One partition as Metadata describes it.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionMeta {
    /// Partition index.
    pub partition: i32,
    /// Leader broker id, -1 when there is none.
    pub leader: i32,
    /// Leader epoch, -1 when the broker does not say.
    pub leader_epoch: i32,
    /// Assigned replicas.
    pub replicas: Vec<i32>,
    /// In-sync replicas.
    pub isr: Vec<i32>,
    /// Replicas on offline brokers.
    pub offline_replicas: Vec<i32>,
    /// Partition-level error code (e.g. LEADER_NOT_AVAILABLE).
    pub error_code: i16,
}

/// One topic as Metadata describes it.
#[derive(Debug, Clone, Serialize)]
pub struct TopicMeta {
    /// Topic name.
    pub name: String,
    /// Topic id (zero UUID from brokers before Metadata v10).
    pub topic_id: String,
    /// Whether it is internal (`__consumer_offsets`).
    pub is_internal: bool,
    /// Partitions ordered by index.
    pub partitions: Vec<PartitionMeta>,
}

/// A broker from Metadata.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerMeta {
    /// Broker id.
    pub node_id: i32,
    /// Host.
    pub host: String,
    /// Port.
    pub port: i32,
    /// Rack, if configured.
    pub rack: Option<String>,
}

/// Connections to a cluster.
pub struct Cluster {
    bootstrap_conn: Connection,
    timeout: Duration,
    security: Security,
    conns: HashMap<i32, Connection>,
    brokers: BTreeMap<i32, BrokerMeta>,
    cluster_id: Option<String>,
    controller_id: i32,
}

impl Cluster {
    /// Connects to the first reachable address of a comma-separated bootstrap list; every
    /// connection uses `security` (the protocol of the listener those addresses are on).
    pub fn connect(
        bootstrap: &str,
        timeout: Duration,
        security: &Security,
    ) -> Result<Self, ClientError> {
        let mut last = None;
        for addr in bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            match Connection::connect(addr, timeout, security) {
                Ok(conn) => {
                    let mut cluster = Cluster {
                        bootstrap_conn: conn,
                        timeout,
                        security: security.clone(),
                        conns: HashMap::new(),
                        brokers: BTreeMap::new(),
                        cluster_id: None,
                        controller_id: -1,
                    };
                    cluster.metadata(Some(&[]))?;
                    return Ok(cluster);
                }
                // Try the next address; the last failure is reported if none answers.
                Err(e) if e.is_unreachable() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Connect {
            addr: bootstrap.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "empty bootstrap server list",
            ),
        }))
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The connection opened to the bootstrap address (any broker can answer admin calls).
    pub fn any(&mut self) -> &mut Connection {
        &mut self.bootstrap_conn
    }

    /// Brokers from the latest Metadata.
    pub fn brokers(&self) -> impl Iterator<Item = &BrokerMeta> {
        self.brokers.values()
    }

    /// Cluster id from the latest Metadata.
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// Controller id from the latest Metadata (-1 when unknown).
    pub fn controller_id(&self) -> i32 {
        self.controller_id
    }

    /// The connection to broker `node_id`, opened on first use.
    pub fn node(&mut self, node_id: i32) -> Result<&mut Connection, ClientError> {
        if !self.conns.contains_key(&node_id) {
            let b = self.brokers.get(&node_id).ok_or_else(|| {
                ClientError::Cluster(format!(
                    "broker {node_id} is not in the cluster metadata (brokers: {:?})",
                    self.brokers.keys().collect::<Vec<_>>()
                ))
            })?;
            let addr = format!("{}:{}", b.host, b.port);
            // The bootstrap connection may already be this broker.
            let conn = Connection::connect(&addr, self.timeout, &self.security)?;
            self.conns.insert(node_id, conn);
        }
        self.conns
            .get_mut(&node_id)
            .ok_or_else(|| ClientError::Cluster(format!("no connection to broker {node_id}")))
    }

    /// Drops the connection to `node_id` (after it failed); the next use reconnects.
    pub fn forget(&mut self, node_id: i32) {
        self.conns.remove(&node_id);
    }

    /// Replaces the bootstrap connection with one to another known broker; `cause` is
    /// returned if none answers.
    fn reconnect_bootstrap(&mut self, cause: ClientError) -> Result<(), ClientError> {
        let failed = self.bootstrap_conn.addr().to_string();
        let candidates: Vec<(i32, String)> = self
            .brokers
            .values()
            .map(|b| (b.node_id, format!("{}:{}", b.host, b.port)))
            .filter(|(_, a)| *a != failed)
            .collect();
        for (node, addr) in candidates {
            self.conns.remove(&node);
            if let Ok(conn) = Connection::connect(&addr, self.timeout, &self.security) {
                self.bootstrap_conn = conn;
                return Ok(());
            }
        }
        Err(cause)
    }

    /// Metadata for `topics` (`None`: every topic). Refreshes the broker list.
    pub fn metadata(&mut self, topics: Option<&[String]>) -> Result<Vec<TopicMeta>, ClientError> {
        let req = MetadataRequest::default()
            .with_topics(topics.map(|ts| {
                ts.iter()
                    .map(|t| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
                    })
                    .collect()
            }))
            .with_allow_auto_topic_creation(false);
        let resp: MetadataResponse = match self.bootstrap_conn.call(&req, METADATA_CAP) {
            Ok(r) => r,
            // The broker we bootstrapped from went away: ask another known broker.
            Err(e) if e.is_unreachable() => {
                self.reconnect_bootstrap(e)?;
                self.bootstrap_conn.call(&req, METADATA_CAP)?
            }
            Err(e) => return Err(e),
        };
        self.brokers = resp
            .brokers
            .iter()
            .map(|b| {
                (
                    b.node_id.0,
                    BrokerMeta {
                        node_id: b.node_id.0,
                        host: b.host.to_string(),
                        port: b.port,
                        rack: b.rack.as_ref().map(|r| r.to_string()),
                    },
                )
            })
            .collect();
        self.cluster_id = resp.cluster_id.as_ref().map(|c| c.to_string());
        self.controller_id = resp.controller_id.0;
        let mut out = Vec::with_capacity(resp.topics.len());
        for t in resp.topics {
            let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
            check(t.error_code, || format!("topic '{name}'"), None)?;
            let mut partitions: Vec<PartitionMeta> = t
                .partitions
                .iter()
                .map(|p| PartitionMeta {
                    partition: p.partition_index,
                    leader: p.leader_id.0,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.iter().map(|r| r.0).collect(),
                    isr: p.isr_nodes.iter().map(|r| r.0).collect(),
                    offline_replicas: p.offline_replicas.iter().map(|r| r.0).collect(),
                    error_code: p.error_code,
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            out.push(TopicMeta {
                name,
                topic_id: t.topic_id.to_string(),
                is_internal: t.is_internal,
                partitions,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Metadata of one topic; UNKNOWN_TOPIC_OR_PARTITION when it does not exist.
    pub fn topic(&mut self, name: &str) -> Result<TopicMeta, ClientError> {
        let mut topics = self.metadata(Some(&[name.to_string()]))?;
        topics
            .pop()
            .filter(|t| t.name == name)
            .ok_or_else(|| ClientError::Kafka {
                what: format!("topic '{name}'"),
                code: 3,
                message: None,
            })
    }

    /// `partitions` of `topic` (every partition when empty) grouped by their leader, for
    /// admin requests that only a partition's leader answers.
    pub fn partitions_by_leader(
        &mut self,
        topic: &str,
        partitions: Vec<i32>,
    ) -> Result<BTreeMap<i32, Vec<i32>>, ClientError> {
        let meta = self.topic(topic)?;
        let partitions: Vec<i32> = if partitions.is_empty() {
            meta.partitions.iter().map(|p| p.partition).collect()
        } else {
            partitions
        };
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for p in partitions {
            by_leader
                .entry(Cluster::leader_of(&meta, p)?)
                .or_default()
                .push(p);
        }
        Ok(by_leader)
    }

    /// The leader of `topic`/`partition` from `meta`, or a clear error when it has none.
    pub fn leader_of(meta: &TopicMeta, partition: i32) -> Result<i32, ClientError> {
        let p = meta
            .partitions
            .iter()
            .find(|p| p.partition == partition)
            .ok_or_else(|| ClientError::Kafka {
                what: format!(
                    "partition {}-{partition} (the topic has {} partitions)",
                    meta.name,
                    meta.partitions.len()
                ),
                code: 3,
                message: None,
            })?;
        if p.leader < 0 {
            return Err(ClientError::Kafka {
                what: format!("partition {}-{partition} has no leader", meta.name),
                code: if p.error_code != 0 { p.error_code } else { 5 },
                message: None,
            });
        }
        Ok(p.leader)
    }

    /// The broker coordinating `group` (FindCoordinator, key type 0).
    pub fn coordinator(&mut self, group: &str) -> Result<i32, ClientError> {
        self.coordinator_of(0, group)
    }

    /// The broker coordinating `key`: a group (`key_type` 0) or a transactional id (1).
    pub fn coordinator_of(&mut self, key_type: i8, key: &str) -> Result<i32, ClientError> {
        let conn = &mut self.bootstrap_conn;
        let v = conn.version_for::<FindCoordinatorRequest>(6)?;
        let name = key;
        let key = StrBytes::from_string(key.to_string());
        let req = if v >= 4 {
            FindCoordinatorRequest::default().with_coordinator_keys(vec![key])
        } else {
            FindCoordinatorRequest::default().with_key(key)
        }
        .with_key_type(key_type);
        let resp = conn.call_version(&req, v)?;
        let kind = if key_type == 1 {
            "transactional id"
        } else {
            "group"
        };
        let what = || format!("finding the coordinator of {kind} '{name}'");
        let (code, msg, node, host, port) = if v >= 4 {
            let c = resp
                .coordinators
                .first()
                .ok_or_else(|| ClientError::Protocol {
                    addr: conn.addr().to_string(),
                    message: "FindCoordinator answered no coordinator".into(),
                })?;
            (
                c.error_code,
                c.error_message.as_ref().map(|m| m.to_string()),
                c.node_id.0,
                c.host.to_string(),
                c.port,
            )
        } else {
            (
                resp.error_code,
                resp.error_message.as_ref().map(|m| m.to_string()),
                resp.node_id.0,
                resp.host.to_string(),
                resp.port,
            )
        };
        check(code, what, msg.as_deref())?;
        // The coordinator may be a broker this Metadata did not list yet.
        self.brokers.entry(node).or_insert(BrokerMeta {
            node_id: node,
            host,
            port,
            rack: None,
        });
        Ok(node)
    }
}
