"""Transactions (KIP-98) with confluent-kafka (librdkafka): commit and abort interleaved, what a
read_committed and a read_uncommitted consumer see, zombie fencing by a second producer with the
same transactional.id, a transaction left open that the coordinator aborts after its timeout
(also across a kill -9 of the broker), idle transactional ids expiring, and the transaction
admin APIs on the wire."""

from __future__ import annotations

import json
import time

import pytest

import kafka_wire as kw
from clientutil import ck_create_topic

PARTITIONS = 3


def txn_producer(bootstrap: str, txn_id: str, **extra):
    from confluent_kafka import Producer

    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": txn_id,
            "linger.ms": 5,
            "transaction.timeout.ms": 60000,
            **extra,
        }
    )
    p.init_transactions(30)
    return p


def read_all(bootstrap: str, topic: str, isolation: str, timeout: float = 30.0) -> list[tuple[int, int, bytes]]:
    """Every record of `topic` as (partition, offset, value), read from the beginning until every
    partition reported EOF, with `isolation.level` = isolation."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "txn-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": isolation,
            "fetch.wait.max.ms": 100,
        }
    )
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        out, eof = [], set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(eof) < PARTITIONS:
            for m in c.consume(num_messages=500, timeout=0.3):
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        eof.add(m.partition())
                        continue
                    raise AssertionError(f"consumer error: {m.error()}")
                eof.discard(m.partition())
                out.append((m.partition(), m.offset(), m.value()))
        assert len(eof) == PARTITIONS, f"not every partition reached EOF in {timeout}s: {eof}"
        return out
    finally:
        c.close()


def values(records) -> set[bytes]:
    return {v for _, _, v in records}


@pytest.mark.cluster_ci
def test_commit_and_abort_interleaved_read_committed_sees_only_commits(broker, topic_name):
    ck_create_topic(broker.bootstrap, topic_name, PARTITIONS)
    p = txn_producer(broker.bootstrap, f"tx-{topic_name}")
    committed, aborted = set(), set()
    for t in range(6):
        p.begin_transaction()
        batch = {f"t{t}-m{i}".encode() for i in range(30)}
        for i, v in enumerate(sorted(batch)):
            p.produce(topic_name, value=v, partition=i % PARTITIONS)
        p.flush(30)
        if t % 2 == 0:
            p.commit_transaction(30)
            committed |= batch
        else:
            p.abort_transaction(30)
            aborted |= batch
    # Non-transactional records after the transactions are readable either way.
    from confluent_kafka import Producer

    plain = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for i in range(PARTITIONS):
        plain.produce(topic_name, value=f"plain-{i}".encode(), partition=i)
    assert plain.flush(30) == 0
    plains = {f"plain-{i}".encode() for i in range(PARTITIONS)}

    rc = read_all(broker.bootstrap, topic_name, "read_committed")
    assert values(rc) == committed | plains, "read_committed must see exactly the committed records"
    assert len(rc) == len(committed) + len(plains), "no duplicates"
    ru = read_all(broker.bootstrap, topic_name, "read_uncommitted")
    assert values(ru) == committed | aborted | plains
    assert len(ru) == len(committed) + len(aborted) + len(plains)
    # The markers take offsets (one per partition per transaction) but are never records.
    for part in range(PARTITIONS):
        with kw.connect(broker.leader_port(topic_name, part)) as s:
            err, hw = kw.last_offset(s, topic_name, part)
        assert err == kw.NONE
        records_here = sum(1 for q, _, _ in ru if q == part)
        assert hw == records_here + 6, f"partition {part}: hw {hw}, {records_here} records + 6 markers"


@pytest.mark.cluster_ci
def test_a_second_producer_with_the_same_id_fences_the_first(broker, topic_name):
    from confluent_kafka import KafkaException

    ck_create_topic(broker.bootstrap, topic_name, PARTITIONS)
    txn_id = f"zombie-{topic_name}"
    old = txn_producer(broker.bootstrap, txn_id)
    old.begin_transaction()
    for i in range(10):
        old.produce(topic_name, value=f"zombie-{i}".encode(), partition=i % PARTITIONS)
    old.flush(30)
    new = txn_producer(broker.bootstrap, txn_id)  # fences `old`, aborting its open transaction
    new.begin_transaction()
    for i in range(10):
        new.produce(topic_name, value=f"new-{i}".encode(), partition=i % PARTITIONS)
    new.commit_transaction(30)
    # The zombie can neither write nor commit any more.
    with pytest.raises(KafkaException) as e:
        old.produce(topic_name, value=b"zombie-late", partition=0)
        old.flush(10)
        old.commit_transaction(10)
    err = e.value.args[0]
    assert err.fatal() or err.txn_requires_abort() or "fenced" in str(err).lower(), str(err)
    rc = read_all(broker.bootstrap, topic_name, "read_committed")
    assert values(rc) == {f"new-{i}".encode() for i in range(10)}, "nothing from the fenced producer"


@pytest.mark.single_node("kills and restarts the one broker")
def test_an_open_transaction_times_out_and_survives_a_restart(make_broker, tmp_path):
    b = make_broker(
        extra_args=["--set", "transaction.abort.timed.out.transaction.cleanup.interval.ms=500"]
    )
    topic = "txn-timeout"
    ck_create_topic(b.bootstrap, topic, PARTITIONS)
    p = txn_producer(b.bootstrap, "timeout-tx", **{"transaction.timeout.ms": 4000})
    p.begin_transaction()
    for i in range(9):
        p.produce(topic, value=f"open-{i}".encode(), partition=i % PARTITIONS)
    p.flush(30)
    with kw.connect(b.port) as s:
        err, lso = kw.last_offset(s, topic, 0, isolation_level=1)
        assert err == kw.NONE and lso == 0, "the open transaction holds the LSO at its first offset"
    # Leave it open; kill the broker: the coordinator must recover the transaction and abort it.
    b.kill9()
    b.restart()
    deadline = time.monotonic() + 30
    lso = 0
    while time.monotonic() < deadline:
        with kw.connect(b.port) as s:
            err, lso = kw.last_offset(s, topic, 0, isolation_level=1)
        if err == kw.NONE and lso > 0:
            break
        time.sleep(0.3)
    assert lso == 4, f"after the timeout the ABORT marker (offset 3) is stable: LSO {lso}"
    assert read_all(b.bootstrap, topic, "read_committed") == []
    assert len(read_all(b.bootstrap, topic, "read_uncommitted")) == 9
    # The fenced producer's commit fails.
    from confluent_kafka import KafkaException

    with pytest.raises(KafkaException):
        p.commit_transaction(10)


@pytest.mark.single_node("broker settings of its own, and a kill -9")
def test_idle_transactional_ids_expire_and_stay_expired_after_a_restart(make_broker):
    from test_sluicectl_groups import ctl, ctl_json

    b = make_broker(extra_args=[
        "--set", "transactional.id.expiration.ms=3000",
        "--set", "transaction.remove.expired.transaction.cleanup.interval.ms=300",
    ])
    topic = "txn-expiry"
    ck_create_topic(b.bootstrap, topic, PARTITIONS)
    done = txn_producer(b.bootstrap, "expiring-tx")
    done.begin_transaction()
    done.produce(topic, value=b"committed", partition=0)
    done.commit_transaction(30)
    old_pid = ctl_json(b, "transactions", "describe", "expiring-tx")["producer_id"]
    still_open = txn_producer(b.bootstrap, "open-tx")
    still_open.begin_transaction()
    still_open.produce(topic, value=b"open", partition=1)
    still_open.flush(30)

    def listed() -> dict:
        return {r["transactional_id"]: r["state"] for r in ctl_json(b, "transactions", "list")}

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "expiring-tx" in listed():
        time.sleep(0.3)
    now = listed()
    assert "expiring-tx" not in now, f"the idle id is removed after its expiration: {now}"
    assert now.get("open-tx") == "Ongoing", f"an id with an open transaction is kept: {now}"
    gone = ctl(b, "transactions", "describe", "expiring-tx", expect=None)
    assert gone.returncode != 0 and "TRANSACTIONAL_ID_NOT_FOUND" in (gone.stderr + gone.stdout).upper().replace(" ", "_")
    # The removal is a tombstone in __transaction_state: a restarted coordinator does not
    # bring the id back.
    b.kill9()
    b.restart()
    deadline = time.monotonic() + 30
    now = {}
    while time.monotonic() < deadline:
        r = ctl(b, "transactions", "list", "--output", "json", expect=None)
        if r.returncode == 0:
            now = {x["transactional_id"]: x["state"] for x in json.loads(r.stdout)}
            if "open-tx" in now:
                break
        time.sleep(0.3)
    assert "open-tx" in now and "expiring-tx" not in now, now
    # The expired id starts again as a new one: a new producer id.
    again = txn_producer(b.bootstrap, "expiring-tx")
    again.begin_transaction()
    again.produce(topic, value=b"again", partition=0)
    again.commit_transaction(30)
    assert ctl_json(b, "transactions", "describe", "expiring-tx")["producer_id"] != old_pid
    assert sorted(v for _, _, v in read_all(b.bootstrap, topic, "read_committed")) == [b"again", b"committed"]


@pytest.mark.cluster_ci
def test_sluicectl_lists_and_describes_transactions(broker, topic_name):
    from test_sluicectl_groups import ctl, ctl_json

    ck_create_topic(broker.bootstrap, topic_name, PARTITIONS)
    txn_id = f"described-{topic_name}"
    p = txn_producer(broker.bootstrap, txn_id)
    p.begin_transaction()
    p.produce(topic_name, value=b"x", partition=1)
    p.flush(30)
    d = ctl_json(broker, "transactions", "describe", txn_id)
    assert d["state"] == "Ongoing", d
    assert d["partitions"] == [f"{topic_name}-1"]
    assert d["timeout_ms"] == 60000 and d["duration_ms"] >= 0
    listed = {r["transactional_id"]: r for r in ctl_json(broker, "transactions", "list", "--state", "Ongoing")}
    assert listed[txn_id]["state"] == "Ongoing"
    assert listed[txn_id]["producer_id"] == d["producer_id"]
    assert listed[txn_id]["coordinator"] == d["coordinator"]
    p.commit_transaction(30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        d = ctl_json(broker, "transactions", "describe", txn_id)
        if d["state"] == "CompleteCommit":
            break
        time.sleep(0.1)
    assert d["state"] == "CompleteCommit" and d["partitions"] == [], d
    assert txn_id not in {r["transactional_id"] for r in ctl_json(broker, "transactions", "list", "--state", "Ongoing")}
    missing = ctl(broker, "transactions", "describe", "no-such-id", expect=None)
    assert missing.returncode != 0 and "TRANSACTIONAL_ID_NOT_FOUND" in (missing.stderr + missing.stdout).upper().replace(" ", "_"), missing
    bad = ctl(broker, "transactions", "list", "--state", "Bogus", expect=None)
    assert bad.returncode != 0 and "Bogus" in bad.stderr


@pytest.mark.cluster_ci
def test_consume_transform_produce_with_offsets_in_the_transaction(broker, topic_name):
    """A consume-transform-produce loop: each input record becomes one output record, and the
    input offsets are committed in the same transaction (send_offsets_to_transaction). One
    transaction in three is aborted and its input re-read; the output read_committed holds every
    input exactly once and the group's committed offsets are at the end."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    src, dst = f"{topic_name}-in", f"{topic_name}-out"
    ck_create_topic(broker.bootstrap, src, PARTITIONS)
    ck_create_topic(broker.bootstrap, dst, PARTITIONS)
    plain = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    inputs = [f"in-{i}".encode() for i in range(60)]
    for i, v in enumerate(inputs):
        plain.produce(src, value=v, partition=i % PARTITIONS)
    assert plain.flush(30) == 0
    group = f"ctp-{topic_name}"
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 100,
        }
    )
    consumer.assign([TopicPartition(src, p) for p in range(PARTITIONS)])
    producer = txn_producer(broker.bootstrap, f"ctp-{topic_name}")
    done, rounds, aborted_rounds = 0, 0, 0
    deadline = time.monotonic() + 60
    try:
        while done < len(inputs) and time.monotonic() < deadline:
            msgs = [m for m in consumer.consume(num_messages=10, timeout=1.0) if m.error() is None]
            if not msgs:
                continue
            producer.begin_transaction()
            for m in msgs:
                producer.produce(dst, value=m.value().replace(b"in-", b"out-"), partition=m.partition())
            positions = consumer.position(consumer.assignment())
            producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
            rounds += 1
            if rounds % 3 == 0:
                producer.abort_transaction(30)
                aborted_rounds += 1
                # Rewind to the committed offsets: the aborted batch is processed again.
                committed = consumer.committed([TopicPartition(src, p) for p in range(PARTITIONS)], timeout=10)
                for tp in committed:
                    consumer.seek(TopicPartition(src, tp.partition, tp.offset if tp.offset >= 0 else 0))
            else:
                producer.commit_transaction(30)
                done += len(msgs)
        committed = consumer.committed([TopicPartition(src, p) for p in range(PARTITIONS)], timeout=10)
    finally:
        consumer.close()
    assert done == len(inputs), f"processed {done} of {len(inputs)} in time"
    assert aborted_rounds > 0
    ends = {}
    for p in range(PARTITIONS):
        with kw.connect(broker.leader_port(src, p)) as s:
            ends[p] = kw.last_offset(s, src, p)[1]
    assert {tp.partition: tp.offset for tp in committed} == ends, "committed offsets at the input's end"
    out = read_all(broker.bootstrap, dst, "read_committed")
    assert sorted(v for _, _, v in out) == sorted(v.replace(b"in-", b"out-") for v in inputs), (
        "every input exactly once in the committed output"
    )
