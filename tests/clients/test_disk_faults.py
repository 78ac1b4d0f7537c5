"""Disk faults: a real broker whose data directory is a tiny tmpfs that fills up.

A full disk fails appends with KAFKA_STORAGE_ERROR (56) through a real client; everything
that was acknowledged stays readable with its offset and bytes, nothing half-written ever
becomes readable, a shutdown and a restart on the full disk (its checkpoint writes fail) lose
nothing, and appends resume once space is freed, without a restart. Needs root (mount); the
tmpfs is unmounted in cleanup.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from clientutil import ck_create_topic
from sluice_broker import Broker

KAFKA_STORAGE_ERROR = 56
VALUE_BYTES = 16 * 1024
TMPFS_SIZE = "8m"
# Freed to let appends resume: several hundred messages' worth.
FILLER_BYTES = 2 * 1024 * 1024


@pytest.fixture
def tiny_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _value(i: int) -> bytes:
    # Distinct, incompressible, and self-describing: the index is in the first 8 bytes.
    return i.to_bytes(8, "big") + os.urandom(VALUE_BYTES - 8)


class SyncProducer:
    """One message in flight at a time, no retries: each send's outcome is the broker's answer."""

    def __init__(self, bootstrap: str):
        from confluent_kafka import Producer

        self.p = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": False,
                "retries": 0,
                "linger.ms": 0,
                "message.timeout.ms": 10000,
                "message.max.bytes": 1_000_000,
            }
        )

    def send(self, topic: str, value: bytes):
        """(offset, None) when acknowledged, (None, error code) when refused."""
        out: list = []

        def cb(err, km):
            out.append((None, err.code()) if err is not None else (km.offset(), None))

        self.p.produce(topic, value=value, partition=0, on_delivery=cb)
        self.p.flush(15)
        assert out, "no delivery report within 15 s"
        return out[0]


def _read_all(bootstrap: str, topic: str, timeout: float = 20.0) -> dict[int, bytes]:
    """Every record of partition 0 by offset (assign, no group offsets: nothing is written)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "disk-faults-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 4 * 1024 * 1024,
        }
    )
    try:
        deadline = time.monotonic() + timeout
        high = None
        while high is None:
            try:
                _, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)
            except KafkaException:
                # The log may still be offline (reopened at most once a second): ask again.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        c.assign([TopicPartition(topic, 0, 0)])
        got: dict[int, bytes] = {}
        while len(got) < high and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                continue
            assert m.offset() not in got, f"offset {m.offset()} delivered twice"
            got[m.offset()] = m.value()
        assert len(got) == high, f"read {len(got)} of {high} records"
        return got
    finally:
        c.close()


def _check_log(b: Broker) -> None:
    assert not re.search(r"panicked at", b.log_text()), "broker log shows a panic"


def _check_integrity(got: dict[int, bytes], acked: dict[int, bytes], sent: dict[int, bytes]) -> None:
    """Every acknowledged record at its offset with its bytes; anything else readable is a
    whole record that was sent (a refused append may still have reached the disk whole, as
    with any storage error), never a torn or foreign one; offsets are dense from 0."""
    for off, v in acked.items():
        assert got.get(off) == v, f"acknowledged offset {off} lost or changed"
    assert sorted(got) == list(range(len(got))), "offsets are not dense"
    by_value = set(sent.values())
    for off, v in got.items():
        assert v in by_value, f"offset {off} holds bytes nobody sent ({len(v)} bytes)"


@pytest.mark.parametrize("segment_bytes", [1024 * 1024, 64 * 1024], ids=["append", "roll"])
def test_full_disk_fails_appends_keeps_acknowledged_and_resumes(tiny_disk: Path, tmp_path, segment_bytes):
    # The filler holds back space that is freed later to let appends resume.
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * FILLER_BYTES)
    data = tiny_disk / "data"
    # One __consumer_offsets partition (50 would preallocate their indexes on the tiny disk)
    # and no admin listener (its default port is fixed).
    cfg = tmp_path / "sluice.toml"
    cfg.write_text('offsets.topic.num.partitions = 1\nadmin.listener = ""\n')
    b = Broker(data, tmp_path / "sluice.log", shards=1, extra_args=["--config", str(cfg)])
    b.start()
    try:
        topic = "full-disk"
        # Small index preallocation (the 10 MiB default would not fit the disk at all).
        ck_create_topic(
            b.bootstrap,
            topic,
            1,
            {"segment.bytes": str(segment_bytes), "segment.index.bytes": "4096"},
        )
        producer = SyncProducer(b.bootstrap)
        sent: dict[int, bytes] = {}
        acked: dict[int, bytes] = {}
        errors: list[int] = []
        i = 0
        # 8 MiB / 16 KiB: the disk is full long before 1000 messages.
        while i < 1000 and len(errors) < 5:
            v = _value(i)
            sent[i] = v
            off, err = producer.send(topic, v)
            if err is None:
                assert off not in acked, f"offset {off} acknowledged twice"
                acked[off] = v
            else:
                errors.append(err)
            i += 1
        assert errors, "the disk never filled"
        assert acked, "nothing was acknowledged before the disk filled"
        assert set(errors) == {KAFKA_STORAGE_ERROR}, f"errors on a full disk: {errors}"

        # While the disk is still full the partition either reads back intact or answers
        # KAFKA_STORAGE_ERROR (reopening it needs a little space: unavailable, not lost).
        time.sleep(1.2)
        try:
            _check_integrity(_read_all(b.bootstrap, topic, timeout=5), acked, sent)
        except Exception as e:  # noqa: BLE001 - only a storage error is acceptable here
            assert "KAFKA_STORAGE_ERROR" in str(e) or "records" in str(e), f"read on a full disk: {e}"

        # A shutdown on the full disk (its checkpoint writes fail) and a restart lose nothing.
        b.stop()
        b.start()
        v = sent[10_000] = _value(10_000)
        off, err = producer.send(topic, v)
        assert err in (KAFKA_STORAGE_ERROR, None), f"append on a full disk after restart: {err}"
        if err is None:
            acked[off] = v

        # Space returns: appends resume without a restart.
        filler.unlink()
        producer = SyncProducer(b.bootstrap)
        resumed_at = None
        deadline = time.monotonic() + 15
        j = 20_000
        while time.monotonic() < deadline:
            v = _value(j)
            sent[j] = v
            j += 1
            off, err = producer.send(topic, v)
            if err is None:
                acked[off] = v
                resumed_at = off
                break
            assert err == KAFKA_STORAGE_ERROR, err
            time.sleep(0.3)
        assert resumed_at is not None, "appends did not resume after space was freed"
        for _ in range(20):
            v = _value(j)
            sent[j] = v
            j += 1
            off, err = producer.send(topic, v)
            assert err is None, f"append failed after space returned: {err}"
            acked[off] = v
        got = _read_all(b.bootstrap, topic)
        _check_integrity(got, acked, sent)
        assert max(got) == max(acked), "records readable past the last acknowledged one"
        _check_log(b)
    finally:
        if b.alive():
            b.stop()
