//! The broker over the Kafka protocol: ApiVersions, Metadata, Produce/Fetch, ListOffsets,
//! long polling, acks=0, pipelining and the admin APIs, against the real `sluice` binary.

#[path = "broker_support.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};
use support::*;
use uuid::Uuid;

fn tn(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn metadata(c: &mut Client, version: i16, topics: &[&str], auto: bool) -> MetadataResponse {
    let req = MetadataRequest::default()
        .with_topics(Some(
            topics
                .iter()
                .map(|t| metadata_request::MetadataRequestTopic::default().with_name(Some(tn(t))))
                .collect(),
        ))
        .with_allow_auto_topic_creation(auto);
    c.request(version, &req)
}

fn produce(
    c: &mut Client,
    version: i16,
    acks: i16,
    topic: &str,
    partition: i32,
    records: Bytes,
) -> Option<ProduceResponse> {
    let req = produce_request(topic, partition, acks, records);
    if acks == 0 {
        c.send(version, &req);
        None
    } else {
        Some(c.request(version, &req))
    }
}

fn fetch_req(
    topic: &str,
    id: Uuid,
    partition: i32,
    offset: i64,
    max_wait: i32,
    min_bytes: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait)
        .with_min_bytes(min_bytes)
        .with_max_bytes(50 * 1024 * 1024)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(tn(topic))
            .with_topic_id(id)
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1024 * 1024)])])
}

fn list_offset(c: &mut Client, topic: &str, partition: i32, ts: i64) -> (i16, i64, i64) {
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
            .with_name(tn(topic))
            .with_partitions(vec![
                list_offsets_request::ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_timestamp(ts),
            ])]);
    let resp: ListOffsetsResponse = c.request(7, &req);
    let p = &resp.topics[0].partitions[0];
    (p.error_code, p.offset, p.timestamp)
}

#[test]
fn api_versions_and_unknown_version_fallback() {
    let broker = Broker::start(&[]);
    let mut c = broker.client();
    for version in [0i16, 3] {
        let resp: ApiVersionsResponse = c.request(
            version,
            &ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("test"))
                .with_client_software_version(StrBytes::from_static_str("1")),
        );
        assert_eq!(resp.error_code, 0);
        let keys: Vec<i16> = resp.api_keys.iter().map(|k| k.api_key).collect();
        for k in [
            ApiKey::Produce,
            ApiKey::Fetch,
            ApiKey::Metadata,
            ApiKey::ListOffsets,
            ApiKey::CreateTopics,
        ] {
            assert!(keys.contains(&(k as i16)), "{k:?} missing");
        }
        assert!(
            keys.contains(&(ApiKey::JoinGroup as i16)),
            "group APIs are advertised"
        );
        assert!(resp.supported_features.is_empty());
    }
    // A version from the future: v0-format answer with UNSUPPORTED_VERSION and the list.
    let mut frame = BytesMut::new();
    let body = [
        &18i16.to_be_bytes()[..],
        &99i16.to_be_bytes(),
        &42i32.to_be_bytes(),
        &[0xff, 0xff],
        &[0, 0, 0],
    ]
    .concat();
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    std::io::Write::write_all(&mut c.stream, &frame).unwrap();
    let mut resp = c.read_frame().unwrap();
    let header = ResponseHeader::decode(&mut resp, 0).unwrap();
    assert_eq!(header.correlation_id, 42);
    let v0 = ApiVersionsResponse::decode(&mut resp, 0).unwrap();
    assert_eq!(v0.error_code, 35);
    assert!(v0
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::Fetch as i16));
}

#[test]
fn round_trip_zero_copy_fetch() {
    round_trip(true);
}

#[test]
fn round_trip_copy_fetch() {
    round_trip(false);
}

