"""Record timestamps as Kafka's LogValidator stores them (issue 18).

A raw-socket producer sends batches the way some older clients do (header max timestamp -1,
real CreateTime timestamps on the records); the broker must store the batch max timestamp
computed from the records, so time lookups (ListOffsets, offsets_for_times in both Python
clients, kcat -Q) and time-based retention work. Also: LogAppendTime topics, the
message.timestamp.before/after/difference windows, and zstd below Produce v7.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest

import kafka_wire as kw
from clientutil import ck_consumer, ck_create_topic, kp_consumer

BASE = 1_700_000_000_000
CODECS = {"none": 0, "gzip": 1, "zstd": 4}


def _batches_minus_one(codec: int) -> tuple[list[bytes], list[int]]:
    """Three batches of five records each, header max timestamp -1; returns (batches, ts per offset).

    Timestamps inside a batch are not sorted (the max is not the last record) and batch 2's
    records are older than batch 1's last one, as out-of-order producers write them.
    """
    ts_per_batch = [
        [BASE + 0, BASE + 40, BASE + 10, BASE + 20, BASE + 30],
        [BASE + 100, BASE + 110, BASE + 150, BASE + 120, BASE + 130],
        [BASE + 140, BASE + 200, BASE + 210, BASE + 220, BASE + 230],
    ]
    batches = []
    all_ts: list[int] = []
    for b, tss in enumerate(ts_per_batch):
        values = [f"b{b}-r{i}".encode() * 8 for i in range(len(tss))]
        batches.append(kw.record_batch(values, tss, codec=codec, header_max_timestamp=-1))
        all_ts += tss
    return batches, all_ts


def _expected(all_ts: list[int], target: int) -> int:
    """Kafka's answer: the first offset whose timestamp is >= target, or -1."""
    return next((o for o, ts in enumerate(all_ts) if ts >= target), -1)


def _kcat_offset(bootstrap: str, topic: str, ts: int) -> int:
    path = shutil.which("kcat")
    if path is None:
        pytest.fail("kcat is not installed (Debian package `kcat`; .ci/run installs it)")
    r = subprocess.run(
        [path, "-b", bootstrap, "-Q", "-t", f"{topic}:0:{ts}"], capture_output=True, timeout=30
    )
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, f"kcat -Q exited {r.returncode}: {r.stderr.decode(errors='replace')[-2000:]}"
    m = re.search(rf"{re.escape(topic)} \[0\] offset (-?\d+)", out)
    assert m, f"unexpected kcat -Q output: {out!r}"
    return int(m.group(1))


@pytest.mark.parametrize("codec", [pytest.param(c, marks=[pytest.mark.cluster_ci] if c == "zstd" else []) for c in CODECS])
def test_minus_one_header_time_lookups(broker, topic_name, codec):
    """Header max timestamp -1, records with timestamps: the stored header carries the records'
    max (CRC recomputed), and every time lookup answers the first offset at or after the time."""
    from confluent_kafka import TopicPartition as CkTp
    from kafka import TopicPartition as KpTp

    ck_create_topic(broker.bootstrap, topic_name, 1)
    batches, all_ts = _batches_minus_one(CODECS[codec])
    with kw.connect(broker.leader_port(topic_name)) as s:
        for i, b in enumerate(batches):
            res = kw.produce(s, topic_name, 0, b, version=7, correlation_id=40 + i)
            assert (res.error_code, res.base_offset) == (kw.NONE, 5 * i), res
            assert res.log_append_time_ms == -1, "CreateTime topic: log_append_time_ms must be -1"
        fp = kw.fetch(s, topic_name, 0, 0, correlation_id=50)
        headers = kw.parse_batches(fp.records or b"")
        assert [h.max_timestamp for h in headers] == [BASE + 40, BASE + 150, BASE + 230], headers
        assert all(h.crc_ok for h in headers), "header rewritten without recomputing the CRC"
        assert all(h.compression == CODECS[codec] for h in headers)
        assert [ts for _, ts in kw.record_timestamps(fp.records)] == all_ts

        targets = [BASE - 1, BASE, BASE + 35, BASE + 41, BASE + 101, BASE + 145, BASE + 150, BASE + 199,
                   BASE + 230, BASE + 231]
        for t in targets:
            err, ts, off = kw.list_offsets(s, topic_name, 0, t, correlation_id=60)
            want = _expected(all_ts, t)
            assert err == kw.NONE and off == want, f"ListOffsets({t - BASE:+}): offset {off}, expected {want}"
            if want >= 0:
                assert ts == all_ts[want], f"ListOffsets({t - BASE:+}): timestamp {ts}, expected {all_ts[want]}"

    c = ck_consumer(broker.bootstrap)
    try:
        for t in targets:
            [res] = c.offsets_for_times([CkTp(topic_name, 0, t)], timeout=10)
            assert res.error is None and res.offset == _expected(all_ts, t), f"confluent {t - BASE:+}: {res}"
    finally:
        c.close()

    c = kp_consumer(broker.bootstrap)
    try:
        tp = KpTp(topic_name, 0)
        for t in targets:
            res = c.offsets_for_times({tp: t})[tp]
            want = _expected(all_ts, t)
            if want < 0:
                assert res is None, f"kafka-python {t - BASE:+}: {res}"
            else:
                assert res is not None and (res.offset, res.timestamp) == (want, all_ts[want]), (t - BASE, res)
    finally:
        c.close()

    for t in [BASE + 35, BASE + 145, BASE + 229]:
        assert _kcat_offset(broker.bootstrap, topic_name, t) == _expected(all_ts, t), f"kcat -Q {t - BASE:+}"


