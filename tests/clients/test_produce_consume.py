"""Produce and consume with confluent-kafka and kafka-python: every acks level and codec,
consumers by assign/seek and by timestamp, watermarks, and compressed batches on the wire."""

from __future__ import annotations

import dataclasses
import zlib

import pytest

import kafka_wire as kw
from clientutil import (
    ACKS,
    CLIENTS,
    CODECS,
    assert_identical,
    by_partition,
    check_reported_offsets,
    ck_consume,
    ck_consumer,
    ck_create_topic,
    ck_produce,
    kp_consume,
    kp_consumer,
    kp_produce,
    make_messages,
)

PARTITIONS = 3
N = 1500

# The cases of the client x acks x codec matrix that scripts/test.sh also runs on the
# three-broker cluster (cluster_ci): each client with each acks level, each codec at least once.
# All 30 run on one broker, and on the cluster too with SLUICE_TOPOLOGIES=one,cluster3.
MATRIX_ON_CLUSTER_CI = {
    ("confluent", "0", "none"),
    ("confluent", "1", "lz4"),
    ("confluent", "all", "zstd"),
    ("kafka-python", "0", "snappy"),
    ("kafka-python", "1", "none"),
    ("kafka-python", "all", "gzip"),
}
MATRIX = [
    pytest.param(
        client, acks, codec, id=f"{client}-{acks}-{codec}",
        marks=[pytest.mark.cluster_ci] if (client, acks, codec) in MATRIX_ON_CLUSTER_CI else [],
    )
    for client in CLIENTS
    for acks in ACKS
    for codec in CODECS
]


@pytest.mark.parametrize("client,acks,codec", MATRIX)
def test_produce_then_consume_identical(broker, topic_name, client, acks, codec):
    """Each client's producer with acks 0/1/all and each codec; its own consumer reads back
    every message (key, value, headers, timestamp) in per-partition order."""
    create, produce, consume = CLIENTS[client]
    create(broker.bootstrap, topic_name, PARTITIONS)
    msgs = make_messages(N, PARTITIONS, seed=zlib.crc32(f"{client}/{acks}/{codec}".encode()))
    reports = produce(broker.bootstrap, topic_name, msgs, acks=acks, codec=codec)
    assert len(reports) == N
    if acks != "0":
        check_reported_offsets(reports, f"{client} acks={acks} codec={codec}")
    got = consume(broker.bootstrap, topic_name, range(PARTITIONS), N)
    assert_identical(msgs, got, f"{client} acks={acks} codec={codec}")


@pytest.mark.parametrize(
    "producer,consumer,codec",
    [
        ("confluent", "kafka-python", "zstd"),
        pytest.param("kafka-python", "confluent", "lz4", marks=pytest.mark.cluster_ci),
        ("confluent", "kafka-python", "snappy"),
    ],
)
def test_cross_client(broker, topic_name, producer, consumer, codec):
    """What one client library wrote, the other reads back identical."""
    ck_create_topic(broker.bootstrap, topic_name, PARTITIONS)
    msgs = make_messages(N, PARTITIONS, seed=7)
    CLIENTS[producer][1](broker.bootstrap, topic_name, msgs, acks="all", codec=codec)
    got = CLIENTS[consumer][2](broker.bootstrap, topic_name, range(PARTITIONS), N)
    assert_identical(msgs, got, f"{producer} -> {consumer} ({codec})")


@pytest.mark.parametrize("client", ["confluent", pytest.param("kafka-python", marks=pytest.mark.cluster_ci)])
def test_seek_to_offset(broker, topic_name, client):
    """assign() at an explicit offset in the middle of a batch starts exactly there."""
    ck_create_topic(broker.bootstrap, topic_name, 2)
    msgs = make_messages(1000, 2, seed=11)
    ck_produce(broker.bootstrap, topic_name, msgs, acks="1", codec="lz4", **{"linger.ms": 50})
    parts = by_partition(msgs)
    start = {0: 123, 1: len(parts[1]) - 1}
    expected = parts[0][123:] + parts[1][start[1]:]
    consume = CLIENTS[client][2]
    got = consume(broker.bootstrap, topic_name, [0, 1], len(expected), start=start)
    assert_identical(expected, got, f"{client} seek")
    firsts = {p: ms[0].offset for p, ms in by_partition(got).items()}
    assert firsts == start, f"first consumed offsets {firsts}, seeked to {start}"


