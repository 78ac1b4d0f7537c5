"""Incremental fetch sessions (KIP-227): kafka-python's consumer (which uses them by default)
reads everything exactly as with full fetches while /metrics shows the incremental fetches and
the open session; raw Fetch v7 requests walk the session rules (omitted unchanged partitions,
remembered positions, forgotten partitions, epoch and id errors, closing); and a consumer on a
3-broker cluster reads RF-3 partitions through sessions on every leader."""

from __future__ import annotations

import time

import pytest

import kafka_wire as kw
from clientutil import assert_identical, ck_create_topic, ck_produce, kp_consume, kp_consumer, make_messages, _kp_to_msg
from sluice_broker import free_port
from test_metrics import scrape, total

PARTITIONS = 16


def session_broker(make_broker, *extra: str, shards: int = 2):
    """(broker, admin port)."""
    port = free_port()
    b = make_broker(shards=shards, extra_args=["--set", f"admin.listener=127.0.0.1:{port}", *extra])
    return b, port


@pytest.mark.timeout(120)
def test_consumer_with_sessions_reads_everything(make_broker, topic_name):
    from kafka import TopicPartition

    broker, admin = session_broker(make_broker)
    ck_create_topic(broker.bootstrap, topic_name, PARTITIONS)
    msgs = make_messages(4000, PARTITIONS, seed=227, payload=120)
    first, second = msgs[:2500], msgs[2500:]
    ck_produce(broker.bootstrap, topic_name, first, acks="1")

    c = kp_consumer(broker.bootstrap, enable_incremental_fetch_sessions=True)
    got = []
    try:
        tps = [TopicPartition(topic_name, p) for p in range(PARTITIONS)]
        c.assign(tps)
        c.seek_to_beginning(*tps)

        def read_until(n: int) -> None:
            deadline = time.monotonic() + 30
            while len(got) < n and time.monotonic() < deadline:
                for recs in c.poll(timeout_ms=300, max_records=2000).values():
                    got.extend(_kp_to_msg(r) for r in recs)

        read_until(len(first))
        # More data arrives while the session is open: the incremental responses carry only
        # the partitions that changed, and nothing is lost or repeated.
        ck_produce(broker.bootstrap, topic_name, second, acks="1")
        read_until(len(msgs))
        # A few idle fetches (nothing changes: empty incremental responses).
        for _ in range(3):
            assert not c.poll(timeout_ms=200)
        s = scrape(admin)
        assert total(s, "sluice_fetch_requests_total", kind="incremental") >= 3, s
        assert total(s, "sluice_fetch_requests_total", kind="full") >= 1
        assert total(s, "sluice_fetch_sessions") >= 1
        assert total(s, "sluice_fetch_session_partitions") >= PARTITIONS
        assert total(s, "sluice_fetch_sessions_created_total") >= 1
        assert total(s, "sluice_request_errors_total", api="Fetch") == 0
    finally:
        c.close()
    assert_identical(msgs, got, "kafka-python with incremental fetch sessions")
    # The same data through full fetches only.
    c2 = kp_consume(broker.bootstrap, topic_name, range(PARTITIONS), len(msgs))
    assert_identical(msgs, c2, "kafka-python with full fetches")


def produce_raw(sock, topic: str, partition: int, values: list[bytes], corr: int) -> None:
    now = int(time.time() * 1000)
    res = kw.produce(sock, topic, partition, kw.record_batch(values, [now] * len(values)), correlation_id=corr)
    assert res.error_code == kw.NONE, res


