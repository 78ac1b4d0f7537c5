"""A compacted topic replicated on three brokers (issue 12 item 4).

Overwrites of 20 keys on a `cleanup.policy=compact` RF-3 topic with small segments and a fast
cleaner: a follower is killed while the leader keeps taking (and cleaning) overwrites, comes
back and fetches the cleaned range (offset gaps it must accept), then the leader is killed
-9 and a survivor takes over. In the end every replica's own log files hold exactly the latest
value per key, every replica has cleaned (fewer records than were written), and the follower
that came back had to accept a gap (the leader's cleaned log has no record at its log
end). Each log is read straight from the replica's
segment files (uncompressed v2 batches, decoded here).
"""

from __future__ import annotations

import struct
import time

import pytest
from confluent_kafka import Producer

from sluice_cluster import Cluster

KEYS = 20
COMPACT_CONFIG = {
    "cleanup.policy": "compact",
    "segment.bytes": "4096",
    "segment.ms": "300",
    "min.cleanable.dirty.ratio": "0.01",
    "min.insync.replicas": "2",
}
CLEANER_ARGS = [
    "--set", "log.cleaner.backoff.ms=200",
    # The retention tick also rolls segments older than segment.ms (cleanable once rolled).
    "--set", "log.retention.check.interval.ms=200",
]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def read_log(data_dir, topic: str) -> list[tuple[int, bytes, bytes]]:
    """(offset, key, value) of every data record in the replica's segment files, in order.
    A batch cut short at the tail (being written) ends the read."""
    out = []
    for seg in sorted((data_dir / f"{topic}-0").glob("*.log")):
        buf = seg.read_bytes()
        pos = 0
        while pos + 61 <= len(buf):
            base, length = struct.unpack_from(">qi", buf, pos)
            end = pos + 12 + length
            if length < 49 or end > len(buf):
                break
            attributes = struct.unpack_from(">h", buf, pos + 21)[0]
            assert attributes & 0x07 == 0, "the test produces uncompressed batches"
            count = struct.unpack_from(">i", buf, pos + 57)[0]
            r = pos + 61
            for _ in range(count if not attributes & 0x20 else 0):  # skip control batches
                _, r = _varint(buf, r)  # record length
                r += 1  # attributes
                _, r = _varint(buf, r)  # timestamp delta
                delta, r = _varint(buf, r)
                klen, r = _varint(buf, r)
                key = buf[r:r + klen]
                r += klen
                vlen, r = _varint(buf, r)
                value = buf[r:r + vlen]
                r += vlen
                headers, r = _varint(buf, r)
                for _ in range(headers):
                    hk, r = _varint(buf, r)
                    r += hk
                    hv, r = _varint(buf, r)
                    r += max(hv, 0)
                out.append((base + delta, key, value))
            pos = end
    return out


def latest(records) -> dict[bytes, bytes]:
    got: dict[bytes, bytes] = {}
    for _, k, v in records:
        got[k] = v
    return got


def produce_rounds(bootstrap: str, topic: str, rounds: range, expected: dict[bytes, bytes]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 2, "batch.num.messages": 5,
                  "compression.type": "none", "retries": 100, "retry.backoff.ms": 100,
                  "message.timeout.ms": 30000})
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)

    for r in rounds:
        for k in range(KEYS):
            key = f"k{k}".encode()
            value = f"round-{r}-".encode() + b"v" * 80
            p.produce(topic, key=key, value=value, on_delivery=on_delivery)
            expected[key] = value
        p.poll(0)
    assert p.flush(60) == 0
    assert not errors, errors


def wait_compacted(cluster, node: int, topic: str, expected: dict, timeout: float = 45.0) -> list:
    """Waits (bounded) until `node`'s log holds the latest value per key and fewer records than
    written (its own cleaner ran)."""
    deadline = time.monotonic() + timeout
    records: list = []
    while time.monotonic() < deadline:
        records = read_log(cluster.broker(node).data_dir, topic)
        if latest(records) == expected and len(records) <= 2 * KEYS:
            return records
        time.sleep(0.3)
    raise AssertionError(
        f"node {node}: {len(records)} records, latest-per-key match: {latest(records) == expected}")


@pytest.mark.timeout(180)
def test_compacted_topic_replicates_through_cleaning_and_failover(make_broker):
    cluster = Cluster(make_broker, "isr", extra=CLEANER_ARGS)
    topic = "compacted"
    cluster.create_topic(topic, partitions=1, rf=3, config=COMPACT_CONFIG)
    leader, replicas, _ = cluster.wait_partition(topic, "ISR of 3", lambda l, r, i: len(i) == 3)
    expected: dict[bytes, bytes] = {}
    produce_rounds(cluster.bootstrap(), topic, range(0, 4), expected)

    # A follower goes away; the leader takes many more overwrites and cleans them.
    follower = next(b for b in replicas if b != leader)
    cluster.broker(follower).kill9()
    cluster.wait_partition(topic, "follower out of the ISR", lambda l, r, i: follower not in i,
                           exclude=(follower,))
    produce_rounds(cluster.bootstrap(exclude=(follower,)), topic, range(4, 16), expected)
    cleaned = wait_compacted(cluster, leader, topic, expected)
    # Where the follower's log ends, the leader's log has a hole: the follower's next fetch
    # returns a batch starting above its log end (a refused append would keep it out of
    # the ISR for good).
    follower_end = max(o for o, _, _ in read_log(cluster.broker(follower).data_dir, topic)) + 1
    leader_offsets = {o for o, _, _ in cleaned}
    assert follower_end not in leader_offsets and max(leader_offsets) > follower_end, (
        follower_end, sorted(leader_offsets)[:5])

    # It comes back and fetches the cleaned range: offsets with gaps, which it must accept.
    cluster.broker(follower).restart()
    cluster.wait_partition(topic, "follower back in the ISR", lambda l, r, i: follower in i)
    produce_rounds(cluster.bootstrap(), topic, range(16, 18), expected)

    # kill -9 the leader: a survivor takes over and the topic keeps taking overwrites.
    cluster.broker(leader).kill9()
    new_leader, _, _ = cluster.wait_partition(
        topic, "a new leader", lambda l, r, i: l not in (-1, leader), exclude=(leader,))
    produce_rounds(cluster.bootstrap(exclude=(leader,)), topic, range(18, 22), expected)
    cluster.broker(leader).restart()
    cluster.wait_partition(topic, "the old leader back in the ISR", lambda l, r, i: len(i) == 3)

    # Every replica, from its own files: the latest value per key, and cleaned by itself.
    written = 22 * KEYS
    for node in cluster.ids:
        records = wait_compacted(cluster, node, topic, expected)
        offsets = [o for o, _, _ in records]
        assert offsets == sorted(set(offsets)), f"node {node}: offsets not increasing"
        assert len(records) < written, f"node {node} never cleaned"
    assert new_leader != leader
