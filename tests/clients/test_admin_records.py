"""DeleteRecords, DescribeLogDirs and DescribeProducers with real clients.

kafka-python's KafkaAdminClient (delete_records, describe_log_dirs, describe_producers),
confluent-kafka producers and consumers, and raw requests (kafka_wire) for the error paths a
client library would retry or hide. Single-node brokers come from the make_broker fixture,
three-broker clusters from sluice_cluster.Cluster.
"""

from __future__ import annotations

import time
import urllib.request

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition as CkTopicPartition
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import OffsetOutOfRangeError
from prometheus_client.parser import text_string_to_metric_families

import kafka_wire as kw
from sluice_broker import free_port
from sluice_cluster import Cluster

DELETE_RECORDS = 21
DESCRIBE_LOG_DIRS = 35
DESCRIBE_PRODUCERS = 61
NOT_LEADER_OR_FOLLOWER = 6
POLICY_VIOLATION = 44

# Small segments, so a DeleteRecords deletes whole segments below the new log start.
SMALL_SEGMENTS = {"segment.bytes": "1024"}


def single_node(make_broker):
    return make_broker(extra_args=["--set", f"admin.listener=127.0.0.1:{free_port()}"])


def admin_client(bootstrap: str) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)


def produce(bootstrap: str, topic: str, n: int, partition: int = 0, idempotent: bool = False,
            prefix: str = "m") -> None:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0,
                  "enable.idempotence": idempotent, "batch.num.messages": 1})
    errors = []
    for i in range(n):
        p.produce(topic, value=f"{prefix}-{i:04d}".encode() + b"x" * 100, partition=partition,
                  on_delivery=lambda err, _m: err and errors.append(err))
        p.poll(0)
    assert p.flush(30) == 0
    assert errors == []


def first_offsets(bootstrap: str, topic: str, partition: int = 0, want: int = 1, timeout: float = 15.0) -> list[int]:
    """Offsets of the first `want` records a consumer reads from the beginning."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{topic}", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    try:
        c.assign([CkTopicPartition(topic, partition, -2)])  # OFFSET_BEGINNING
        got: list[int] = []
        deadline = time.monotonic() + timeout
        while len(got) < want and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got.append(m.offset())
        return got
    finally:
        c.close()


def watermarks(bootstrap: str, topic: str, partition: int = 0) -> tuple[int, int]:
    """(earliest, latest) by ListOffsets."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "wm"})
    try:
        return c.get_watermark_offsets(CkTopicPartition(topic, partition), timeout=10)
    finally:
        c.close()


def raw_delete_records(port: int, topic: str, partition: int, offset: int, timeout_ms: int = 5000) -> tuple[int, int]:
    """DeleteRecords v0 for one partition: (error_code, low_watermark)."""
    body = kw.array([kw.string(topic) + kw.array([kw.i32(partition) + kw.i64(offset)])]) + kw.i32(timeout_ms)
    with kw.connect(port) as s:
        r = kw.Reader(kw.roundtrip(s, DELETE_RECORDS, 0, 41, body))
    r.i32()  # throttle_time_ms
    [(name, [(p, low, err)])] = r.array(lambda t: (t.string(), t.array(lambda x: (x.i32(), x.i64(), x.i16()))))
    assert (name, p) == (topic, partition)
    return err, low


