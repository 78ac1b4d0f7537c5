"""Crash and restart: kill -9 in the middle of acknowledged traffic loses nothing that was
acknowledged; SIGTERM shuts down cleanly (exit 0) and a restart serves everything, topics and
their configs included."""

from __future__ import annotations

import socket
import time

import pytest

import kafka_wire as kw
from clientutil import (
    assert_identical,
    by_partition,
    check_reported_offsets,
    ck_admin,
    ck_consume,
    ck_consumer,
    ck_create_topic,
    ck_produce,
    make_messages,
    wait_for_partitions_ck,
)

PARTITIONS = 3


def _produce_until_killed(broker, topic, msgs, acks, kill_after_acks):
    """Produce msgs continuously; SIGKILL the broker once `kill_after_acks` of them were
    acknowledged. Returns the (Msg, offset) reports that were acknowledged."""
    from confluent_kafka import Producer

    p = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "acks": acks,
            "enable.idempotence": False,
            "linger.ms": 2,
            "message.timeout.ms": 4000,
            "retries": 0,  # a retry after the crash could only add unacknowledged duplicates
            "reconnect.backoff.max.ms": 500,
        }
    )
    acked: list = []
    failed = [0]

    def cb_for(m):
        def cb(err, km):
            if err is None:
                acked.append((m, km.offset()))
            else:
                failed[0] += 1

        return cb

    killed = False
    deadline = time.monotonic() + 30
    for m in msgs:
        if time.monotonic() > deadline:
            break
        while True:
            try:
                p.produce(topic, value=m.value, key=m.key, partition=m.partition, timestamp=m.timestamp,
                          headers=list(m.headers) or None, on_delivery=cb_for(m))
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
        if not killed and len(acked) >= kill_after_acks:
            broker.kill9()
            killed = True
            break
    assert killed, f"only {len(acked)} acknowledgements before running out of messages/time"
    p.purge(in_queue=True, in_flight=True)
    p.flush(10)
    return acked


@pytest.mark.parametrize("acks", ["1", "all"])
def test_kill9_keeps_every_acknowledged_message(make_broker, topic_name, acks):
    broker = make_broker()
    ck_create_topic(broker.bootstrap, topic_name, PARTITIONS)
    first = make_messages(3000, PARTITIONS, seed=41)
    reports = ck_produce(broker.bootstrap, topic_name, first, acks=acks, codec="lz4")
    check_reported_offsets(reports, "before the crash")

    second = make_messages(30000, PARTITIONS, seed=42, base_ts=first[-1].timestamp + 1)
    acked = _produce_until_killed(broker, topic_name, second, acks, kill_after_acks=2000)
    assert not broker.alive()

    broker.restart()
    wait_for_partitions_ck(broker.bootstrap, topic_name, PARTITIONS)
    want = {}  # (partition, offset) -> Msg
    for m, off in reports + acked:
        assert off >= 0, f"acknowledged with offset {off}"
        want[(m.partition, off)] = m
    ends = {}
    c = ck_consumer(broker.bootstrap)
    try:
        from confluent_kafka import TopicPartition

        for p in range(PARTITIONS):
            lo, hi = c.get_watermark_offsets(TopicPartition(topic_name, p), timeout=10, cached=False)
            ends[p] = hi
            top = max((o for (pp, o) in want if pp == p), default=-1)
            assert lo == 0 and hi > top, f"partition {p}: log is [{lo}, {hi}) after restart, acknowledged up to {top}"
    finally:
        c.close()
    got = ck_consume(broker.bootstrap, topic_name, range(PARTITIONS), sum(ends.values()))
    at = {(m.partition, m.offset): m for m in got}
    missing = [k for k in want if k not in at]
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
    changed = [k for k, m in want.items() if at[k].content() != m.content()]
    assert not changed, f"{len(changed)} acknowledged messages changed, e.g. {sorted(changed)[:5]}"
    # Unacknowledged messages may be there or not, but only whole and as sent.
    sent = {m.content() for m in first + second}
    alien = [k for k, m in at.items() if m.content() not in sent]
    assert not alien, f"{len(alien)} messages after restart that were never produced, e.g. {sorted(alien)[:5]}"
    for p, ms in by_partition(got).items():
        assert [m.offset for m in ms] == list(range(ends[p])), f"partition {p}: offsets after restart are not 0..{ends[p] - 1}"

    # The restarted log appends after what it recovered.
    more = make_messages(300, PARTITIONS, seed=43, base_ts=second[-1].timestamp + 1)
    reports = ck_produce(broker.bootstrap, topic_name, more, acks=acks)
    for m, off in reports:
        assert off >= ends[m.partition], f"partition {m.partition}: new message at {off}, log ended at {ends[m.partition]}"
    start = {p: ends[p] for p in range(PARTITIONS)}
    got = ck_consume(broker.bootstrap, topic_name, range(PARTITIONS), len(more), start=start)
    assert_identical(more, got, "produced after restart")


