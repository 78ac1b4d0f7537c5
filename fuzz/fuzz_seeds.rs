//! The seed corpora of the cargo-fuzz targets (`fuzz/corpus/<target>/`): well-formed inputs of
//! every format (all four codecs for record batches, every served request at its lowest and
//! highest version) from which the fuzzer mutates. `seeds_run_through_every_fuzz_entry_point`
//! feeds each seed to its `sluice::fuzzing` function on stable (so the entry points are built
//! and exercised by the normal test suite); the ignored `write_fuzz_seed_corpora` rewrites the
//! committed corpora:
//! `cargo test --release -p engine --test fuzz_seeds -- --ignored write_fuzz_seed_corpora`.
use std::io::Write;
use std::path::Path;

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::{self as m, ApiKey, RequestHeader};
use kafka_protocol::protocol::{Encodable, StrBytes};
use sluice::group::assignor::{ConsumerAssignment, ConsumerSubscription};
use sluice::group::records::{
    GroupMetadataValue, MemberMetadataValue, OffsetCommitValue, OffsetsKey,
};
use sluice::idempotence::state::parse_record_batch_header;
use sluice::idempotence::ProducerStateTable;
use sluice::storage::leader_epoch::LeaderEpochCache;
use sluice::storage::offset_index::OffsetIndex;
use sluice::storage::record_batch::compute_crc;
use sluice::storage::time_index::TimeIndex;

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if z < 0x80 {
            out.push(z as u8);
            return;
        }
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

fn records(n: usize, keyed: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut r = Vec::new();
        r.push(0u8);
        put_varint(&mut r, i as i64 * 3);
        put_varint(&mut r, i as i64);
        if keyed {
            let k = format!("key-{i}");
            put_varint(&mut r, k.len() as i64);
            r.extend_from_slice(k.as_bytes());
        } else {
            put_varint(&mut r, -1);
        }
        let v = format!("value-{i}-{}", "x".repeat(i % 7));
        put_varint(&mut r, v.len() as i64);
        r.extend_from_slice(v.as_bytes());
        put_varint(&mut r, if i % 3 == 0 { 1 } else { 0 });
        if i % 3 == 0 {
            put_varint(&mut r, 1);
            r.push(b'h');
            put_varint(&mut r, 2);
            r.extend_from_slice(b"hv");
        }
        put_varint(&mut out, r.len() as i64);
        out.extend_from_slice(&r);
    }
    out
}

fn compress(codec: i16, plain: &[u8]) -> Vec<u8> {
    match codec {
        1 => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(plain).ok();
            e.finish().unwrap_or_default()
        }
        2 => {
            // Kafka's snappy is xerial-framed by the Java client; librdkafka also accepts raw.
            snap::raw::Encoder::new()
                .compress_vec(plain)
                .unwrap_or_default()
        }
        3 => {
            let mut e = lz4::EncoderBuilder::new()
                .build(Vec::new())
                .expect("lz4 encoder");
            e.write_all(plain).ok();
            let (v, _) = e.finish();
            v
        }
        4 => zstd::encode_all(plain, 1).unwrap_or_default(),
        _ => plain.to_vec(),
    }
}

