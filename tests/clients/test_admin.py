"""Topic and config administration through confluent-kafka's AdminClient and kafka-python's
KafkaAdminClient: create / list / describe / add partitions / delete topics, describe the
cluster, describe configs and change retention.ms with IncrementalAlterConfigs."""

from __future__ import annotations

import time

import pytest

from clientutil import (
    assert_identical,
    ck_admin,
    ck_consume,
    ck_create_topic,
    ck_produce,
    kp_admin,
    make_messages,
    wait_for_partitions_ck,
)

DEFAULT_RETENTION_MS = "604800000"  # log.retention.hours = 168


def _ck_error_code(fut):
    """The KafkaError code a confluent admin future failed with, or None if it succeeded."""
    from confluent_kafka import KafkaException

    try:
        fut.result(timeout=20)
        return None
    except KafkaException as e:
        return e.args[0].code()


def _ck_topics(admin) -> dict:
    return admin.list_topics(timeout=10).topics


# ============================================================================ confluent-kafka


@pytest.mark.cluster_ci
def test_confluent_topic_lifecycle(broker, topic_name):
    """create (incl. errors and validate_only) -> list -> describe -> add partitions -> use the
    new partition -> delete -> gone; deleting again is UNKNOWN_TOPIC_OR_PARTITION; recreating
    gives an empty topic."""
    from confluent_kafka import KafkaError, TopicCollection
    from confluent_kafka.admin import NewPartitions, NewTopic

    admin = ck_admin(broker.bootstrap)
    a, b, c = f"{topic_name}-a", f"{topic_name}-b", f"{topic_name}-c"
    res = admin.create_topics([NewTopic(a, 3, 1), NewTopic(b, 1, 1)], request_timeout=15)
    assert _ck_error_code(res[a]) is None and _ck_error_code(res[b]) is None
    res = admin.create_topics([NewTopic(a, 2, 1)], request_timeout=15)
    assert _ck_error_code(res[a]) == KafkaError.TOPIC_ALREADY_EXISTS
    res = admin.create_topics([NewTopic(c, 2, 1)], validate_only=True, request_timeout=15)
    assert _ck_error_code(res[c]) is None, "validate_only create of a valid topic failed"

    wait_for_partitions_ck(broker.bootstrap, a, 3)
    topics = _ck_topics(admin)
    assert len(topics[a].partitions) == 3 and len(topics[b].partitions) == 1
    assert c not in topics, "validate_only created the topic"

    [desc] = [f.result(timeout=15) for f in admin.describe_topics(TopicCollection([a]), request_timeout=15).values()]
    assert desc.name == a and not desc.is_internal
    assert sorted(p.id for p in desc.partitions) == [0, 1, 2]
    for p in desc.partitions:
        assert p.leader is not None and p.leader.id >= 0, f"partition {p.id} without leader"
        assert [r.id for r in p.replicas] == [p.leader.id] and [r.id for r in p.isr] == [p.leader.id]

    res = admin.create_partitions([NewPartitions(a, 5)], request_timeout=15)
    assert _ck_error_code(res[a]) is None
    wait_for_partitions_ck(broker.bootstrap, a, 5)
    res = admin.create_partitions([NewPartitions(a, 4)], request_timeout=15)
    assert _ck_error_code(res[a]) == KafkaError.INVALID_PARTITIONS, "shrinking a topic must fail"
    msgs = make_messages(200, 5, seed=31)
    ck_produce(broker.bootstrap, a, msgs, acks="all")
    assert_identical(msgs, ck_consume(broker.bootstrap, a, range(5), len(msgs)), "after create_partitions")

    res = admin.delete_topics([a], request_timeout=15)
    assert _ck_error_code(res[a]) is None
    deadline = time.monotonic() + 10
    while a in _ck_topics(admin) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert a not in _ck_topics(admin), "deleted topic still listed"
    assert b in _ck_topics(admin), "deleting one topic removed another"
    res = admin.delete_topics([a], request_timeout=15)
    assert _ck_error_code(res[a]) == KafkaError.UNKNOWN_TOPIC_OR_PART

    ck_create_topic(broker.bootstrap, a, 2)
    from confluent_kafka import TopicPartition

    from clientutil import ck_consumer

    cons = ck_consumer(broker.bootstrap)
    try:
        for p in range(2):
            assert cons.get_watermark_offsets(TopicPartition(a, p), timeout=10, cached=False) == (0, 0), (
                "a re-created topic still has the deleted topic's data"
            )
    finally:
        cons.close()


