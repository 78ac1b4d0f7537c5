"""Consumer groups with real clients: kafka-python and confluent-kafka group consumers.

- three members (separate processes) on a six-partition topic: every partition owned by exactly
  one member; one member killed with SIGKILL -> its partitions move to the others within the
  session timeout; everything produced is consumed exactly once across the group (members
  commit synchronously after processing);
- committed offsets survive a broker kill -9 and a clean restart;
- a static member (group.instance.id) that restarts gets its partitions back without a
  rebalance;
- ListGroups / DescribeGroups / OffsetFetch through both clients' admin APIs;
- kcat -G (librdkafka 2.0.2) resumes from its commit.

Group members run as subprocesses of this file (`python test_groups.py member ...`), so a
member can be killed like a crashed application. Each prints JSON lines (assignments and
consumed records) that the test reads; each exits by itself after MEMBER_RUNTIME_S.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

SESSION_TIMEOUT_MS = 6000
HEARTBEAT_MS = 1000
MEMBER_RUNTIME_S = 100
# The broker's first rebalance of a new group waits this long for more members.
BROKER_ARGS = ["--set", "group.initial.rebalance.delay.ms=300"]
LIBS = ["kafka-python", "confluent"]


# ============================================================================ member process


def _member_main(lib: str, bootstrap: str, topic: str, group: str, instance: str) -> None:
    """Consume `topic` in `group` until SIGTERM or MEMBER_RUNTIME_S; print JSON events."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    deadline = time.monotonic() + MEMBER_RUNTIME_S

    def emit(**event):
        print(json.dumps(event), flush=True)

    if lib == "kafka-python":
        from kafka import ConsumerRebalanceListener, KafkaConsumer

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                emit(event="revoked", partitions=sorted(tp.partition for tp in revoked))

            def on_partitions_assigned(self, assigned):
                emit(event="assigned", partitions=sorted(tp.partition for tp in assigned))

        conf = dict(
            bootstrap_servers=bootstrap,
            group_id=group,
            client_id=f"member-{os.getpid()}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_MS,
            fetch_max_wait_ms=100,
            request_timeout_ms=20000,
        )
        if instance:
            conf["group_instance_id"] = instance
        c = KafkaConsumer(**conf)
        c.subscribe([topic], listener=Listener())
        while not stop.is_set() and time.monotonic() < deadline:
            batch = c.poll(timeout_ms=200)
            records = [r for rs in batch.values() for r in rs]
            for r in records:
                emit(event="consumed", p=r.partition, o=r.offset, v=r.value.decode())
            if records:
                try:
                    c.commit()  # synchronous: the positions after what was just processed
                except Exception as e:  # a failover or rebalance: these may be handed out again
                    emit(event="commit_failed", error=repr(e), recs=[[r.partition, r.value.decode()] for r in records])
        c.close()
    else:
        from confluent_kafka import Consumer

        conf = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "client.id": f"member-{os.getpid()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": HEARTBEAT_MS,
            "fetch.wait.max.ms": 100,
        }
        if instance:
            conf["group.instance.id"] = instance
        c = Consumer(conf)

        def on_assign(_c, parts):
            emit(event="assigned", partitions=sorted(p.partition for p in parts))

        def on_revoke(_c, parts):
            emit(event="revoked", partitions=sorted(p.partition for p in parts))

        c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
        while not stop.is_set() and time.monotonic() < deadline:
            msgs = c.consume(num_messages=100, timeout=0.2)
            good = [m for m in msgs if m.error() is None]
            for m in good:
                emit(event="consumed", p=m.partition(), o=m.offset(), v=m.value().decode())
            if good:
                try:
                    c.commit(asynchronous=False)
                except Exception as e:  # a failover or rebalance: these may be handed out again
                    emit(event="commit_failed", error=repr(e), recs=[[m.partition(), m.value().decode()] for m in good])
        c.close()