/// Metadata auto-creation, produce to every partition, fetch back byte for byte.
fn round_trip(zero_copy: bool) {
    let mode = format!("fetch.zero.copy={zero_copy}");
    let broker = Broker::start(&["--num-partitions", "3", "--set", &mode]);
    let mut c = broker.client();
    let md = metadata(&mut c, 12, &["orders"], true);
    let t = &md.topics[0];
    assert_eq!(t.error_code, 0);
    assert_eq!(t.partitions.len(), 3);
    assert!(!t.topic_id.is_nil());
    assert_eq!(md.brokers[0].port as u16, broker.addr.port());
    let id = t.topic_id;
    // allow_auto_topic_creation=false leaves unknown topics unknown.
    let md = metadata(&mut c, 12, &["nope"], false);
    assert_eq!(md.topics[0].error_code, 3);

    for p in 0..3 {
        let first = batch(&format!("p{p}-a"), 5, 1_000);
        let resp = produce(&mut c, 9, 1, "orders", p, first.clone()).unwrap();
        let pr = &resp.responses[0].partition_responses[0];
        assert_eq!((pr.error_code, pr.base_offset), (0, 0));
        let second = batch(&format!("p{p}-b"), 3, 2_000);
        let resp = produce(&mut c, 3, -1, "orders", p, second.clone()).unwrap();
        assert_eq!(resp.responses[0].partition_responses[0].base_offset, 5);

        // Old (by name) and new (by topic id, flexible) fetch versions see the same bytes.
        for version in [4i16, 11, 12, 13, 16] {
            let resp: FetchResponse = c.request(version, &fetch_req("orders", id, p, 0, 100, 1));
            let part = &resp.responses[0].partitions[0];
            assert_eq!(part.error_code, 0, "v{version}");
            assert_eq!(part.high_watermark, 8);
            let records = part.records.clone().unwrap();
            // The first batch is stored byte for byte (its base offset was already 0).
            assert_eq!(&records[..first.len()], &first[..], "v{version}");
            assert_eq!(records.len(), first.len() + second.len(), "v{version} p{p}");
            assert_eq!(offsets(&records), (0..8).collect::<Vec<i64>>());
            let v = values(&records);
            assert_eq!(v[0], format!("p{p}-a-0"));
            assert_eq!(v[7], format!("p{p}-b-2"));
        }
        let resp: FetchResponse = c.request(12, &fetch_req("orders", id, p, 5, 0, 1));
        assert_eq!(
            offsets(resp.responses[0].partitions[0].records.as_ref().unwrap())[0],
            5
        );
        let resp: FetchResponse = c.request(12, &fetch_req("orders", id, p, 6, 0, 1));
        assert_eq!(
            offsets(resp.responses[0].partitions[0].records.as_ref().unwrap())[0],
            5,
            "whole batch containing 6"
        );
        let resp: FetchResponse = c.request(12, &fetch_req("orders", id, p, 99, 0, 1));
        assert_eq!(
            resp.responses[0].partitions[0].error_code, 1,
            "OFFSET_OUT_OF_RANGE"
        );
    }
    let resp: FetchResponse = c.request(12, &fetch_req("missing", Uuid::nil(), 0, 0, 0, 1));
    assert_eq!(resp.responses[0].partitions[0].error_code, 3);
    // Produce of a corrupt batch is refused and does not advance the log.
    let mut bad = BytesMut::from(&batch("x", 2, 0)[..]);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let resp = produce(&mut c, 9, 1, "orders", 0, bad.freeze()).unwrap();
    assert_ne!(resp.responses[0].partition_responses[0].error_code, 0);
    assert_eq!(list_offset(&mut c, "orders", 0, -1).1, 8);
}

#[test]
fn long_poll_waits_for_data_or_timeout() {
    let broker = Broker::start(&[]);
    let mut c = broker.client();
    let id = metadata(&mut c, 12, &["lp"], true).topics[0].topic_id;
    // Nothing to read: the fetch waits max_wait_ms, then answers empty.
    let start = Instant::now();
    let resp: FetchResponse = c.request(12, &fetch_req("lp", id, 0, 0, 600, 1));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "returned after {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "returned after {waited:?}");
    assert_eq!(
        resp.responses[0].partitions[0]
            .records
            .as_ref()
            .map(|r| r.len()),
        Some(0)
    );

    // A produce from another connection wakes the waiting fetch well before max_wait_ms.
    let addr = broker.addr;
    let producer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut p = Client::connect(addr);
        produce(&mut p, 9, 1, "lp", 0, batch("late", 2, 5)).unwrap()
    });
    let start = Instant::now();
    let resp: FetchResponse = c.request(12, &fetch_req("lp", id, 0, 0, 10_000, 1));
    let waited = start.elapsed();
    producer.join().unwrap();
    assert!(
        waited < Duration::from_secs(5),
        "not woken by the append: {waited:?}"
    );
    assert_eq!(
        values(resp.responses[0].partitions[0].records.as_ref().unwrap()),
        vec!["late-0", "late-1"]
    );
}

#[test]
fn acks_zero_sends_no_response_and_pipelined_responses_keep_order() {
    let broker = Broker::start(&[]);
    let mut c = broker.client();
    metadata(&mut c, 12, &["quiet"], true);
    for i in 0..10 {
        produce(&mut c, 9, 0, "quiet", 0, batch(&format!("q{i}"), 1, 0));
    }
    // The next response on the connection is the ListOffsets one: acks=0 produced none.
    assert_eq!(list_offset(&mut c, "quiet", 0, -1), (0, 10, -1));
    // A failed acks=0 produce has no response to report it: the broker closes the connection.
    let mut doomed = broker.client();
    produce(&mut doomed, 9, 0, "no-such-topic", 0, batch("x", 1, 0));
    let err = doomed
        .read_frame()
        .expect_err("connection should be closed");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "expected a close, got {err:?}"
    );

    // 40 pipelined requests of mixed kinds, written before any response is read.
    let mut expected = Vec::new();
    for i in 0..40 {
        if i % 2 == 0 {
            let req = MetadataRequest::default().with_topics(Some(vec![]));
            expected.push((0, c.send(12, &req)));
        } else {
            let req = fetch_req("quiet", Uuid::nil(), 0, 0, 0, 1);
            expected.push((1, c.send(12, &req)));
        }
    }
    for (kind, cid) in expected {
        if kind == 0 {
            c.recv::<MetadataRequest>(12, cid);
        } else {
            let r = c.recv::<FetchRequest>(12, cid);
            assert_eq!(
                offsets(r.responses[0].partitions[0].records.as_ref().unwrap()).len(),
                10
            );
        }
    }
}

