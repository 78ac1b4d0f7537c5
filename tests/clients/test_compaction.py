"""Log compaction through real clients: a `cleanup.policy=compact` topic with overwrites and
tombstones compacts to the latest value per key (tombstoned keys gone with
delete.retention.ms=0), a consumer that was mid-read keeps seeing increasing offsets, both
clients read the rewritten (compressed, gapped) batches, and keyless records are refused."""

from __future__ import annotations

import time

import pytest

from clientutil import (
    Msg,
    ck_consume,
    ck_consumer,
    ck_create_topic,
    ck_produce,
    kp_consume,
)

KEYS = 20
ROUNDS = 12
DELETED = {f"k{i}".encode() for i in range(5)}
COMPACT_CONFIG = {
    "cleanup.policy": "compact",
    "segment.bytes": "4096",
    "segment.ms": "300",
    "delete.retention.ms": "0",
    "min.cleanable.dirty.ratio": "0.01",
}
CLEANER_ARGS = [
    "--set",
    "log.cleaner.backoff.ms=200",
    # The retention tick also rolls segments older than segment.ms, so the newest records
    # leave the active segment and become cleanable.
    "--set",
    "log.retention.check.interval.ms=200",
]


def _messages(base_ts: int) -> list[Msg]:
    out = []
    for r in range(ROUNDS):
        for k in range(KEYS):
            value = f"round-{r}-key-{k}-".encode() + b"v" * 60
            out.append(Msg(0, f"k{k}".encode(), value, (), base_ts + r * KEYS + k))
    for i, key in enumerate(sorted(DELETED)):
        out.append(Msg(0, key, None, (), base_ts + ROUNDS * KEYS + i))
    return out


def _latest(msgs: list[Msg]) -> dict[bytes, bytes]:
    latest: dict[bytes, bytes | None] = {}
    for m in msgs:
        latest[m.key] = m.value
    return {k: v for k, v in latest.items() if v is not None}


def _read_compacted(bootstrap: str, topic: str) -> list[Msg]:
    return ck_consume(bootstrap, topic, [0], expected=1, timeout=10)


@pytest.mark.timeout(120)
def test_compaction_keeps_latest_per_key(make_broker, topic_name):
    broker = make_broker(extra_args=CLEANER_ARGS)
    ck_create_topic(broker.bootstrap, topic_name, 1, COMPACT_CONFIG)
    base_ts = int(time.time() * 1000) - 60_000
    msgs = _messages(base_ts)
    ck_produce(broker.bootstrap, topic_name, msgs, codec="gzip", **{"batch.num.messages": 7})
    total = len(msgs)

    # A consumer that read part of the log before the cleaner ran.
    from confluent_kafka import TopicPartition

    # Small fetches and a tiny prefetch queue, so it really is in the middle of the log.
    mid = ck_consumer(
        broker.bootstrap,
        **{
            "message.max.bytes": 1000,
            "fetch.max.bytes": 1024,
            "receive.message.max.bytes": 2048,
            "max.partition.fetch.bytes": 512,
            "queued.max.messages.kbytes": 1,
            "queued.min.messages": 1,
        },
    )
    try:
        mid.assign([TopicPartition(topic_name, 0, 0)])
        seen: list[int] = []
        deadline = time.monotonic() + 20
        while len(seen) < 40 and time.monotonic() < deadline:
            km = mid.poll(0.3)
            if km is not None and km.error() is None:
                seen.append(km.offset())

        # Wait (bounded) until the log reads as exactly the latest value per live key.
        expected = _latest(msgs)
        deadline = time.monotonic() + 60
        got: list[Msg] = []
        while time.monotonic() < deadline:
            got = _read_compacted(broker.bootstrap, topic_name)
            if {m.key: m.value for m in got} == expected and len(got) == len(expected):
                break
            time.sleep(0.5)
        assert len(got) == len(expected), f"not compacted in time: {len(got)} records, want {len(expected)}"
        assert {m.key: m.value for m in got} == expected
        assert not any(m.key in DELETED for m in got), "tombstoned keys must be gone"
        offsets = [m.offset for m in got]
        assert offsets == sorted(set(offsets)), "offsets strictly increasing"
        # Offsets never change: each survivor sits where it was produced.
        by_content = {(m.key, m.value): i for i, m in enumerate(msgs)}
        assert all(m.offset == by_content[(m.key, m.value)] for m in got)
        assert max(offsets) < total

        # The mid-read consumer carries on across the rewritten segments.
        from confluent_kafka import KafkaError

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            km = mid.poll(0.3)
            if km is None:
                continue
            if km.error() is not None:
                if km.error().code() == KafkaError._PARTITION_EOF:
                    break
                raise AssertionError(f"mid-read consumer: {km.error()}")
            seen.append(km.offset())
        assert seen == sorted(set(seen)), "mid-read consumer saw offsets go back or repeat"
        assert seen and seen[-1] == offsets[-1]
    finally:
        mid.close()

    # kafka-python reads the rewritten batches too.
    kp = kp_consume(broker.bootstrap, topic_name, [0], expected=len(expected), timeout=20)
    assert [(m.offset, m.key, m.value) for m in kp] == [(m.offset, m.key, m.value) for m in got]

    # Compaction survives a restart.
    broker.stop()
    broker.restart()
    again = _read_compacted(broker.bootstrap, topic_name)
    assert [(m.offset, m.key, m.value) for m in again] == [(m.offset, m.key, m.value) for m in got]