@pytest.mark.cluster_ci
def test_confluent_describe_cluster(broker):
    """DescribeCluster (or Metadata, whichever the client picks) names every broker (this single
    node, or the three of a cluster) and a controller among them."""
    admin = ck_admin(broker.bootstrap)
    desc = admin.describe_cluster(request_timeout=10).result(timeout=15)
    assert desc.cluster_id, "empty cluster id"
    assert sorted((n.host, n.port) for n in desc.nodes) == sorted(broker.nodes)
    assert desc.controller is not None and desc.controller.id in {n.id for n in desc.nodes}


def _ck_describe(admin, topic: str) -> dict:
    from confluent_kafka.admin import ConfigResource, ResourceType

    [fut] = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)], request_timeout=15).values()
    return fut.result(timeout=20)


@pytest.mark.cluster_ci
def test_confluent_describe_and_incremental_alter_configs(broker, topic_name):
    """DescribeConfigs shows topic configs with their source; a creation-time override and an
    IncrementalAlterConfigs SET show as DYNAMIC_TOPIC_CONFIG; DELETE returns to the default;
    bad names/values are INVALID_CONFIG; an unknown topic is UNKNOWN_TOPIC_OR_PARTITION."""
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource, ResourceType

    admin = ck_admin(broker.bootstrap)
    over, plain = f"{topic_name}-o", f"{topic_name}-p"
    ck_create_topic(broker.bootstrap, over, 1, config={"retention.ms": "123456", "cleanup.policy": "delete"})
    ck_create_topic(broker.bootstrap, plain, 1)

    cfg = _ck_describe(admin, over)
    assert cfg["retention.ms"].value == "123456"
    assert cfg["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    for key in ("cleanup.policy", "segment.bytes", "retention.bytes", "max.message.bytes"):
        assert key in cfg, f"DescribeConfigs lacks {key}; has {sorted(cfg)}"
    cfg = _ck_describe(admin, plain)
    assert cfg["retention.ms"].value == DEFAULT_RETENTION_MS
    assert cfg["retention.ms"].source in (ConfigSource.DEFAULT_CONFIG.value, ConfigSource.STATIC_BROKER_CONFIG.value)

    def alter(topic, entries):
        res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries)
        [fut] = admin.incremental_alter_configs([res], request_timeout=15).values()
        return _ck_error_code(fut)

    assert alter(plain, [ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET)]) is None
    cfg = _ck_describe(admin, plain)
    assert cfg["retention.ms"].value == "3600000"
    assert cfg["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert alter(plain, [ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)]) is None
    cfg = _ck_describe(admin, plain)
    assert cfg["retention.ms"].value == DEFAULT_RETENTION_MS, "DELETE did not restore the default"

    bad_value = alter(plain, [ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET)])
    assert bad_value == KafkaError.INVALID_CONFIG, f"retention.ms=soon: {bad_value}"
    bad_name = alter(plain, [ConfigEntry("no.such.config", "1", incremental_operation=AlterConfigOpType.SET)])
    assert bad_name == KafkaError.INVALID_CONFIG, f"unknown config name: {bad_name}"
    assert _ck_describe(admin, plain)["retention.ms"].value == DEFAULT_RETENTION_MS, "a rejected alter changed the config"

    [fut] = admin.describe_configs([ConfigResource(ResourceType.TOPIC, f"{topic_name}-missing")], request_timeout=15).values()
    assert _ck_error_code(fut) == KafkaError.UNKNOWN_TOPIC_OR_PART


# ============================================================================ kafka-python