#[test]
fn list_offsets_earliest_latest_and_by_timestamp() {
    let broker = Broker::start(&[]);
    let mut c = broker.client();
    metadata(&mut c, 12, &["times"], true);
    produce(&mut c, 9, 1, "times", 0, batch("a", 3, 1_000)); // ts 1000..1002, offsets 0..2
    produce(&mut c, 9, 1, "times", 0, batch("b", 3, 5_000)); // ts 5000..5002, offsets 3..5
    assert_eq!(list_offset(&mut c, "times", 0, -2), (0, 0, -1));
    assert_eq!(list_offset(&mut c, "times", 0, -1), (0, 6, -1));
    let base = batch_base_ms();
    let (err, off, ts) = list_offset(&mut c, "times", 0, base + 3_000);
    assert_eq!((err, off), (0, 3));
    assert!(ts >= base + 3_000);
    assert_eq!(list_offset(&mut c, "times", 0, now_ms()).1, -1);
    assert_eq!(list_offset(&mut c, "nosuch", 0, -1).0, 3);
}

#[test]
fn admin_apis() {
    let broker = Broker::start(&[]);
    let mut c = broker.client();
    type TopicSpec<'a> = (&'a str, i32, Vec<(&'a str, &'a str)>);
    let create = |topics: Vec<TopicSpec>, validate_only: bool| {
        CreateTopicsRequest::default()
            .with_timeout_ms(5000)
            .with_validate_only(validate_only)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(n, p, cfg)| {
                        create_topics_request::CreatableTopic::default()
                            .with_name(tn(n))
                            .with_num_partitions(p)
                            .with_replication_factor(-1)
                            .with_configs(
                                cfg.into_iter()
                                    .map(|(k, v)| {
                                        create_topics_request::CreatableTopicConfig::default()
                                            .with_name(StrBytes::from_string(k.into()))
                                            .with_value(Some(StrBytes::from_string(v.into())))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            )
    };
    let r: CreateTopicsResponse = c.request(7, &create(vec![("dry", 2, vec![])], true));
    assert_eq!(r.topics[0].error_code, 0);
    assert!(
        metadata(&mut c, 12, &["dry"], false).topics[0].error_code == 3,
        "validate_only must not create"
    );

    let r: CreateTopicsResponse = c.request(
        7,
        &create(
            vec![
                ("a1", 2, vec![("retention.ms", "60000")]),
                ("a2", -1, vec![]),
                ("bad/name", 1, vec![]),
                ("a3", 1, vec![("retention.ms", "soon")]),
            ],
            false,
        ),
    );
    let codes: Vec<i16> = r.topics.iter().map(|t| t.error_code).collect();
    assert_eq!(codes, vec![0, 0, 17, 40]);
    assert_eq!(r.topics[1].num_partitions, 1, "-1 means num.partitions");
    let r: CreateTopicsResponse = c.request(7, &create(vec![("a1", 1, vec![])], false));
    assert_eq!(r.topics[0].error_code, 36, "TOPIC_ALREADY_EXISTS");

    let r: CreatePartitionsResponse = c.request(
        3,
        &CreatePartitionsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![
                create_partitions_request::CreatePartitionsTopic::default()
                    .with_name(tn("a1"))
                    .with_count(4),
                create_partitions_request::CreatePartitionsTopic::default()
                    .with_name(tn("a2"))
                    .with_count(1),
            ]),
    );
    assert_eq!(
        r.results.iter().map(|x| x.error_code).collect::<Vec<_>>(),
        vec![0, 37]
    );
    assert_eq!(
        metadata(&mut c, 12, &["a1"], false).topics[0]
            .partitions
            .len(),
        4
    );
    assert_eq!(
        produce(&mut c, 9, 1, "a1", 3, batch("new", 1, 0))
            .unwrap()
            .responses[0]
            .partition_responses[0]
            .error_code,
        0
    );

    let describe = |c: &mut Client, topic: &str| -> Vec<(String, String, i8)> {
        let r: DescribeConfigsResponse = c.request(
            4,
            &DescribeConfigsRequest::default().with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_string(topic.into())),
            ]),
        );
        assert_eq!(r.results[0].error_code, 0);
        r.results[0]
            .configs
            .iter()
            .map(|e| {
                (
                    e.name.to_string(),
                    e.value.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                    e.config_source,
                )
            })
            .collect()
    };
    let cfg = describe(&mut c, "a1");
    assert!(
        cfg.contains(&("retention.ms".into(), "60000".into(), 1)),
        "{cfg:?}"
    );
    assert!(cfg
        .iter()
        .any(|(k, v, _)| k == "segment.bytes" && v == "1073741824"));

    let alter = |c: &mut Client, topic: &str, key: &str, op: i8, value: Option<&str>| -> i16 {
        let r: IncrementalAlterConfigsResponse = c.request(
            1,
            &IncrementalAlterConfigsRequest::default().with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_string(topic.into()))
                    .with_configs(vec![
                        incremental_alter_configs_request::AlterableConfig::default()
                            .with_name(StrBytes::from_string(key.into()))
                            .with_config_operation(op)
                            .with_value(value.map(|v| StrBytes::from_string(v.into()))),
                    ]),
            ]),
        );
        r.responses[0].error_code
    };
    assert_eq!(alter(&mut c, "a1", "segment.bytes", 0, Some("1048576")), 0);
    assert_eq!(alter(&mut c, "a1", "retention.ms", 1, None), 0);
    assert_eq!(alter(&mut c, "a1", "retention.ms", 0, Some("-7")), 40);
    assert_eq!(alter(&mut c, "nosuch", "retention.ms", 0, Some("1")), 3);
    // APPEND (2) and SUBTRACT (3) on the list-valued cleanup.policy, from its effective value.
    assert_eq!(alter(&mut c, "a2", "cleanup.policy", 2, Some("compact")), 0);
    assert!(describe(&mut c, "a2").contains(&(
        "cleanup.policy".into(),
        "delete,compact".into(),
        1
    )));
    assert_eq!(alter(&mut c, "a2", "cleanup.policy", 3, Some("delete")), 0);
    assert!(describe(&mut c, "a2").contains(&("cleanup.policy".into(), "compact".into(), 1)));
    assert_eq!(
        alter(&mut c, "a2", "retention.ms", 2, Some("1")),
        40,
        "APPEND on a scalar"
    );
    let cfg = describe(&mut c, "a1");
    assert!(
        cfg.contains(&("segment.bytes".into(), "1048576".into(), 1)),
        "{cfg:?}"
    );
    assert!(
        cfg.iter()
            .any(|(k, _, src)| k == "retention.ms" && *src == 5),
        "{cfg:?}"
    );

    let r: DescribeClusterResponse = c.request(1, &DescribeClusterRequest::default());
    assert_eq!(r.brokers.len(), 1);
    assert_eq!(r.brokers[0].port as u16, broker.addr.port());
    assert!(!r.cluster_id.is_empty());

    // Delete by name (v4) and by id (v6).
    let a2_id = metadata(&mut c, 12, &["a2"], false).topics[0].topic_id;
    let r: DeleteTopicsResponse = c.request(
        4,
        &DeleteTopicsRequest::default()
            .with_topic_names(vec![tn("a1"), tn("ghost")])
            .with_timeout_ms(5000),
    );
    assert_eq!(
        r.responses.iter().map(|x| x.error_code).collect::<Vec<_>>(),
        vec![0, 3]
    );
    let r: DeleteTopicsResponse = c.request(
        6,
        &DeleteTopicsRequest::default()
            .with_topics(vec![
                delete_topics_request::DeleteTopicState::default().with_topic_id(a2_id)
            ])
            .with_timeout_ms(5000),
    );
    assert_eq!(r.responses[0].error_code, 0);
    assert_eq!(
        r.responses[0].name.as_ref().map(|n| n.to_string()),
        Some("a2".to_string())
    );
    let md = metadata(&mut c, 12, &["a1", "a2"], false);
    assert!(md.topics.iter().all(|t| t.error_code == 3));
    assert!(
        !broker.data_dir.join("a1-0").exists(),
        "partition directory removed"
    );
    assert!(
        !broker.data_dir.join("a2-0").exists(),
        "partition directory removed"
    );
    // Recreating the name starts an empty log with a new id.
    let r: CreateTopicsResponse = c.request(7, &create(vec![("a1", 1, vec![])], false));
    assert_eq!(r.topics[0].error_code, 0);
    assert_eq!(list_offset(&mut c, "a1", 0, -1), (0, 0, -1));
}