@pytest.mark.cluster_ci
@pytest.mark.timeout(60)
def test_compacted_topic_refuses_keyless_records(broker, topic_name):
    from confluent_kafka import KafkaError, Producer

    ck_create_topic(broker.bootstrap, topic_name, 1, {"cleanup.policy": "compact"})
    p = Producer({"bootstrap.servers": broker.bootstrap, "message.timeout.ms": 10000, "retries": 0})
    errors = []
    p.produce(topic_name, value=b"no key", partition=0, on_delivery=lambda err, m: errors.append(err))
    p.flush(15)
    assert len(errors) == 1 and errors[0] is not None
    assert errors[0].code() == KafkaError.INVALID_RECORD, errors[0]
    # A keyed record is accepted.
    ck_produce(broker.bootstrap, topic_name, [Msg(0, b"k", b"v", (), int(time.time() * 1000))])


@pytest.mark.timeout(150)
def test_kill9_during_compaction_loses_nothing(make_broker, topic_name):
    """SIGKILL the broker while its cleaner is busy (four times, at different moments after a
    produce), restart: the log always reads with strictly increasing offsets, every record is
    the one produced at that offset, no latest value is lost, and once compacted it is the
    latest value per key. Where a kill lands is not controlled (a swap takes milliseconds);
    the kill at each step of the swap is tested deterministically in
    engine/tests/storage_compaction.rs."""
    broker = make_broker(
        extra_args=["--set", "log.cleaner.backoff.ms=20", "--set", "log.retention.check.interval.ms=50"]
    )
    config = dict(COMPACT_CONFIG, **{"segment.bytes": "2048", "segment.ms": "100"})
    ck_create_topic(broker.bootstrap, topic_name, 1, config)
    base_ts = int(time.time() * 1000) - 60_000
    produced: list[Msg] = []
    for attempt, delay in enumerate([0.05, 0.15, 0.3, 0.5]):
        msgs = [
            Msg(0, f"k{k}".encode(), f"a{attempt}-r{r}-k{k}-".encode() + b"x" * 50, (), base_ts + len(produced) + r * 10 + k)
            for r in range(6)
            for k in range(10)
        ]
        ck_produce(broker.bootstrap, topic_name, msgs, **{"batch.num.messages": 3})
        produced.extend(msgs)
        time.sleep(delay)
        broker.kill9()
        broker.restart()
        got = _read_compacted(broker.bootstrap, topic_name)
        offsets = [m.offset for m in got]
        assert offsets == sorted(set(offsets)), f"attempt {attempt}: offsets not increasing"
        for m in got:
            p = produced[m.offset]
            assert (m.key, m.value) == (p.key, p.value), f"attempt {attempt}: offset {m.offset} changed"
        latest = _latest(produced)
        have = {m.key: m.value for m in got}
        assert all(have.get(k) == v for k, v in latest.items()), f"attempt {attempt}: lost a latest value"
    expected = _latest(produced)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = _read_compacted(broker.bootstrap, topic_name)
        if len(got) == len(expected):
            break
        time.sleep(0.3)
    assert {m.key: m.value for m in got} == expected and len(got) == len(expected)