@pytest.mark.timeout(60)
def test_raw_session_rules(make_broker, topic_name):
    broker, admin = session_broker(make_broker)
    ck_create_topic(broker.bootstrap, topic_name, 3)
    t = topic_name
    with kw.connect(broker.port) as s:
        produce_raw(s, t, 0, [b"a0", b"a1"], 1)
        produce_raw(s, t, 1, [b"b0"], 2)

        # Full fetch, epoch 0: a session, and every partition in the response.
        full = kw.session_fetch(s, 0, 0, [(t, 0, 0), (t, 1, 0), (t, 2, 0)], correlation_id=10)
        assert full.error_code == kw.NONE
        sid = full.session_id
        assert sid > 0
        assert set(full.partitions) == {(t, 0), (t, 1), (t, 2)}
        assert [b.record_count for b in kw.parse_batches(full.partitions[(t, 0)].records)] == [2]
        assert full.partitions[(t, 2)].high_watermark == 0

        # Incremental, epoch 1: the client moved p0 and p1 to their ends; nothing changed, so
        # the response lists no partition.
        inc = kw.session_fetch(s, sid, 1, [(t, 0, 2), (t, 1, 1)], correlation_id=11)
        assert (inc.error_code, inc.session_id, inc.partitions) == (kw.NONE, sid, {})

        # New data in p2 only: the response carries p2 alone, read from the position the session
        # remembers (0), though the request named no partition.
        produce_raw(s, t, 2, [b"c0", b"c1", b"c2"], 3)
        inc = kw.session_fetch(s, sid, 2, [], correlation_id=12)
        assert inc.error_code == kw.NONE
        assert set(inc.partitions) == {(t, 2)}
        assert inc.partitions[(t, 2)].high_watermark == 3
        assert sum(b.record_count for b in kw.parse_batches(inc.partitions[(t, 2)].records)) == 3

        # The same epoch again (a duplicate): INVALID_FETCH_SESSION_EPOCH, no partitions.
        dup = kw.session_fetch(s, sid, 2, [], correlation_id=13)
        assert (dup.error_code, dup.session_id, dup.partitions) == (kw.INVALID_FETCH_SESSION_EPOCH, 0, {})
        # An id the broker never handed out: FETCH_SESSION_ID_NOT_FOUND.
        bad_id = sid + 1 if sid < 2**31 - 2 else sid - 1
        nf = kw.session_fetch(s, bad_id, 1, [], correlation_id=14)
        assert (nf.error_code, nf.session_id, nf.partitions) == (kw.FETCH_SESSION_ID_NOT_FOUND, 0, {})

        # The session survived the refused requests (epoch 3 is next). Forget p2 and rewind p0
        # to 0: p0 comes back with its records, p2 is left out although it got more data.
        produce_raw(s, t, 2, [b"c3"], 4)
        inc = kw.session_fetch(s, sid, 3, [(t, 0, 0)], forgotten=[(t, 2)], correlation_id=15)
        assert inc.error_code == kw.NONE
        assert set(inc.partitions) == {(t, 0)}
        assert [b.record_count for b in kw.parse_batches(inc.partitions[(t, 0)].records)] == [2]

        # The broker keeps p0 at the position the client last sent (it does not advance it),
        # so p0's records come again until the client moves it.
        inc = kw.session_fetch(s, sid, 4, [], correlation_id=16, max_wait_ms=50)
        assert set(inc.partitions) == {(t, 0)}
        inc = kw.session_fetch(s, sid, 5, [(t, 0, 2)], correlation_id=17, max_wait_ms=50)
        assert inc.partitions == {}

    # The session works from other connections too (with 2 shards some of them are accepted
    # by the shard that does not hold it).
    epoch = 6
    for i in range(6):
        with kw.connect(broker.port) as other:
            produce_raw(other, t, 1, [f"b{i + 1}".encode()], 30 + i)
            inc = kw.session_fetch(other, sid, epoch, [], correlation_id=40 + i)
            assert inc.error_code == kw.NONE and inc.session_id == sid, (i, inc)
            assert set(inc.partitions) == {(t, 1)}, (i, inc.partitions.keys())
            assert inc.partitions[(t, 1)].high_watermark == i + 2
            epoch += 1
            # Catch p1 up so the next round sees only the next record.
            inc = kw.session_fetch(other, sid, epoch, [(t, 1, i + 2)], correlation_id=50 + i, max_wait_ms=20)
            assert inc.error_code == kw.NONE and inc.partitions == {}, (i, inc)
            epoch += 1

    s = scrape(admin)
    assert total(s, "sluice_fetch_sessions") == 1
    assert total(s, "sluice_fetch_session_partitions") == 2  # p0 and p1
    assert total(s, "sluice_request_errors_total", api="Fetch", error="INVALID_FETCH_SESSION_EPOCH") == 1
    assert total(s, "sluice_request_errors_total", api="Fetch", error="FETCH_SESSION_ID_NOT_FOUND") == 1

    with kw.connect(broker.port) as s2:
        # Epoch -1 with the session id closes it and answers a sessionless full fetch.
        closing = kw.session_fetch(s2, sid, -1, [(t, 1, 0)], correlation_id=60, max_wait_ms=0)
        assert (closing.error_code, closing.session_id) == (kw.NONE, 0)
        assert set(closing.partitions) == {(t, 1)}
        gone = kw.session_fetch(s2, sid, epoch, [], correlation_id=61)
        assert gone.error_code == kw.FETCH_SESSION_ID_NOT_FOUND
        # Forgetting every partition closes a session as well.
        sid2 = kw.session_fetch(s2, 0, 0, [(t, 0, 2)], correlation_id=62, max_wait_ms=0).session_id
        assert sid2 > 0
        emptied = kw.session_fetch(s2, sid2, 1, [], forgotten=[(t, 0)], correlation_id=63)
        assert (emptied.error_code, emptied.session_id, emptied.partitions) == (kw.NONE, 0, {})
        assert kw.session_fetch(s2, sid2, 2, [], correlation_id=64).error_code == kw.FETCH_SESSION_ID_NOT_FOUND
    s = scrape(admin)
    assert total(s, "sluice_fetch_sessions") == 0
    assert total(s, "sluice_fetch_session_partitions") == 0


