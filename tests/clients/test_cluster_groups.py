"""Consumer groups and idempotent producers on a three-broker cluster (RF 3).

- Three group members (kafka-python and confluent-kafka with synchronous commits, and
  `kcat -G`) share the six partitions of an RF-3 topic; the broker coordinating the group is
  killed with SIGKILL mid-run; the group carries on with the leader of its
  `__consumer_offsets` partition on another broker: every partition keeps one owner,
  everything acknowledged is consumed, exactly once by the synchronous committers, and the
  committed offsets afterwards are the log end offsets.
- An idempotent confluent-kafka producer (acks=all) across a leader kill -9: the partition
  holds every message once, in order, with no gap.

The cluster fixture (`Cluster`) comes from sluice_cluster.py and the member processes from
test_groups.py.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections import Counter

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource

from sluice_cluster import Cluster, consume_values
from test_groups import Member, _produce, _wait

OFFSETS_PARTITIONS = 6
GROUP_ARGS = [
    "--set", "group.initial.rebalance.delay.ms=300",
    "--set", f"offsets.topic.num.partitions={OFFSETS_PARTITIONS}",
]


class KcatMember:
    """`kcat -G` as a long-running balanced consumer (librdkafka 2.0.2, auto commit), with
    the same reporting interface as test_groups.Member."""

    def __init__(self, bootstrap: str, topic: str, group: str):
        kcat = shutil.which("kcat")
        if kcat is None:
            pytest.fail("kcat is not installed (Debian package `kcat`; .ci/run installs it)")
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [kcat, "-b", bootstrap, "-G", group, "-u", "-q",
             "-X", "auto.offset.reset=earliest", "-X", "auto.commit.interval.ms=200",
             "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=1000",
             "-f", "%p %o %s\n", topic],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.lock:
                self.lines.append(line)

    def consumed(self) -> list[tuple[int, int, str]]:
        out = []
        with self.lock:
            lines = list(self.lines)
        for line in lines:
            parts = line.split()
            if len(parts) == 3 and parts[0].isdigit():
                out.append((int(parts[0]), int(parts[1]), parts[2]))
        return out

    def stop(self) -> None:
        # kcat commits its offsets when it is asked to stop.
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _describe(cluster: Cluster, group: str, exclude: tuple[int, ...] = ()):
    admin = cluster.admin(exclude)
    return admin.describe_consumer_groups([group], request_timeout=5)[group].result(timeout=10)


def _stable_owners(cluster: Cluster, group: str, partitions: int, exclude: tuple[int, ...] = ()):
    """The group's coordinator id when it is Stable with three members that own every
    partition exactly once; None otherwise."""
    try:
        d = _describe(cluster, group, exclude)
    except Exception:  # coordinator moving
        return None
    if str(d.state) != "ConsumerGroupState.STABLE" or len(d.members) != 3:
        return None
    owned = Counter(tp.partition for m in d.members for tp in m.assignment.topic_partitions)
    if sorted(owned) != list(range(partitions)) or any(n != 1 for n in owned.values()):
        return None
    if any(not m.assignment.topic_partitions for m in d.members):
        return None
    return d.coordinator.id


def _committed(cluster: Cluster, group: str, topic: str, partitions: int, exclude: tuple[int, ...]):
    admin = cluster.admin(exclude)
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])
    res = admin.list_consumer_group_offsets([req], request_timeout=10)[group].result(timeout=15)
    return {tp.partition: tp.offset for tp in res.topic_partitions}


@pytest.mark.timeout(150)
def test_group_survives_coordinator_kill9(make_broker, topic_name):
    cluster = Cluster(make_broker, extra=GROUP_ARGS)
    cluster.create_topic(topic_name, partitions=6, rf=3)
    for p in range(6):
        cluster.wait_partition(topic_name, "ISR of 3", lambda l, r, i: len(i) == 3, p=p)
    group = f"g-{topic_name}"
    bootstrap = cluster.bootstrap()
    members = [
        Member("kafka-python", bootstrap, topic_name, group),
        Member("confluent", bootstrap, topic_name, group),
    ]
    kcat = KcatMember(bootstrap, topic_name, group)
    everyone = [*members, kcat]
    try:
        coordinator = _wait(lambda: _stable_owners(cluster, group, 6), 60, "3 members to share 6 partitions")
        # The offsets topic is replicated, compacted, internal, with min.insync.replicas 2.
        leader, replicas, isr = cluster.partition("__consumer_offsets", 0)
        assert len(replicas) == 3, replicas
        res = ConfigResource(ConfigResource.Type.TOPIC, "__consumer_offsets")
        admin = cluster.admin()  # must outlive the future
        configs = admin.describe_configs([res])[res].result(10)
        assert configs["cleanup.policy"].value == "compact"
        assert configs["min.insync.replicas"].value == "2"

        produced = _produce(bootstrap, topic_name, 6, 0, 300)
        _wait(lambda: produced <= {(p, v) for m in everyone for (p, _, v) in m.consumed()}, 40,
              "the first 300 messages")

        # SIGKILL the coordinator's broker mid-run, while more records keep arriving.
        cluster.broker(coordinator).kill9()
        killed_at = time.monotonic()
        alive = cluster.bootstrap(exclude=(coordinator,))
        produced_after = _produce(alive, topic_name, 6, 300, 6)
        _wait(lambda: produced_after <= {(p, v) for m in everyone for (p, _, v) in m.consumed()}, 60,
              "the group to consume again after the coordinator's kill -9")
        resumed = time.monotonic() - killed_at
        produced |= produced_after
        new_coordinator = _wait(lambda: _stable_owners(cluster, group, 6, exclude=(coordinator,)), 40,
                                "the group to be Stable on a new coordinator")
        assert new_coordinator != coordinator
        print(f"group consuming again {resumed:.1f}s after kill -9 of coordinator {coordinator}; "
              f"new coordinator {new_coordinator}")

        produced |= _produce(alive, topic_name, 6, 306, 294)
        _wait(lambda: produced <= {(p, v) for m in everyone for (p, _, v) in m.consumed()}, 40,
              "all 600 messages")
        # The synchronous committers consumed each record once between them: what one had
        # committed before the failover was not handed out again, to it or to the other. Only a
        # record whose commit failed (the coordinator died under it) may come again, as in Kafka.
        sync = Counter((p, v) for m in members for (p, _, v) in m.consumed())
        retried = set().union(*(m.uncommitted() for m in members))
        dupes = sorted(k for k, n in sync.items() if n > 1 and k not in retried)
        assert not dupes, f"consumed more than once by the synchronous committers: {dupes[:5]}"
        # kcat commits automatically (every 200 ms), so it is at-least-once; nothing is lost.
        everything = Counter((p, v) for m in everyone for (p, _, v) in m.consumed())
        assert set(everything) == produced
    finally:
        for m in everyone:
            m.stop()

    # Committed offsets after the run: every partition's commit is its log end (300 + 6 +
    # 294 records over 6 partitions), read from the new coordinator.
    want = {p: 100 for p in range(6)}
    _wait(lambda: _committed(cluster, group, topic_name, 6, (coordinator,)) == want, 30,
          f"committed offsets {want}", poll=0.5)


@pytest.mark.timeout(120)
def test_idempotent_producer_across_leader_kill9(make_broker, topic_name):
    cluster = Cluster(make_broker)
    cluster.create_topic(topic_name, partitions=1, rf=3)
    leader, replicas, _ = cluster.wait_partition(topic_name, "ISR of 3", lambda l, r, i: len(i) == 3)
    acked: list[bytes] = []
    errors: list[str] = []
    lock = threading.Lock()

    def on_delivery(err, msg):
        with lock:
            (acked.append(msg.value()) if err is None else errors.append(str(err)))

    producer = Producer({
        "bootstrap.servers": cluster.bootstrap(), "enable.idempotence": True, "acks": "all",
        "linger.ms": 2, "message.timeout.ms": 60000, "retry.backoff.ms": 100,
        "max.in.flight.requests.per.connection": 5,
    })
    n = 1500
    killed = False
    for i in range(n):
        while True:
            try:
                producer.produce(topic_name, value=b"i-%06d" % i, partition=0, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        if i % 10 == 0:
            time.sleep(0.005)
        if i == 500:
            # Kill while batches are in flight: some written by the leader, maybe replicated,
            # not yet acknowledged; the producer retries them on the new leader.
            deadline = time.monotonic() + 30
            while len(acked) < 300 and time.monotonic() < deadline:
                producer.poll(0.01)
            cluster.broker(leader).kill9()
            killed = True
    assert producer.flush(90) == 0, "messages still in flight"
    assert killed, "leader never killed"
    assert not errors, f"delivery errors: {errors[:3]}"
    assert len(acked) == n
    new_leader, _, _ = cluster.wait_partition(
        topic_name, "new leader", lambda l, r, i: l not in (-1, leader), exclude=(leader,))
    want = {b"i-%06d" % i for i in range(n)}
    got = consume_values(cluster.bootstrap(exclude=(leader,)), topic_name, 1, want, timeout=30)
    counts = Counter(got)
    dupes = sorted(v for v, c in counts.items() if c > 1)
    assert not dupes, f"{len(dupes)} values written twice, e.g. {dupes[:3]}"
    assert got == sorted(want), "a gap or a reordering in the partition"
