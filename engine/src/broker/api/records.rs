//! The record-level admin APIs: DeleteRecords (21), DescribeLogDirs (35) and
//! DescribeProducers (61). Each request is split by owner shard like produce and fetch; the
//! owner answers from its partition logs and, from its replicas.
//!
//! DeleteRecords moves the leader's log start offset (`PartitionLog::delete_records_before`:
//! segments wholly below it are deleted, the start is checkpointed) and, in a cluster, waits
//! up to the request's timeout until every in-sync replica has moved its own: followers learn
//! the leader's log start from fetch answers and report theirs in their fetch requests
//! (`broker::replicas`). The answer's `low_watermark` is the smallest of them.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::messages::{self as m, ProducerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use tracing::warn;

use crate::broker::protocol::error_code as ec;
use crate::broker::replicas::{self, Replicas};
use crate::broker::services::Services;
use crate::broker::shard::{Shard, ShardGone, ShardLocal};
use crate::group::OFFSETS_TOPIC;

/// Kafka error code NOT_LEADER_OR_FOLLOWER.
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
/// Kafka error code POLICY_VIOLATION.
const POLICY_VIOLATION: i16 = 44;
/// How often a cluster DeleteRecords checks the in-sync replicas' log start offsets.
const LOW_WATERMARK_POLL: Duration = Duration::from_millis(10);

/// Kafka's `DeleteRecordsRequest.HIGH_WATERMARK`: delete everything below the high watermark.
pub const HIGH_WATERMARK: i64 = -1;

/// The new log start offset a DeleteRecords asks for, given the partition's high watermark:
/// -1 means the high watermark; any other negative offset or one above the high watermark is
/// OFFSET_OUT_OF_RANGE (as Kafka's `Partition.deleteRecordsOnLeader`).
pub fn delete_target(requested: i64, high_watermark: i64) -> Result<i64, i16> {
    let target = if requested == HIGH_WATERMARK {
        high_watermark
    } else {
        requested
    };
    if target < 0 || target > high_watermark {
        return Err(ec::OFFSET_OUT_OF_RANGE);
    }
    Ok(target)
}

/// DescribeLogDirs' `offset_lag` of a replica: how far its log end is below its high
/// watermark (0 for a leader or a caught-up follower), as Kafka's `getLogEndOffsetLag`.
pub fn offset_lag(high_watermark: i64, log_end_offset: i64) -> i64 {
    (high_watermark - log_end_offset).max(0)
}

/// Positions in the response and (topic, partition, input) items, per owner shard.
type Work<T> = HashMap<usize, (Vec<usize>, Vec<(String, i32, T)>)>;

fn push_work<T>(work: &mut Work<T>, shard: &Shard, pos: usize, topic: &str, p: i32, item: T) {
    let g = work.entry(shard.ctx.owner(topic, p)).or_default();
    g.0.push(pos);
    g.1.push((topic.to_string(), p, item));
}

/// Runs `local` on every owner shard and puts the answers back at their positions.
async fn scatter<T, R, F, Fut>(
    svc: &Rc<Services>,
    work: Work<T>,
    results: &mut [Option<R>],
    local: F,
) -> Result<(), ShardGone>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Rc<Replicas>, Vec<(String, i32, T)>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Vec<R>> + 'static,
{
    let calls = work.into_iter().map(|(owner, (positions, items))| {
        let replicas = svc.replicas.clone();
        let local = local.clone();
        async move {
            (
                positions,
                replicas.call(owner, move |s| local(s, items)).await,
            )
        }
    });
    for (positions, outs) in futures_util::future::join_all(calls).await {
        for (pos, out) in positions.into_iter().zip(outs?) {
            if let Some(slot) = results.get_mut(pos) {
                *slot = Some(out);
            }
        }
    }
    Ok(())
}