def uvarint(n: int) -> bytes:
    """An unsigned varint (compact lengths of flexible versions)."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_uvarint(r: kw.Reader) -> int:
    n, shift = 0, 0
    while True:
        b = r.take(1)[0]
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n
        shift += 7


def raw_describe_producers(port: int, topic: str, partition: int) -> tuple[int, list[tuple[int, int, int]]]:
    """DescribeProducers v0 (flexible) for one partition: (error_code, [(id, epoch, last_seq)])."""
    # Compact arrays and strings (length + 1), empty tagged fields; the request header is v2.
    name = topic.encode()
    body = (uvarint(2) + uvarint(len(name) + 1) + name + uvarint(2) + kw.i32(partition)
            + b"\x00" + b"\x00")
    header = kw.i16(DESCRIBE_PRODUCERS) + kw.i16(0) + kw.i32(42) + kw.string(kw.CLIENT_ID) + b"\x00"
    with kw.connect(port) as s:
        s.sendall(kw.frame(header + body))
        _cid, resp = kw.read_response(s)
    r = kw.Reader(resp)
    assert r.take(1) == b"\x00"  # response header v1 tagged fields
    r.i32()  # throttle_time_ms
    assert read_uvarint(r) == 2
    assert r.take(read_uvarint(r) - 1).decode() == topic
    assert read_uvarint(r) == 2
    assert r.i32() == partition
    err = r.i16()
    n = read_uvarint(r) - 1
    if n > 0:
        r.take(n)  # error message
    producers = []
    for _ in range(read_uvarint(r) - 1):
        pid, epoch, seq = r.i64(), r.i32(), r.i32()
        r.i64(), r.i32(), r.i64()  # last timestamp, coordinator epoch, txn start offset
        assert r.take(1) == b"\x00"
        producers.append((pid, epoch, seq))
    return err, producers


def log_dir_sizes(admin: KafkaAdminClient, topic: str) -> dict[int, dict[int, int]]:
    """{broker: {partition: size}} of `topic` from DescribeLogDirs on every broker."""
    out: dict[int, dict[int, int]] = {}
    for broker in admin.describe_log_dirs(topic_partitions=[topic]):
        sizes = out.setdefault(broker["broker"], {})
        for d in broker["log_dirs"]:
            assert d["error_code"] == 0
            assert d["total_bytes"] > 0 and 0 <= d["usable_bytes"] <= d["total_bytes"]
            for t in d["topics"]:
                assert t["name"] == topic
                for p in t["partitions"]:
                    assert p["is_future_key"] is False and p["offset_lag"] == 0
                    sizes[p["partition_index"]] = p["partition_size"]
    return out


def segment_files(data_dir, topic: str, partition: int = 0) -> list[str]:
    return sorted(f.name for f in (data_dir / f"{topic}-{partition}").glob("*.log"))


@pytest.mark.timeout(90)
def test_delete_records_single_node(make_broker, topic_name):
    b = single_node(make_broker)
    admin = admin_client(b.bootstrap)
    admin.create_topics([NewTopic(topic_name, 1, 1, topic_configs=SMALL_SEGMENTS)])
    produce(b.bootstrap, topic_name, 40)
    segments_before = segment_files(b.data_dir, topic_name)
    assert len(segments_before) > 3

    res = admin.delete_records({TopicPartition(topic_name, 0): 25})
    assert res[TopicPartition(topic_name, 0)]["low_watermark"] == 25
    assert res[TopicPartition(topic_name, 0)]["error_code"] == 0
    # Segments wholly below the new start are gone; the one holding offset 25 stays.
    segments_after = segment_files(b.data_dir, topic_name)
    assert len(segments_after) < len(segments_before)
    assert int(segments_after[0].split(".")[0]) <= 25
    # ListOffsets earliest, a consumer from the beginning, a fetch below the start.
    assert watermarks(b.bootstrap, topic_name) == (25, 40)
    assert first_offsets(b.bootstrap, topic_name, want=3) == [25, 26, 27]
    with kw.connect(b.port) as s:
        assert kw.fetch(s, topic_name, 0, 10).error_code == kw.OFFSET_OUT_OF_RANGE
        assert kw.fetch(s, topic_name, 0, 25).error_code == kw.NONE
    # A smaller offset than the start changes nothing; the start is the answer.
    assert raw_delete_records(b.port, topic_name, 0, 5) == (kw.NONE, 25)

    # Above the high watermark, unknown topic, unknown partition.
    with pytest.raises(OffsetOutOfRangeError):
        admin.delete_records({TopicPartition(topic_name, 0): 41})
    assert raw_delete_records(b.port, topic_name, 0, 41)[0] == kw.OFFSET_OUT_OF_RANGE
    assert raw_delete_records(b.port, topic_name, 0, -5)[0] == kw.OFFSET_OUT_OF_RANGE
    assert raw_delete_records(b.port, "no-such-topic", 0, 1)[0] == kw.UNKNOWN_TOPIC_OR_PARTITION
    assert raw_delete_records(b.port, topic_name, 7, 1)[0] == kw.UNKNOWN_TOPIC_OR_PARTITION

    # -1 is the high watermark; the new start survives a restart.
    res = admin.delete_records({TopicPartition(topic_name, 0): -1})
    assert res[TopicPartition(topic_name, 0)]["low_watermark"] == 40
    admin.close()
    b.stop()
    b.restart()
    assert watermarks(b.bootstrap, topic_name) == (40, 40)
    produce(b.bootstrap, topic_name, 2, prefix="after")
    assert first_offsets(b.bootstrap, topic_name, want=2) == [40, 41]


@pytest.mark.timeout(60)
def test_delete_records_refused_on_compacted_topic(make_broker, topic_name):
    b = single_node(make_broker)
    admin = admin_client(b.bootstrap)
    admin.create_topics([NewTopic(topic_name, 1, 1, topic_configs={"cleanup.policy": "compact"})])
    p = Producer({"bootstrap.servers": b.bootstrap})
    for i in range(5):
        p.produce(topic_name, key=b"k%d" % i, value=b"v")
    assert p.flush(10) == 0
    assert raw_delete_records(b.port, topic_name, 0, 2)[0] == POLICY_VIOLATION
    assert watermarks(b.bootstrap, topic_name) == (0, 5)
    admin.close()


@pytest.mark.timeout(60)
def test_describe_log_dirs_sizes_grow_after_produce(make_broker, topic_name):
    b = single_node(make_broker)
    admin = admin_client(b.bootstrap)
    admin.create_topics([NewTopic(topic_name, 2, 1)])
    before = log_dir_sizes(admin, topic_name)
    assert list(before) == [1]  # a single node is broker 1
    assert before[1] == {0: 0, 1: 0}
    produce(b.bootstrap, topic_name, 20, partition=1)
    after = log_dir_sizes(admin, topic_name)[1]
    assert after[0] == 0
    assert after[1] >= 20 * 100
    # The size is the partition's bytes on disk.
    on_disk = sum(f.stat().st_size for f in (b.data_dir / f"{topic_name}-1").glob("*.log"))
    assert after[1] == on_disk
    # No topic list means every partition the broker holds (the offsets topic too, where it
    # exists: a cluster creates it on the first FindCoordinator, as Kafka does).
    everything = admin.describe_log_dirs()
    names = {t["name"] for d in everything[0]["log_dirs"] for t in d["topics"]}
    held = {topic_name} | ({"__consumer_offsets"} & set(admin.list_topics()))
    assert held <= names, (held, names)
    assert everything[0]["log_dirs"][0]["log_dir"] == str(b.data_dir.resolve())
    admin.close()


@pytest.mark.timeout(60)
def test_describe_producers_lists_idempotent_producer(make_broker, topic_name):
    b = single_node(make_broker)
    admin = admin_client(b.bootstrap)
    admin.create_topics([NewTopic(topic_name, 2, 1)])
    produce(b.bootstrap, topic_name, 10, partition=0, idempotent=True)
    produce(b.bootstrap, topic_name, 3, partition=1, idempotent=False)
    states = admin.describe_producers([TopicPartition(topic_name, 0), TopicPartition(topic_name, 1)])
    [active] = states[TopicPartition(topic_name, 0)].active_producers
    assert active.producer_id >= 0 and active.producer_epoch >= 0
    assert active.last_sequence == 9
    assert abs(active.last_timestamp - time.time() * 1000) < 120_000
    assert active.coordinator_epoch == -1 and active.current_transaction_start_offset == -1
    # A producer without idempotence leaves no state.
    assert states[TopicPartition(topic_name, 1)].active_producers == []
    # The same through the raw API, and an unknown partition.
    assert raw_describe_producers(b.port, topic_name, 0) == (
        kw.NONE, [(active.producer_id, active.producer_epoch, 9)])
    assert raw_describe_producers(b.port, topic_name, 5)[0] == kw.UNKNOWN_TOPIC_OR_PARTITION
    admin.close()


def log_start_offsets(cluster: Cluster, topic: str) -> dict[int, int]:
    """{broker: sluice_partition_log_start_offset of topic-0} from every broker's /metrics."""
    out = {}
    for node in cluster.ids:
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{cluster.admin_ports[node - 1]}/metrics", timeout=10).read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if (s.name == "sluice_partition_log_start_offset" and s.labels.get("topic") == topic
                        and s.labels.get("partition") == "0"):
                    out[node] = int(s.value)
    return out


