"""The admin listener: /metrics counters move by what real clients sent (parsed with the
official Prometheus parser), /health and /ready, bad HTTP input, and `sluice check`."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

import kafka_wire as kw
from clientutil import ck_consume, ck_create_topic, ck_produce, make_messages
from sluice_broker import free_port, sluice_binary

PARTITIONS = 3
N = 600


@pytest.fixture
def admin(make_broker):
    """(broker, admin port): a 2-shard broker with its admin listener on a free port."""
    port = free_port()
    b = make_broker(extra_args=["--set", f"admin.listener=127.0.0.1:{port}"])
    return b, port


def http_get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def raw_http(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes to the admin port and return everything it answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def scrape(port: int) -> dict:
    """{(sample name, frozenset(labels)): value}, parsed by prometheus_client."""
    status, text = http_get(port, "/metrics")
    assert status == 200, text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset({k: str(v) for k, v in labels.items()}.items())), 0.0)


def total(samples: dict, name: str, **labels) -> float:
    """Sum of `name` over every series whose labels include `labels`."""
    want = {k: str(v) for k, v in labels.items()}.items()
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def partition_gauge(samples: dict, name: str, topic: str) -> dict[int, float]:
    return {
        int(dict(ls)["partition"]): v
        for (n, ls), v in samples.items()
        if n == name and dict(ls).get("topic") == topic
    }


def test_counters_move_by_what_real_clients_sent(admin, topic_name):
    b, port = admin
    ck_create_topic(b.bootstrap, topic_name, PARTITIONS)
    before = scrape(port)
    msgs = make_messages(N, PARTITIONS, seed=8)
    ck_produce(b.bootstrap, topic_name, msgs, acks="all", codec="none")
    mid = scrape(port)

    per_partition = Counter(m.partition for m in msgs)
    leo = partition_gauge(mid, "sluice_partition_log_end_offset", topic_name)
    assert leo == {p: float(n) for p, n in per_partition.items()}
    assert partition_gauge(mid, "sluice_partition_high_watermark", topic_name) == leo
    assert partition_gauge(mid, "sluice_partition_log_start_offset", topic_name) == {p: 0.0 for p in leo}
    assert all(v >= 1 for v in partition_gauge(mid, "sluice_partition_segments", topic_name).values())

    def delta(name, **labels):
        return total(mid, name, **labels) - total(before, name, **labels)

    assert delta("sluice_produce_records_total") == N
    produced_bytes = delta("sluice_produce_bytes_total")
    # Every appended batch byte is in the partitions' segments, and nothing else is.
    assert produced_bytes == sum(partition_gauge(mid, "sluice_partition_size_bytes", topic_name).values())
    assert produced_bytes >= sum(len(m.value or b"") for m in msgs)
    produce_requests = delta("sluice_requests_total", api="Produce")
    assert 1 <= produce_requests <= N
    assert delta("sluice_request_duration_seconds_count", api="Produce") == produce_requests
    assert delta("sluice_network_received_bytes_total") >= produced_bytes
    assert delta("sluice_connections_accepted_total") >= 1
    assert total(mid, "sluice_request_errors_total", api="Produce") == 0

    got = ck_consume(b.bootstrap, topic_name, range(PARTITIONS), N)
    assert len(got) == N
    after = scrape(port)
    fetched = total(after, "sluice_fetch_bytes_total") - total(mid, "sluice_fetch_bytes_total")
    assert fetched >= produced_bytes, "every produced byte was fetched at least once"
    assert total(after, "sluice_requests_total", api="Fetch") > total(mid, "sluice_requests_total", api="Fetch")
    sent = total(after, "sluice_network_sent_bytes_total") - total(mid, "sluice_network_sent_bytes_total")
    assert sent >= fetched

    # Real state on one node: nothing under-replicated or offline; topic creation fsyncs the
    # registry; file I/O went through io_uring and every operation completed.
    assert value(after, "sluice_under_replicated_partitions") == 0
    assert value(after, "sluice_offline_partitions") == 0
    assert value(after, "sluice_fsync_duration_seconds_count") >= 1
    submitted = total(after, "sluice_io_uring_submitted_total")
    assert submitted > 0
    assert total(after, "sluice_io_uring_completed_total") <= submitted
    assert total(after, "sluice_shard_busy_seconds_total") > 0
    for shard in range(2):
        assert ("sluice_shard_busy_seconds_total", frozenset({("shard", str(shard))})) in after
        assert ("sluice_shard_mailbox_jobs", frozenset({("shard", str(shard))})) in after


def record_batch(value: bytes, timestamp: int) -> bytes:
    """A RecordBatch v2 with one uncompressed record (no key, no headers)."""

    def varint(n: int) -> bytes:
        z = (n << 1) ^ (n >> 63)
        out = b""
        while z >= 0x80:
            out += bytes([(z & 0x7F) | 0x80])
            z >>= 7
        return out + bytes([z])

    body = b"\x00" + varint(0) + varint(0) + varint(-1) + varint(len(value)) + value + varint(0)
    record = varint(len(body)) + body
    after_crc = (
        kw.i16(0) + kw.i32(0) + kw.i64(timestamp) + kw.i64(timestamp)
        + kw.i64(-1) + kw.i16(-1) + kw.i32(-1) + kw.i32(1) + record
    )
    after_len = kw.i32(-1) + kw.i8(2) + struct.pack(">I", kw.crc32c(after_crc)) + after_crc
    return kw.i64(0) + kw.i32(len(after_len)) + after_len


def produce_v3(topic: str, partition: int, batch: bytes) -> bytes:
    part = kw.i32(partition) + kw.i32(len(batch)) + batch
    return kw.string(None) + kw.i16(1) + kw.i32(10_000) + kw.array([kw.string(topic) + kw.array([part])])


def test_consumer_group_lag_is_high_watermark_minus_committed(admin, topic_name):
    """The lag gauge follows a group's commits: 10 records, commit at 4 -> 6, at 10 -> 0."""
    from confluent_kafka import Consumer, TopicPartition

    b, port = admin
    ck_create_topic(b.bootstrap, topic_name, 1)
    msgs = make_messages(10, 1, seed=3)
    ck_produce(b.bootstrap, topic_name, msgs, acks="all", codec="none")
    group = f"lag-{topic_name}"
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        for committed, lag in ((4, 6.0), (10, 0.0)):
            c.commit(offsets=[TopicPartition(topic_name, 0, committed)], asynchronous=False)
            samples = scrape(port)
            assert value(samples, "sluice_consumer_group_lag", group=group, topic=topic_name,
                         partition=0) == lag
    finally:
        c.close()


