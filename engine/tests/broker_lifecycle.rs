//! Start-up configuration, clean shutdown, crash and restart of the real `sluice` binary.

#[path = "broker_support.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use nix::sys::signal::Signal;
use support::*;

fn tn(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn partitions_of(c: &mut Client, topic: &str) -> (i16, usize, uuid::Uuid) {
    let req = MetadataRequest::default()
        .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
        )
        .with_name(Some(tn(topic)))]))
        .with_allow_auto_topic_creation(true);
    let r: MetadataResponse = c.request(12, &req);
    (
        r.topics[0].error_code,
        r.topics[0].partitions.len(),
        r.topics[0].topic_id,
    )
}

fn produce_ok(c: &mut Client, topic: &str, p: i32, prefix: &str, n: usize) -> i64 {
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(tn(topic))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(p)
                    .with_records(Some(batch(prefix, n, 1))),
            ])]);
    let r: ProduceResponse = c.request(9, &req);
    let pr = &r.responses[0].partition_responses[0];
    assert_eq!(pr.error_code, 0);
    pr.base_offset
}

fn fetch_all(c: &mut Client, topic: &str, p: i32) -> Vec<String> {
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(64 << 20)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(tn(topic))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(p)
                .with_fetch_offset(0)
                .with_partition_max_bytes(64 << 20)])]);
    let r: FetchResponse = c.request(11, &req);
    let part = &r.responses[0].partitions[0];
    assert_eq!(part.error_code, 0);
    values(part.records.as_ref().unwrap())
}

fn expected(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[test]
fn sigterm_shuts_down_cleanly_and_restart_keeps_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut b = Broker::start_in(&dir, &["--num-partitions", "4"], &[]);
    let mut c = b.client();
    let (_, n, id) = partitions_of(&mut c, "durable");
    assert_eq!(n, 4);
    for p in 0..4 {
        produce_ok(&mut c, "durable", p, &format!("p{p}"), 50);
    }
    drop(c);
    let status = b.stop_with(Signal::SIGTERM);
    assert!(status.success(), "exit status {status}: {}", b.log());
    assert!(b.log().contains("stopped"), "{}", b.log());

    let b = Broker::start_in(&dir, &[], &[]);
    let mut c = b.client();
    let (err, n, id2) = partitions_of(&mut c, "durable");
    assert_eq!((err, n, id2), (0, 4, id), "topic metadata survives restart");
    for p in 0..4 {
        assert_eq!(
            fetch_all(&mut c, "durable", p),
            expected(&format!("p{p}"), 50)
        );
    }
    // Appends continue after the recovered end.
    assert_eq!(produce_ok(&mut c, "durable", 0, "more", 1), 50);
}