@pytest.mark.timeout(150)
def test_delete_records_cluster_rf3(make_broker):
    cluster = Cluster(make_broker)
    topic = "delete-records-rf3"
    cluster.create_topic(topic, partitions=1, rf=3, config=SMALL_SEGMENTS)
    leader, _, _ = cluster.wait_partition(topic, "ISR of 3", lambda l, r, i: len(i) == 3)
    followers = [n for n in cluster.ids if n != leader]
    produce(cluster.bootstrap(), topic, 40)

    # Only the leader answers.
    follower_port = cluster.broker(followers[0]).port
    assert raw_delete_records(follower_port, topic, 0, 10)[0] == NOT_LEADER_OR_FOLLOWER
    assert raw_describe_producers(follower_port, topic, 0)[0] == NOT_LEADER_OR_FOLLOWER
    leader_port = cluster.broker(leader).port
    assert raw_delete_records(leader_port, topic, 0, 41)[0] == kw.OFFSET_OUT_OF_RANGE

    # The answer comes once every in-sync replica moved its log start.
    admin = admin_client(cluster.bootstrap())
    res = admin.delete_records({TopicPartition(topic, 0): 30}, timeout_ms=10000)
    assert res[TopicPartition(topic, 0)] == {"partition_index": 0, "low_watermark": 30, "error_code": 0}
    assert log_start_offsets(cluster, topic) == {1: 30, 2: 30, 3: 30}
    for node in cluster.ids:
        segs = segment_files(cluster.broker(node).data_dir, topic)
        assert int(segs[0].split(".")[0]) <= 30 < 40
        assert int(segs[0].split(".")[0]) > 0, f"broker {node} kept the segments below 30"
    assert watermarks(cluster.bootstrap(), topic) == (30, 40)
    assert first_offsets(cluster.bootstrap(), topic, want=2) == [30, 31]
    # DescribeLogDirs answers on every broker, each with its replica.
    sizes = log_dir_sizes(admin, topic)
    assert sorted(sizes) == [1, 2, 3] and all(s[0] > 0 for s in sizes.values())
    admin.close()

    # A follower restarts and a leader change follows: the start holds everywhere.
    f = cluster.broker(followers[0])
    f.stop()
    f.restart()
    cluster.broker(leader).stop()
    cluster.broker(leader).restart()
    cluster.wait_partition(topic, "ISR of 3 after restarts", lambda l, r, i: len(i) == 3, timeout=40)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if watermarks(cluster.bootstrap(), topic) == (30, 40):
                break
        except Exception:  # a leader election in progress
            pass
        time.sleep(0.3)
    assert watermarks(cluster.bootstrap(), topic) == (30, 40)
    assert log_start_offsets(cluster, topic) == {1: 30, 2: 30, 3: 30}
    assert first_offsets(cluster.bootstrap(), topic, want=1) == [30]


