"""Bad input over raw sockets: random bytes, truncated frames, wrong size prefixes, unknown API
keys and versions, valid headers with garbage bodies. The broker answers or closes that one
connection, keeps serving a second connection (checked with real ApiVersions and Metadata
requests after every case), and the process stays up."""

from __future__ import annotations

import random
import socket
import struct
import time

import pytest

import kafka_wire as kw
from sluice_cluster import ClusterBroker

ANSWER_OR_CLOSE_S = 5.0


def assert_still_serving(broker, note: str) -> None:
    assert broker.alive(), f"broker process died after {note}"
    with kw.connect(broker.port, timeout=10) as s:
        av = kw.api_versions(s, correlation_id=1001, version=2)
        assert av.error_code == kw.NONE, f"ApiVersions after {note}: error {av.error_code}"
        assert kw.METADATA in av.apis and kw.PRODUCE in av.apis and kw.FETCH in av.apis
        md = kw.metadata(s, None, correlation_id=1002)
        assert sorted((b[1], b[2]) for b in md.brokers) == sorted(broker.nodes), f"Metadata after {note}: {md.brokers}"


def send_and_outcome(broker, payload: bytes, half_close: bool) -> str:
    with kw.connect(broker.port) as s:
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            return "closed"
        if half_close:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                return "closed"
        return kw.outcome_after(s, ANSWER_OR_CLOSE_S)