@pytest.mark.timeout(60)
def test_full_cache_answers_without_a_session(make_broker, topic_name):
    """One slot (one shard, so the slot is on the connection's shard): a second session is
    refused (session id 0, a full answer) until the first one is idle past the eviction time;
    then the newcomer evicts it."""
    broker, admin = session_broker(
        make_broker,
        "--set", "max.incremental.fetch.session.cache.slots=1",
        "--set", "min.incremental.fetch.session.eviction.ms=1500",
        shards=1,
    )
    ck_create_topic(broker.bootstrap, topic_name, 2)
    t = topic_name
    with kw.connect(broker.port) as s:
        a = kw.session_fetch(s, 0, 0, [(t, 0, 0)], correlation_id=1, max_wait_ms=0)
        b = kw.session_fetch(s, 0, 0, [(t, 0, 0), (t, 1, 0)], correlation_id=2, max_wait_ms=0)
        assert a.session_id > 0 and b.session_id == 0 and set(b.partitions) == {(t, 0), (t, 1)}
        time.sleep(2.0)
        c = kw.session_fetch(s, 0, 0, [(t, 1, 0)], correlation_id=3, max_wait_ms=0)
        assert c.session_id > 0 and c.session_id != a.session_id
        assert kw.session_fetch(s, a.session_id, 1, [], correlation_id=4).error_code == kw.FETCH_SESSION_ID_NOT_FOUND
        assert kw.session_fetch(s, c.session_id, 1, [], correlation_id=5, max_wait_ms=0).error_code == kw.NONE
    m = scrape(admin)
    assert total(m, "sluice_fetch_session_evictions_total") == 1
    assert total(m, "sluice_fetch_sessions") == 1


@pytest.mark.timeout(150)
def test_cluster_consumer_with_sessions_reads_rf3_partitions(make_broker, topic_name):
    from kafka import TopicPartition
    from sluice_cluster import Cluster

    cluster = Cluster(make_broker)
    cluster.create_topic(topic_name, partitions=6, rf=3)
    for p in range(6):
        cluster.wait_partition(topic_name, "all replicas in sync", lambda leader, _r, isr: leader > 0 and len(isr) == 3, p=p)
    msgs = make_messages(1800, 6, seed=228, payload=100)
    ck_produce(cluster.bootstrap(), topic_name, msgs, acks="all")
    c = kp_consumer(cluster.bootstrap(), enable_incremental_fetch_sessions=True)
    got = []
    try:
        tps = [TopicPartition(topic_name, p) for p in range(6)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        deadline = time.monotonic() + 40
        while len(got) < len(msgs) and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=300, max_records=2000).values():
                got.extend(_kp_to_msg(r) for r in recs)
        for _ in range(2):
            c.poll(timeout_ms=200)
        incremental = sum(
            total(scrape(port), "sluice_fetch_requests_total", kind="incremental") for port in cluster.admin_ports
        )
        sessions = sum(total(scrape(port), "sluice_fetch_sessions") for port in cluster.admin_ports)
    finally:
        c.close()
    assert_identical(msgs, got, "kafka-python with fetch sessions on a 3-broker cluster")
    assert incremental > 0
    assert sessions >= 1
