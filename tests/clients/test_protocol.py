"""Protocol behaviour that clients rely on but do not show: ApiVersions (and its v0 fallback
for an unknown version), responses in request order on a pipelined connection, Fetch long
poll and OFFSET_OUT_OF_RANGE, Metadata auto-creation."""

from __future__ import annotations

import threading
import time

import pytest

import kafka_wire as kw
from clientutil import ck_admin, ck_consumer, ck_create_topic, ck_produce, make_messages

# What issue 3 requires the broker to serve.
REQUIRED_APIS = {
    kw.PRODUCE: "Produce",
    kw.FETCH: "Fetch",
    kw.LIST_OFFSETS: "ListOffsets",
    kw.METADATA: "Metadata",
    kw.API_VERSIONS: "ApiVersions",
    kw.CREATE_TOPICS: "CreateTopics",
    kw.DELETE_TOPICS: "DeleteTopics",
    kw.DESCRIBE_CONFIGS: "DescribeConfigs",
    kw.CREATE_PARTITIONS: "CreatePartitions",
    kw.INCREMENTAL_ALTER_CONFIGS: "IncrementalAlterConfigs",
    kw.DESCRIBE_CLUSTER: "DescribeCluster",
}


def test_api_versions_lists_every_required_api(broker):
    with kw.connect(broker.port) as s:
        for version in (0, 1, 2):
            resp = kw.api_versions(s, correlation_id=10 + version, version=version)
            assert resp.error_code == kw.NONE
            missing = [name for key, name in REQUIRED_APIS.items() if key not in resp.apis]
            assert not missing, f"ApiVersions v{version} does not list {missing}"
            for key, (lo, hi) in resp.apis.items():
                assert 0 <= lo <= hi, f"api {key}: versions {lo}..{hi}"
            assert resp.apis[kw.API_VERSIONS][1] >= 3, "ApiVersions v3 (what current clients send) not served"
            if version >= 1:
                assert resp.throttle_time_ms == 0


def test_api_versions_unknown_version_gets_v0_fallback(broker):
    """KIP-511: an ApiVersions version the broker does not know is answered with a v0-format
    response carrying UNSUPPORTED_VERSION and the supported ranges, so the client can retry."""
    # A future client's request: header v2 (tagged fields) and a v3-style compact body.
    body = b"\x06sluice" + b"\x041.0" + b"\x00"
    header = kw.request_header(kw.API_VERSIONS, 127, 55) + b"\x00"
    with kw.connect(broker.port) as s:
        s.sendall(kw.frame(header + body))
        corr, resp = kw.read_response(s)
        assert corr == 55
        parsed = kw.parse_api_versions(resp, 0)
        assert parsed.error_code == kw.UNSUPPORTED_VERSION, f"error {parsed.error_code}"
        assert kw.API_VERSIONS in parsed.apis and kw.METADATA in parsed.apis, parsed.apis
        # The connection stays usable for the retry at a supported version.
        assert kw.api_versions(s, correlation_id=56, version=0).error_code == kw.NONE


@pytest.mark.cluster_ci
def test_pipelined_requests_answered_in_order(broker, topic_name):
    """Twenty requests written at once, the first a Fetch that long-polls 600 ms: the responses
    come back in request order, the fast ones not overtaking the parked fetch."""
    ck_create_topic(broker.bootstrap, topic_name, 2)
    reqs = [kw.request(kw.FETCH, 4, 1000, kw.fetch_body_v4(topic_name, 0, 0, max_wait_ms=600, min_bytes=1))]
    corrs = [1000]
    for i in range(19):
        corr = 999 - i  # decreasing: a broker that sorts or hashes by id would reorder
        if i % 3 == 0:
            reqs.append(kw.api_versions_request(2, corr))
        elif i % 3 == 1:
            reqs.append(kw.request(kw.METADATA, 1, corr, kw.metadata_body_v1([topic_name])))
        else:
            reqs.append(kw.request(kw.FETCH, 4, corr, kw.fetch_body_v4(topic_name, 1, 0, max_wait_ms=0, min_bytes=0)))
        corrs.append(corr)
    with kw.connect(broker.leader_port(topic_name, 0)) as s:
        t0 = time.monotonic()
        s.sendall(b"".join(reqs))
        got = []
        for _ in reqs:
            corr, _body = kw.read_response(s)
            got.append(corr)
        took = time.monotonic() - t0
    assert got == corrs, f"responses out of order: {got}"
    assert took >= 0.4, f"the parked fetch was answered after {took:.2f}s, before its max.wait.ms with no data"