def test_sigterm_clean_shutdown_then_restart_serves_everything(make_broker, topic_name):
    """SIGTERM with an idle connection and a parked 10 s long-poll fetch open: the process exits
    0 without waiting out the poll; after a restart topics, partitions, configs and data are
    all there and new writes continue the offsets."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    broker = make_broker()
    ck_create_topic(broker.bootstrap, topic_name, 2, config={"retention.ms": "86400000"})
    admin = ck_admin(broker.bootstrap)
    res = ConfigResource(ResourceType.TOPIC, topic_name,
                         incremental_configs=[ConfigEntry("segment.bytes", "1048576", incremental_operation=AlterConfigOpType.SET)])
    [fut] = admin.incremental_alter_configs([res], request_timeout=15).values()
    fut.result(timeout=20)
    msgs = make_messages(4000, 2, seed=51)
    ck_produce(broker.bootstrap, topic_name, msgs, acks="1", codec="zstd")
    n0 = len(by_partition(msgs)[0])

    idle = kw.connect(broker.port)
    parked = kw.connect(broker.port)
    parked.sendall(kw.request(kw.FETCH, 4, 77, kw.fetch_body_v4(topic_name, 0, n0, max_wait_ms=10_000)))
    time.sleep(0.3)
    t0 = time.monotonic()
    code = broker.stop(timeout=15)
    took = time.monotonic() - t0
    assert code == 0, f"SIGTERM: exit code {code} after {took:.1f}s (log above)"
    assert took < 12, f"SIGTERM took {took:.1f}s: an idle connection or a parked fetch held up shutdown"
    idle.close()
    parked.close()

    broker.restart()
    wait_for_partitions_ck(broker.bootstrap, topic_name, 2)
    admin = ck_admin(broker.bootstrap)
    [fut] = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic_name)], request_timeout=15).values()
    cfg = fut.result(timeout=20)
    assert cfg["retention.ms"].value == "86400000", "creation-time config lost over restart"
    assert cfg["segment.bytes"].value == "1048576", "altered config lost over restart"
    got = ck_consume(broker.bootstrap, topic_name, [0, 1], len(msgs))
    assert_identical(msgs, got, "after SIGTERM + restart")
    more = make_messages(100, 2, seed=52, base_ts=msgs[-1].timestamp + 1)
    reports = ck_produce(broker.bootstrap, topic_name, more, acks="all")
    ends = {p: len(ms) for p, ms in by_partition(msgs).items()}
    for m, off in reports:
        assert off >= ends[m.partition], f"partition {m.partition}: offset {off} reused after restart"


def test_sigterm_twice_in_a_row_on_an_empty_broker(make_broker):
    """Start/stop cycles on the same data dir each exit 0 and leave a broker that starts."""
    broker = make_broker()
    for _ in range(2):
        assert broker.stop() == 0
        broker.restart()
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as s:
        assert kw.api_versions(s).error_code == 0