#[test]
fn fetch_max_bytes_limits_the_response_but_never_starves_the_first_partition() {
    let broker = Broker::start(&["--num-partitions", "2"]);
    let mut c = broker.client();
    metadata(&mut c, 12, &["mb"], true);
    let a = batch("a", 4, 0);
    let b = batch("b", 4, 0);
    produce(&mut c, 9, 1, "mb", 0, a.clone());
    produce(&mut c, 9, 1, "mb", 1, b.clone());
    let both = |max_bytes: i32| {
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(tn("mb"))
                .with_partitions(
                    (0..2)
                        .map(|p| {
                            fetch_request::FetchPartition::default()
                                .with_partition(p)
                                .with_fetch_offset(0)
                                .with_partition_max_bytes(1 << 20)
                        })
                        .collect(),
                )])
    };
    let sizes = |r: &FetchResponse| -> Vec<usize> {
        r.responses[0]
            .partitions
            .iter()
            .map(|p| p.records.as_ref().map_or(0, |x| x.len()))
            .collect()
    };
    let r: FetchResponse = c.request(11, &both(1 << 20));
    assert_eq!(sizes(&r), vec![a.len(), b.len()]);
    // A limit below one batch: the first partition still gets its whole batch, the second none.
    let r: FetchResponse = c.request(11, &both(1));
    assert_eq!(sizes(&r), vec![a.len(), 0]);
    assert!(r.responses[0]
        .partitions
        .iter()
        .all(|p| p.error_code == 0 && p.high_watermark == 4));
    // Per-partition limit below one batch: still one whole batch (Kafka's min-one-batch rule).
    let mut one = fetch_req("mb", Uuid::nil(), 1, 0, 0, 1);
    one.topics[0].partitions[0].partition_max_bytes = 1;
    let r: FetchResponse = c.request(11, &one);
    assert_eq!(sizes(&r), vec![b.len()]);
}