class Member:
    """A group member subprocess and the events it reported."""

    def __init__(self, lib: str, bootstrap: str, topic: str, group: str, instance: str = ""):
        self.lib = lib
        self.events: list[tuple[float, dict]] = []
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "member", lib, bootstrap, topic, group, instance],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.events.append((time.monotonic(), ev))

    def snapshot(self) -> list[tuple[float, dict]]:
        with self.lock:
            return list(self.events)

    def assignment(self) -> set[int] | None:
        """Partitions currently assigned (None before the first assignment)."""
        current = None
        for _, ev in self.snapshot():
            if ev["event"] == "assigned":
                current = set(ev["partitions"])
            elif ev["event"] == "revoked" and current is not None:
                current -= set(ev["partitions"])
        return current

    def rebalance_events(self) -> int:
        return sum(1 for _, ev in self.snapshot() if ev["event"] in ("assigned", "revoked"))

    def consumed(self) -> list[tuple[int, int, str]]:
        return [(ev["p"], ev["o"], ev["v"]) for _, ev in self.snapshot() if ev["event"] == "consumed"]

    def uncommitted(self) -> set[tuple[int, str]]:
        """(partition, value) of records whose synchronous commit failed (so may come again)."""
        return {(p, v) for _, ev in self.snapshot() if ev["event"] == "commit_failed" for p, v in ev["recs"]}

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _wait(cond, timeout: float, what: str, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _partitioned(members: list[Member], partitions: int) -> bool:
    """Every partition owned by exactly one of `members`, and every member owns some."""
    sets = [m.assignment() for m in members]
    if any(not s for s in sets):
        return False
    owned = Counter(p for s in sets for p in s)
    return sorted(owned) == list(range(partitions)) and all(n == 1 for n in owned.values())


def _produce(bootstrap: str, topic: str, partitions: int, start: int, n: int) -> set[tuple[int, str]]:
    from clientutil import Msg, ck_produce

    now = int(time.time() * 1000)
    msgs = [Msg(i % partitions, None, f"v{i}".encode(), (), now + i) for i in range(start, start + n)]
    ck_produce(bootstrap, topic, msgs)
    return {(m.partition, m.value.decode()) for m in msgs}


def _all_consumed(members: list[Member], produced: set[tuple[int, str]]):
    seen = {(p, v) for m in members for (p, _, v) in m.consumed()}
    return produced <= seen


# ============================================================================ tests


@pytest.mark.timeout(100)
@pytest.mark.parametrize("lib", LIBS)
def test_three_members_share_partitions_and_survive_a_crash(make_broker, topic_name, lib):
    """3 members, 6 partitions: each partition has one owner; a member killed with SIGKILL
    loses its partitions to the others within the session timeout; every message is consumed
    exactly once across the group; admin APIs describe the group."""
    from clientutil import ck_create_topic

    broker = make_broker(extra_args=BROKER_ARGS)
    ck_create_topic(broker.bootstrap, topic_name, 6)
    group = f"g-{topic_name}"
    members = [Member(lib, broker.bootstrap, topic_name, group) for _ in range(3)]
    try:
        _wait(lambda: _partitioned(members, 6), 45, "3 members to share 6 partitions")
        produced = _produce(broker.bootstrap, topic_name, 6, 0, 300)
        _wait(lambda: _all_consumed(members, produced), 30, "the first 300 messages")

        _check_admin_views(broker.bootstrap, group, topic_name, members)

        # Quiescent: everything processed has been committed (commits are synchronous after
        # processing). Kill one member like a crashed process.
        _wait_committed(broker.bootstrap, group, topic_name, {p: 50 for p in range(6)})
        victim, survivors = members[0], members[1:]
        lost = victim.assignment()
        victim.kill9()
        killed_at = time.monotonic()
        _wait(lambda: _partitioned(survivors, 6), 30, "the survivors to take over")
        moved_after = time.monotonic() - killed_at
        print(f"partitions {sorted(lost)} moved {moved_after:.1f}s after SIGKILL ({lib})")
        # Expiry after the session timeout, then one heartbeat interval and a rebalance.
        assert moved_after < SESSION_TIMEOUT_MS / 1000 + 5, f"partitions {lost} moved after {moved_after:.1f}s"

        produced |= _produce(broker.bootstrap, topic_name, 6, 300, 300)
        _wait(lambda: _all_consumed(members, produced), 30, "the next 300 messages")
        # Exactly once across the group, the dead member's share included.
        consumed = Counter((p, v) for m in members for (p, _, v) in m.consumed())
        dupes = {k: n for k, n in consumed.items() if n > 1}
        assert not dupes, f"consumed more than once: {sorted(dupes)[:10]}"
        assert set(consumed) == produced
        offsets = Counter((p, o) for m in members for (p, o, _) in m.consumed())
        assert all(n == 1 for n in offsets.values())
    finally:
        for m in members:
            m.stop()


def _wait_committed(bootstrap: str, group: str, topic: str, want: dict[int, int]) -> None:
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    from clientutil import ck_admin

    admin = ck_admin(bootstrap)

    def committed():
        req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in want])
        res = admin.list_consumer_group_offsets([req], request_timeout=10)[group].result(timeout=15)
        got = {tp.partition: tp.offset for tp in res.topic_partitions}
        return got == want

    _wait(committed, 20, f"committed offsets {want}", poll=0.3)