/// The DeleteRecords API (v0-2).
pub async fn delete_records(
    svc: &Rc<Services>,
    req: m::DeleteRecordsRequest,
) -> Result<m::DeleteRecordsResponse, ShardGone> {
    let shard = &svc.shard;
    let image = shard.image();
    let timeout = Duration::from_millis(u64::try_from(req.timeout_ms.max(0)).unwrap_or(0));
    let mut results: Vec<Option<(i16, i64)>> = Vec::new();
    let mut work: Work<i64> = HashMap::new();
    let mut layout = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let name = t.name.as_str();
        let meta = image.topic(name);
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let pos = results.len();
            parts.push((p.partition_index, pos));
            match meta {
                // Kafka refuses to delete records of its internal topics.
                Some(_) if name == OFFSETS_TOPIC => {
                    results.push(Some((ec::INVALID_TOPIC_EXCEPTION, -1)))
                }
                Some(m) if (0..m.partitions).contains(&p.partition_index) => {
                    results.push(None);
                    push_work(&mut work, shard, pos, name, p.partition_index, p.offset);
                }
                _ => results.push(Some((ec::UNKNOWN_TOPIC_OR_PARTITION, -1))),
            }
        }
        layout.push((t.name.clone(), parts));
    }
    scatter(svc, work, &mut results, move |s, items| {
        delete_records_local(s, items, timeout)
    })
    .await?;
    let mut resp = m::DeleteRecordsResponse::default();
    for (name, parts) in layout {
        let mut topic =
            m::delete_records_response::DeleteRecordsTopicResult::default().with_name(name);
        for (index, pos) in parts {
            let (code, low) = results
                .get_mut(pos)
                .and_then(Option::take)
                .unwrap_or((ec::UNKNOWN_SERVER_ERROR, -1));
            topic.partitions.push(
                m::delete_records_response::DeleteRecordsPartitionResult::default()
                    .with_partition_index(index)
                    .with_error_code(code)
                    .with_low_watermark(low),
            );
        }
        resp.topics.push(topic);
    }
    Ok(resp)
}

/// DeleteRecords on this shard's partitions, all at once (a cluster answer may wait for the
/// followers): `(topic, partition, offset)` -> `(error, low watermark)`.
async fn delete_records_local(
    rs: Rc<Replicas>,
    items: Vec<(String, i32, i64)>,
    timeout: Duration,
) -> Vec<(i16, i64)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let rs = &rs;
    let each = items
        .into_iter()
        .map(|(topic, p, offset)| async move { delete_one(rs, &topic, p, offset, deadline).await });
    futures_util::future::join_all(each).await
}

async fn delete_one(
    rs: &Rc<Replicas>,
    topic: &str,
    partition: i32,
    offset: i64,
    deadline: tokio::time::Instant,
) -> (i16, i64) {
    let part = match rs.shard.partition(topic, partition).await {
        Ok(p) => p,
        Err(code) => return (code, -1),
    };
    let log = &part.log;
    let high_watermark = match replicas::record_watermarks(rs, topic, partition) {
        Ok((hw, _)) => hw,
        Err(code) => return (code, -1),
    };
    // A compact-only topic keeps its records (Kafka: "can not be deleted due to the
    // configured policy").
    if !log.config().delete {
        return (POLICY_VIOLATION, -1);
    }
    let target = match delete_target(offset, high_watermark) {
        Ok(t) => t,
        Err(code) => return (code, -1),
    };
    let before = log.log_start_offset();
    let start = match log.delete_records_before(target).await {
        Ok(start) => start,
        Err(e) => {
            warn!(topic, partition, "DeleteRecords failed: {e}");
            return (ec::KAFKA_STORAGE_ERROR, -1);
        }
    };
    debug_assert!(start >= target);
    if start > before {
        tracing::info!(
            topic,
            partition,
            log_start_offset = start,
            "records deleted"
        );
    }
    // Answer once every in-sync replica has moved its log start too.
    loop {
        let low = match replicas::record_watermarks(rs, topic, partition) {
            Ok((_, low)) => low,
            Err(code) => return (code, -1),
        };
        if low >= target {
            return (ec::NONE, low);
        }
        if tokio::time::Instant::now() >= deadline {
            return (ec::REQUEST_TIMED_OUT, low);
        }
        tokio::time::sleep(LOW_WATERMARK_POLL).await;
    }
}

/// One partition in a DescribeLogDirs answer.
#[derive(Debug, Clone, Copy)]
struct LogDirPartition {
    size: i64,
    offset_lag: i64,
}

