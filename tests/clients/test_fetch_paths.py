"""Both fetch paths (`fetch.zero.copy = true`: sendfile from the segment file; `false`: read
and write) serve byte-identical data to every client, including fetches that start inside a
batch, span segments, and hit the per-partition max_bytes limit."""

from __future__ import annotations

import pytest

import kafka_wire as kw
from clientutil import (
    assert_identical,
    ck_consume,
    ck_create_topic,
    ck_produce,
    kp_consume,
    make_messages,
)


@pytest.mark.parametrize("zero_copy", ["true", "false"])
def test_fetch_path_serves_identical_data(make_broker, topic_name, zero_copy):
    broker = make_broker(extra_args=["--set", f"fetch.zero.copy={zero_copy}"])
    # Small segments so consumers cross segment boundaries.
    ck_create_topic(broker.bootstrap, topic_name, 3, config={"segment.bytes": "1048576"})
    msgs = make_messages(12000, 3, seed=91, payload=300)
    ck_produce(broker.bootstrap, topic_name, msgs[:6000], acks="1", codec="none")
    ck_produce(broker.bootstrap, topic_name, msgs[6000:], acks="1", codec="zstd")
    assert_identical(msgs, ck_consume(broker.bootstrap, topic_name, range(3), len(msgs)), f"confluent, zero.copy={zero_copy}")
    assert_identical(msgs, kp_consume(broker.bootstrap, topic_name, range(3), len(msgs)), f"kafka-python, zero.copy={zero_copy}")

    # Raw fetches with a small per-partition limit walk the whole partition batch by batch;
    # every batch is whole and its CRC matches.
    with kw.connect(broker.port) as s:
        for p in range(3):
            offset, corr, records = 0, 100, 0
            while True:
                fp = kw.fetch(s, topic_name, p, offset, correlation_id=corr, max_wait_ms=0, max_bytes=64 * 1024)
                corr += 1
                assert fp.error_code == kw.NONE, f"partition {p} offset {offset}: error {fp.error_code}"
                batches = kw.parse_batches(fp.records or b"")
                if offset >= fp.high_watermark:
                    assert not batches
                    break
                assert batches, f"partition {p}: no complete batch at {offset} below hw {fp.high_watermark}"
                assert len(fp.records) <= 64 * 1024 or len(batches) == 1, "max_bytes exceeded by more than one batch"
                for b in batches:
                    assert b.crc_ok, f"partition {p}: bad CRC in batch at {b.base_offset}"
                    if b.base_offset + b.last_offset_delta >= offset:
                        records += b.base_offset + b.record_count - max(offset, b.base_offset)
                        offset = b.base_offset + b.last_offset_delta + 1
                assert corr < 2000, "fetch loop did not finish"
            assert records == fp.high_watermark, f"partition {p}: walked {records} records, hw {fp.high_watermark}"


@pytest.mark.parametrize("zero_copy", ["true", "false"])
def test_slow_consumer_does_not_make_the_broker_buffer(make_broker, topic_name, zero_copy):
    """A client that pipelines 200 fetches of ~4 MiB each (800 MiB of responses) and reads
    nothing: the broker's resident size stays bounded (it writes at the socket's pace instead
    of materialising every response), other connections are served meanwhile, and the slow
    client finally gets its responses in order."""
    import socket
    import time

    broker = make_broker(extra_args=["--set", f"fetch.zero.copy={zero_copy}"])
    ck_create_topic(broker.bootstrap, topic_name, 1)
    msgs = make_messages(16000, 1, seed=93, payload=260)  # ~4.5 MB uncompressed
    ck_produce(broker.bootstrap, topic_name, msgs, acks="1")
    rss0 = broker.rss_kib()
    slow = kw.connect(broker.port)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    n = 200
    reqs = b"".join(
        kw.request(kw.FETCH, 4, 10_000 + i, kw.fetch_body_v4(topic_name, 0, 0, max_wait_ms=0, max_bytes=4 << 20))
        for i in range(n)
    )
    slow.sendall(reqs)
    time.sleep(3)
    grew_mib = (broker.rss_kib() - rss0) / 1024
    print(f"RSS growth with 200 unread fetches (zero.copy={zero_copy}): {grew_mib:.1f} MiB")
    with kw.connect(broker.port) as other:
        assert kw.api_versions(other, correlation_id=5).error_code == kw.NONE
        fp = kw.fetch(other, topic_name, 0, 0, correlation_id=6, max_wait_ms=0, max_bytes=1 << 20)
        assert fp.error_code == kw.NONE and kw.parse_batches(fp.records or b"")
    assert grew_mib < 200, f"broker RSS grew {grew_mib:.0f} MiB while a client left ~800 MiB of fetch responses unread"
    # Drain a few responses: still in order and intact.
    slow.settimeout(20)
    for i in range(3):
        corr, body = kw.read_response(slow)
        assert corr == 10_000 + i
        fp = kw.parse_fetch_v4(body)[(topic_name, 0)]
        assert fp.error_code == kw.NONE and all(b.crc_ok for b in kw.parse_batches(fp.records or b""))
    slow.close()


@pytest.mark.parametrize("zero_copy", ["true", "false"])
def test_read_committed_fetch_of_an_ordinary_topic_is_read_uncommitted(make_broker, topic_name, zero_copy):
    """Without transactions the last stable offset is the high watermark: a read_committed
    fetch returns the same bytes as a read_uncommitted one, with the LSO set to the high
    watermark and an empty (not null) aborted-transaction list, on both fetch paths."""
    broker = make_broker(extra_args=["--set", f"fetch.zero.copy={zero_copy}"])
    ck_create_topic(broker.bootstrap, topic_name, 1)
    msgs = make_messages(3000, 1, seed=7, payload=200)
    ck_produce(broker.bootstrap, topic_name, msgs, acks="all", codec="lz4")
    with kw.connect(broker.port) as s:
        offset, corr = 0, 500
        while True:
            ru = kw.fetch(s, topic_name, 0, offset, correlation_id=corr, max_wait_ms=0, max_bytes=32 * 1024)
            rc = kw.fetch(s, topic_name, 0, offset, correlation_id=corr + 1, max_wait_ms=0, max_bytes=32 * 1024,
                          isolation_level=1)
            corr += 2
            assert ru.error_code == rc.error_code == kw.NONE
            assert ru.high_watermark == rc.high_watermark == len(msgs)
            assert ru.last_stable_offset == rc.last_stable_offset == ru.high_watermark
            assert ru.aborted_transactions is None, "read_uncommitted: null aborted transactions"
            assert rc.aborted_transactions == [], "read_committed: empty aborted transactions"
            assert rc.records == ru.records, f"different bytes at offset {offset}"
            batches = kw.parse_batches(rc.records or b"")
            if not batches:
                assert offset == len(msgs)
                break
            offset = max(b.base_offset + b.last_offset_delta + 1 for b in batches)
            assert corr < 2000, "fetch loop did not finish"
    # librdkafka with isolation.level=read_committed (its default) reads everything.
    assert_identical(msgs, ck_consume(broker.bootstrap, topic_name, range(1), len(msgs)), "confluent read_committed")