#[test]
fn pipelined_produces_are_appended_in_request_order() {
    let broker = Broker::start(&["--num-partitions", "2"]);
    let mut c = broker.client();
    metadata(&mut c, 12, &["order"], true);
    // 200 requests written before any response is read, alternating partitions (two shards
    // own them), 3 records each; every 50th request carries both partitions.
    let mut sent = Vec::new();
    for i in 0..200 {
        let parts: Vec<i32> = if i % 50 == 0 { vec![0, 1] } else { vec![i % 2] };
        let req = ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(tn("order"))
                .with_partition_data(
                    parts
                        .iter()
                        .map(|p| {
                            produce_request::PartitionProduceData::default()
                                .with_index(*p)
                                .with_records(Some(batch(&format!("m{i}"), 3, i64::from(i))))
                        })
                        .collect(),
                )]);
        sent.push((c.send(9, &req), parts));
    }
    let mut next = [0i64, 0];
    for (cid, parts) in sent {
        let r = c.recv::<ProduceRequest>(9, cid);
        for (p, pr) in parts.iter().zip(&r.responses[0].partition_responses) {
            assert_eq!(pr.error_code, 0);
            assert_eq!(
                pr.base_offset, next[*p as usize],
                "partition {p} appended out of order"
            );
            next[*p as usize] += 3;
        }
    }
    for p in 0..2 {
        let mut got = Vec::new();
        let mut offset = 0;
        while offset < next[p as usize] {
            let r: FetchResponse = c.request(12, &fetch_req("order", Uuid::nil(), p, offset, 0, 1));
            let records = r.responses[0].partitions[0].records.clone().unwrap();
            let v = values(&records);
            offset += v.len() as i64;
            got.extend(v);
        }
        let want: Vec<String> = (0..200)
            .filter(|i| i % 50 == 0 || i % 2 == p)
            .flat_map(|i| (0..3).map(move |j| format!("m{i}-{j}")))
            .collect();
        assert_eq!(got, want, "partition {p}");
    }
}

#[test]
fn find_coordinator_is_served_and_names_this_broker_for_groups() {
    // librdkafka turns LZ4 on only when ApiVersions lists FindCoordinator. Groups are
    // coordinated by this broker; transactions (key type 1) have no coordinator.
    let broker = Broker::start(&[]);
    let mut c = broker.client();
    let versions: ApiVersionsResponse = c.request(3, &ApiVersionsRequest::default());
    let fc = versions
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::FindCoordinator as i16)
        .expect("FindCoordinator advertised");
    assert_eq!((fc.min_version, fc.max_version), (0, 6));
    for version in [0i16, 1, 3] {
        let r: FindCoordinatorResponse = c.request(
            version,
            &FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g")),
        );
        assert_eq!(r.error_code, 0, "v{version}");
        assert_eq!(r.node_id.0, 1);
        assert_eq!(r.port, i32::from(broker.addr.port()));
    }
    let r: FindCoordinatorResponse = c.request(
        6,
        &FindCoordinatorRequest::default().with_coordinator_keys(vec![
            StrBytes::from_static_str("g1"),
            StrBytes::from_static_str("g2"),
        ]),
    );
    let got: Vec<(String, i16)> = r
        .coordinators
        .iter()
        .map(|x| (x.key.to_string(), x.error_code))
        .collect();
    assert_eq!(got, vec![("g1".into(), 0), ("g2".into(), 0)]);
    let r: FindCoordinatorResponse = c.request(
        6,
        &FindCoordinatorRequest::default()
            .with_key_type(1)
            .with_coordinator_keys(vec![StrBytes::from_static_str("t1")]),
    );
    assert_eq!(r.coordinators[0].error_code, 15);
}