/// The DescribeLogDirs API (v1-4): the broker's one data directory with every partition
/// replica it holds (all of them when `topics` is null or empty, as Kafka's tools send).
pub async fn describe_log_dirs(
    svc: &Rc<Services>,
    version: i16,
    req: m::DescribeLogDirsRequest,
) -> Result<m::DescribeLogDirsResponse, ShardGone> {
    let shard = &svc.shard;
    let image = shard.image();
    let mut wanted: Vec<(String, i32)> = Vec::new();
    match req.topics.as_deref() {
        None | Some([]) => {
            for t in image.topics() {
                wanted.extend((0..t.partitions).map(|p| (t.name.clone(), p)));
            }
        }
        Some(topics) => {
            for t in topics {
                let Some(meta) = image.topic(t.topic.as_str()) else {
                    continue;
                };
                for &p in &t.partitions {
                    if (0..meta.partitions).contains(&p) {
                        wanted.push((meta.name.clone(), p));
                    }
                }
            }
        }
    }
    wanted.sort();
    wanted.dedup();
    let mut results: Vec<Option<Option<LogDirPartition>>> = vec![None; wanted.len()];
    let mut work: Work<()> = HashMap::new();
    for (pos, (topic, p)) in wanted.iter().enumerate() {
        push_work(&mut work, shard, pos, topic, *p, ());
    }
    scatter(svc, work, &mut results, log_dirs_local).await?;
    let mut topics: BTreeMap<&str, Vec<m::describe_log_dirs_response::DescribeLogDirsPartition>> =
        BTreeMap::new();
    for ((topic, p), out) in wanted.iter().zip(results) {
        // Partitions without a replica here (or whose log cannot be opened) are not listed.
        let Some(Some(out)) = out else { continue };
        topics.entry(topic.as_str()).or_default().push(
            m::describe_log_dirs_response::DescribeLogDirsPartition::default()
                .with_partition_index(*p)
                .with_partition_size(out.size)
                .with_offset_lag(out.offset_lag)
                .with_is_future_key(false),
        );
    }
    let dir = &shard.ctx.config.data_dir;
    let shown = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
    let mut result = m::describe_log_dirs_response::DescribeLogDirsResult::default()
        .with_error_code(ec::NONE)
        .with_log_dir(StrBytes::from_string(shown.display().to_string()))
        .with_topics(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    m::describe_log_dirs_response::DescribeLogDirsTopic::default()
                        .with_name(TopicName(StrBytes::from_string(name.to_string())))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    if version >= 4 {
        let (total, usable) = disk_space(dir);
        result = result.with_total_bytes(total).with_usable_bytes(usable);
    }
    Ok(m::DescribeLogDirsResponse::default()
        .with_error_code(ec::NONE)
        .with_results(vec![result]))
}

/// Total and usable bytes of the file system holding `dir` (-1, -1 when statvfs fails).
fn disk_space(dir: &std::path::Path) -> (i64, i64) {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => {
            let frag = s.fragment_size();
            let bytes =
                |blocks: u64| i64::try_from(blocks.saturating_mul(frag)).unwrap_or(i64::MAX);
            (bytes(s.blocks()), bytes(s.blocks_available()))
        }
        Err(e) => {
            warn!(dir = %dir.display(), "statvfs failed: {e}");
            (-1, -1)
        }
    }
}

async fn log_dirs_local(
    rs: Rc<Replicas>,
    items: Vec<(String, i32, ())>,
) -> Vec<Option<LogDirPartition>> {
    let mut out = Vec::with_capacity(items.len());
    for (topic, p, ()) in items {
        // A partition without a replica here is refused by `partition`.
        out.push(match rs.shard.partition(&topic, p).await {
            Ok(part) => {
                let leo = part.log.log_end_offset();
                let hw = replicas::wake_end(&rs, &topic, p, leo, false);
                Some(LogDirPartition {
                    size: i64::try_from(part.log.size_bytes()).unwrap_or(i64::MAX),
                    offset_lag: offset_lag(hw, leo),
                })
            }
            Err(_) => None,
        });
    }
    out
}

/// One partition's DescribeProducers answer: error, message, active producers.
type ProducersOut = (
    i16,
    Option<String>,
    Vec<m::describe_producers_response::ProducerState>,
);

