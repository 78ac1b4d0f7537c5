//! Entry points for the `cargo fuzz` targets in `fuzz/` (not a stable API).
//!
//! Each function feeds arbitrary bytes to the decoders the broker runs on network or disk
//! input, the same functions production calls, and exercises what production does with a
//! successful decode. None of them may panic on any input; a panic is a bug the fuzzer found.

use std::path::Path;

use bytes::Bytes;
use kafka_protocol::messages::{self as m, ApiKey, RequestHeader};
use kafka_protocol::protocol::Decodable;

use crate::broker::api::producers;
use crate::broker::protocol::{peek_header, served_versions};
use crate::group::assignor::{ConsumerAssignment, ConsumerSubscription};
use crate::group::records::{GroupMetadataValue, OffsetCommitValue, OffsetsKey};
use crate::idempotence::ProducerStateTable;
use crate::storage::decompress::decompress_records;
use crate::storage::leader_epoch::LeaderEpochCache;
use crate::storage::offset_index::OffsetIndex;
use crate::storage::record_batch::{
    compute_crc, for_each_record, for_each_uncompressed_record, validate_batch, BatchIter,
    Compression, HEADER_SIZE,
};
use crate::storage::time_index::TimeIndex;
use crate::storage::validate::{validate_follower, validate_leader};
use crate::storage::{checkpoint, LogConfig};

/// A request frame (without its size prefix) through the decode layer of `handle_request`:
/// header peek, version gate, request header, the body of every served API, then the
/// sans-IO steps the handlers run on a decoded body (record validation for Produce, the
/// group wire conversions and consumer-protocol metadata, the transactional refusal).
/// Dispatch itself needs a running shard, so it stops at the decode layer.
pub fn request(frame: &[u8]) {
    let Some(peek) = peek_header(frame) else {
        return;
    };
    let Ok(api) = ApiKey::try_from(peek.api_key) else {
        return;
    };
    let version = peek.api_version;
    let mut buf = Bytes::copy_from_slice(frame);
    if producers::is_transactional_api(api) && producers::txn_version_known(api, version) {
        if RequestHeader::decode(&mut buf, api.request_header_version(version)).is_ok() {
            let _ = producers::refusal(api, version, &mut buf);
        }
        return;
    }
    match served_versions(api) {
        Some((lo, hi)) if (lo..=hi).contains(&version) => {}
        _ => return,
    }
    let Ok(header) = RequestHeader::decode(&mut buf, api.request_header_version(version)) else {
        return;
    };
    let client_id = header.client_id.as_deref().unwrap_or("");
    use crate::group::wire;
    macro_rules! body {
        ($t:ty) => {
            match <$t>::decode(&mut buf, version) {
                Ok(r) => r,
                Err(_) => return,
            }
        };
    }
    // The APIs `handle_request` decodes; each body type as the handler decodes it.
    match api {
        ApiKey::Produce => {
            let p = body!(m::ProduceRequest);
            let cfg = LogConfig::default();
            for t in &p.topic_data {
                for part in &t.partition_data {
                    if let Some(records) = &part.records {
                        // The produce handler validates a private copy (it may restamp it).
                        let mut copy = records.to_vec();
                        let _ = validate_leader(&mut copy, &cfg, 0);
                    }
                }
            }
        }
        ApiKey::Fetch => drop(body!(m::FetchRequest)),
        ApiKey::ListOffsets => drop(body!(m::ListOffsetsRequest)),
        ApiKey::Metadata => drop(body!(m::MetadataRequest)),
        ApiKey::CreateTopics => drop(body!(m::CreateTopicsRequest)),
        ApiKey::DeleteTopics => drop(body!(m::DeleteTopicsRequest)),
        ApiKey::CreatePartitions => drop(body!(m::CreatePartitionsRequest)),
        ApiKey::OffsetForLeaderEpoch => drop(body!(m::OffsetForLeaderEpochRequest)),
        ApiKey::DescribeConfigs => drop(body!(m::DescribeConfigsRequest)),
        ApiKey::IncrementalAlterConfigs => drop(body!(m::IncrementalAlterConfigsRequest)),
        ApiKey::DescribeCluster => drop(body!(m::DescribeClusterRequest)),
        ApiKey::FindCoordinator => drop(body!(m::FindCoordinatorRequest)),
        ApiKey::ApiVersions => drop(body!(m::ApiVersionsRequest)),
        ApiKey::InitProducerId => {
            let r = body!(m::InitProducerIdRequest);
            let _ = crate::idempotence::init_producer_id_request(&r, version);
        }
        ApiKey::JoinGroup => {
            let r = body!(m::JoinGroupRequest);
            let join = wire::join_group_request(&r, version, client_id, "/127.0.0.1");
            for p in &join.protocols {
                let _ = ConsumerSubscription::decode(&p.metadata);
            }
        }
        ApiKey::SyncGroup => {
            let r = body!(m::SyncGroupRequest);
            let sync = wire::sync_group_request(&r, version);
            for a in &sync.assignments {
                let _ = ConsumerAssignment::decode(&a.1);
            }
        }
        ApiKey::Heartbeat => {
            let r = body!(m::HeartbeatRequest);
            let _ = wire::heartbeat_request(&r, version);
        }
        ApiKey::LeaveGroup => {
            let r = body!(m::LeaveGroupRequest);
            let _ = wire::leave_group_request(&r, version);
        }
        ApiKey::OffsetCommit => {
            let r = body!(m::OffsetCommitRequest);
            let _ = wire::offset_commit_request(&r, version);
        }
        ApiKey::OffsetFetch => {
            let r = body!(m::OffsetFetchRequest);
            let _ = wire::offset_fetch_request(&r, version);
        }
        ApiKey::ListGroups => {
            let r = body!(m::ListGroupsRequest);
            let _ = wire::list_groups_request(&r, version);
        }
        ApiKey::DescribeGroups => {
            let r = body!(m::DescribeGroupsRequest);
            let _ = wire::describe_groups_request(&r);
        }
        ApiKey::DeleteGroups => drop(body!(m::DeleteGroupsRequest)),
        ApiKey::OffsetDelete => drop(body!(m::OffsetDeleteRequest)),
        ApiKey::DescribeClientQuotas => {
            let r = body!(m::DescribeClientQuotasRequest);
            let _ = crate::security::quota::QuotaFilter::from_components(
                r.components
                    .iter()
                    .map(|c| (c.entity_type.as_str(), c.match_type, c._match.as_deref())),
                r.strict,
            );
        }
        ApiKey::AlterClientQuotas => {
            let r = body!(m::AlterClientQuotasRequest);
            for e in &r.entries {
                let _ = crate::security::quota::QuotaEntity::from_components(
                    e.entity
                        .iter()
                        .map(|c| (c.entity_type.as_str(), c.entity_name.as_deref())),
                );
                for op in &e.ops {
                    let _ = crate::security::quota::validate_value(op.key.as_str(), op.value);
                }
            }
        }
        ApiKey::DescribeUserScramCredentials => drop(body!(m::DescribeUserScramCredentialsRequest)),
        ApiKey::AlterUserScramCredentials => drop(body!(m::AlterUserScramCredentialsRequest)),
        _ => {}
    }
}

