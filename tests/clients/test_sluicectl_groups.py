"""`sluicectl groups` and `sluicectl consume --group` against groups made by a real client
(kafka-python's KafkaConsumer with a group_id): list, describe (members, decoded assignment,
committed offsets, lag), reset-offsets (refused while the group is active, dry run by
default, every reset spec), delete.

The CLI binary is $SLUICECTL_BIN, or `sluicectl` beside the broker binary under test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sluice_broker import sluice_binary

GROUP_TIMEOUT_S = 20.0


def sluicectl_binary() -> Path:
    path = Path(os.environ.get("SLUICECTL_BIN", sluice_binary().parent / "sluicectl"))
    if not path.is_file():
        raise FileNotFoundError(f"sluicectl not found at {path}: `cargo build -p tools` or set $SLUICECTL_BIN")
    return path


def ctl(broker, *args: str, stdin: str | None = None, expect: int | None = 0) -> subprocess.CompletedProcess:
    """Runs sluicectl against `broker`; checks the exit code unless `expect` is None."""
    p = subprocess.run(
        [str(sluicectl_binary()), "--bootstrap", broker.bootstrap, "--request-timeout-ms", "5000", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if expect is not None:
        assert p.returncode == expect, f"sluicectl {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def ctl_json(broker, *args: str, stdin: str | None = None):
    return json.loads(ctl(broker, *args, "--output", "json", stdin=stdin).stdout)


def _consumer(broker, group: str, topic: str):
    from kafka import KafkaConsumer

    return KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        client_id="ctl-test-client",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10000,
        heartbeat_interval_ms=1000,
        consumer_timeout_ms=500,
    )


def _consume_n(consumer, n: int) -> list:
    got = []
    deadline = time.monotonic() + GROUP_TIMEOUT_S
    while len(got) < n and time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=500).values():
            got.extend(recs)
    assert len(got) >= n, f"consumed {len(got)} of {n}"
    return got


def _wait_state(broker, group: str, state: str) -> dict:
    deadline = time.monotonic() + GROUP_TIMEOUT_S
    while True:
        d = ctl_json(broker, "groups", "describe", group)
        if d["state"] == state or time.monotonic() > deadline:
            assert d["state"] == state, d
            return d
        time.sleep(0.2)


def _committed(desc: dict, topic: str) -> dict[int, int | None]:
    return {o["partition"]: o["committed_offset"] for o in desc["offsets"] if o["topic"] == topic}


@pytest.mark.cluster_ci
def test_groups_describe_reset_delete_with_a_live_consumer(broker, topic_name):
    ctl(broker, "topics", "create", topic_name, "--partitions", "6")
    lines = "".join(f"key-{i}:value-{i}\n" for i in range(60))
    ctl(broker, "produce", topic_name, "--key-separator", ":", stdin=lines)
    group = f"g-{topic_name}"

    consumer = _consumer(broker, group, topic_name)
    try:
        _consume_n(consumer, 60)
        consumer.commit()
        # Ten more on partition 0: a lag of exactly 10 there, 0 elsewhere.
        ctl(broker, "produce", topic_name, "--partition", "0", stdin="".join(f"late-{i}\n" for i in range(10)))
        ends = {p["partition"]: p["log_end_offset"] for p in ctl_json(broker, "topics", "describe", topic_name)["partitions"]}
        assert sum(ends.values()) == 70

        d = _wait_state(broker, group, "Stable")
        assert d["protocol_type"] == "consumer"
        assert len(d["members"]) == 1
        m = d["members"][0]
        assert m["client_id"] == "ctl-test-client"
        assert sorted(m["assignment"][topic_name]) == list(range(6)), m
        rows = {o["partition"]: o for o in d["offsets"] if o["topic"] == topic_name}
        assert sorted(rows) == list(range(6))
        for p, row in rows.items():
            assert row["member_id"] == m["member_id"]
            assert row["log_end_offset"] == ends[p]
            assert row["lag"] == (10 if p == 0 else 0), row
            assert row["committed_offset"] == ends[p] - (10 if p == 0 else 0)
        table = ctl(broker, "groups", "describe", group).stdout
        assert "ctl-test-client" in table and "LAG" in table

        listed = ctl_json(broker, "groups", "list")
        assert any(g["group"] == group for g in listed), listed

        # An active group's offsets are not reset, and it cannot be deleted.
        refused = ctl(broker, "groups", "reset-offsets", group, "--topic", topic_name, "--to-earliest", "--execute", expect=1)
        assert "Stable" in refused.stderr and "inactive" in refused.stderr, refused.stderr
        ctl(broker, "groups", "delete", group, expect=1)
    finally:
        consumer.close()

    _wait_state(broker, group, "Empty")
    before = _committed(ctl_json(broker, "groups", "describe", group), topic_name)

    # Dry run by default: a plan, nothing committed.
    plan = ctl_json(broker, "groups", "reset-offsets", group, "--topic", topic_name, "--to-earliest")
    assert plan["executed"] is False
    assert [r["new_offset"] for r in plan["plan"]] == [0] * 6
    assert "Dry run" in ctl(broker, "groups", "reset-offsets", group, "--topic", topic_name, "--to-earliest").stdout
    assert _committed(ctl_json(broker, "groups", "describe", group), topic_name) == before

    def reset(*spec: str, topic: str = topic_name) -> dict[int, int]:
        ctl(broker, "groups", "reset-offsets", group, "--topic", topic, *spec, "--execute")
        return _committed(ctl_json(broker, "groups", "describe", group), topic_name)

    assert set(reset("--to-earliest").values()) == {0}
    shifted = reset("--shift-by", "3")
    assert shifted == {p: min(3, ends[p]) for p in range(6)}
    assert reset("--shift-by", "-2") == {p: max(c - 2, 0) for p, c in shifted.items()}
    assert reset("--to-offset", "1000000") == ends
    assert set(reset("--to-datetime", "2000-01-01T00:00:00Z").values()) == {0}
    assert reset("--to-datetime", "2100-01-01T00:00:00Z") == ends
    after = reset("--to-earliest", topic=f"{topic_name}:0,1")
    assert after[0] == 0 and after[1] == 0 and after[2] == ends[2]

    # A consumer of the group resumes from the reset offsets: partitions 0 and 1 again.
    consumer = _consumer(broker, group, topic_name)
    try:
        again = _consume_n(consumer, ends[0] + ends[1])
        assert {r.partition for r in again} == {0, 1}
    finally:
        consumer.close()
    _wait_state(broker, group, "Empty")

    assert ctl_json(broker, "groups", "delete", group) == {"deleted": [group]}
    gone = ctl(broker, "groups", "describe", group, expect=1)
    assert group in gone.stderr


@pytest.mark.cluster_ci
def test_console_consumer_with_group_commits_its_position(broker, topic_name):
    ctl(broker, "topics", "create", topic_name, "--partitions", "1")
    ctl(broker, "produce", topic_name, stdin="".join(f"m{i}\n" for i in range(10)))
    group = f"cli-{topic_name}"
    first = ctl(broker, "consume", topic_name, "--group", group, "--from-beginning", "--max-messages", "4", "--timeout-ms", "5000")
    assert first.stdout.split() == ["m0", "m1", "m2", "m3"]
    d = ctl_json(broker, "groups", "describe", group)
    assert _committed(d, topic_name) == {0: 4}
    assert d["offsets"][0]["lag"] == 6
    second = ctl(broker, "consume", topic_name, "--group", group, "--max-messages", "3", "--timeout-ms", "5000")
    assert second.stdout.split() == ["m4", "m5", "m6"]
    assert _committed(ctl_json(broker, "groups", "describe", group), topic_name) == {0: 7}

    # Unbounded, stopped with Ctrl-C: the position is still committed.
    proc = subprocess.Popen(
        [str(sluicectl_binary()), "--bootstrap", broker.bootstrap, "consume", topic_name, "--group", group],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert [proc.stdout.readline().strip() for _ in range(3)] == ["m7", "m8", "m9"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _committed(ctl_json(broker, "groups", "describe", group), topic_name) == {0: 10}


@pytest.mark.parametrize("missing", ["describe", "delete"])
def test_unknown_group_is_an_error(broker, missing):
    p = ctl(broker, "groups", missing, "no-such-group", expect=1)
    assert "no-such-group" in p.stderr and "GROUP_ID_NOT_FOUND" in p.stderr, p.stderr