#[test]
fn sigint_with_open_idle_connection_exits_zero() {
    let mut b = Broker::start(&[]);
    let _idle = b.client();
    let start = Instant::now();
    let status = b.stop_with(Signal::SIGINT);
    assert!(status.success(), "{status}: {}", b.log());
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn kill_9_then_restart_keeps_acknowledged_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut b = Broker::start_in(&dir, &["--set", "log.flush.interval.messages=1"], &[]);
    let mut c = b.client();
    partitions_of(&mut c, "crash");
    for i in 0..20 {
        produce_ok(&mut c, "crash", 0, &format!("b{i}"), 10);
    }
    let status = b.stop_with(Signal::SIGKILL);
    assert!(!status.success());
    let b = Broker::start_in(&dir, &["--set", "log.flush.interval.messages=1"], &[]);
    let mut c = b.client();
    let got = fetch_all(&mut c, "crash", 0);
    let want: Vec<String> = (0..20)
        .flat_map(|i| expected(&format!("b{i}"), 10))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn config_precedence_flags_over_env_over_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("sluice.toml");
    std::fs::write(
        &cfg,
        "num.partitions = 2\nauto.create.topics.enable = true\n[log]\nsegment.bytes = 1048576\n",
    )
    .unwrap();
    let cfg_s = cfg.to_str().unwrap();

    let b = Broker::start_in(&tmp.path().join("d1"), &["--config", cfg_s], &[]);
    assert_eq!(partitions_of(&mut b.client(), "t").1, 2, "file value");
    drop(b);
    let b = Broker::start_in(
        &tmp.path().join("d2"),
        &["--config", cfg_s],
        &[("SLUICE_NUM_PARTITIONS", "3")],
    );
    assert_eq!(partitions_of(&mut b.client(), "t").1, 3, "env beats file");
    drop(b);
    let b = Broker::start_in(
        &tmp.path().join("d3"),
        &["--config", cfg_s, "--num-partitions", "5"],
        &[("SLUICE_NUM_PARTITIONS", "3")],
    );
    let mut c = b.client();
    assert_eq!(partitions_of(&mut c, "t").1, 5, "flag beats env");
    // The file's nested [log] table became log.segment.bytes, the topic default.
    let r: DescribeConfigsResponse = c.request(
        4,
        &DescribeConfigsRequest::default().with_resources(vec![
            describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("t"))
                .with_configuration_keys(Some(vec![StrBytes::from_static_str("segment.bytes")])),
        ]),
    );
    let e = &r.results[0].configs[0];
    assert_eq!(
        e.value.as_ref().map(|v| v.to_string()),
        Some("1048576".to_string())
    );
    assert_eq!(e.config_source, 4, "STATIC_BROKER_CONFIG");
    // auto.create.topics.enable=false is honoured.
    drop(c);
    drop(b);
    let b = Broker::start_in(
        &tmp.path().join("d4"),
        &["--set", "auto.create.topics.enable=false"],
        &[],
    );
    assert_eq!(partitions_of(&mut b.client(), "t").0, 3);
}

fn run_expect_failure(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(TIMEOUT);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
    });
    let out = child.wait_with_output().unwrap();
    drop(killer);
    assert!(!out.status.success(), "sluice accepted a bad config");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_config_is_a_clear_error_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    let d = d.to_str().unwrap();
    let port = format!("127.0.0.1:{}", free_port());
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "num.partitions = \"lots\"\n").unwrap();
    let err = run_expect_failure(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            d,
            "--listen",
            &port,
        ],
        &[],
    );
    assert!(err.contains("num.partitions"), "{err}");
    let err = run_expect_failure(
        &["--data-dir", d, "--listen", &port],
        &[("SLUICE_LOG_SEGMENT_BYTES", "big")],
    );
    assert!(
        err.contains("log.segment.bytes") || err.contains("segment.bytes"),
        "{err}"
    );
    let err = run_expect_failure(&["--data-dir", d, "--listen", "nonsense"], &[]);
    assert!(err.contains("listeners"), "{err}");
    std::fs::write(&cfg, "this is not toml").unwrap();
    let err = run_expect_failure(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            d,
            "--listen",
            &port,
        ],
        &[],
    );
    assert!(err.contains("TOML"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn retention_runs_on_the_shard_timer_with_live_topic_configs() {
    let b = Broker::start(&["--set", "log.retention.check.interval.ms=200"]);
    let mut c = b.client();
    let r: CreateTopicsResponse = c.request(
        7,
        &CreateTopicsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![create_topics_request::CreatableTopic::default()
                .with_name(tn("ret"))
                .with_num_partitions(1)
                .with_replication_factor(1)
                .with_configs(vec![
                    create_topics_request::CreatableTopicConfig::default()
                        .with_name(StrBytes::from_static_str("segment.bytes"))
                        .with_value(Some(StrBytes::from_static_str("4096"))),
                ])]),
    );
    assert_eq!(r.topics[0].error_code, 0);
    // ~260-byte batches: 60 of them fill 4 segments of 4 KiB.
    for i in 0..60 {
        produce_ok(&mut c, "ret", 0, &format!("r{i}"), 10);
    }
    let earliest = |c: &mut Client| -> i64 {
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(tn("ret"))
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(-2),
                ])]);
        let r: ListOffsetsResponse = c.request(7, &req);
        r.topics[0].partitions[0].offset
    };
    // Unlimited retention: nothing is deleted however often the timer runs.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(earliest(&mut c), 0);
    // Shrink retention.bytes live: the next timer tick deletes whole old segments.
    let r: IncrementalAlterConfigsResponse = c.request(
        1,
        &IncrementalAlterConfigsRequest::default().with_resources(vec![
            incremental_alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("ret"))
                .with_configs(vec![
                    incremental_alter_configs_request::AlterableConfig::default()
                        .with_name(StrBytes::from_static_str("retention.bytes"))
                        .with_config_operation(0)
                        .with_value(Some(StrBytes::from_static_str("4096"))),
                ]),
        ]),
    );
    assert_eq!(r.responses[0].error_code, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut start = 0;
    while Instant::now() < deadline {
        start = earliest(&mut c);
        if start > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        start > 0,
        "retention never advanced the log start offset: {}",
        b.log()
    );
    assert!(start < 600, "the active segment is never deleted");
    // Data from the new log start on is still readable, and a fetch below it is out of range.
    let latest = {
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(tn("ret"))
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(-1),
                ])]);
        let r: ListOffsetsResponse = c.request(7, &req);
        r.topics[0].partitions[0].offset
    };
    assert_eq!(latest, 600);
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(tn("ret"))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let r: FetchResponse = c.request(11, &req);
    assert_eq!(
        r.responses[0].partitions[0].error_code, 1,
        "OFFSET_OUT_OF_RANGE below the log start"
    );
    assert_eq!(r.responses[0].partitions[0].log_start_offset, start);
}