/// Stamps a correct CRC-32C into every length-delimited batch of `buf`, so that the fuzzer
/// reaches the checks behind the CRC.
pub fn fix_batch_crcs(buf: &mut [u8]) {
    let mut pos = 0usize;
    while buf.len() - pos >= HEADER_SIZE {
        let len = i32::from_be_bytes([buf[pos + 8], buf[pos + 9], buf[pos + 10], buf[pos + 11]]);
        let Ok(len) = usize::try_from(len) else {
            return;
        };
        let size = len.saturating_add(12);
        if size < HEADER_SIZE || buf.len() - pos < size {
            return;
        }
        let batch = &mut buf[pos..pos + size];
        let crc = compute_crc(batch);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        pos += size;
    }
}

/// A record set as a producer (leader append) and a leader (follower append) send it: split,
/// validate (both the plain and the compacted-topic rules), then decompress and walk the
/// records of every batch, compressed or not, as the cleaner and the group loader do.
/// `data[0] & 1` asks for the CRCs to be fixed first.
pub fn record_batches(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut buf = rest.to_vec();
    if flags & 1 == 1 {
        fix_batch_crcs(&mut buf);
    }
    let cfg = LogConfig::default();
    let _ = validate_leader(&mut buf.clone(), &cfg, 0);
    let compact = LogConfig {
        compact: true,
        ..LogConfig::default()
    };
    let _ = validate_leader(&mut buf.clone(), &compact, 0);
    if let Ok(h) = validate_batch(&buf) {
        let _ = validate_follower(&buf, &cfg, h.base_offset);
    }
    for item in BatchIter::new(&buf) {
        let Ok((pos, h)) = item else { break };
        let batch = &buf[pos..pos + h.size().min(buf.len() - pos)];
        match h.compression() {
            Compression::None => {
                let _ = for_each_uncompressed_record(batch, &h, |_| {});
            }
            Compression::Unknown(_) => {}
            codec => {
                if batch.len() >= HEADER_SIZE {
                    if let Ok(plain) = decompress_records(codec, &batch[HEADER_SIZE..], 1 << 20) {
                        let _ = for_each_record(&plain, h.records_count, |_| {});
                    }
                }
            }
        }
    }
}