fn acl_creation(
    resource_type: i8,
    name: &str,
    pattern_type: i8,
    principal: &str,
    operation: i8,
) -> create_acls_request::AclCreation {
    create_acls_request::AclCreation::default()
        .with_resource_type(resource_type)
        .with_resource_name(StrBytes::from_string(name.into()))
        .with_resource_pattern_type(pattern_type)
        .with_principal(StrBytes::from_string(principal.into()))
        .with_host(StrBytes::from_static_str("*"))
        .with_operation(operation)
        .with_permission_type(3) // ALLOW
}

fn describe_all_acls(c: &mut Client) -> DescribeAclsResponse {
    c.request(
        3,
        &DescribeAclsRequest::default()
            .with_resource_type_filter(1) // ANY
            .with_resource_name_filter(None)
            .with_pattern_type_filter(1) // ANY
            .with_principal_filter(None)
            .with_host_filter(None)
            .with_operation(1)
            .with_permission_type(1),
    )
}

/// ACLs over the protocol on one broker with an authorizer: CreateAcls (one invalid
/// creation refused alone), DescribeAcls grouped by resource, enforcement on Produce and
/// Metadata, DeleteAcls, and the bindings surviving a restart (they are in the metadata log).
#[test]
fn acls_are_created_enforced_deleted_and_survive_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    // Without a super user, `allow.everyone.if.no.acl.found` lets User:ANONYMOUS (this
    // PLAINTEXT client) create the first ACLs.
    let flags = [
        "--set",
        "authorizer.class.name=kafka.security.authorizer.AclAuthorizer",
        "--set",
        "allow.everyone.if.no.acl.found=true",
    ];
    let mut broker = Broker::start_in(&dir, &flags, &[]);
    let mut c = broker.client();
    for t in ["guarded", "open"] {
        assert_eq!(metadata(&mut c, 12, &[t], true).topics[0].error_code, 0);
    }
    let (topic, prefixed, literal, cluster) = (2, 4, 3, 4);
    let r: CreateAclsResponse = c.request(
        3,
        &CreateAclsRequest::default().with_creations(vec![
            acl_creation(cluster, "kafka-cluster", literal, "User:ANONYMOUS", 7), // ALTER
            acl_creation(cluster, "kafka-cluster", literal, "User:ANONYMOUS", 8), // DESCRIBE
            acl_creation(cluster, "not-the-cluster", literal, "User:ANONYMOUS", 8),
            acl_creation(topic, "guar", prefixed, "User:alice", 3), // READ
        ]),
    );
    let codes: Vec<i16> = r.results.iter().map(|r| r.error_code).collect();
    assert_eq!(codes, vec![0, 0, 42, 0]);
    let d = describe_all_acls(&mut c);
    assert_eq!(d.error_code, 0);
    let shape: Vec<(i8, String, usize)> = d
        .resources
        .iter()
        .map(|r| (r.resource_type, r.resource_name.to_string(), r.acls.len()))
        .collect();
    assert_eq!(
        shape,
        vec![
            (topic, "guar".to_string(), 1),
            (cluster, "kafka-cluster".to_string(), 2)
        ]
    );
    // "guarded" now has an ACL that is not ANONYMOUS': produce and describe are refused;
    // "open" has none, and allow.everyone.if.no.acl.found lets it through.
    let p = produce(&mut c, 9, -1, "guarded", 0, batch("x", 1, 0)).expect("response");
    assert_eq!(p.responses[0].partition_responses[0].error_code, 29);
    let p = produce(&mut c, 9, -1, "open", 0, batch("x", 1, 0)).expect("response");
    assert_eq!(p.responses[0].partition_responses[0].error_code, 0);
    assert_eq!(
        metadata(&mut c, 12, &["guarded"], false).topics[0].error_code,
        29
    );
    let all: MetadataResponse = c.request(12, &MetadataRequest::default().with_topics(None));
    let names: Vec<String> = all
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.to_string()))
        .collect();
    assert!(names.contains(&"open".to_string()), "{names:?}");
    assert!(!names.contains(&"guarded".to_string()), "{names:?}");
    // Fetch asks for READ before it looks the topic up: a topic the principal may not read
    // answers TOPIC_AUTHORIZATION_FAILED whether it exists or not, so names cannot be probed;
    // an unknown topic it could read is UNKNOWN_TOPIC_OR_PARTITION.
    let fetch_error = |c: &mut Client, topic: &str| {
        let r: FetchResponse = c.request(12, &fetch_req(topic, Uuid::nil(), 0, 0, 0, 1));
        r.responses[0].partitions[0].error_code
    };
    assert_eq!(fetch_error(&mut c, "guarded"), 29);
    assert_eq!(fetch_error(&mut c, "guarded-but-missing"), 29);
    assert_eq!(fetch_error(&mut c, "missing"), 3);
    assert_eq!(fetch_error(&mut c, "open"), 0);
    // The bindings are in the metadata log: a restart keeps them.
    broker.stop_with(nix::sys::signal::Signal::SIGTERM);
    drop(c);
    let broker = Broker::start_in(&dir, &flags, &[]);
    let mut c = broker.client();
    assert_eq!(describe_all_acls(&mut c).resources.len(), 2);
    assert_eq!(
        metadata(&mut c, 12, &["guarded"], false).topics[0].error_code,
        29
    );
    // DeleteAcls by filter: the topic ACL goes, and "guarded" is open again.
    let r: DeleteAclsResponse = c.request(
        3,
        &DeleteAclsRequest::default().with_filters(vec![
            delete_acls_request::DeleteAclsFilter::default()
                .with_resource_type_filter(topic)
                .with_resource_name_filter(None)
                .with_principal_filter(None)
                .with_host_filter(None)
                .with_pattern_type_filter(1) // ANY
                .with_operation(1)
                .with_permission_type(1),
        ]),
    );
    assert_eq!(r.filter_results[0].error_code, 0);
    assert_eq!(r.filter_results[0].matching_acls.len(), 1);
    assert_eq!(
        r.filter_results[0].matching_acls[0].principal.to_string(),
        "User:alice"
    );
    assert_eq!(
        metadata(&mut c, 12, &["guarded"], false).topics[0].error_code,
        0
    );
    let p = produce(&mut c, 9, -1, "guarded", 0, batch("y", 1, 0)).expect("response");
    assert_eq!(p.responses[0].partition_responses[0].error_code, 0);
}

