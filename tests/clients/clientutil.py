"""Message sets and produce/consume/admin helpers for confluent-kafka and kafka-python.

Both clients are driven the same way so a test can say "produce these messages with client A
and these settings, read them back with client B, they must be identical". Consumers use
assign()+seek (never subscribe): consumer groups are not served by this broker yet, so no
group coordinator is ever needed.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
ACKS = ["0", "1", "all"]

# Upper bound for one produce or consume phase in a test (each test also has a pytest timeout).
PHASE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Msg:
    """A message as produced or consumed; offset is None on the produce side."""

    partition: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int
    offset: int | None = None

    def content(self):
        """Everything but the offset: what must come back identical."""
        return (self.partition, self.key, self.value, self.headers, self.timestamp)


def make_messages(n: int, partitions: int, seed: int, base_ts: int | None = None, payload: int = 200) -> list[Msg]:
    """n messages spread over `partitions`, with compressible values, some null keys, some null
    values (tombstones), some headers, and strictly increasing CreateTime timestamps."""
    rng = random.Random(seed)
    base_ts = base_ts if base_ts is not None else int(time.time() * 1000) - n - 60_000
    words = [b"sluice", b"segment", b"offset", b"partition", b"broker", b"replica", b"index"]
    out = []
    for i in range(n):
        p = i % partitions if i % 7 else rng.randrange(partitions)
        key = None if i % 11 == 5 else f"key-{rng.randrange(50)}".encode()
        if i % 13 == 6 and key is not None:
            value = None  # a tombstone (kafka-python refuses a null key with a null value)
        else:
            body = b" ".join(rng.choice(words) for _ in range(payload // 8))
            value = f"{seed}:{i}:".encode() + body
        headers = ((f"h{i % 3}", f"hv-{i}".encode()), ("trace", bytes([i % 256]))) if i % 5 == 0 else ()
        out.append(Msg(p, key, value, headers, base_ts + i))
    return out


def by_partition(msgs) -> dict[int, list]:
    out: dict[int, list] = defaultdict(list)
    for m in msgs:
        out[m.partition].append(m)
    return out


def assert_identical(produced: list[Msg], consumed: list[Msg], what: str = "") -> None:
    """Per partition, the consumed sequence equals the produced one (content and order), and
    offsets are consecutive from the partition's first consumed offset."""
    want = by_partition(produced)
    got = by_partition(consumed)
    problems = []
    for p in sorted(set(want) | set(got)):
        w = [m.content() for m in want.get(p, [])]
        g = [m.content() for m in got.get(p, [])]
        if w != g:
            first = next((i for i, (a, b) in enumerate(zip(w, g)) if a != b), min(len(w), len(g)))
            problems.append(
                f"partition {p}: produced {len(w)}, consumed {len(g)}; first difference at index {first}: "
                f"produced {w[first] if first < len(w) else '<nothing>'!r:.300} "
                f"consumed {g[first] if first < len(g) else '<nothing>'!r:.300}"
            )
        offs = [m.offset for m in got.get(p, [])]
        if offs and offs != list(range(offs[0], offs[0] + len(offs))):
            bad = next(i for i in range(1, len(offs)) if offs[i] != offs[i - 1] + 1)
            problems.append(f"partition {p}: offsets not consecutive at index {bad}: {offs[bad - 1]} then {offs[bad]}")
    if problems:
        raise AssertionError(f"{what}: consumed data differs from produced data:\n  " + "\n  ".join(problems[:10]))


# ====================================================================== confluent-kafka


def ck_admin(bootstrap: str):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000})


def ck_create_topic(bootstrap: str, topic: str, partitions: int, config: dict | None = None) -> None:
    from confluent_kafka.admin import NewTopic

    admin = ck_admin(bootstrap)
    # replication_factor=-1: the broker's default.replication.factor, 1 on one broker and 3 on
    # the cluster topology (sluice_cluster.ClusterBroker), so the same test covers both.
    fut = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=-1, config=config or {})],
        request_timeout=15,
    )[topic]
    fut.result(timeout=20)
    wait_for_partitions_ck(bootstrap, topic, partitions)