def _check_admin_views(bootstrap: str, group: str, topic: str, members: list[Member]) -> None:
    """ListGroups / DescribeGroups / OffsetFetch through both clients' admin APIs."""
    from confluent_kafka import ConsumerGroupState
    from kafka import KafkaAdminClient

    from clientutil import ck_admin

    admin = ck_admin(bootstrap)
    listed = admin.list_consumer_groups(request_timeout=10).result(timeout=15)
    states = {g.group_id: g.state for g in listed.valid}
    assert states.get(group) == ConsumerGroupState.STABLE, states
    desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    assert desc.state == ConsumerGroupState.STABLE
    assert not desc.is_simple_consumer_group
    assert desc.partition_assignor == "range"
    assert len(desc.members) == 3
    owned = sorted(tp.partition for m in desc.members for tp in m.assignment.topic_partitions)
    assert owned == list(range(6)), owned
    assert {m.host for m in desc.members} == {"/127.0.0.1"}

    kp = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    try:
        groups = {g["group_id"]: g for g in kp.list_groups()}
        assert group in groups, groups
        d = kp.describe_groups([group])[group]
        assert d["error"] is None and d["group_state"] == "Stable", d
        assert len(d["members"]) == 3
        offsets = kp.list_group_offsets({group: None})[group]
        assert {tp.partition for tp in offsets} <= set(range(6))
        assert all(tp.topic == topic for tp in offsets)
    finally:
        kp.close()


@pytest.mark.timeout(90)
def test_committed_offsets_survive_kill9_and_clean_restart(make_broker, topic_name):
    """Offsets committed by a kafka-python group consumer come back after kill -9 (a confluent
    consumer in the same group resumes exactly there), and again after a clean restart."""
    from confluent_kafka import Consumer, TopicPartition as CkTp
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    from clientutil import ck_admin, ck_create_topic

    broker = make_broker(extra_args=BROKER_ARGS)
    ck_create_topic(broker.bootstrap, topic_name, 3)
    produced = _produce(broker.bootstrap, topic_name, 3, 0, 90)
    group = f"restart-{topic_name}"
    want = {0: 10, 1: 15, 2: 20}

    c = KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        request_timeout_ms=20000,
    )
    try:
        c.subscribe([topic_name])
        _wait(lambda: c.poll(timeout_ms=200) is not None and len(c.assignment()) == 3, 30, "assignment")
        c.commit({TopicPartition(topic_name, p): OffsetAndMetadata(o, f"meta-{p}", -1) for p, o in want.items()})
        assert {p: c.committed(TopicPartition(topic_name, p)) for p in want} == want
    finally:
        c.close()

    broker.kill9()
    broker.restart()

    ck = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "enable.partition.eof": True,
        }
    )
    try:
        got = ck.committed([CkTp(topic_name, p) for p in want], timeout=20)
        assert {tp.partition: tp.offset for tp in got} == want
        assert {tp.partition: tp.metadata for tp in got} == {p: f"meta-{p}" for p in want}
        ck.subscribe([topic_name])
        first: dict[int, int] = {}
        values = []
        eof = set()

        def drained():
            for m in ck.consume(num_messages=100, timeout=0.2):
                if m.error() is not None:
                    eof.add(m.partition())
                    continue
                first.setdefault(m.partition(), m.offset())
                values.append((m.partition(), m.value().decode()))
            return len(values) >= 45 and eof == {0, 1, 2}

        _wait(drained, 30, "the uncommitted remainder", poll=0)
        assert first == want, "resumed from the committed offsets"
        assert len(values) == 45 and set(values) <= produced
        ck.commit(asynchronous=False)
    finally:
        ck.close()

    broker.stop()
    broker.restart()
    from confluent_kafka import ConsumerGroupTopicPartitions

    admin = ck_admin(broker.bootstrap)
    req = ConsumerGroupTopicPartitions(group, [CkTp(topic_name, p) for p in want])
    res = admin.list_consumer_group_offsets([req], request_timeout=10)[group].result(timeout=15)
    assert {tp.partition: tp.offset for tp in res.topic_partitions} == {0: 30, 1: 30, 2: 30}