/// An unknown `authorizer.class.name` stops the broker at start-up with the key named.
#[test]
fn unknown_authorizer_class_is_a_start_up_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(["--set", "authorizer.class.name=com.example.MyAuthorizer"])
        .output()
        .expect("run sluice");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authorizer.class.name"), "{err}");
}

/// Without `authorizer.class.name` the ACL APIs answer SECURITY_DISABLED (54), as Kafka's
/// do, and store nothing.
#[test]
fn acl_apis_without_an_authorizer_answer_security_disabled() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start_in(&tmp.path().join("data"), &[], &[]);
    let mut c = broker.client();
    let (topic, literal) = (2, 3);
    let r: CreateAclsResponse = c.request(
        3,
        &CreateAclsRequest::default().with_creations(vec![acl_creation(
            topic,
            "t",
            literal,
            "User:alice",
            3,
        )]),
    );
    let codes: Vec<i16> = r.results.iter().map(|r| r.error_code).collect();
    assert_eq!(codes, vec![54]);
    let d = describe_all_acls(&mut c);
    assert_eq!(d.error_code, 54);
    assert!(d.resources.is_empty());
}

/// Kafka's value of an authorized-operations field that was not asked for.
const OPS_OMITTED: i32 = i32::MIN;
/// Bit sets of operation codes (KIP-430): READ 3, ALTER 7, DESCRIBE 8.
const fn ops(codes: &[i8]) -> i32 {
    let mut bits = 0;
    let mut i = 0;
    while i < codes.len() {
        bits |= 1 << codes[i];
        i += 1;
    }
    bits
}
/// Every operation that applies to a topic, a group, the cluster (Kafka's values).
const TOPIC_OPS: i32 = ops(&[3, 4, 5, 6, 7, 8, 10, 11]);
const GROUP_OPS: i32 = ops(&[3, 6, 8]);
const CLUSTER_OPS: i32 = ops(&[5, 7, 8, 9, 10, 11, 12]);

/// The KIP-430 fields one client sees.
struct AuthorizedOps {
    /// Metadata: (topic, error code, operations) per topic.
    topics: Vec<(String, i16, i32)>,
    /// Metadata: the cluster's operations.
    metadata_cluster: i32,
    /// DescribeGroups: (error code, operations) of the group.
    group: (i16, i32),
    /// DescribeCluster: the cluster's operations.
    cluster: i32,
}

/// The KIP-430 fields of Metadata (topics; the cluster in v8-10), DescribeGroups and
/// DescribeCluster, each asked for with `include`.
fn authorized_operations(
    c: &mut Client,
    metadata_version: i16,
    topics: &[&str],
    group: &str,
    include: bool,
) -> AuthorizedOps {
    let md: MetadataResponse = c.request(
        metadata_version,
        &MetadataRequest::default()
            .with_topics(Some(
                topics
                    .iter()
                    .map(|t| {
                        metadata_request::MetadataRequestTopic::default().with_name(Some(tn(t)))
                    })
                    .collect(),
            ))
            .with_include_topic_authorized_operations(include)
            // The cluster's field exists in v8-10 only (encoding it in v11+ is refused).
            .with_include_cluster_authorized_operations(include && metadata_version <= 10),
    );
    let topic_ops = md
        .topics
        .iter()
        .map(|t| {
            let name = t.name.as_ref().map(|n| n.to_string()).unwrap_or_default();
            (name, t.error_code, t.topic_authorized_operations)
        })
        .collect();
    // The group coordinator may still be coming up (the offsets topic is created on the first
    // FindCoordinator): retry its retriable errors, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let dg = loop {
        let _: FindCoordinatorResponse = c.request(
            3,
            &FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.into())),
        );
        let dg: DescribeGroupsResponse = c.request(
            5,
            &DescribeGroupsRequest::default()
                .with_groups(vec![GroupId(StrBytes::from_string(group.into()))])
                .with_include_authorized_operations(include),
        );
        if ![14, 15, 16].contains(&dg.groups[0].error_code) || Instant::now() > deadline {
            break dg;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let dc: DescribeClusterResponse = c.request(
        1,
        &DescribeClusterRequest::default().with_include_cluster_authorized_operations(include),
    );
    assert_eq!(dc.error_code, 0);
    AuthorizedOps {
        topics: topic_ops,
        metadata_cluster: md.cluster_authorized_operations,
        group: (dg.groups[0].error_code, dg.groups[0].authorized_operations),
        cluster: dc.cluster_authorized_operations,
    }
}