#[test]
fn sigterm_answers_a_waiting_long_poll_and_exits_promptly() {
    let mut b = Broker::start(&[]);
    let mut c = b.client();
    partitions_of(&mut c, "idle");
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(30_000)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(tn("idle"))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let cid = c.send(11, &req);
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let status = b.stop_with(Signal::SIGTERM);
    assert!(status.success(), "{status}: {}", b.log());
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "shutdown waited for the long poll"
    );
    // The in-flight fetch was answered (empty) before the connection closed.
    let r = c.recv::<FetchRequest>(11, cid);
    assert_eq!(r.responses[0].partitions[0].error_code, 0);
    assert_eq!(
        r.responses[0].partitions[0]
            .records
            .as_ref()
            .map(|x| x.len()),
        Some(0)
    );
}

#[test]
fn a_second_broker_on_a_taken_port_refuses_to_start() {
    // SO_REUSEPORT would let a second process bind the port and silently take half of the
    // first broker's new connections; the start-up probe must refuse instead.
    let first = Broker::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("second");
    let err = run_expect_failure(
        &[
            "--data-dir",
            d.to_str().unwrap(),
            "--listen",
            &first.addr.to_string(),
            "--set",
            "admin.listener=",
        ],
        &[],
    );
    assert!(err.contains("in use"), "unexpected error: {err}");
    // The first broker still answers.
    let mut c = first.client();
    let (error, partitions, _) = partitions_of(&mut c, "__consumer_offsets");
    assert_eq!((error, partitions), (0, 50));
}

/// Turns a data directory of this release into what a release without a controller left:
/// partition directories, `__sluice_metadata.json` and the producer-id file, no metadata log,
/// no `meta.properties`, no high watermark checkpoints.
fn make_legacy(dir: &std::path::Path, topic: &str, id: uuid::Uuid, partitions: i32, mark: i64) {
    std::fs::remove_dir_all(dir.join("__cluster_metadata")).unwrap();
    std::fs::remove_file(dir.join("meta.properties")).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let _ = std::fs::remove_file(path.join("replication-offset-checkpoint"));
        if path.is_dir()
            && !path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(topic)
        {
            std::fs::remove_dir_all(&path).unwrap();
        }
    }
    let registry = serde_json::json!({
        "version": 1,
        "cluster_id": "LegacyClusterId0123456",
        "topics": [{
            "name": topic,
            "id": id.to_string(),
            "partitions": partitions,
            "configs": {"retention.ms": "86400000"},
        }],
    });
    std::fs::write(
        dir.join("__sluice_metadata.json"),
        serde_json::to_vec(&registry).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("producer-id-high-water-mark"),
        sluice::idempotence::producer_id::encode_high_water_mark(mark),
    )
    .unwrap();
}

