"""The idempotent producer with real clients: confluent-kafka with enable.idempotence=True keeps
producing while the broker is killed -9 and restarted on the same port and data dir; what is
read back has no duplicates, no gaps, every acknowledged message at its reported offset, and
per-partition send order. kafka-python with enable_idempotence=True on the happy path."""

from __future__ import annotations

import time

import pytest

import kafka_wire as kw
from clientutil import (
    assert_identical,
    by_partition,
    ck_consume,
    ck_create_topic,
    kp_consume,
    kp_producer,
    make_messages,
    wait_for_partitions_ck,
)

PARTITIONS = 3


def assert_batches_idempotent_and_in_sequence(broker, topic: str, partitions: int) -> None:
    """Read every stored batch header with a raw Fetch: each batch carries a producer id, and
    per (producer id, epoch) the sequences run on without overlap or hole: the proof that the
    client really produced idempotently and the broker stored each batch once."""
    for p in range(partitions):
        with kw.connect(broker.leader_port(topic, p)) as sock:  # each partition from its leader
            offset, hw, headers = 0, None, []
            while hw is None or offset < hw:
                part = kw.fetch(sock, topic, p, offset, max_wait_ms=0)
                assert part.error_code == 0, f"partition {p}: fetch error {part.error_code}"
                hw = part.high_watermark
                batches = kw.parse_batches(part.records or b"")
                assert batches, f"partition {p}: no batch at offset {offset} below {hw}"
                headers += batches
                offset = batches[-1].base_offset + batches[-1].last_offset_delta + 1
            next_seq: dict[tuple[int, int], int] = {}
            for h in headers:
                assert h.crc_ok and h.producer_id >= 0, f"partition {p}: batch at {h.base_offset} is not idempotent"
                key = (h.producer_id, h.producer_epoch)
                want = next_seq.get(key, 0)  # a fresh producer id (or epoch) starts at 0
                assert h.base_sequence == want, (
                    f"partition {p}: batch at {h.base_offset} has sequence {h.base_sequence}, expected {want}"
                )
                next_seq[key] = h.base_sequence + h.record_count


@pytest.mark.timeout(150)
def test_confluent_idempotent_producer_across_kill9_restart(make_broker, topic_name):
    from confluent_kafka import Producer

    broker = make_broker()
    ck_create_topic(broker.bootstrap, topic_name, PARTITIONS)
    msgs = make_messages(12000, PARTITIONS, seed=61)
    p = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "max.in.flight.requests.per.connection": 5,
            "linger.ms": 5,
            "batch.num.messages": 200,
            # Long enough to ride out the restart: every message must end up delivered.
            "message.timeout.ms": 60000,
            "request.timeout.ms": 5000,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
        }
    )
    acked: dict[int, int] = {}  # message index -> offset
    errors: list[str] = []

    def cb_for(i):
        def cb(err, km):
            if err is None:
                acked[i] = km.offset()
            else:
                errors.append(f"message {i}: {err}")

        return cb

    def send(batch):
        for i, m in batch:
            while True:
                try:
                    p.produce(topic_name, value=m.value, key=m.key, partition=m.partition, timestamp=m.timestamp,
                              headers=list(m.headers) or None, on_delivery=cb_for(i))
                    break
                except BufferError:
                    p.poll(0.01)
            p.poll(0)

    indexed = list(enumerate(msgs))
    send(indexed[:5000])
    # Crash with requests in flight: as soon as 2000 are acknowledged.
    deadline = time.monotonic() + 30
    while len(acked) < 2000:
        assert time.monotonic() < deadline, f"only {len(acked)} acknowledged before the crash"
        p.poll(0.001)
    broker.kill9()
    in_flight = 5000 - len(acked)
    # Keep producing while the broker is down, then bring it back on the same port and data
    # dir; the producer retries what was in flight and sends the rest.
    send(indexed[5000:8000])
    time.sleep(1.0)
    broker.restart()
    send(indexed[8000:])
    assert in_flight > 0
    remaining = p.flush(80)
    assert remaining == 0, f"{remaining} messages still undelivered"
    assert not errors, f"{len(errors)} delivery errors, e.g. {errors[:3]}"
    assert len(acked) == len(msgs)

    wait_for_partitions_ck(broker.bootstrap, topic_name, PARTITIONS)
    got = ck_consume(broker.bootstrap, topic_name, range(PARTITIONS), len(msgs))
    # Every message exactly once, in send order per partition, offsets 0.. consecutive:
    # no duplicate from a retry across the crash, no gap.
    assert_identical(msgs, got, "idempotent produce across kill -9")
    at = {(m.partition, m.offset): m.content() for m in got}
    wrong = [i for i, off in acked.items() if at.get((msgs[i].partition, off)) != msgs[i].content()]
    assert not wrong, f"{len(wrong)} messages not at their acknowledged offset, e.g. {wrong[:5]}"
    for part, ms in by_partition(got).items():
        assert ms[0].offset == 0, f"partition {part} starts at {ms[0].offset}"
    assert_batches_idempotent_and_in_sequence(broker, topic_name, PARTITIONS)


@pytest.mark.cluster_ci
@pytest.mark.timeout(60)
def test_kafka_python_idempotent_producer(broker, topic_name):
    ck_create_topic(broker.bootstrap, topic_name, PARTITIONS)
    msgs = make_messages(600, PARTITIONS, seed=62)
    p = kp_producer(broker.bootstrap, acks="all", enable_idempotence=True)
    try:
        futures = [
            (m, p.send(topic_name, value=m.value, key=m.key, partition=m.partition, timestamp_ms=m.timestamp,
                       headers=list(m.headers) or None))
            for m in msgs
        ]
        p.flush(30)
        offsets = [(m, f.get(timeout=30).offset) for m, f in futures]
    finally:
        p.close(10)
    got = kp_consume(broker.bootstrap, topic_name, range(PARTITIONS), len(msgs))
    assert_identical(msgs, got, "kafka-python idempotent produce")
    at = {(m.partition, m.offset): m.content() for m in got}
    assert all(at.get((m.partition, off)) == m.content() for m, off in offsets)
    assert_batches_idempotent_and_in_sequence(broker, topic_name, PARTITIONS)