def _expected_offset(msgs_in_partition, target):
    """Kafka: the earliest offset whose timestamp is >= target, or None."""
    return next((i for i, m in enumerate(msgs_in_partition) if m.timestamp >= target), None)


@pytest.mark.parametrize("codec", ["none", pytest.param("gzip", marks=pytest.mark.cluster_ci)])
def test_offsets_for_times_confluent(broker, topic_name, codec):
    """Consumer.offsets_for_times (ListOffsets by timestamp) returns the exact first offset with
    timestamp >= target, also when the target falls inside a (compressed) batch or between timestamps;
    past the last timestamp it returns the end (-1); consumption starts there."""
    from confluent_kafka import TopicPartition

    ck_create_topic(broker.bootstrap, topic_name, 2)
    base = 1_700_000_000_000
    msgs = make_messages(2000, 2, seed=3, base_ts=base)
    ck_produce(broker.bootstrap, topic_name, msgs, acks="all", codec=codec, **{"linger.ms": 50})
    parts = by_partition(msgs)
    # exact hit, a timestamp belonging to the other partition (between two of this one's),
    # before everything, and after everything.
    targets = {
        0: [parts[0][700].timestamp, parts[1][300].timestamp, base - 5000, base + 10_000],
        1: [parts[1][5].timestamp, parts[0][901].timestamp, base, base + 10_000],
    }
    c = ck_consumer(broker.bootstrap)
    try:
        for p, ts_list in targets.items():
            for ts in ts_list:
                [res] = c.offsets_for_times([TopicPartition(topic_name, p, ts)], timeout=10)
                assert res.error is None, f"offsets_for_times({p}, {ts}) error {res.error}"
                want = _expected_offset(parts[p], ts)
                want = -1 if want is None else want
                assert res.offset == want, f"partition {p} timestamp {ts}: offset {res.offset}, expected {want}"
    finally:
        c.close()
    # Consume from a timestamp-resolved offset: the first message is the first with ts >= target.
    target = parts[0][617].timestamp - 1
    c = ck_consumer(broker.bootstrap)
    try:
        [res] = c.offsets_for_times([TopicPartition(topic_name, 0, target)], timeout=10)
    finally:
        c.close()
    got = ck_consume(broker.bootstrap, topic_name, [0], len(parts[0]) - res.offset, start={0: res.offset})
    assert got and got[0].timestamp >= target
    assert_identical(parts[0][res.offset:], got, "consume from offsets_for_times")


@pytest.mark.parametrize("codec", ["none", pytest.param("snappy", marks=pytest.mark.cluster_ci)])
def test_offsets_for_times_kafka_python(broker, topic_name, codec):
    """KafkaConsumer.offsets_for_times: exact offsets, None past the end; beginning/end offsets."""
    from kafka import TopicPartition

    ck_create_topic(broker.bootstrap, topic_name, 2)
    base = 1_700_000_000_000
    msgs = make_messages(1500, 2, seed=4, base_ts=base)
    # acks=all: what is read next must be below the high watermark, which on RF 3 acks=1 does not wait for.
    kp_produce(broker.bootstrap, topic_name, msgs, acks="all", codec=codec)
    parts = by_partition(msgs)
    c = kp_consumer(broker.bootstrap)
    try:
        tps = [TopicPartition(topic_name, p) for p in (0, 1)]
        assert c.beginning_offsets(tps) == {tp: 0 for tp in tps}
        assert c.end_offsets(tps) == {tp: len(parts[tp.partition]) for tp in tps}
        for p, ts in [(0, parts[0][500].timestamp), (1, parts[0][77].timestamp), (0, base - 1), (1, base + 10_000)]:
            tp = TopicPartition(topic_name, p)
            res = c.offsets_for_times({tp: ts})[tp]
            want = _expected_offset(parts[p], ts)
            if want is None:
                assert res is None, f"partition {p} ts {ts}: got {res}, expected None (no such message)"
            else:
                assert res is not None and res.offset == want, f"partition {p} ts {ts}: got {res}, expected {want}"
                assert res.timestamp == parts[p][want].timestamp, f"partition {p} ts {ts}: timestamp {res.timestamp}"
    finally:
        c.close()
    start = 600
    got = kp_consume(broker.bootstrap, topic_name, [1], len(parts[1]) - start, start={1: start})
    assert_identical(parts[1][start:], got, "kafka-python seek")