#[test]
fn a_directory_of_the_release_without_a_controller_migrates_on_first_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut b = Broker::start_in(&dir, &["--num-partitions", "2"], &[]);
    let mut c = b.client();
    let (_, _, id) = partitions_of(&mut c, "legacy");
    for p in 0..2 {
        produce_ok(&mut c, "legacy", p, &format!("p{p}"), 30);
    }
    drop(c);
    assert!(b.stop_with(Signal::SIGTERM).success(), "{}", b.log());
    make_legacy(&dir, "legacy", id, 2, 7_000);

    let mut b = Broker::start_in(&dir, &[], &[]);
    assert!(
        b.log().contains("migrated __sluice_metadata.json"),
        "{}",
        b.log()
    );
    assert!(dir.join("__sluice_metadata.json.migrated").exists());
    assert!(!dir.join("__sluice_metadata.json").exists());
    let mut c = b.client();
    let meta: MetadataResponse = c.request(12, &MetadataRequest::default().with_topics(None));
    assert_eq!(meta.cluster_id.as_deref(), Some("LegacyClusterId0123456"));
    let (err, n, id2) = partitions_of(&mut c, "legacy");
    assert_eq!(
        (err, n, id2),
        (0, 2, id),
        "the topic keeps its id and partitions"
    );
    for p in 0..2 {
        assert_eq!(
            fetch_all(&mut c, "legacy", p),
            expected(&format!("p{p}"), 30)
        );
    }
    assert_eq!(produce_ok(&mut c, "legacy", 0, "after", 1), 30);
    let init: InitProducerIdResponse = c.request(
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    );
    assert_eq!(init.error_code, 0);
    assert!(
        init.producer_id.0 >= 7_000,
        "producer id {} reused",
        init.producer_id.0
    );
    let configs: DescribeConfigsResponse = c.request(
        4,
        &DescribeConfigsRequest::default().with_resources(vec![
            describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("legacy"))
                .with_configuration_keys(Some(vec![StrBytes::from_static_str("retention.ms")])),
        ]),
    );
    let value = configs.results[0].configs[0]
        .value
        .as_deref()
        .map(str::to_string);
    assert_eq!(
        value.as_deref(),
        Some("86400000"),
        "the topic keeps its configs"
    );
    drop(c);
    assert!(b.stop_with(Signal::SIGTERM).success(), "{}", b.log());

    // The next start reads the metadata log alone.
    let b = Broker::start_in(&dir, &[], &[]);
    assert!(
        !b.log().contains("migrated __sluice_metadata.json"),
        "{}",
        b.log()
    );
    let mut c = b.client();
    assert_eq!(fetch_all(&mut c, "legacy", 0).len(), 31);
}

#[test]
fn a_changed_voter_set_or_node_id_is_refused_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut b = Broker::start_in(&dir, &["--node-id", "3"], &[]);
    assert!(b.stop_with(Signal::SIGTERM).success(), "{}", b.log());
    let d = dir.to_str().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let err = run_expect_failure(
        &["--data-dir", d, "--listen", &listen, "--node-id", "4"],
        &[],
    );
    assert!(err.contains("node.id 3"), "{err}");
    let voters = format!(
        "3@127.0.0.1:{},5@127.0.0.1:{},6@127.0.0.1:{}",
        free_port(),
        free_port(),
        free_port()
    );
    let err = run_expect_failure(
        &[
            "--data-dir",
            d,
            "--listen",
            &listen,
            "--node-id",
            "3",
            "--controller-voters",
            &voters,
        ],
        &[],
    );
    assert!(
        err.contains("cluster of one") && err.contains("Growing a cluster of one"),
        "{err}"
    );
}

#[test]
fn a_legacy_directory_with_a_damaged_producer_id_mark_is_refused() {
    // Migrating past a mark that cannot be read could hand out an id a live producer holds:
    // the start is refused, naming the file, and nothing is renamed.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("__sluice_metadata.json"),
        br#"{"version":1,"cluster_id":"LegacyClusterId0123456","topics":[]}"#,
    )
    .unwrap();
    std::fs::write(dir.join("producer-id-high-water-mark"), b"garbage").unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let err = run_expect_failure(
        &[
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            &listen,
            "--set",
            "admin.listener=",
        ],
        &[],
    );
    assert!(err.contains("producer-id-high-water-mark"), "{err}");
    assert!(
        dir.join("__sluice_metadata.json").exists(),
        "the registry was not renamed"
    );
}