@pytest.mark.cluster_ci
def test_fetch_long_poll_waits_then_wakes_on_produce(broker, topic_name):
    ck_create_topic(broker.bootstrap, topic_name, 1)
    with kw.connect(broker.leader_port(topic_name)) as s:
        t0 = time.monotonic()
        fp = kw.fetch(s, topic_name, 0, 0, max_wait_ms=800, min_bytes=1)
        took = time.monotonic() - t0
        assert fp.error_code == kw.NONE and not fp.records and fp.high_watermark == 0
        assert 0.6 <= took <= 4.0, f"empty long poll with max.wait.ms=800 took {took:.2f}s"

        result = {}

        def parked_fetch():
            t = time.monotonic()
            result["fp"] = kw.fetch(s, topic_name, 0, 0, correlation_id=8, max_wait_ms=8000, min_bytes=1)
            result["took"] = time.monotonic() - t

        th = threading.Thread(target=parked_fetch, daemon=True)
        th.start()
        time.sleep(0.5)
        ck_produce(broker.bootstrap, topic_name, make_messages(5, 1, seed=61), acks="1")
        th.join(10)
        assert "fp" in result, "parked fetch never returned"
        assert result["fp"].records and kw.parse_batches(result["fp"].records), "woken fetch returned no batch"
        assert result["took"] < 4.0, f"fetch parked for {result['took']:.2f}s despite a produce after 0.5s"


@pytest.mark.cluster_ci
def test_fetch_out_of_range_offset(broker, topic_name):
    ck_create_topic(broker.bootstrap, topic_name, 1)
    # acks=all: a Fetch reads below the high watermark, which on RF 3 acks=1 does not wait for.
    ck_produce(broker.bootstrap, topic_name, make_messages(10, 1, seed=62), acks="all")
    with kw.connect(broker.leader_port(topic_name)) as s:
        fp = kw.fetch(s, topic_name, 0, 10**9, max_wait_ms=0)
        assert fp.error_code == kw.OFFSET_OUT_OF_RANGE, f"fetch at 1e9: error {fp.error_code}"
        fp = kw.fetch(s, topic_name, 0, -5, correlation_id=4, max_wait_ms=0)
        assert fp.error_code == kw.OFFSET_OUT_OF_RANGE, f"fetch at -5: error {fp.error_code}"
        fp = kw.fetch(s, topic_name, 0, 10, correlation_id=5, max_wait_ms=0, min_bytes=0)
        assert fp.error_code == kw.NONE and fp.high_watermark == 10 and not fp.records
        fp = kw.fetch(s, "no-such-topic-x", 0, 0, correlation_id=6, max_wait_ms=0)
        assert fp.error_code == kw.UNKNOWN_TOPIC_OR_PARTITION, f"unknown topic: error {fp.error_code}"


@pytest.mark.cluster_ci
def test_metadata_auto_creates_topics_with_default_partitions(broker, topic_name):
    """Metadata v1 for an unknown topic auto-creates it with num.partitions (default 1);
    a consumer's metadata request (allow_auto_topic_creation=false) does not."""
    with kw.connect(broker.port) as s:
        deadline = time.monotonic() + 10
        while True:
            md = kw.metadata(s, [topic_name])
            [t] = md.topics
            if t.error_code == kw.NONE and t.partitions and all(p.leader >= 0 for p in t.partitions):
                break
            assert time.monotonic() < deadline, f"auto-created topic not ready: {t}"
            time.sleep(0.1)
        assert t.name == topic_name and len(t.partitions) == 1
        assert md.controller_id in {b[0] for b in md.brokers}
    ghost = f"{topic_name}-not-created"
    c = ck_consumer(broker.bootstrap, **{"allow.auto.create.topics": False})
    try:
        t = c.list_topics(topic=ghost, timeout=10).topics[ghost]
        assert t.error is not None, "metadata for an unknown topic without auto-create reported no error"
    finally:
        c.close()
    assert ghost not in ck_admin(broker.bootstrap).list_topics(timeout=10).topics


@pytest.mark.cluster_ci
def test_producing_to_a_new_topic_auto_creates_it(broker, topic_name):
    msgs = make_messages(50, 1, seed=63)
    reports = ck_produce(broker.bootstrap, topic_name, msgs, acks="all")
    assert sorted(off for _, off in reports) == list(range(50))