def test_kafka_python_topic_lifecycle(broker, topic_name):
    """KafkaAdminClient: create_topics, list_topics, describe_topics, create_partitions,
    delete_topics, with the Kafka errors for duplicates and unknown topics."""
    from kafka.errors import InvalidPartitionsError, TopicAlreadyExistsError, UnknownTopicOrPartitionError

    admin = kp_admin(broker.bootstrap)
    try:
        admin.create_topics({topic_name: {"num_partitions": 2, "replication_factor": 1}}, timeout_ms=15000)
        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topics({topic_name: {"num_partitions": 2, "replication_factor": 1}}, timeout_ms=15000)
        vo = f"{topic_name}-validate"
        admin.create_topics({vo: {"num_partitions": 1, "replication_factor": 1}}, timeout_ms=15000, validate_only=True)
        wait_for_partitions_ck(broker.bootstrap, topic_name, 2)
        names = admin.list_topics()
        assert topic_name in names and vo not in names

        [t] = admin.describe_topics([topic_name])
        assert t["name"] == topic_name and t["error_code"] == 0
        assert sorted(p["partition_index"] for p in t["partitions"]) == [0, 1]
        assert all(p["leader_id"] >= 0 for p in t["partitions"])

        admin.create_partitions({topic_name: 6}, timeout_ms=15000)
        wait_for_partitions_ck(broker.bootstrap, topic_name, 6)
        [t] = admin.describe_topics([topic_name])
        assert len(t["partitions"]) == 6
        with pytest.raises(InvalidPartitionsError):
            admin.create_partitions({topic_name: 3}, timeout_ms=15000)

        admin.delete_topics([topic_name], timeout_ms=15000)
        deadline = time.monotonic() + 10
        while topic_name in admin.list_topics() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert topic_name not in admin.list_topics()
        with pytest.raises(UnknownTopicOrPartitionError):
            admin.delete_topics([topic_name], timeout_ms=15000)
    finally:
        admin.close()


def test_kafka_python_describe_cluster(broker):
    admin = kp_admin(broker.bootstrap)
    try:
        desc = admin.describe_cluster()
    finally:
        admin.close()
    brokers = desc["brokers"]
    assert sorted((b["host"], b["port"]) for b in brokers) == sorted(broker.nodes), desc
    assert desc["controller_id"] in {b["broker_id"] for b in brokers}, desc
    assert desc.get("cluster_id"), desc