def test_exact_counts_from_a_wire_client(admin, topic_name):
    """Requests and bytes counted exactly: K ApiVersions, K single-record produces, one bad request."""
    b, port = admin
    ck_create_topic(b.bootstrap, topic_name, 1)
    before = scrape(port)
    k = 5
    batch = record_batch(b"metrics-test-value", int(time.time() * 1000))
    sent = 0
    with kw.connect(b.port) as s:
        for i in range(k):
            req = kw.api_versions_request(2, i)
            sent += len(req)
            s.sendall(req)
            kw.read_response(s)
        for i in range(k):
            req = kw.request(0, 3, 100 + i, produce_v3(topic_name, 0, batch))
            sent += len(req)
            s.sendall(req)
            _, body = kw.read_response(s)
            r = kw.Reader(body)
            assert r.i32() == 1 and r.string() == topic_name and r.i32() == 1 and r.i32() == 0
            assert r.i16() == 0, "produce error"
    after = scrape(port)

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("sluice_requests_total", api="ApiVersions") == k
    assert delta("sluice_requests_total", api="Produce") == k
    assert delta("sluice_produce_records_total") == k
    assert delta("sluice_produce_bytes_total") == k * len(batch)
    assert delta("sluice_network_received_bytes_total") == sent
    assert partition_gauge(after, "sluice_partition_log_end_offset", topic_name) == {0: float(k)}
    assert partition_gauge(after, "sluice_partition_size_bytes", topic_name) == {0: float(k * len(batch))}

    # Metadata v99 is not served: the connection is closed and the error counted.
    with kw.connect(b.port) as s:
        s.sendall(kw.request(3, 99, 7, b""))
        assert kw.outcome_after(s, 5.0) == "closed"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        errs = value(scrape(port), "sluice_request_errors_total", api="Metadata", error="UNSUPPORTED_VERSION")
        if errs == 1:
            break
        time.sleep(0.05)
    assert errs == 1

    # Produce to a partition that does not exist: counted per partition, by Kafka error name.
    with kw.connect(b.port) as s:
        s.sendall(kw.request(0, 3, 9, produce_v3(topic_name, 7, batch)))
        kw.read_response(s)
    assert value(scrape(port), "sluice_request_errors_total", api="Produce", error="UNKNOWN_TOPIC_OR_PARTITION") == 1


