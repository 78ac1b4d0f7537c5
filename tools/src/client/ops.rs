//! The data-path calls routed to partition leaders: ListOffsets, Produce, Fetch.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, ListOffsetsRequest, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{check, ClientError, Cluster, TopicMeta};

/// ListOffsets timestamp meaning "the log end (high watermark)".
pub const LATEST: i64 = -1;
/// ListOffsets timestamp meaning "the log start".
pub const EARLIEST: i64 = -2;

/// What a Fetch returned for one partition.
#[derive(Debug, Clone)]
pub struct FetchedPartition {
    /// Partition index.
    pub partition: i32,
    /// High watermark.
    pub high_watermark: i64,
    /// Log start offset.
    pub log_start_offset: i64,
    /// Raw record batches.
    pub records: Bytes,
}

fn topic_name(t: &str) -> TopicName {
    TopicName(StrBytes::from_string(t.to_string()))
}

impl Cluster {
    /// The offset for `timestamp` (or [`LATEST`]/[`EARLIEST`]) of each partition, asked of
    /// each partition's leader. A timestamp past every record maps to -1, as in Kafka.
    pub fn list_offsets(
        &mut self,
        meta: &TopicMeta,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<BTreeMap<i32, i64>, ClientError> {
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for &p in partitions {
            by_leader
                .entry(Cluster::leader_of(meta, p)?)
                .or_default()
                .push(p);
        }
        let mut out = BTreeMap::new();
        for (leader, ps) in by_leader {
            let req = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(topic_name(&meta.name))
                    .with_partitions(
                        ps.iter()
                            .map(|&p| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(p)
                                    .with_current_leader_epoch(-1)
                                    .with_timestamp(timestamp)
                            })
                            .collect(),
                    )]);
            let resp = self.node(leader)?.call(&req, 8)?;
            for t in resp.topics {
                for p in t.partitions {
                    check(
                        p.error_code,
                        || format!("ListOffsets of {}-{}", meta.name, p.partition_index),
                        None,
                    )?;
                    out.insert(p.partition_index, p.offset);
                }
            }
        }
        Ok(out)
    }

    /// Produces one batch to `topic`-`partition` on its leader. Returns the base offset, or
    /// `None` with `acks == 0` (the broker sends no answer).
    pub fn produce(
        &mut self,
        meta: &TopicMeta,
        partition: i32,
        batch: Bytes,
        acks: i16,
    ) -> Result<Option<i64>, ClientError> {
        let leader = Cluster::leader_of(meta, partition)?;
        let timeout_ms = self.timeout().as_millis().min(i32::MAX as u128) as i32;
        let req = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(timeout_ms)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic_name(&meta.name))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(batch))])]);
        let conn = self.node(leader)?;
        if acks == 0 {
            let v = conn.version_for::<ProduceRequest>(12)?;
            conn.send(&req, v)?;
            return Ok(None);
        }
        let resp = conn.call(&req, 12)?;
        let p = resp
            .responses
            .iter()
            .flat_map(|t| t.partition_responses.iter())
            .find(|p| p.index == partition)
            .ok_or_else(|| ClientError::Protocol {
                addr: conn.addr().to_string(),
                message: format!("Produce answer has no partition {partition}"),
            })?;
        check(
            p.error_code,
            || format!("producing to {}-{partition}", meta.name),
            p.error_message.as_deref(),
        )?;
        Ok(Some(p.base_offset))
    }

    /// Fetches from `leader` the given (partition, offset) positions, waiting up to
    /// `max_wait` for data. Partition errors are returned as Kafka errors.
    pub fn fetch(
        &mut self,
        topic: &str,
        leader: i32,
        positions: &[(i32, i64)],
        max_wait: Duration,
    ) -> Result<Vec<FetchedPartition>, ClientError> {
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait.as_millis().min(i32::MAX as u128) as i32)
            .with_min_bytes(1)
            .with_max_bytes(8 * 1024 * 1024)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(
                    positions
                        .iter()
                        .map(|&(p, offset)| {
                            FetchPartition::default()
                                .with_partition(p)
                                .with_current_leader_epoch(-1)
                                .with_fetch_offset(offset)
                                .with_last_fetched_epoch(-1)
                                .with_log_start_offset(-1)
                                .with_partition_max_bytes(1024 * 1024)
                        })
                        .collect(),
                )]);
        let timeout = self.timeout();
        let conn = self.node(leader)?;
        // The broker may hold the request for max_wait before answering.
        conn.set_timeout(timeout + max_wait)?;
        let resp = conn.call(&req, 12);
        conn.set_timeout(timeout)?;
        let resp = resp?;
        check(resp.error_code, || format!("fetching {topic}"), None)?;
        let mut out = Vec::new();
        for t in resp.responses {
            for p in t.partitions {
                check(
                    p.error_code,
                    || format!("fetching {topic}-{}", p.partition_index),
                    None,
                )?;
                out.push(FetchedPartition {
                    partition: p.partition_index,
                    high_watermark: p.high_watermark,
                    log_start_offset: p.log_start_offset,
                    records: p.records.unwrap_or_default(),
                });
            }
        }
        Ok(out)
    }
}
