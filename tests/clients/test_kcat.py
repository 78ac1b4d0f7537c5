"""kcat (Debian's, librdkafka 2.0.2): the old-client compatibility target.

Metadata with -L, 100,000 keyed messages produced from a file with -K: and consumed with
-o beginning -e: every message comes back, each key's values in the order produced, every
partition's offsets consecutive from 0.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import subprocess
from collections import Counter, defaultdict

import pytest

from clientutil import ck_create_topic, ck_produce, make_messages, by_partition

KCAT_TIMEOUT_S = 45


def kcat(*args: str, stdin=None, timeout: float = KCAT_TIMEOUT_S) -> subprocess.CompletedProcess:
    path = shutil.which("kcat")
    if path is None:
        pytest.fail("kcat is not installed (Debian package `kcat`; .ci/run installs it)")
    try:
        return subprocess.run([path, *args], stdin=stdin, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"kcat {' '.join(args)} did not finish within {timeout}s; stderr: {e.stderr!r:.2000}")


def kcat_ok(*args: str, **kw) -> str:
    r = kcat(*args, **kw)
    assert r.returncode == 0, f"kcat {' '.join(args)} exited {r.returncode}; stderr:\n{r.stderr.decode(errors='replace')[-3000:]}"
    return r.stdout.decode()


def test_kcat_version_is_the_old_client():
    """The compatibility target really is librdkafka 2.0.x (a newer kcat would prove less)."""
    out = kcat_ok("-V")
    assert "librdkafka 2.0." in out, out


@pytest.mark.cluster_ci
def test_kcat_metadata(broker, topic_name):
    """`kcat -L` lists every broker of the topology at its advertised 127.0.0.1:port and the
    topic with its partitions, each led by one of them with replication-factor replicas (this
    broker alone on one node, three on the cluster), all in the ISR."""
    ck_create_topic(broker.bootstrap, topic_name, 4)
    md = json.loads(kcat_ok("-b", broker.bootstrap, "-L", "-J"))
    brokers = md["brokers"]
    names = sorted(b["name"] for b in brokers)
    assert names == sorted(f"{h}:{p}" for h, p in broker.nodes), f"advertised {names}, listening on {broker.nodes}"
    ids = {b["id"] for b in brokers}
    assert len(ids) == len(brokers), brokers
    topics = {t["topic"]: t for t in md["topics"]}
    assert topic_name in topics, f"{topic_name} missing from {sorted(topics)}"
    t = topics[topic_name]
    assert "error" not in t, t
    parts = sorted(t["partitions"], key=lambda p: p["partition"])
    assert [p["partition"] for p in parts] == [0, 1, 2, 3]
    for p in parts:
        replicas = [r["id"] for r in p["replicas"]]
        assert len(replicas) == broker.replication_factor and set(replicas) <= ids, p
        assert p["leader"] in replicas, p
        assert sorted(r["id"] for r in p["isrs"]) == sorted(replicas), p
    text = kcat_ok("-b", broker.bootstrap, "-L", "-t", topic_name)
    assert f'topic "{topic_name}" with 4 partitions' in text, text


def _kcat_consume(bootstrap: str, topic: str, *extra: str) -> list[tuple[int, int, str, str]]:
    out = kcat_ok("-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%p\t%o\t%k\t%s\n", *extra)
    rows = []
    for line in out.splitlines():
        p, o, k, v = line.split("\t", 3)
        rows.append((int(p), int(o), k, v))
    return rows


def _check_offsets(rows) -> dict[int, list]:
    per = defaultdict(list)
    for p, o, k, v in rows:
        per[p].append((o, k, v))
    for p, items in per.items():
        offs = [o for o, _, _ in items]
        assert offs == list(range(len(offs))), f"partition {p}: offsets not 0..{len(offs) - 1} in order"
    return per


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("zero_copy", ["true", "false"])
def test_kcat_100k_keyed_messages(make_broker, topic_name, tmp_path, zero_copy):
    """100,000 keyed messages produced by kcat from a file come back complete, each key in one
    partition and each key's values in the order they were produced (both fetch paths)."""
    broker = make_broker(extra_args=["--set", f"fetch.zero.copy={zero_copy}"])
    partitions = 4
    ck_create_topic(broker.bootstrap, topic_name, partitions)
    rng = random.Random(2026)
    n, nkeys = 100_000, 1000
    seq = Counter()
    produced = []
    for i in range(n):
        key = f"key{rng.randrange(nkeys)}"
        value = f"{key}.{seq[key]}.{i}." + "x" * rng.randrange(0, 120)
        seq[key] += 1
        produced.append((key, value))
    path = tmp_path / "messages.txt"
    path.write_text("".join(f"{k}:{v}\n" for k, v in produced))
    with open(path, "rb") as f:
        kcat_ok("-b", broker.bootstrap, "-P", "-t", topic_name, "-K:", "-X", "linger.ms=20", stdin=f, timeout=60)

    rows = _kcat_consume(broker.bootstrap, topic_name)
    assert len(rows) == n, f"consumed {len(rows)} of {n} messages"
    _check_offsets(rows)
    assert Counter((k, v) for _, _, k, v in rows) == Counter(produced), "consumed multiset differs from produced"
    key_partition = {}
    per_key = defaultdict(list)
    for p, _, k, v in sorted(rows, key=lambda r: (r[0], r[1])):
        assert key_partition.setdefault(k, p) == p, f"key {k} in partitions {key_partition[k]} and {p}"
        per_key[k].append(v)
    want = defaultdict(list)
    for k, v in produced:
        want[k].append(v)
    for k, vs in want.items():
        assert per_key[k] == vs, f"key {k}: values out of produced order"
    assert len(set(key_partition.values())) == partitions, "keys did not spread over every partition"


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", pytest.param("zstd", marks=pytest.mark.cluster_ci)])
def test_kcat_compressed_produce_and_partial_consume(broker, topic_name, tmp_path, codec):
    """kcat -z CODEC produces compressed batches the broker accepts; kcat reads them back, also
    from an absolute offset on one partition (-p 0 -o 250)."""
    ck_create_topic(broker.bootstrap, topic_name, 2)
    lines = [f"k{i % 17}:v{i}-" + "abc" * (i % 40) for i in range(3000)]
    path = tmp_path / "m.txt"
    path.write_text("\n".join(lines) + "\n")
    with open(path, "rb") as f:
        kcat_ok("-b", broker.bootstrap, "-P", "-t", topic_name, "-K:", "-z", codec, "-X", "linger.ms=50", stdin=f)
    rows = _kcat_consume(broker.bootstrap, topic_name)
    per = _check_offsets(rows)
    assert sorted(f"{k}:{v}" for _, _, k, v in rows) == sorted(lines)
    p0 = per[0]
    out = kcat_ok("-b", broker.bootstrap, "-C", "-t", topic_name, "-p", "0", "-o", "250", "-e", "-q", "-f", "%o\t%k\t%s\n")
    tail = [tuple(line.split("\t", 2)) for line in out.splitlines()]
    assert tail == [(str(o), k, v) for o, k, v in p0[250:]], "kcat -p 0 -o 250 did not return offsets 250.. of partition 0"