def test_health_ready_and_routes(admin):
    b, port = admin
    assert http_get(port, "/health") == (200, "ok\n")
    assert http_get(port, "/ready") == (200, "ready\n")
    assert http_get(port, "/nope")[0] == 404
    assert http_get(port, "/metrics", method="POST")[0] == 405
    head = raw_http(port, b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
    status, text = http_get(port, "/metrics?x=1")
    assert status == 200 and "sluice_requests_total" in text


def test_ready_is_503_while_draining(make_broker, topic_name):
    """SIGTERM while a consumer has stopped reading a large fetch response: the shard cannot
    finish draining that connection, and meanwhile /ready answers 503 and /health 200."""
    port = free_port()
    b = make_broker(extra_args=["--set", f"admin.listener=127.0.0.1:{port}"])
    ck_create_topic(b.bootstrap, topic_name, 1)
    batch = record_batch(b"x" * 900_000, int(time.time() * 1000))
    with kw.connect(b.port) as s:
        for i in range(16):
            s.sendall(kw.request(0, 3, i, produce_v3(topic_name, 0, batch)))
            kw.read_response(s)
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", b.port))
        body = kw.fetch_body_v4(topic_name, 0, 0, max_bytes=64 << 20)
        stalled.sendall(kw.request(kw.FETCH, 4, 1, body))
        time.sleep(0.5)
        assert http_get(port, "/ready") == (200, "ready\n")
        b.proc.send_signal(15)
        time.sleep(0.5)
        assert http_get(port, "/ready") == (503, "draining\n")
        assert http_get(port, "/health")[0] == 200
    finally:
        stalled.close()
    assert b.proc.wait(timeout=20) == 0
    b.exit_codes.append(0)


def test_bad_http_input_does_not_kill_the_broker(admin):
    b, port = admin
    assert raw_http(port, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw_http(port, b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * 20_000).startswith(b"HTTP/1.1 431 ")
    assert raw_http(port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw_http(port, b"").startswith(b"") is True  # open and close without a byte
    # Slow clients hold a connection for at most the I/O timeout; beyond the cap they are
    # refused with 503 and the scrape path keeps working once they are gone.
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
    try:
        time.sleep(0.3)
        answers = []
        for s in idle[16:]:
            s.settimeout(5)
            answers.append(s.recv(100))
        assert all(a.startswith(b"HTTP/1.1 503 ") for a in answers), answers
        # Held connections time out with 408 rather than pinning a thread forever.
        idle[0].settimeout(10)
        assert idle[0].recv(100).startswith(b"HTTP/1.1 408 ")
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, _ = http_get(port, "/health")
        if status == 200:
            break
        time.sleep(0.2)
    assert status == 200
    assert b.alive()
    with kw.connect(b.port) as s:
        assert kw.api_versions(s).error_code == 0


def test_explicit_admin_listener_that_cannot_bind_fails_start(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = subprocess.run(
            [str(sluice_binary()), "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1:0",
             "--set", f"admin.listener=127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=30,
        )
    assert r.returncode != 0
    assert f"127.0.0.1:{port}" in r.stderr


@pytest.mark.parametrize("fmt", ["json", "table"])
def test_sluice_check_reports_every_check(tmp_path, fmt):
    r = subprocess.run(
        [str(sluice_binary()), "check", "--data-dir", str(tmp_path / "data"), "--output", fmt],
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode in (0, 1), r.stderr
    names = {"io_uring", "memlock", "nofile", "data_dir", "disk_free", "fs_type", "clock_sync",
             "swappiness", "transparent_hugepages"}
    if fmt == "json":
        doc = json.loads(r.stdout)
        assert {c["name"] for c in doc["checks"]} == names
        assert doc["ok"] == (r.returncode == 0)
        assert doc["ok"] == all(c["status"] != "fail" for c in doc["checks"])
        for c in doc["checks"]:
            assert c["status"] in ("pass", "warn", "fail")
            assert (c["remedy"] == "") == (c["status"] == "pass"), c
    else:
        for n in names:
            assert n in r.stdout


def run_briefly(tmp_path, name: str, args: list[str], env_extra: dict | None = None) -> str:
    """Start the broker without RUST_LOG, wait for /ready, SIGTERM it; return its stderr."""
    import os

    port, kafka = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG" and not k.startswith("SLUICE_")}
    env.update(env_extra or {})
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:
        p = subprocess.Popen(
            [str(sluice_binary()), "--data-dir", str(tmp_path / name), "--listen", f"127.0.0.1:{kafka}",
             "--shards", "2", "--set", f"admin.listener=127.0.0.1:{port}", *args],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    if http_get(port, "/ready")[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.05)
            with kw.connect(kafka) as s:  # a client connection (logged at debug level)
                kw.api_versions(s)
            time.sleep(0.2)
            p.send_signal(15)
            assert p.wait(timeout=20) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    return log.read_text()


def test_log_format_json_and_log_level(tmp_path):
    """log.format=json: every log line is one JSON object; log.level filters; RUST_LOG wins."""
    text = run_briefly(tmp_path, "json", ["--set", "log.format=json", "--set", "log.level=debug"])
    events = [json.loads(line) for line in text.splitlines() if line]
    listening = [e for e in events if e["message"] == "sluice listening"]
    assert len(listening) == 1 and listening[0]["level"] == "INFO"
    assert listening[0]["fields"]["shards"] == 2 and listening[0]["timestamp"]
    assert any(e["level"] == "DEBUG" for e in events)

    quiet = run_briefly(tmp_path, "quiet", ["--set", "log.level=warn"])
    assert "sluice listening" not in quiet
    loud = run_briefly(tmp_path, "loud", ["--set", "log.level=warn"], {"RUST_LOG": "info"})
    assert "sluice listening" in loud