def test_retention_by_time_uses_record_timestamps(make_broker, topic_name):
    """A segment whose records are older than retention.ms is deleted even though its batch
    header said -1; the newer segment stays readable."""
    broker = make_broker(extra_args=["--set", "log.retention.check.interval.ms=200"])
    # Each batch is about 150 bytes: a 200-byte segment holds one batch.
    ck_create_topic(broker.bootstrap, topic_name, 1, config={"segment.bytes": "200", "retention.ms": "86400000"})
    now = int(time.time() * 1000)
    old = now - 3 * 86_400_000
    with kw.connect(broker.port) as s:
        for i, tss in enumerate([[old, old + 1, old + 2], [now, now + 1, now + 2], [now + 3, now + 4, now + 5]]):
            values = [b"v" * 20] * 3
            res = kw.produce(s, topic_name, 0, kw.record_batch(values, tss, header_max_timestamp=-1), correlation_id=70 + i)
            assert (res.error_code, res.base_offset) == (kw.NONE, 3 * i), res
        deadline = time.monotonic() + 20
        earliest = 0
        while time.monotonic() < deadline:
            err, _, earliest = kw.list_offsets(s, topic_name, 0, -2, correlation_id=80)
            assert err == kw.NONE
            if earliest > 0:
                break
            time.sleep(0.2)
        assert earliest == 3, f"the 3-day-old segment was not deleted by retention (earliest {earliest})"
        time.sleep(1.0)  # a few more retention rounds must not delete the recent segment
        err, _, earliest = kw.list_offsets(s, topic_name, 0, -2, correlation_id=81)
        assert (err, earliest) == (kw.NONE, 3), "the recent segment was deleted too"
        # One fetch returns one segment's batches: read the two kept segments.
        kept = []
        for off in (3, 6):
            fp = kw.fetch(s, topic_name, 0, off, correlation_id=82)
            assert fp.error_code == kw.NONE
            kept += kw.record_timestamps(fp.records or b"")
        assert [o for o, _ in kept] == [3, 4, 5, 6, 7, 8]


@pytest.mark.cluster_ci
def test_log_append_time_topic(broker, topic_name):
    """message.timestamp.type=LogAppendTime: the broker stamps its clock in the header (type bit
    set, CRC valid), the produce response carries it, consumers and ListOffsets see it."""
    from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME

    ck_create_topic(broker.bootstrap, topic_name, 1, config={"message.timestamp.type": "LogAppendTime"})
    results = []
    with kw.connect(broker.leader_port(topic_name)) as s:
        for i, codec in enumerate([0, 1]):
            before = int(time.time() * 1000)
            b = kw.record_batch([b"x", b"y"], [BASE, BASE + 5], codec=codec, header_max_timestamp=-1)
            res = kw.produce(s, topic_name, 0, b, version=7, correlation_id=90 + i)
            after = int(time.time() * 1000)
            assert res.error_code == kw.NONE, res
            assert before - 5 <= res.log_append_time_ms <= after + 5, (before, res.log_append_time_ms, after)
            results.append(res.log_append_time_ms)
            time.sleep(0.01)
        fp = kw.fetch(s, topic_name, 0, 0, correlation_id=95)
        headers = kw.parse_batches(fp.records or b"")
        assert [h.max_timestamp for h in headers] == results
        assert all(h.attributes & 0x08 and h.crc_ok for h in headers), headers
        assert [ts for _, ts in kw.record_timestamps(fp.records)] == [results[0]] * 2 + [results[1]] * 2
        err, ts, off = kw.list_offsets(s, topic_name, 0, results[1], correlation_id=96)
        assert (err, off, ts) == (kw.NONE, 2, results[1])
        err, ts, off = kw.list_offsets(s, topic_name, 0, BASE + 1, correlation_id=97)
        assert (err, off) == (kw.NONE, 0), "the producer's CreateTime must not be what the index holds"

    c = ck_consumer(broker.bootstrap)
    try:
        from confluent_kafka import TopicPartition

        c.assign([TopicPartition(topic_name, 0, 0)])
        got = []
        deadline = time.monotonic() + 15
        while len(got) < 4 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got.append(m.timestamp())
    finally:
        c.close()
    assert got == [(TIMESTAMP_LOG_APPEND_TIME, results[0])] * 2 + [(TIMESTAMP_LOG_APPEND_TIME, results[1])] * 2