/// An `.index` file: decode with the log size taken from the input, then look up offsets
/// and positions and re-encode.
pub fn offset_index(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let log_size = u64::from(u32::from_be_bytes([data[0], data[1], data[2], data[3]]));
    let bytes = &data[4..];
    if let Ok(mut idx) = OffsetIndex::decode(1_000, bytes, 4096, log_size) {
        assert_eq!(idx.encode(), bytes, "an index re-encodes to its file bytes");
        for i in 0..idx.len().min(64) {
            if let Some((off, pos)) = idx.entry(i) {
                let _ = idx.lookup(off);
                let _ = idx.lookup(off.saturating_add(1));
                let _ = idx.lookup_position(pos);
            }
        }
        let _ = idx.lookup(i64::MIN);
        let _ = idx.lookup(i64::MAX);
        let _ = idx.lookup_position(u32::MAX);
        idx.truncate_to_position((log_size / 2) as u32);
        let _ = idx.encode_from(1);
    }
}

/// A `.timeindex` file: decode, look up timestamps, truncate, re-encode.
pub fn time_index(data: &[u8]) {
    if let Ok(mut idx) = TimeIndex::decode(1_000, data, 4096) {
        assert_eq!(
            idx.encode(),
            data,
            "a time index re-encodes to its file bytes"
        );
        for i in 0..idx.len().min(64) {
            if let Some((ts, off)) = idx.entry(i) {
                let _ = idx.lookup(ts);
                let _ = idx.lookup(ts.saturating_sub(1));
                idx.maybe_append(ts.saturating_add(1), off.saturating_add(1), false);
            }
        }
        let _ = idx.lookup(i64::MIN);
        let _ = idx.lookup(i64::MAX);
        idx.truncate_to_offset(1_000 + (data.len() as i64) / 2);
        let _ = idx.encode_from(1);
    }
}

/// A `leader-epoch-checkpoint` file: parse, then the queries and edits the log makes.
pub fn leader_epoch_checkpoint(data: &[u8]) {
    let Some(mut cache) = LeaderEpochCache::decode(data) else {
        return;
    };
    let again = LeaderEpochCache::decode(&cache.encode());
    assert!(again.is_some(), "an encoded epoch cache parses back");
    let leo = cache.entries().last().map_or(0, |e| e.start_offset) + 10;
    let epochs: Vec<i32> = cache.entries().iter().map(|e| e.epoch).collect();
    for e in epochs {
        let _ = cache.end_offset_for(e, leo);
        let _ = cache.end_offset_for(e.saturating_add(1), leo);
    }
    let _ = cache.latest_epoch();
    let _ = cache.truncate_from_start(leo / 2);
    let _ = cache.truncate_from_end(leo / 3);
    let latest = cache.latest_epoch().unwrap_or(0);
    let _ = cache.assign(latest.saturating_add(1), leo);
}

/// The other checkpoint files: recovery-point / log-start offset checkpoints and producer
/// state snapshots (`<offset>.snapshot`).
pub fn checkpoint_files(data: &[u8]) {
    if let Some(off) = checkpoint::decode_offset(data) {
        assert_eq!(
            checkpoint::decode_offset(&checkpoint::encode_offset(off)),
            Some(off)
        );
    }
    if let Ok(table) = ProducerStateTable::from_snapshot(data, i64::MAX) {
        let again = ProducerStateTable::from_snapshot(&table.to_snapshot(), i64::MAX);
        assert!(again.is_ok(), "a written producer snapshot reads back");
    }
    let _ = crate::idempotence::parse_snapshot_file_name(&String::from_utf8_lossy(data));
}

/// A `__consumer_offsets` record: the input is `key_len:u16 | key | value`; the key decides
/// which value decoder the loader runs, as the group coordinator's loader does.
pub fn offsets_record(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let klen = usize::from(u16::from_be_bytes([data[0], data[1]])).min(data.len() - 2);
    let key = &data[2..2 + klen];
    let value = &data[2 + klen..];
    match OffsetsKey::decode(key) {
        Ok(Some(k)) => {
            let _ = k.group();
            match k {
                OffsetsKey::Offset { .. } => {
                    if let Ok(v) = OffsetCommitValue::decode(value) {
                        let _ = OffsetCommitValue::decode(&v.encode());
                    }
                }
                OffsetsKey::GroupMetadata { .. } => {
                    if let Ok(v) = GroupMetadataValue::decode(value) {
                        let _ = GroupMetadataValue::decode(&v.encode());
                    }
                }
            }
        }
        Ok(None) | Err(_) => {
            let _ = OffsetCommitValue::decode(value);
            let _ = GroupMetadataValue::decode(value);
        }
    }
}