/// The DescribeProducers API (v0): the idempotent producers each partition's leader tracks.
pub async fn describe_producers(
    svc: &Rc<Services>,
    req: m::DescribeProducersRequest,
) -> Result<m::DescribeProducersResponse, ShardGone> {
    let shard = &svc.shard;
    let image = shard.image();
    let mut results: Vec<Option<ProducersOut>> = Vec::new();
    let mut work: Work<()> = HashMap::new();
    let mut layout = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let name = t.name.as_str();
        let meta = image.topic(name);
        let mut parts = Vec::with_capacity(t.partition_indexes.len());
        for &p in &t.partition_indexes {
            let pos = results.len();
            parts.push((p, pos));
            match meta {
                Some(m) if (0..m.partitions).contains(&p) => {
                    results.push(None);
                    push_work(&mut work, shard, pos, name, p, ());
                }
                _ => results.push(Some((
                    ec::UNKNOWN_TOPIC_OR_PARTITION,
                    Some("unknown topic or partition".into()),
                    Vec::new(),
                ))),
            }
        }
        layout.push((t.name.clone(), parts));
    }
    scatter(svc, work, &mut results, producers_local).await?;
    let mut resp = m::DescribeProducersResponse::default();
    for (name, parts) in layout {
        let mut topic = m::describe_producers_response::TopicResponse::default().with_name(name);
        for (index, pos) in parts {
            let (code, msg, producers) = results.get_mut(pos).and_then(Option::take).unwrap_or((
                ec::UNKNOWN_SERVER_ERROR,
                None,
                Vec::new(),
            ));
            topic.partitions.push(
                m::describe_producers_response::PartitionResponse::default()
                    .with_partition_index(index)
                    .with_error_code(code)
                    .with_error_message(msg.map(StrBytes::from_string))
                    .with_active_producers(producers),
            );
        }
        resp.topics.push(topic);
    }
    Ok(resp)
}

async fn producers_local(rs: Rc<Replicas>, items: Vec<(String, i32, ())>) -> Vec<ProducersOut> {
    let mut out = Vec::with_capacity(items.len());
    for (topic, p, ()) in items {
        if !replicas::is_leader(&rs, &topic, p) {
            out.push((
                NOT_LEADER_OR_FOLLOWER,
                Some("this broker does not lead the partition".into()),
                Vec::new(),
            ));
            continue;
        }
        let part = match rs.shard.partition(&topic, p).await {
            Ok(part) => part,
            Err(code) => {
                out.push((code, None, Vec::new()));
                continue;
            }
        };
        let producers = part
            .log
            .producer_entries()
            .into_iter()
            .map(|e| {
                // No transactions are served: no coordinator epoch, no open transaction.
                m::describe_producers_response::ProducerState::default()
                    .with_producer_id(ProducerId(e.producer_id))
                    .with_producer_epoch(i32::from(e.epoch))
                    .with_last_sequence(e.last_seq().unwrap_or(-1))
                    .with_last_timestamp(e.last_timestamp_ms)
                    .with_coordinator_epoch(-1)
                    .with_current_txn_start_offset(-1)
            })
            .collect();
        out.push((ec::NONE, None, producers));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_target_follows_kafka_rules() {
        assert_eq!(delete_target(HIGH_WATERMARK, 10), Ok(10));
        assert_eq!(delete_target(0, 10), Ok(0));
        assert_eq!(delete_target(10, 10), Ok(10));
        assert_eq!(delete_target(11, 10), Err(ec::OFFSET_OUT_OF_RANGE));
        assert_eq!(delete_target(-2, 10), Err(ec::OFFSET_OUT_OF_RANGE));
        // An empty partition: only 0 (or -1, its high watermark) is in range.
        assert_eq!(delete_target(HIGH_WATERMARK, 0), Ok(0));
        assert_eq!(delete_target(1, 0), Err(ec::OFFSET_OUT_OF_RANGE));
    }

    #[test]
    fn offset_lag_is_never_negative() {
        assert_eq!(offset_lag(10, 10), 0);
        assert_eq!(offset_lag(8, 10), 0);
        assert_eq!(offset_lag(10, 7), 3);
    }
}