def wait_for_partitions_ck(bootstrap: str, topic: str, partitions: int, timeout: float = 10.0) -> None:
    """Metadata shows the topic with `partitions` partitions, each with a leader, and each
    leader answers a ListOffsets for its partition without error.

    The second half matters on a cluster: the broker that answers Metadata may have applied the
    new topic before its leader has opened the partition (for a few ms the leader answers
    NOT_LEADER_OR_FOLLOWER, a retriable error that clients retry but a test's one-shot call
    such as get_watermark_offsets does not)."""
    import kafka_wire as kw

    admin = ck_admin(bootstrap)
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=5)
        t = md.topics.get(topic)
        if t is not None and t.error is None:
            seen = {p: pm.leader for p, pm in t.partitions.items()}
            if len(seen) == partitions and all(leader in md.brokers for leader in seen.values()):
                errors = {}
                for p, leader in seen.items():
                    with kw.connect(md.brokers[leader].port, timeout=5) as s:
                        err, _, _ = kw.list_offsets(s, topic, p, -1)
                    if err != kw.NONE:
                        errors[p] = err
                if not errors:
                    return
                seen = f"leaders {seen}, ListOffsets errors {errors}"
        time.sleep(0.1)
    raise AssertionError(f"topic {topic}: metadata never showed {partitions} served partitions with leaders (last: {seen})")


def ck_produce(bootstrap: str, topic: str, msgs: list[Msg], acks: str = "all", codec: str = "none", **extra):
    """Produce msgs (explicit partitions and timestamps); return the delivery reports.

    Raises if any message failed. Each report is (Msg, offset) with offset -1 when acks=0.
    """
    from confluent_kafka import Producer

    conf = {
        "bootstrap.servers": bootstrap,
        "acks": acks,
        "compression.type": codec,
        # Plain produce by default (what these tests are about); test_idempotence.py covers
        # enable.idempotence, and a caller can pass it in `extra`.
        "enable.idempotence": False,
        "linger.ms": 5,
        "message.timeout.ms": int(PHASE_TIMEOUT_S * 1000),
        **extra,
    }
    p = Producer(conf)
    reports: list[tuple[Msg, int]] = []
    errors: list[str] = []

    def on_delivery(m: Msg):
        def cb(err, kmsg):
            if err is not None:
                errors.append(f"{m.partition}/{m.timestamp}: {err}")
            else:
                reports.append((m, kmsg.offset()))

        return cb

    for m in msgs:
        while True:
            try:
                p.produce(
                    topic,
                    value=m.value,
                    key=m.key,
                    partition=m.partition,
                    timestamp=m.timestamp,
                    headers=list(m.headers) or None,
                    on_delivery=on_delivery(m),
                )
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    left = p.flush(PHASE_TIMEOUT_S)
    if left:
        raise AssertionError(f"confluent producer: {left} messages not delivered within {PHASE_TIMEOUT_S}s")
    if errors:
        raise AssertionError(f"confluent producer: {len(errors)} delivery errors, first: {errors[:3]}")
    return reports


def ck_consumer(bootstrap: str, **extra):
    from confluent_kafka import Consumer

    conf = {
        "bootstrap.servers": bootstrap,
        # librdkafka insists on a group.id, but with assign() and explicit offsets it never
        # joins the group nor commits.
        "group.id": "sluice-tests-assign-only",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "error",  # an out-of-range position must surface, not be skipped
        "fetch.wait.max.ms": 100,
        "check.crcs": True,
        **extra,
    }
    return Consumer(conf)


def _ck_to_msg(km) -> Msg:
    ts_type, ts = km.timestamp()
    headers = tuple((k, v) for k, v in (km.headers() or []))
    return Msg(km.partition(), km.key(), km.value(), headers, ts, km.offset())