/// The controller's Raft log file (`frames`: length, CRC-32C, JSON entry) and, past the CRC,
/// one JSON entry whose command is applied to a metadata image as the state machine does.
/// `data[0] & 1` selects the raw file; otherwise the rest is one entry body.
pub fn controller_log(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    if flags & 1 == 1 {
        let (entries, valid) = crate::controller::store::decode_frames(rest);
        assert!(valid <= rest.len());
        apply_entries(entries);
    } else if let Ok(entry) = serde_json::from_slice(rest) {
        apply_entries(vec![entry]);
    }
    let _ = serde_json::from_slice::<crate::controller::metadata::MetadataImage>(rest);
}

fn apply_entries(entries: Vec<openraft::Entry<crate::controller::TypeConfig>>) {
    let mut image = crate::controller::metadata::MetadataImage::new();
    for e in entries {
        if let openraft::EntryPayload::Normal(cmd) = &e.payload {
            let _ = image.apply(e.log_id.index, cmd);
        }
    }
}

/// Splits fuzz input into the files of one partition directory, separated by `SLCE`:
/// `.log`, `.index`, `.timeindex`, `leader-epoch-checkpoint`, `recovery-point-offset-checkpoint`.
fn partition_files(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 4 <= data.len() && parts.len() < 4 {
        if &data[i..i + 4] == b"SLCE" {
            parts.push(&data[start..i]);
            i += 4;
            start = i;
        } else {
            i += 1;
        }
    }
    parts.push(&data[start..]);
    parts
}

/// A partition directory after a crash: the segment recovery scan, index and checkpoint
/// loading of `PartitionLog::open`, then a read of everything and one append. Runs on the
/// caller's io_uring runtime (`crate::io::runtime::block_on`) in `scratch`, which it empties.
/// `data[0] & 1` asks for the segment's batch CRCs to be fixed first.
pub async fn log_recovery(scratch: &Path, data: &[u8]) {
    use crate::storage::segment_names::{INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let _ = std::fs::remove_dir_all(scratch);
    if std::fs::create_dir_all(scratch).is_err() {
        return;
    }
    let parts = partition_files(rest);
    let mut log = parts.first().map(|p| p.to_vec()).unwrap_or_default();
    if flags & 1 == 1 {
        fix_batch_crcs(&mut log);
    }
    let seg = |suffix: &str| scratch.join(format!("{:020}{suffix}", 0));
    let _ = std::fs::write(seg(LOG_SUFFIX), &log);
    if let Some(p) = parts.get(1) {
        let _ = std::fs::write(seg(INDEX_SUFFIX), p);
    }
    if let Some(p) = parts.get(2) {
        let _ = std::fs::write(seg(TIME_INDEX_SUFFIX), p);
    }
    if let Some(p) = parts.get(3) {
        let _ = std::fs::write(scratch.join("leader-epoch-checkpoint"), p);
    }
    if let Some(p) = parts.get(4) {
        let _ = std::fs::write(scratch.join("recovery-point-offset-checkpoint"), p);
    }
    let cfg = LogConfig {
        segment_bytes: 1 << 20,
        ..LogConfig::default()
    };
    if let Ok(plog) = crate::storage::PartitionLog::open(scratch.to_path_buf(), cfg).await {
        let start = plog.log_start_offset();
        let end = plog.log_end_offset();
        assert!(start <= end, "log start {start} beyond log end {end}");
        let mut offset = start;
        let mut reads = 0;
        while offset < end && reads < 64 {
            reads += 1;
            match plog.read(offset, 1 << 16, end, true).await {
                Ok(r) => {
                    let Some(slice) = r.slice else { break };
                    let Ok(bytes) = slice.read_to_vec().await else {
                        break;
                    };
                    let mut next = offset;
                    for item in BatchIter::new(&bytes) {
                        let Ok((_, h)) = item else { break };
                        next = next.max(h.next_offset());
                    }
                    if next <= offset {
                        break;
                    }
                    offset = next;
                }
                Err(_) => break,
            }
        }
        let _ = plog.close().await;
    }
    let _ = std::fs::remove_dir_all(scratch);
}