def test_kafka_python_describe_and_alter_configs(broker, topic_name):
    """describe_configs, alter_configs(incremental=True) on retention.ms, reset_configs."""
    from kafka.admin import ConfigResource, ConfigResourceType

    ck_create_topic(broker.bootstrap, topic_name, 1)
    admin = kp_admin(broker.bootstrap)
    try:
        def describe():
            res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic_name)], config_filter="all")
            return res["topic"][topic_name]

        cfg = describe()
        assert cfg["retention.ms"]["value"] == DEFAULT_RETENTION_MS, cfg.get("retention.ms")
        res = admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic_name, {"retention.ms": "7200000"})], incremental=True
        )
        assert res["topic"][topic_name] == "OK", res
        cfg = describe()
        assert cfg["retention.ms"]["value"] == "7200000"
        assert cfg["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
        res = admin.reset_configs([ConfigResource(ConfigResourceType.TOPIC, topic_name, ["retention.ms"])], incremental=True)
        assert res["topic"][topic_name] == "OK", res
        assert describe()["retention.ms"]["value"] == DEFAULT_RETENTION_MS
    finally:
        admin.close()


def _segment_files(broker, topic: str, partition: int = 0) -> list[str]:
    d = broker.data_dir / f"{topic}-{partition}"
    assert d.is_dir(), f"partition directory {d} missing; data dir has {sorted(p.name for p in broker.data_dir.iterdir())}"
    return sorted(p.name for p in d.glob("*.log"))


def test_log_configs_apply_live_segment_bytes_and_retention(make_broker, topic_name):
    """segment.bytes and retention.ms changed with IncrementalAlterConfigs on a live topic take
    effect without a restart: new data rolls 1 MiB segments (named by 20-digit base offset),
    and closed segments older than retention.ms are deleted (log start offset moves up,
    fetching below it is OFFSET_OUT_OF_RANGE)."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    import kafka_wire as kw
    from clientutil import ck_consumer

    broker = make_broker(extra_args=["--set", "log.retention.check.interval.ms=300"])
    ck_create_topic(broker.bootstrap, topic_name, 1)
    admin = ck_admin(broker.bootstrap)

    def alter(key, value):
        res = ConfigResource(ResourceType.TOPIC, topic_name,
                             incremental_configs=[ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)])
        [fut] = admin.incremental_alter_configs([res], request_timeout=15).values()
        assert _ck_error_code(fut) is None, f"alter {key}={value} failed"

    alter("segment.bytes", "1048576")
    old = int(time.time() * 1000) - 3 * 24 * 3600 * 1000  # three days ago
    msgs = make_messages(16000, 1, seed=81, base_ts=old, payload=240)
    ck_produce(broker.bootstrap, topic_name, msgs, acks="1")
    segs = _segment_files(broker, topic_name)
    assert len(segs) >= 3, f"~4 MB with segment.bytes=1 MiB gave segments {segs}"
    assert all(len(s) == len("00000000000000000000.log") and s[:20].isdigit() for s in segs), segs

    alter("retention.ms", str(24 * 3600 * 1000))  # one day: every closed segment is too old
    deadline = time.monotonic() + 15
    c = ck_consumer(broker.bootstrap)
    try:
        while True:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10, cached=False)
            if lo > 0:
                break
            assert time.monotonic() < deadline, f"retention never deleted a segment: log [{lo}, {hi}), segments {_segment_files(broker, topic_name)}"
            time.sleep(0.2)
    finally:
        c.close()
    assert hi == len(msgs), "retention changed the log end offset"
    assert len(_segment_files(broker, topic_name)) < len(segs)
    with kw.connect(broker.port) as s:
        fp = kw.fetch(s, topic_name, 0, 0, max_wait_ms=0)
        assert fp.error_code == kw.OFFSET_OUT_OF_RANGE, f"fetch below the log start: error {fp.error_code}"
        fp = kw.fetch(s, topic_name, 0, lo, correlation_id=4, max_wait_ms=0)
        assert fp.error_code == kw.NONE and kw.parse_batches(fp.records or b"")[0].base_offset <= lo


@pytest.mark.cluster_ci
def test_kafka_python_create_topic_with_broker_defaults(broker, topic_name):
    """CreateTopics with num_partitions=-1 and replication_factor=-1 uses num.partitions (1)."""
    admin = kp_admin(broker.bootstrap)
    try:
        admin.create_topics([topic_name], timeout_ms=15000)
        wait_for_partitions_ck(broker.bootstrap, topic_name, 1)
        [t] = admin.describe_topics([topic_name])
        assert len(t["partitions"]) == 1
    finally:
        admin.close()


@pytest.mark.cluster_ci
def test_delete_topic_by_id(broker, topic_name):
    """Topics have UUIDs (Metadata v10+); DeleteTopics by id (v6+) deletes the right topic."""
    import uuid

    from confluent_kafka import TopicCollection

    ck_create_topic(broker.bootstrap, topic_name, 1)
    other = f"{topic_name}-keep"
    ck_create_topic(broker.bootstrap, other, 1)
    admin = ck_admin(broker.bootstrap)
    descs = {d.name: d for d in (f.result(timeout=15) for f in admin.describe_topics(TopicCollection([topic_name, other]), request_timeout=15).values())}
    tid = str(descs[topic_name].topic_id)
    assert tid and tid != str(descs[other].topic_id), f"topic ids {tid} / {descs[other].topic_id}"
    kp = kp_admin(broker.bootstrap)
    try:
        [t] = kp.describe_topics([topic_name])
        raw = t.get("topic_id")
        as_uuid = raw if isinstance(raw, uuid.UUID) else uuid.UUID(str(raw))
        assert as_uuid != uuid.UUID(int=0), "Metadata reports the zero UUID as topic id"
        kp.delete_topics([as_uuid], timeout_ms=15000)
        names = kp.list_topics()
    finally:
        kp.close()
    assert topic_name not in names and other in names, names