@pytest.mark.cluster_ci
def test_fetch_max_bytes_smaller_than_a_batch_still_makes_progress(broker, topic_name):
    """KIP-74 (Fetch v3+): when the first batch at the fetch offset is larger than max_bytes
    the broker still returns that whole batch, so a consumer can always make progress."""
    ck_create_topic(broker.bootstrap, topic_name, 1)
    # acks=all: a Fetch reads below the high watermark, which on RF 3 acks=1 does not wait for.
    ck_produce(broker.bootstrap, topic_name, make_messages(300, 1, seed=64), acks="all", **{"linger.ms": 50})
    with kw.connect(broker.leader_port(topic_name)) as s:
        fp = kw.fetch(s, topic_name, 0, 0, max_wait_ms=0, max_bytes=1)
        assert fp.error_code == kw.NONE
        batches = kw.parse_batches(fp.records or b"")
        assert len(batches) >= 1 and batches[0].base_offset == 0, "max_bytes=1 returned no complete batch"
        assert batches[0].crc_ok
        # A normal limit returns more than one batch's worth when there is more.
        fp = kw.fetch(s, topic_name, 0, 0, correlation_id=9, max_wait_ms=0, max_bytes=1 << 20)
        total = sum(b.record_count for b in kw.parse_batches(fp.records or b""))
        assert total == 300, f"a 1 MiB fetch returned {total} of 300 records"


@pytest.mark.cluster_ci
def test_produce_acks_0_sends_no_response(broker, topic_name):
    """acks=0: the broker answers nothing, so the next response on the connection belongs to
    the next request; the data is still appended."""
    from test_bad_input import _valid_batch

    ck_create_topic(broker.bootstrap, topic_name, 1)
    batch = _valid_batch()
    body = kw.string(None) + kw.i16(0) + kw.i32(5000) + kw.array(
        [kw.string(topic_name) + kw.array([kw.i32(0) + kw.i32(len(batch)) + batch])]
    )
    with kw.connect(broker.leader_port(topic_name)) as s:
        s.sendall(kw.request(kw.PRODUCE, 3, 31, body) + kw.api_versions_request(0, 32))
        corr, _ = kw.read_response(s)
        assert corr == 32, f"first response has correlation id {corr}: acks=0 Produce was answered"
        deadline = time.monotonic() + 5
        while True:
            fp = kw.fetch(s, topic_name, 0, 0, correlation_id=33, max_wait_ms=200)
            if fp.high_watermark == 1:
                break
            assert time.monotonic() < deadline, "acks=0 record never appended"


def test_advertised_listener_is_what_metadata_returns(make_broker):
    broker = make_broker(start=False)
    broker.extra_args += ["--advertised-listener", f"localhost:{broker.port}"]
    broker.start()
    with kw.connect(broker.port) as s:
        md = kw.metadata(s, None)
    assert [(b[1], b[2]) for b in md.brokers] == [("localhost", broker.port)], md.brokers


@pytest.mark.cluster_ci
def test_fetch_min_bytes_waits_for_more_data(broker, topic_name):
    """min.bytes above what is available: the fetch waits out max.wait.ms, then returns what
    there is; min.bytes=1 with data available returns at once."""
    ck_create_topic(broker.bootstrap, topic_name, 1)
    # acks=all: a Fetch reads below the high watermark, which on RF 3 acks=1 does not wait for.
    ck_produce(broker.bootstrap, topic_name, make_messages(5, 1, seed=65), acks="all")
    with kw.connect(broker.leader_port(topic_name)) as s:
        t0 = time.monotonic()
        fp = kw.fetch(s, topic_name, 0, 0, max_wait_ms=700, min_bytes=10 << 20)
        took = time.monotonic() - t0
        assert fp.error_code == kw.NONE and sum(b.record_count for b in kw.parse_batches(fp.records or b"")) == 5
        assert 0.5 <= took <= 4.0, f"min.bytes=10 MiB with 1 KiB available answered after {took:.2f}s (max.wait.ms=700)"
        t0 = time.monotonic()
        fp = kw.fetch(s, topic_name, 0, 0, correlation_id=4, max_wait_ms=5000, min_bytes=1)
        took = time.monotonic() - t0
        assert fp.records and took < 1.0, f"min.bytes=1 with data available took {took:.2f}s"