def _hw(s, topic: str) -> int:
    fp = kw.fetch(s, topic, 0, 0, correlation_id=120)
    assert fp.error_code == kw.NONE
    return fp.high_watermark


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"message.timestamp.before.max.ms": "3600000", "message.timestamp.after.max.ms": "3600000"},
                     marks=pytest.mark.cluster_ci),
        {"message.timestamp.difference.max.ms": "3600000"},
    ],
    ids=["before-after", "difference"],
)
def test_timestamps_outside_the_window_are_refused(broker, topic_name, config):
    """INVALID_TIMESTAMP for a record outside [now - before, now + after], compressed or not,
    also when the out-of-range record is not the first or the last; nothing is stored."""
    ck_create_topic(broker.bootstrap, topic_name, 1, config=config)
    now = int(time.time() * 1000)
    hour = 3_600_000
    bad = [
        ([now - 2 * hour], 0, None),  # too old
        ([now + 2 * hour], 0, None),  # too far in the future
        ([now, now - 2 * hour, now], 1, None),  # an old record inside a gzip batch, honest header
        ([now, now + 2 * hour, now], 4, None),  # a future record inside a zstd batch, honest header
        ([now, now - 2 * hour, now + 1], 1, -1),  # header -1
    ]
    with kw.connect(broker.leader_port(topic_name)) as s:
        for i, (tss, codec, hdr) in enumerate(bad):
            b = kw.record_batch([b"v"] * len(tss), tss, codec=codec, header_max_timestamp=hdr)
            res = kw.produce(s, topic_name, 0, b, version=8, correlation_id=100 + i)
            assert res.error_code == kw.INVALID_TIMESTAMP, f"case {i}: {res}"
        assert _hw(s, topic_name) == 0, "a refused batch was stored"
        ok = kw.record_batch([b"a", b"b"], [now - hour // 2, now + hour // 2], codec=1)
        res = kw.produce(s, topic_name, 0, ok, version=8, correlation_id=110)
        assert (res.error_code, res.base_offset) == (kw.NONE, 0), res
        assert _hw(s, topic_name) == 2


def test_client_batch_rules(broker, topic_name):
    """LogValidator's client-side rules: no LogAppendTime attribute from a producer
    (INVALID_TIMESTAMP), no producer id without a sequence (INVALID_RECORD)."""
    ck_create_topic(broker.bootstrap, topic_name, 1)
    with kw.connect(broker.leader_port(topic_name)) as s:
        lat = kw.record_batch([b"v"], [BASE], attributes_extra=0x08)
        assert kw.produce(s, topic_name, 0, lat, correlation_id=130).error_code == kw.INVALID_TIMESTAMP
        no_seq = kw.record_batch([b"v"], [BASE], producer_id=5, producer_epoch=0, base_sequence=-1)
        assert kw.produce(s, topic_name, 0, no_seq, correlation_id=131).error_code == kw.INVALID_RECORD
        assert _hw(s, topic_name) == 0


def test_zstd_requires_produce_v7(broker, topic_name):
    """zstd in Produce v3..v6 is UNSUPPORTED_COMPRESSION_TYPE (nothing stored); v7+ accepts it."""
    ck_create_topic(broker.bootstrap, topic_name, 1)
    z = kw.record_batch([b"zz"] * 3, [BASE, BASE + 1, BASE + 2], codec=4)
    with kw.connect(broker.leader_port(topic_name)) as s:
        for v in (3, 6):
            res = kw.produce(s, topic_name, 0, z, version=v, correlation_id=140 + v)
            assert res.error_code == kw.UNSUPPORTED_COMPRESSION_TYPE, f"v{v}: {res}"
        assert _hw(s, topic_name) == 0
        g = kw.record_batch([b"gg"], [BASE], codec=1)
        assert kw.produce(s, topic_name, 0, g, version=3, correlation_id=150).error_code == kw.NONE
        res = kw.produce(s, topic_name, 0, z, version=7, correlation_id=151)
        assert (res.error_code, res.base_offset) == (kw.NONE, 1), res
        assert _hw(s, topic_name) == 4