@pytest.mark.timeout(120)
def test_follower_behind_the_new_log_start_restarts_there(make_broker):
    cluster = Cluster(make_broker)
    topic = "delete-records-behind"
    cluster.create_topic(topic, partitions=1, rf=3, config=SMALL_SEGMENTS)
    leader, _, _ = cluster.wait_partition(topic, "ISR of 3", lambda l, r, i: len(i) == 3)
    behind = next(n for n in cluster.ids if n != leader)
    produce(cluster.bootstrap(), topic, 10)
    cluster.broker(behind).stop()
    cluster.wait_partition(topic, f"broker {behind} out of the ISR", lambda l, r, i: behind not in i,
                           exclude=(behind,), timeout=30)
    produce(cluster.bootstrap(exclude=(behind,)), topic, 30, prefix="later")
    admin = admin_client(cluster.bootstrap(exclude=(behind,)))
    res = admin.delete_records({TopicPartition(topic, 0): 35}, timeout_ms=10000)
    assert res[TopicPartition(topic, 0)]["low_watermark"] == 35
    admin.close()
    # Back, its log ends at 10, below the leader's start: it restarts at 35 and catches up.
    cluster.broker(behind).restart()
    cluster.wait_partition(topic, f"broker {behind} back in the ISR", lambda l, r, i: len(i) == 3, timeout=40)
    assert log_start_offsets(cluster, topic)[behind] == 35
    segs = segment_files(cluster.broker(behind).data_dir, topic)
    assert int(segs[0].split(".")[0]) >= 35, segs
    # (A producer without idempotence may have written retried batches twice meanwhile.)
    earliest, latest = watermarks(cluster.bootstrap(), topic)
    assert earliest == 35 and latest >= 40