/// KIP-430 with an authorizer: the bit sets carry exactly the operations the principal's
/// ACLs allow, implied ones included (DESCRIBE from READ or ALTER); a resource with no ACL
/// falls to `allow.everyone.if.no.acl.found` (every operation); a topic the principal may not
/// describe keeps the sentinel with its error; without the flag every field is the sentinel;
/// Metadata carries the cluster's set only in v8-10.
#[test]
fn authorized_operations_follow_the_acls() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let flags = [
        "--set",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "--set",
        "allow.everyone.if.no.acl.found=true",
    ];
    let broker = Broker::start_in(&tmp.path().join("data"), &flags, &[]);
    let mut c = broker.client();
    for t in ["read-only", "open", "hidden"] {
        assert_eq!(metadata(&mut c, 12, &[t], true).topics[0].error_code, 0);
    }
    let (topic, group, cluster, literal) = (2, 3, 4, 3);
    let r: CreateAclsResponse = c.request(
        3,
        &CreateAclsRequest::default().with_creations(vec![
            acl_creation(cluster, "kafka-cluster", literal, "User:ANONYMOUS", 7), // ALTER
            acl_creation(topic, "read-only", literal, "User:ANONYMOUS", 3),       // READ
            acl_creation(topic, "hidden", literal, "User:someone-else", 3),
            acl_creation(group, "g", literal, "User:ANONYMOUS", 3), // READ
        ]),
    );
    assert!(r.results.iter().all(|r| r.error_code == 0), "{r:?}");

    let AuthorizedOps {
        topics,
        metadata_cluster: md_cluster,
        group: dg,
        cluster: dc,
    } = authorized_operations(&mut c, 10, &["read-only", "open", "hidden"], "g", true);
    assert_eq!(
        topics,
        vec![
            ("read-only".to_string(), 0, ops(&[3, 8])),
            ("open".to_string(), 0, TOPIC_OPS),
            ("hidden".to_string(), 29, OPS_OMITTED),
        ]
    );
    // ALTER on the cluster implies DESCRIBE, nothing else.
    assert_eq!(md_cluster, ops(&[7, 8]));
    assert_eq!(dc, ops(&[7, 8]));
    // A group never joined is described as Dead (v5) with the principal's operations.
    assert_eq!(dg, (0, ops(&[3, 8])));

    // Not asked: the sentinel everywhere.
    let AuthorizedOps {
        topics,
        metadata_cluster: md_cluster,
        group: dg,
        cluster: dc,
    } = authorized_operations(&mut c, 10, &["read-only", "open"], "g", false);
    assert!(topics.iter().all(|t| t.2 == OPS_OMITTED), "{topics:?}");
    assert_eq!(
        (md_cluster, dg.1, dc),
        (OPS_OMITTED, OPS_OMITTED, OPS_OMITTED)
    );

    // Metadata v11+ has no cluster field (it decodes as the sentinel); the topics still carry
    // theirs.
    let AuthorizedOps {
        topics,
        metadata_cluster: md_cluster,
        ..
    } = authorized_operations(&mut c, 12, &["read-only"], "g", true);
    assert_eq!(topics[0].2, ops(&[3, 8]));
    assert_eq!(md_cluster, OPS_OMITTED);
}

/// KIP-430 without an authorizer: every operation that applies to the resource type.
#[test]
fn authorized_operations_without_an_authorizer_are_every_operation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start_in(&tmp.path().join("data"), &[], &[]);
    let mut c = broker.client();
    assert_eq!(metadata(&mut c, 12, &["t"], true).topics[0].error_code, 0);
    let AuthorizedOps {
        topics,
        metadata_cluster: md_cluster,
        group: dg,
        cluster: dc,
    } = authorized_operations(&mut c, 9, &["t"], "g", true);
    assert_eq!(topics, vec![("t".to_string(), 0, TOPIC_OPS)]);
    assert_eq!(
        (md_cluster, dg, dc),
        (CLUSTER_OPS, (0, GROUP_OPS), CLUSTER_OPS)
    );
}