def _rand(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


# name -> (payload, half_close, allowed outcomes)
FULL_APIVERSIONS = kw.api_versions_request(0, 5)
CASES = {
    # Arbitrary bytes; we half-close so a small random size prefix cannot leave the broker
    # legitimately waiting for the rest of a frame.
    **{f"random-{seed}": (_rand(seed, 1 + seed * 997 % 4096), True, {"answered", "closed"}) for seed in range(6)},
    "truncated-frame": (FULL_APIVERSIONS[:-3], True, {"closed"}),
    "size-prefix-only": (kw.i32(64), True, {"closed"}),
    "partial-size-prefix": (b"\x00\x00", True, {"closed"}),
    "size-smaller-than-header": (kw.i32(3) + b"\x00\x12\x00", False, {"answered", "closed"}),
    "zero-size": (kw.i32(0), False, {"answered", "closed"}),
    "negative-size-minus-1": (kw.i32(-1) + b"x" * 32, False, {"closed"}),
    "negative-size-min-int": (kw.i32(-(2**31)) + b"x" * 32, False, {"closed"}),
    "huge-size": (kw.i32(2**31 - 1) + b"\x00" * 65536, False, {"closed"}),
    "just-above-socket-request-max-bytes": (kw.i32(100 * 1024 * 1024 + 1) + b"\x00" * 4096, False, {"closed"}),
    "unknown-api-key": (kw.request(9999, 0, 6), False, {"answered", "closed"}),
    "negative-api-key": (kw.request(-7, 0, 6), False, {"answered", "closed"}),
    "metadata-unsupported-version": (kw.request(kw.METADATA, 999, 6, kw.metadata_body_v1(None)), False, {"answered", "closed"}),
    "metadata-array-count-without-elements": (kw.request(kw.METADATA, 1, 6, kw.i32(5)), False, {"answered", "closed"}),
    # An 18-byte frame whose array length claims 2^31-1 topics: must not be trusted for allocation.
    "metadata-huge-array-count": (kw.request(kw.METADATA, 1, 6, kw.i32(0x7FFFFFFF)), False, {"answered", "closed"}),
    "metadata-string-length-past-frame": (kw.request(kw.METADATA, 1, 6, kw.i32(1) + kw.i16(30000) + b"ab"), False, {"answered", "closed"}),
    "client-id-length-past-frame": (kw.frame(kw.i16(kw.API_VERSIONS) + kw.i16(0) + kw.i32(6) + kw.i16(500) + b"abc"), False, {"answered", "closed"}),
    "produce-garbage-body": (kw.request(kw.PRODUCE, 3, 6, _rand(100, 300)), False, {"answered", "closed"}),
    "produce-v3-huge-records-length": (
        kw.request(kw.PRODUCE, 3, 6, kw.string(None) + kw.i16(1) + kw.i32(1000) + kw.array([
            kw.string("bad-input") + kw.array([kw.i32(0) + kw.i32(2**31 - 1) + b"\x00" * 64])])),
        False, {"answered", "closed"}),
    "produce-v3-corrupt-batch": (
        kw.request(kw.PRODUCE, 3, 6, kw.string(None) + kw.i16(1) + kw.i32(1000) + kw.array([
            kw.string("bad-input") + kw.array([kw.i32(0) + kw.i32(80) + _rand(101, 80)])])),
        False, {"answered", "closed"}),
    "fetch-garbage-body": (kw.request(kw.FETCH, 4, 6, _rand(102, 200)), False, {"answered", "closed"}),
    "create-topics-garbage-body": (kw.request(kw.CREATE_TOPICS, 2, 6, _rand(103, 120)), False, {"answered", "closed"}),
    "flexible-api-versions-garbage": (kw.request(kw.API_VERSIONS, 3, 6, _rand(104, 50)), False, {"answered", "closed"}),
    "describe-configs-garbage-body": (kw.request(kw.DESCRIBE_CONFIGS, 1, 6, _rand(105, 64)), False, {"answered", "closed"}),
    "valid-request-then-garbage": (FULL_APIVERSIONS + _rand(106, 64), True, {"answered", "closed"}),
}


@pytest.mark.single_node("test_every_bad_input_case_on_one_cluster sends every case to one cluster")
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_answered_or_closed_and_broker_keeps_serving(broker, case):
    payload, half_close, allowed = CASES[case]
    outcome = send_and_outcome(broker, payload, half_close)
    assert outcome in allowed, f"{case}: broker left the connection {outcome!r} (allowed: {sorted(allowed)})"
    assert_still_serving(broker, case)


@pytest.mark.timeout(180)
def test_every_bad_input_case_on_one_cluster(make_broker):
    """The cases above, each sent to node 1 of one three-broker cluster (a cluster per case
    would cost the suite minutes): every one is answered or closed and the cluster keeps
    serving, with all three brokers in its Metadata."""
    cluster = ClusterBroker(make_broker)
    for case, (payload, half_close, allowed) in CASES.items():
        outcome = send_and_outcome(cluster, payload, half_close)
        assert outcome in allowed, f"{case}: broker left the connection {outcome!r} (allowed: {sorted(allowed)})"
        assert_still_serving(cluster, case)


@pytest.mark.cluster_ci
def test_produce_corrupt_batch_is_rejected_not_stored(broker, topic_name):
    """A Produce whose record batch fails its CRC gets an error (CORRUPT_MESSAGE or
    INVALID_RECORD) or a closed connection, and nothing of it becomes readable."""
    from clientutil import ck_create_topic

    ck_create_topic(broker.bootstrap, topic_name, 1)
    batch = bytearray(_valid_batch())
    batch[-1] ^= 0xFF  # flip a bit in the last record: the CRC no longer matches
    body = kw.string(None) + kw.i16(1) + kw.i32(5000) + kw.array(
        [kw.string(topic_name) + kw.array([kw.i32(0) + kw.i32(len(batch)) + bytes(batch)])]
    )
    with kw.connect(broker.leader_port(topic_name)) as s:
        s.sendall(kw.request(kw.PRODUCE, 3, 9, body))
        try:
            corr, resp = kw.read_response(s)
            r = kw.Reader(resp)
            [(name, parts)] = r.array(lambda rr: (rr.string(), rr.array(lambda x: (x.i32(), x.i16(), x.i64(), x.i64()))))
            assert name == topic_name and corr == 9
            [(p, err, base, _)] = parts
            assert err in (kw.CORRUPT_MESSAGE, 87), f"corrupt batch: error {err}, base offset {base}"  # 87 = INVALID_RECORD
        except kw.ConnectionClosed:
            pass
        with kw.connect(broker.leader_port(topic_name)) as s2:
            fp = kw.fetch(s2, topic_name, 0, 0, correlation_id=10)
            assert fp.error_code == kw.NONE and fp.high_watermark == 0, f"corrupt batch stored: hw {fp.high_watermark}"
    assert_still_serving(broker, "corrupt batch")


def _valid_batch() -> bytes:
    """One uncompressed v2 record batch with a single record (key None, value b"hello")."""
    varint = kw.varint
    value = b"hello"
    rec = b"\x00" + varint(0) + varint(0) + varint(-1) + varint(len(value)) + value + varint(0)
    record = varint(len(rec)) + rec
    ts = int(time.time() * 1000)
    after_crc = (
        kw.i16(0) + kw.i32(0) + kw.i64(ts) + kw.i64(ts) + kw.i64(-1) + kw.i16(-1) + kw.i32(-1) + kw.i32(1) + record
    )
    crc = kw.crc32c(after_crc)
    body = kw.i32(0) + kw.i8(2) + struct.pack(">I", crc) + after_crc
    return kw.i64(0) + kw.i32(len(body)) + body


@pytest.mark.cluster_ci
def test_valid_raw_produce_is_accepted(broker, topic_name):
    """The hand-built batch used above is valid (so the corrupt-batch test tests the CRC)."""
    from clientutil import ck_create_topic

    ck_create_topic(broker.bootstrap, topic_name, 1)
    batch = _valid_batch()
    # acks=-1: the fetch below reads up to the high watermark, which on RF 3 acks=1 does not wait for.
    body = kw.string(None) + kw.i16(-1) + kw.i32(5000) + kw.array(
        [kw.string(topic_name) + kw.array([kw.i32(0) + kw.i32(len(batch)) + batch])]
    )
    with kw.connect(broker.leader_port(topic_name)) as s:
        resp = kw.roundtrip(s, kw.PRODUCE, 3, 11, body)
        r = kw.Reader(resp)
        [(name, [(p, err, base, _)])] = r.array(lambda rr: (rr.string(), rr.array(lambda x: (x.i32(), x.i16(), x.i64(), x.i64()))))
        assert (name, p, err, base) == (topic_name, 0, kw.NONE, 0)
        fp = kw.fetch(s, topic_name, 0, 0, correlation_id=12)
        [b] = kw.parse_batches(fp.records or b"")
        assert b.record_count == 1 and b.crc_ok and fp.high_watermark == 1


def test_huge_size_prefix_is_not_allocated(broker):
    """A 2 GiB size prefix must be refused before allocating a buffer for it: the broker's peak
    virtual size does not jump by anything near that."""
    for i in range(8):  # touch every shard first so per-thread allocator arenas already exist
        with kw.connect(broker.port) as s:
            kw.api_versions(s, correlation_id=i)
    before = broker.vm_peak_kib()
    for _ in range(3):
        outcome = send_and_outcome(broker, kw.i32(2**31 - 1) + b"\x01" * 8192, False)
        assert outcome == "closed", f"2 GiB frame: {outcome}"
    grew_mib = (broker.vm_peak_kib() - before) / 1024
    assert grew_mib < 1024, f"VmPeak grew by {grew_mib:.0f} MiB after 2 GiB size prefixes"
    assert_still_serving(broker, "huge size prefixes")


def test_byte_at_a_time_request_is_answered(broker):
    """A request trickling in one byte per write is reassembled and answered."""
    req = kw.api_versions_request(2, 42) + kw.request(kw.METADATA, 1, 43, kw.metadata_body_v1(None))
    with kw.connect(broker.port) as s:
        for b in req:
            s.sendall(bytes([b]))
            time.sleep(0.002)
        corr, body = kw.read_response(s)
        assert corr == 42 and kw.parse_api_versions(body, 2).error_code == 0
        corr, body = kw.read_response(s)
        assert corr == 43 and kw.parse_metadata_v1(body).brokers


def test_abrupt_resets_mid_frame(broker):
    """Many clients that send half a frame and reset the connection (SO_LINGER 0) do not hurt
    the broker."""
    for i in range(60):
        s = kw.connect(broker.port)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(kw.request(kw.METADATA, 1, i, kw.metadata_body_v1(None))[: 5 + i % 10])
        s.close()
    assert_still_serving(broker, "60 reset connections")


def test_random_frames_with_plausible_headers(broker):
    """Seeded fuzz: frames with a correct size prefix and a real API key/version in the header
    but a random body (half of them starting with a small array count, to get deeper into
    the decoder). Each is answered or closed; the broker survives all of them."""
    rng = random.Random(1234)
    keys = [kw.PRODUCE, kw.FETCH, kw.LIST_OFFSETS, kw.METADATA, kw.API_VERSIONS, kw.CREATE_TOPICS, kw.DELETE_TOPICS,
            kw.DESCRIBE_CONFIGS, kw.CREATE_PARTITIONS, kw.INCREMENTAL_ALTER_CONFIGS, kw.DESCRIBE_CLUSTER]
    with kw.connect(broker.port) as s:
        served = kw.api_versions(s, version=0).apis
    deadline = time.monotonic() + 30
    for i in range(300):
        if time.monotonic() > deadline:
            break
        key = rng.choice(keys)
        lo, hi = served.get(key, (0, 3))
        version = rng.randint(lo, hi)
        # Flexible versions take a header v2 (tagged fields after client id); sometimes add it.
        header = kw.request_header(key, version, 500 + i) + (b"\x00" if rng.random() < 0.5 else b"")
        body = rng.randbytes(rng.randrange(0, 200))
        if len(body) >= 4 and rng.random() < 0.5:
            body = kw.i32(rng.randrange(0, 4)) + body[4:]  # a small first count gets the decoder further
        payload = kw.frame(header + body)
        outcome = send_and_outcome(broker, payload, True)
        assert outcome in ("answered", "closed"), f"frame #{i} (api {key} v{version}): {outcome}"
        assert broker.alive(), f"broker died on frame #{i} (api {key} v{version})"
    assert_still_serving(broker, "random frames")