@pytest.mark.cluster_ci
def test_watermarks_and_list_offsets_confluent(broker, topic_name):
    """Watermarks and AdminClient.list_offsets (earliest/latest/timestamp) match what was written."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    from clientutil import ck_admin

    ck_create_topic(broker.bootstrap, topic_name, 3)
    msgs = make_messages(900, 3, seed=5, base_ts=1_600_000_000_000)
    # acks=all: what is read next must be below the high watermark, which on RF 3 acks=1 does not wait for.
    ck_produce(broker.bootstrap, topic_name, msgs, acks="all")
    parts = by_partition(msgs)
    c = ck_consumer(broker.bootstrap)
    try:
        for p in range(3):
            lo, hi = c.get_watermark_offsets(TopicPartition(topic_name, p), timeout=10, cached=False)
            assert (lo, hi) == (0, len(parts[p])), f"partition {p} watermarks {(lo, hi)}"
    finally:
        c.close()
    admin = ck_admin(broker.bootstrap)
    for spec, want in [
        (OffsetSpec.earliest(), lambda p: 0),
        (OffsetSpec.latest(), lambda p: len(parts[p])),
        (OffsetSpec.for_timestamp(parts[2][100].timestamp), lambda p: _expected_offset(parts[p], parts[2][100].timestamp)),
    ]:
        req = {TopicPartition(topic_name, p): spec for p in range(3)}
        res = admin.list_offsets(req, request_timeout=10)
        for tp, fut in res.items():
            info = fut.result(timeout=15)
            assert info.offset == want(tp.partition), f"list_offsets {spec} partition {tp.partition}: {info.offset}"


@pytest.mark.parametrize(
    "client,codec,code",
    [
        pytest.param(
            client, codec, code, id=f"{client}-{codec}-{code}",
            marks=[pytest.mark.cluster_ci] if (client, codec) == ("confluent", "zstd") else [],
        )
        for client in CLIENTS
        for codec, code in [("gzip", 1), ("snappy", 2), ("lz4", 3), ("zstd", 4)]
    ],
)
def test_compressed_batches_pass_through(broker, topic_name, client, codec, code):
    """The broker stores and serves the producer's compressed batches as they were sent: a raw
    Fetch returns v2 batches with the producer's codec, consecutive offsets and valid CRC-32C.

    librdkafka only compresses with a codec it believes the broker supports (it derives that
    from ApiVersions: lz4 needs FindCoordinator v0 listed, zstd needs Produce v7 and Fetch v10),
    so this also catches an ApiVersions answer that silently turns compression off."""
    ck_create_topic(broker.bootstrap, topic_name, 1)
    msgs = make_messages(500, 1, seed=9)
    # acks=all: the raw Fetch below reads up to the high watermark, which on RF 3 acks=1 does not wait for.
    if client == "confluent":
        ck_produce(broker.bootstrap, topic_name, msgs, acks="all", codec=codec, **{"linger.ms": 100})
    else:
        kp_produce(broker.bootstrap, topic_name, msgs, acks="all", codec=codec)
    with kw.connect(broker.leader_port(topic_name)) as s:
        batches = []
        offset = 0
        for corr in range(100, 200):
            fp = kw.fetch(s, topic_name, 0, offset, correlation_id=corr)
            assert fp.error_code == kw.NONE, f"fetch at {offset}: error {fp.error_code}"
            assert fp.high_watermark == len(msgs)
            got = kw.parse_batches(fp.records or b"")
            assert got, f"fetch at {offset} below the high watermark returned no complete batch"
            batches += got
            offset = got[-1].base_offset + got[-1].last_offset_delta + 1
            if offset >= len(msgs):
                break
    assert all(b.magic == 2 for b in batches), "not record batch v2"
    codecs = sorted({b.compression for b in batches})
    assert codecs == [code], (
        f"{client} produced with {codec} but the stored batches use codec ids {codecs} "
        f"(0 = none: the client chose not to compress, or the broker rewrote the batch)"
    )
    assert all(b.crc_ok for b in batches), "a batch's CRC-32C does not match its bytes"
    expect = 0
    for b in batches:
        assert b.base_offset == expect, f"batch base offset {b.base_offset}, expected {expect}"
        assert b.record_count == b.last_offset_delta + 1
        expect += b.record_count
    assert expect == len(msgs)


@pytest.mark.cluster_ci
def test_message_size_limits(broker, topic_name):
    """A 900 KB message round-trips; a message above the topic's max.message.bytes (set at
    creation) is refused with MSG_SIZE_TOO_LARGE and not stored."""
    from confluent_kafka import KafkaError, Producer

    ck_create_topic(broker.bootstrap, topic_name, 1)
    big = make_messages(1, 1, seed=71)[0]
    big = dataclasses.replace(big, value=bytes(range(256)) * 3500)  # 896,000 bytes
    ck_produce(broker.bootstrap, topic_name, [big], acks="all")
    got = ck_consume(broker.bootstrap, topic_name, [0], 1)
    assert_identical([big], got, "900 KB message")

    small = f"{topic_name}-small"
    ck_create_topic(broker.bootstrap, small, 1, config={"max.message.bytes": "10000"})
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "enable.idempotence": False,
                  "message.timeout.ms": 15000, "retries": 0})
    errs = []
    p.produce(small, value=b"z" * 50_000, partition=0, on_delivery=lambda err, m: errs.append(err))
    p.flush(20)
    assert errs and errs[0] is not None, "a 50 KB message was accepted by a topic with max.message.bytes=10000"
    assert errs[0].code() == KafkaError.MSG_SIZE_TOO_LARGE, f"got {errs[0]}"
    c = ck_consumer(broker.bootstrap)
    try:
        from confluent_kafka import TopicPartition

        assert c.get_watermark_offsets(TopicPartition(small, 0), timeout=10, cached=False) == (0, 0)
    finally:
        c.close()


@pytest.mark.cluster_ci
def test_concurrent_producers_keep_per_producer_order(broker, topic_name):
    """Six producers on their own connections (landing on both shards) write to the same four
    partitions at once: nothing is lost, and each producer's messages keep their order within
    every partition."""
    import threading

    ck_create_topic(broker.bootstrap, topic_name, 4)
    per_producer = 1500
    sets = {}
    errors = []

    def run(i):
        msgs = [dataclasses.replace(m, value=f"p{i}:{j}:".encode() + (m.value or b""))
                for j, m in enumerate(make_messages(per_producer, 4, seed=100 + i))]
        sets[i] = msgs
        try:
            ck_produce(broker.bootstrap, topic_name, msgs, acks="1", codec=["none", "lz4", "zstd"][i % 3])
        except AssertionError as e:
            errors.append(f"producer {i}: {e}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    got = ck_consume(broker.bootstrap, topic_name, range(4), 6 * per_producer)
    assert len(got) == 6 * per_producer, f"consumed {len(got)} of {6 * per_producer}"
    for i, msgs in sets.items():
        prefix = f"p{i}:".encode()
        mine = by_partition(m for m in got if m.value.startswith(prefix))
        for part, want in by_partition(msgs).items():
            have = [m.content() for m in mine.get(part, [])]
            assert have == [m.content() for m in want], f"producer {i} partition {part}: order or content differs"