/// A RecordBatch v2 with a correct CRC.
fn batch(
    base: i64,
    n: usize,
    codec: i16,
    producer: Option<(i64, i16, i32)>,
    keyed: bool,
) -> Vec<u8> {
    let body = compress(codec, &records(n, keyed));
    let mut b = Vec::new();
    b.extend_from_slice(&base.to_be_bytes());
    b.extend_from_slice(&((49 + body.len()) as i32).to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.push(2);
    b.extend_from_slice(&0u32.to_be_bytes());
    let (pid, epoch, seq) = producer.unwrap_or((-1, -1, -1));
    b.extend_from_slice(&codec.to_be_bytes());
    b.extend_from_slice(&((n as i32) - 1).to_be_bytes());
    b.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
    b.extend_from_slice(&(1_700_000_000_000i64 + 3 * n as i64).to_be_bytes());
    b.extend_from_slice(&pid.to_be_bytes());
    b.extend_from_slice(&epoch.to_be_bytes());
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&(n as i32).to_be_bytes());
    b.extend_from_slice(&body);
    let crc = compute_crc(&b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

type Seeds = Vec<(String, String, Vec<u8>)>;

thread_local! {
    static OUT: std::cell::RefCell<Seeds> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Collects one seed: (target, name, bytes); `dir` ends with the target's name.
fn write(dir: &Path, name: &str, bytes: &[u8]) {
    let target = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    OUT.with(|o| {
        o.borrow_mut()
            .push((target, name.to_string(), bytes.to_vec()))
    });
}

fn frame<T: Encodable>(api: ApiKey, version: i16, body: &T) -> Option<Vec<u8>> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("fuzz")));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, api.request_header_version(version))
        .ok()?;
    body.encode(&mut buf, version).ok()?;
    Some(buf.to_vec())
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn make_seeds() -> Seeds {
    let root = Path::new("corpus");

    // record_batch: flag byte (1 = fix CRCs) + record set.
    let dir = root.join("record_batch");
    for codec in 0..=4i16 {
        for &(n, keyed) in &[(1usize, false), (5, true), (40, true)] {
            let mut seed = vec![0u8];
            seed.extend(batch(0, n, codec, None, keyed));
            write(&dir, &format!("codec{codec}-n{n}"), &seed);
        }
        let mut two = vec![1u8];
        two.extend(batch(0, 3, codec, Some((1000, 0, 0)), true));
        two.extend(batch(3, 4, codec, Some((1000, 0, 3)), true));
        write(&dir, &format!("codec{codec}-two-idempotent"), &two);
    }

    // request: every served API at its lowest and highest served version.
    let dir = root.join("request");
    let produce_records = batch(0, 3, 0, None, true);
    let gz_records = batch(0, 5, 1, None, true);
    let sub = ConsumerSubscription::new(["orders", "payments"]);
    let assignment = ConsumerAssignment {
        partitions: [("orders".to_string(), vec![0, 1])].into_iter().collect(),
        user_data: None,
    };
    for &(api, lo, hi) in sluice::broker::protocol::SUPPORTED_APIS {
        for version in [lo, hi, (lo + hi) / 2] {
            let name = format!("{api:?}-v{version}");
            let seed = match api {
                ApiKey::Produce => frame(
                    api,
                    version,
                    &m::ProduceRequest::default()
                        .with_acks(-1)
                        .with_timeout_ms(1000)
                        .with_topic_data(vec![m::produce_request::TopicProduceData::default()
                            .with_name(m::TopicName(s("orders")))
                            .with_partition_data(vec![
                                m::produce_request::PartitionProduceData::default()
                                    .with_index(0)
                                    .with_records(Some(produce_records.clone().into())),
                                m::produce_request::PartitionProduceData::default()
                                    .with_index(1)
                                    .with_records(Some(gz_records.clone().into())),
                            ])]),
                ),
                ApiKey::Fetch => frame(
                    api,
                    version,
                    &m::FetchRequest::default()
                        .with_max_wait_ms(100)
                        .with_topics(vec![m::fetch_request::FetchTopic::default()
                            .with_topic(m::TopicName(s("orders")))
                            .with_partitions(vec![m::fetch_request::FetchPartition::default()
                                .with_partition(0)
                                .with_fetch_offset(5)
                                .with_partition_max_bytes(1 << 20)])]),
                ),
                ApiKey::Metadata => frame(
                    api,
                    version,
                    &m::MetadataRequest::default().with_topics(Some(vec![
                        m::metadata_request::MetadataRequestTopic::default()
                            .with_name(Some(m::TopicName(s("orders")))),
                    ])),
                ),
                ApiKey::JoinGroup => frame(
                    api,
                    version,
                    &m::JoinGroupRequest::default()
                        .with_group_id(m::GroupId(s("g")))
                        .with_session_timeout_ms(10_000)
                        .with_rebalance_timeout_ms(10_000)
                        .with_protocol_type(s("consumer"))
                        .with_protocols(vec![
                            m::join_group_request::JoinGroupRequestProtocol::default()
                                .with_name(s("range"))
                                .with_metadata(sub.encode(1)),
                        ]),
                ),
                ApiKey::SyncGroup => frame(
                    api,
                    version,
                    &m::SyncGroupRequest::default()
                        .with_group_id(m::GroupId(s("g")))
                        .with_generation_id(1)
                        .with_member_id(s("m-1"))
                        .with_assignments(vec![
                            m::sync_group_request::SyncGroupRequestAssignment::default()
                                .with_member_id(s("m-1"))
                                .with_assignment(assignment.encode(1)),
                        ]),
                ),
                ApiKey::OffsetCommit => frame(
                    api,
                    version,
                    &m::OffsetCommitRequest::default()
                        .with_group_id(m::GroupId(s("g")))
                        .with_generation_id_or_member_epoch(1)
                        .with_member_id(s("m-1"))
                        .with_topics(vec![
                            m::offset_commit_request::OffsetCommitRequestTopic::default()
                                .with_name(m::TopicName(s("orders")))
                                .with_partitions(vec![
                                m::offset_commit_request::OffsetCommitRequestPartition::default()
                                    .with_partition_index(0)
                                    .with_committed_offset(42),
                            ]),
                        ]),
                ),
                ApiKey::CreateTopics => frame(
                    api,
                    version,
                    &m::CreateTopicsRequest::default().with_topics(vec![
                        m::create_topics_request::CreatableTopic::default()
                            .with_name(m::TopicName(s("t")))
                            .with_num_partitions(3)
                            .with_replication_factor(1),
                    ]),
                ),
                ApiKey::ListOffsets => frame(
                    api,
                    version,
                    &m::ListOffsetsRequest::default().with_topics(vec![
                        m::list_offsets_request::ListOffsetsTopic::default()
                            .with_name(m::TopicName(s("orders")))
                            .with_partitions(vec![
                                m::list_offsets_request::ListOffsetsPartition::default()
                                    .with_partition_index(0)
                                    .with_timestamp(-1),
                            ]),
                    ]),
                ),
                ApiKey::ApiVersions => frame(api, version, &m::ApiVersionsRequest::default()),
                ApiKey::FindCoordinator => frame(
                    api,
                    version,
                    &m::FindCoordinatorRequest::default()
                        .with_key(s("g"))
                        .with_coordinator_keys(vec![s("g")]),
                ),
                ApiKey::Heartbeat => frame(
                    api,
                    version,
                    &m::HeartbeatRequest::default()
                        .with_group_id(m::GroupId(s("g")))
                        .with_generation_id(1)
                        .with_member_id(s("m-1")),
                ),
                ApiKey::InitProducerId => frame(
                    api,
                    version,
                    &m::InitProducerIdRequest::default().with_transaction_timeout_ms(60_000),
                ),
                _ => None,
            };
            if let Some(seed) = seed {
                write(&dir, &name, &seed);
            }
        }
    }
    // A transactional request (refused with UNSUPPORTED_VERSION) and garbage headers.
    if let Some(seed) = frame(
        ApiKey::EndTxn,
        3,
        &m::EndTxnRequest::default()
            .with_transactional_id(m::TransactionalId(s("tx")))
            .with_producer_id(m::ProducerId(5)),
    ) {
        write(&dir, "EndTxn-v3", &seed);
    }
    write(&dir, "short", &[0, 3, 0]);

    // offset_index: log_size:u32 + entries.
    let dir = root.join("offset_index");
    for n in [0usize, 1, 5, 100] {
        let mut idx = OffsetIndex::new(1_000, 4096);
        for i in 0..n {
            idx.append(1_000 + 10 * i as i64 + 1, 4096 * i as u32 + 100);
        }
        let mut seed = (4096u32 * (n as u32 + 1)).to_be_bytes().to_vec();
        seed.extend(idx.encode());
        write(&dir, &format!("entries-{n}"), &seed);
    }

    // time_index.
    let dir = root.join("time_index");
    for n in [0usize, 1, 5, 100] {
        let mut idx = TimeIndex::new(1_000, 4096);
        for i in 0..n {
            idx.maybe_append(
                1_700_000_000_000 + 1000 * i as i64,
                1_000 + 10 * i as i64,
                true,
            );
        }
        write(&dir, &format!("entries-{n}"), &idx.encode());
    }

    // leader_epoch_checkpoint.
    let dir = root.join("leader_epoch_checkpoint");
    for n in [0i32, 1, 3, 20] {
        let mut c = LeaderEpochCache::new();
        for e in 0..n {
            c.assign(e * 2, i64::from(e) * 100);
        }
        write(&dir, &format!("epochs-{n}"), &c.encode());
    }
    write(&dir, "garbage", b"0\n2\n1 0\n");

    // checkpoint_files: offset checkpoints and producer snapshots.
    let dir = root.join("checkpoint_files");
    for off in [0i64, 1, 123_456, i64::MAX] {
        write(
            &dir,
            &format!("offset-{off}"),
            &sluice::storage::checkpoint::encode_offset(off),
        );
    }
    let mut table = ProducerStateTable::new(i64::MAX);
    write(&dir, "snapshot-empty", &table.to_snapshot());
    for (i, base) in [0i64, 3, 7].into_iter().enumerate() {
        let b = batch(
            base,
            3,
            0,
            Some((1000 + i as i64 % 2, 0, base as i32)),
            true,
        );
        if let Ok(rb) = parse_record_batch_header(&b) {
            table.replay(&rb);
        }
    }
    write(&dir, "snapshot-producers", &table.to_snapshot());

    // offsets_record: key_len:u16 + key + value.
    let dir = root.join("offsets_record");
    let pair = |k: &[u8], v: &[u8]| {
        let mut out = (k.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(k);
        out.extend_from_slice(v);
        out
    };
    let okey = OffsetsKey::Offset {
        group: "g".into(),
        topic: "orders".into(),
        partition: 3,
    }
    .encode();
    for expire in [None, Some(1_700_000_100_000)] {
        let v = OffsetCommitValue {
            offset: 42,
            leader_epoch: 5,
            metadata: "meta".into(),
            commit_timestamp_ms: 1_700_000_000_000,
            expire_timestamp_ms: expire,
        }
        .encode();
        write(
            &dir,
            &format!("offset-expire-{}", expire.is_some()),
            &pair(&okey, &v),
        );
    }
    write(&dir, "offset-tombstone", &pair(&okey, &[]));
    let gkey = OffsetsKey::GroupMetadata { group: "g".into() }.encode();
    let g = GroupMetadataValue {
        protocol_type: "consumer".into(),
        generation: 3,
        protocol: Some("range".into()),
        leader: Some("m-1".into()),
        current_state_timestamp_ms: 1_700_000_000_000,
        members: vec![MemberMetadataValue {
            member_id: "m-1".into(),
            group_instance_id: Some("static-1".into()),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            rebalance_timeout_ms: 10_000,
            session_timeout_ms: 10_000,
            subscription: sub.encode(1),
            assignment: assignment.encode(1),
        }],
    }
    .encode();
    write(&dir, "group", &pair(&gkey, &g));

    // controller_log: flag 1 = a raw log file of frames; 0 = one JSON entry.
    let dir = root.join("controller_log");
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use sluice::controller::metadata::MetadataCommand;
    let cmds = vec![
        MetadataCommand::RegisterBroker {
            broker_id: 1,
            incarnation: uuid::Uuid::from_u128(7),
            listeners: vec![sluice::controller::metadata::Endpoint {
                name: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 9092,
            }],
            rack: None,
        },
        MetadataCommand::UnfenceBroker {
            broker_id: 1,
            broker_epoch: 1,
        },
        MetadataCommand::CreateTopic {
            name: "orders".into(),
            topic_id: uuid::Uuid::from_u128(9),
            partitions: 3,
            replication_factor: 1,
            configs: Default::default(),
            placement_start: 0,
        },
        MetadataCommand::FenceBroker {
            broker_id: 1,
            broker_epoch: 1,
        },
    ];
    let mut file = vec![1u8];
    for (i, cmd) in cmds.into_iter().enumerate() {
        let entry: Entry<sluice::controller::TypeConfig> = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i as u64 + 1),
            payload: EntryPayload::Normal(cmd),
        };
        let body = serde_json::to_vec(&entry).expect("json");
        let mut one = vec![0u8];
        one.extend_from_slice(&body);
        write(&dir, &format!("entry-{i}"), &one);
        let mut f = BytesMut::new();
        f.put_u32(body.len() as u32);
        f.put_u32(crc32c::crc32c(&body));
        f.put_slice(&body);
        file.extend_from_slice(&f);
    }
    write(&dir, "log-file", &file);

    // log_recovery: flag + .log SLCE .index SLCE .timeindex SLCE epochs SLCE recovery point.
    let dir = root.join("log_recovery");
    for codec in [0i16, 1, 4] {
        let mut log = Vec::new();
        let mut idx = OffsetIndex::new(0, 4096);
        let mut tidx = TimeIndex::new(0, 4096);
        let mut next = 0i64;
        for i in 0..6 {
            let pos = log.len() as u32;
            if i > 0 {
                idx.append(next, pos);
            }
            let b = batch(next, 2 + i, codec, None, true);
            tidx.maybe_append(1_700_000_000_000 + 10 * i as i64, next, true);
            next += 2 + i as i64;
            log.extend(b);
        }
        let mut epochs = LeaderEpochCache::new();
        epochs.assign(0, 0);
        let mut full = vec![0u8];
        full.extend_from_slice(&log);
        for part in [
            idx.encode(),
            tidx.encode(),
            epochs.encode(),
            sluice::storage::checkpoint::encode_offset(0),
        ] {
            full.extend_from_slice(b"SLCE");
            full.extend_from_slice(&part);
        }
        write(&dir, &format!("codec{codec}-full"), &full);
        let mut torn = vec![0u8];
        torn.extend_from_slice(&log[..log.len() - 7]);
        write(&dir, &format!("codec{codec}-torn-tail"), &torn);
    }
    OUT.with(|o| std::mem::take(&mut *o.borrow_mut()))
}