def ck_consume(
    bootstrap: str,
    topic: str,
    partitions,
    expected: int,
    start: dict[int, int] | None = None,
    timeout: float = PHASE_TIMEOUT_S,
) -> list[Msg]:
    """Assign `partitions` at `start` offsets (default: beginning) and read until `expected`
    messages arrived and every partition reported EOF, or until `timeout`."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    c = ck_consumer(bootstrap)
    try:
        start = start or {}
        c.assign([TopicPartition(topic, p, start.get(p, OFFSET_BEGINNING)) for p in partitions])
        out: list[Msg] = []
        eof: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for km in c.consume(num_messages=1000, timeout=0.3):
                err = km.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        eof[km.partition()] = km.offset()
                        continue
                    raise AssertionError(f"confluent consumer error on {topic}/{km.partition()}: {err}")
                out.append(_ck_to_msg(km))
                eof.pop(km.partition(), None)
            if len(out) >= expected and all(p in eof for p in partitions):
                break
        return out
    finally:
        c.close()


# ====================================================================== kafka-python


def kp_producer(bootstrap: str, acks="all", codec: str = "none", **extra):
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=bootstrap,
        acks={"0": 0, "1": 1, "all": "all"}[acks],
        compression_type=None if codec == "none" else codec,
        # Plain produce by default; test_idempotence.py passes enable_idempotence=True.
        enable_idempotence=extra.pop("enable_idempotence", False),
        linger_ms=5,
        request_timeout_ms=20000,
        max_block_ms=20000,
        **extra,
    )


def kp_produce(bootstrap: str, topic: str, msgs: list[Msg], acks: str = "all", codec: str = "none"):
    """Produce msgs with kafka-python; return [(Msg, offset)] (offset -1 with acks=0)."""
    p = kp_producer(bootstrap, acks, codec)
    try:
        futs = [
            (m, p.send(topic, value=m.value, key=m.key, partition=m.partition, timestamp_ms=m.timestamp,
                       headers=list(m.headers) or None))
            for m in msgs
        ]
        p.flush(timeout=PHASE_TIMEOUT_S)
        reports = []
        for m, f in futs:
            md = f.get(timeout=PHASE_TIMEOUT_S)
            reports.append((m, md.offset))
        return reports
    finally:
        p.close(timeout=10)


def kp_consumer(bootstrap: str, **extra):
    from kafka import KafkaConsumer

    conf = dict(
        bootstrap_servers=bootstrap,
        group_id=None,  # no group: assign/seek only
        enable_auto_commit=False,
        auto_offset_reset="none",  # an out-of-range position must surface, not be skipped
        fetch_max_wait_ms=100,
        check_crcs=True,
        request_timeout_ms=20000,
    )
    conf.update(extra)
    return KafkaConsumer(**conf)


def _kp_to_msg(r) -> Msg:
    headers = tuple((k, v) for k, v in (r.headers or []))
    return Msg(r.partition, r.key, r.value, headers, r.timestamp, r.offset)


def kp_consume(
    bootstrap: str,
    topic: str,
    partitions,
    expected: int,
    start: dict[int, int] | None = None,
    timeout: float = PHASE_TIMEOUT_S,
) -> list[Msg]:
    """Assign and seek (default: seek_to_beginning), read until `expected` messages arrived and
    every partition's position reached its end offset, or until `timeout`."""
    from kafka import TopicPartition

    c = kp_consumer(bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        c.assign(tps)
        start = start or {}
        for tp in tps:
            if tp.partition in start:
                c.seek(tp, start[tp.partition])
            else:
                c.seek_to_beginning(tp)
        out: list[Msg] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = c.poll(timeout_ms=300, max_records=2000)
            for recs in batch.values():
                out.extend(_kp_to_msg(r) for r in recs)
            if len(out) >= expected:
                end = c.end_offsets(tps, timeout_ms=10000)
                if all(c.position(tp) >= end[tp] for tp in tps):
                    break
        return out
    finally:
        c.close()


def kp_admin(bootstrap: str):
    from kafka import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)


def kp_create_topic(bootstrap: str, topic: str, partitions: int, config: dict | None = None) -> None:
    admin = kp_admin(bootstrap)
    try:
        admin.create_topics(
            # -1: default.replication.factor, as in ck_create_topic
            {topic: {"num_partitions": partitions, "replication_factor": -1, "configs": config or {}}},
            timeout_ms=15000,
        )
    finally:
        admin.close()
    wait_for_partitions_ck(bootstrap, topic, partitions)


# name -> (create_topic, produce, consume): lets a test run the same scenario with either client.
CLIENTS = {
    "confluent": (ck_create_topic, ck_produce, ck_consume),
    "kafka-python": (kp_create_topic, kp_produce, kp_consume),
}


def check_reported_offsets(reports, what: str) -> None:
    """With acks>=1 each partition's acknowledged offsets are 0..n-1 in the order produced
    (one producer, no retries expected on loopback)."""
    per: dict[int, list[int]] = defaultdict(list)
    for m, off in reports:
        per[m.partition].append(off)
    for p, offs in per.items():
        if offs != list(range(len(offs))):
            bad = next(i for i, o in enumerate(offs) if o != i)
            raise AssertionError(f"{what}: partition {p}: message #{bad} acknowledged at offset {offs[bad]}, expected {bad}")