@pytest.mark.cluster_ci
def test_kcat_reads_what_confluent_wrote(broker, topic_name):
    """Messages from a current librdkafka (confluent-kafka, zstd, headers, CreateTime) are read by
    librdkafka 2.0.2 with keys, values, timestamps and headers intact."""
    ck_create_topic(broker.bootstrap, topic_name, 2)
    msgs = [
        dataclasses.replace(m, headers=(("h1", f"a{i}".encode()), ("h2", b"b")) if i % 3 == 0 else ())
        for i, m in enumerate(make_messages(600, 2, seed=21))
        if m.key is not None and m.value is not None
    ]
    ck_produce(broker.bootstrap, topic_name, msgs, acks="all", codec="zstd")
    out = kcat_ok("-b", broker.bootstrap, "-C", "-t", topic_name, "-o", "beginning", "-e", "-q",
                  "-f", "%p\t%o\t%T\t%k\t%h\t%s\n")
    got = defaultdict(list)
    for line in out.splitlines():
        p, o, ts, k, h, v = line.split("\t", 5)
        got[int(p)].append((int(ts), k, h, v))
    for p, ms in by_partition(msgs).items():
        want = [
            (m.timestamp, m.key.decode(), ",".join(f"{hk}={hv.decode()}" for hk, hv in m.headers), m.value.decode())
            for m in ms
        ]
        # kcat prints no headers as an empty field or a placeholder depending on the version.
        norm = [(ts, k, h if h not in ("", "NULL") else "", v) for ts, k, h, v in got[p]]
        assert norm == want, f"partition {p}: kcat read differs from what confluent-kafka wrote"


@pytest.mark.cluster_ci
def test_kcat_consume_from_timestamp(broker, topic_name):
    """`kcat -o s@TS` (ListOffsets by timestamp from librdkafka 2.0.2) starts at the first
    message whose timestamp is >= TS."""
    ck_create_topic(broker.bootstrap, topic_name, 1)
    base = 1_650_000_000_000
    msgs = [m for m in make_messages(800, 1, seed=23, base_ts=base) if m.key is not None and m.value is not None]
    ck_produce(broker.bootstrap, topic_name, msgs, acks="1", codec="none", **{"linger.ms": 50})
    for idx in (0, 333, len(msgs) - 1):
        ts = msgs[idx].timestamp
        out = kcat_ok("-b", broker.bootstrap, "-C", "-t", topic_name, "-p", "0", "-o", f"s@{ts}", "-e", "-q", "-f", "%o\t%T\n")
        rows = [tuple(map(int, line.split("\t"))) for line in out.splitlines()]
        assert rows, f"nothing consumed from s@{ts}"
        assert rows[0] == (idx, ts), f"s@{ts}: first message (offset, ts) {rows[0]}, expected {(idx, ts)}"
        assert len(rows) == len(msgs) - idx