fn run_seed(target: &str, bytes: &[u8]) {
    match target {
        "request" => sluice::fuzzing::request(bytes),
        "record_batch" => sluice::fuzzing::record_batches(bytes),
        "offset_index" => sluice::fuzzing::offset_index(bytes),
        "time_index" => sluice::fuzzing::time_index(bytes),
        "leader_epoch_checkpoint" => sluice::fuzzing::leader_epoch_checkpoint(bytes),
        "checkpoint_files" => sluice::fuzzing::checkpoint_files(bytes),
        "offsets_record" => sluice::fuzzing::offsets_record(bytes),
        "controller_log" => sluice::fuzzing::controller_log(bytes),
        "log_recovery" => {
            let dir = tempfile::tempdir().expect("tempdir");
            let scratch = dir.path().join("p-0");
            sluice::io::runtime::block_on(sluice::fuzzing::log_recovery(&scratch, bytes));
        }
        other => panic!("seed for unknown target {other}"),
    }
}

#[test]
fn seeds_run_through_every_fuzz_entry_point() {
    let seeds = make_seeds();
    let mut per_target = std::collections::BTreeMap::new();
    for (target, _, bytes) in &seeds {
        run_seed(target, bytes);
        *per_target.entry(target.clone()).or_insert(0) += 1;
    }
    for t in [
        "request",
        "record_batch",
        "log_recovery",
        "offset_index",
        "time_index",
        "leader_epoch_checkpoint",
        "checkpoint_files",
        "offsets_record",
        "controller_log",
    ] {
        assert!(
            per_target.get(t).copied().unwrap_or(0) > 0,
            "no seeds for {t}"
        );
    }
    // The seeds are well formed: they decode, so the fuzzer starts past the first checks.
    let cfg = sluice::storage::LogConfig::default();
    for (target, name, bytes) in &seeds {
        if target == "record_batch" && bytes[0] == 0 {
            assert!(
                sluice::storage::validate::validate_leader(&bytes[1..], &cfg).is_ok(),
                "seed {name} does not validate"
            );
        }
    }
}

/// Rewrites `fuzz/corpus/<target>/` with the generated seeds (run by hand, then commit).
#[test]
#[ignore = "rewrites fuzz/corpus; run by hand"]
fn write_fuzz_seed_corpora() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (target, name, bytes) in make_seeds() {
        let dir = root.join(&target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(name), bytes).expect("write seed");
    }
}