@pytest.mark.timeout(90)
def test_static_member_restart_does_not_rebalance(make_broker, topic_name):
    """Two static members (group.instance.id); one is killed and restarted within the session
    timeout: it gets the same partitions back and the other member sees no rebalance."""
    from clientutil import ck_create_topic

    broker = make_broker(extra_args=BROKER_ARGS)
    ck_create_topic(broker.bootstrap, topic_name, 4)
    group = f"static-{topic_name}"
    a = Member("confluent", broker.bootstrap, topic_name, group, instance="static-a")
    b = Member("confluent", broker.bootstrap, topic_name, group, instance="static-b")
    b2 = None
    try:
        _wait(lambda: _partitioned([a, b], 4), 45, "2 static members to share 4 partitions")
        # Let the group settle: no rebalance events for a while.
        settled = a.rebalance_events()
        time.sleep(2)
        assert a.rebalance_events() == settled, "group still rebalancing"
        b_parts = b.assignment()
        b.kill9()
        b2 = Member("confluent", broker.bootstrap, topic_name, group, instance="static-b")
        _wait(lambda: b2.assignment(), 20, "the restarted static member's assignment")
        assert b2.assignment() == b_parts
        time.sleep(SESSION_TIMEOUT_MS / 1000 + 1)  # past the old session: still no rebalance
        assert a.rebalance_events() == settled, "the restart of a static member rebalanced the group"
        assert _partitioned([a, b2], 4)
        produced = _produce(broker.bootstrap, topic_name, 4, 0, 40)
        _wait(lambda: _all_consumed([a, b2], produced), 30, "messages after the restart")
    finally:
        for m in (a, b, b2):
            if m is not None:
                m.stop()


@pytest.mark.timeout(60)
def test_kcat_balanced_consumer_resumes_from_its_commit(make_broker, topic_name):
    """kcat -G (librdkafka 2.0.2, the old-client target): a balanced consumer commits on exit
    and the next run of the same group reads only what was produced since."""
    import shutil

    from clientutil import ck_create_topic

    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.fail("kcat is not installed (Debian package `kcat`; .ci/run installs it)")
    broker = make_broker(extra_args=["--set", "group.initial.rebalance.delay.ms=0"])
    ck_create_topic(broker.bootstrap, topic_name, 2)
    group = f"kcat-{topic_name}"

    def consume() -> list[str]:
        r = subprocess.run(
            [kcat, "-b", broker.bootstrap, "-G", group, "-X", "auto.offset.reset=earliest", "-e", "-q", topic_name],
            capture_output=True,
            timeout=40,
            check=False,
        )
        assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
        return r.stdout.decode().split()

    first = _produce(broker.bootstrap, topic_name, 2, 0, 20)
    assert sorted(consume()) == sorted(v for _, v in first)
    second = _produce(broker.bootstrap, topic_name, 2, 20, 6)
    assert sorted(consume()) == sorted(v for _, v in second)


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "member":
        _member_main(*sys.argv[2:])
    else:
        sys.exit(f"usage: {sys.argv[0]} member LIB BOOTSTRAP TOPIC GROUP INSTANCE")
