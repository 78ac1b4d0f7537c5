"""Three-broker Sluice clusters for the real-client tests.

`Cluster` starts three `sluice` processes (nodes 1-3, the controller voters) on free 127.0.0.1
ports through the make_broker fixture, so each is stopped at the end of its test and the test
fails on a panic. `ClusterBroker` puts such a cluster behind the interface of one `Broker`
(bootstrap, port, restart, kill9, stop), so a test written against the `broker` fixture runs
unchanged on a three-broker cluster with replication factor 3 (conftest.py's "cluster"
topology).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from sluice_broker import free_port

FAST = [
    "--set", "broker.session.timeout.ms=2000",
    "--set", "broker.heartbeat.interval.ms=200",
    "--set", "controller.quorum.election.timeout.ms=500",
    "--set", "replica.lag.time.max.ms=3000",
    "--set", "replica.fetch.wait.max.ms=200",
]


class Cluster:
    def __init__(self, make_broker, mode: str = "isr", extra: list[str] | None = None, nodes: int = 3,
                 per_node=None, shards: int = 1):
        # Nodes 1-3 are the controller voters; any further node is a broker-only member.
        # per_node(node_id, broker) -> extra flags of that broker alone (say its own listeners).
        self.brokers = [make_broker(shards=shards, start=False) for _ in range(nodes)]
        # free_port() hands a port out once per process, so the voters' ports and the brokers'
        # listeners (none bound until the nodes start) never coincide.
        self.voter_ports = [free_port() for _ in range(3)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{port}" for i, port in enumerate(self.voter_ports))
        self.admin_ports = [free_port() for _ in range(nodes)]
        for i, b in enumerate(self.brokers):
            b.extra_args += [
                "--node-id", str(i + 1),
                "--set", f"admin.listener=127.0.0.1:{self.admin_ports[i]}",
                "--controller-voters", voters,
                "--set", f"replication.mode={mode}",
                *FAST,
                *(extra or []),
                *(per_node(i + 1, b) if per_node else []),
            ]
        for b in self.brokers:
            b.start()

    def broker(self, node_id: int):
        return self.brokers[node_id - 1]

    @property
    def ids(self) -> list[int]:
        return list(range(1, len(self.brokers) + 1))

    def bootstrap(self, exclude: tuple[int, ...] = ()) -> str:
        return ",".join(b.bootstrap for i, b in enumerate(self.brokers) if i + 1 not in exclude)

    def admin(self, exclude: tuple[int, ...] = ()) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap(exclude)})

    def create_topic(self, topic: str, partitions: int = 1, rf: int = 3, config: dict | None = None,
                     exclude: tuple[int, ...] = (), timeout: float = 20.0) -> None:
        """Creates the topic, retrying while brokers register or a controller is elected."""
        deadline = time.monotonic() + timeout
        while True:
            admin = self.admin(exclude)  # must outlive the future
            fut = admin.create_topics(
                [NewTopic(topic, num_partitions=partitions, replication_factor=rf, config=config or {})]
            )[topic]
            try:
                fut.result(10)
                return
            except Exception as e:  # KafkaException carrying the broker's error
                err = e.args[0] if e.args else None
                if getattr(err, "code", lambda: None)() == KafkaError.TOPIC_ALREADY_EXISTS:
                    return  # an earlier attempt committed before its answer was lost
                if time.monotonic() > deadline:
                    raise AssertionError(f"create {topic} kept failing: {e}")
                time.sleep(0.3)

    def partition(self, topic: str, p: int = 0, via: int | None = None, exclude: tuple[int, ...] = ()):
        """(leader, replicas, isr) of one partition as one broker sees it."""
        bs = self.broker(via).bootstrap if via else self.bootstrap(exclude)
        admin = AdminClient({"bootstrap.servers": bs})
        md = admin.list_topics(topic, timeout=5)
        pm = md.topics[topic].partitions.get(p)
        if pm is None:
            return None
        return pm.leader, list(pm.replicas), list(pm.isrs)

    def wait_partition(self, topic: str, what: str, ok, p: int = 0, exclude: tuple[int, ...] = (),
                       timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.partition(topic, p, exclude=exclude)
            except Exception as e:  # a broker going away mid-request
                last = repr(e)
            if isinstance(last, tuple) and ok(*last):
                return last
            time.sleep(0.2)
        raise AssertionError(f"{what}: partition {topic}-{p} is {last}")


def consume_values(bootstrap: str, topic: str, partitions: int, want: set[bytes], timeout: float = 20.0) -> list[bytes]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "cluster-test", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not want.issubset(got):
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got.append(m.value())
        return got
    finally:
        c.close()


class ClusterBroker:
    """A three-broker, replication-factor-3 cluster seen through the interface of one Broker.

    `bootstrap` lists all three brokers, as a client of a real cluster would; `port` and `host`
    are node 1's, for raw wire tests (they reach a partition that node 1 leads, or ask Metadata).
    `restart`, `stop` and `kill9` act on every node: a full-cluster restart, not one node.
    """

    topology = "cluster"

    def __init__(self, make_broker, shards: int = 2, extra_args: list[str] | None = None):
        self.cluster = Cluster(
            make_broker,
            "isr",
            extra=[
                "--set", "default.replication.factor=3",
                # Under the whole suite's load on two cores, keep liveness slower than FAST so a
                # busy broker is not fenced in a test that is not about failover.
                "--set", "broker.session.timeout.ms=6000",
                "--set", "replica.lag.time.max.ms=10000",
                *(extra_args or []),
            ],
            shards=shards,
        )
        self.brokers = self.cluster.brokers
        self.wait_serving()

    def wait_serving(self, timeout: float = 30.0) -> None:
        """Until every broker is registered and unfenced: a topic with RF 3 can be created."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                md = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=5)
                if len(md.brokers) == 3:
                    return
                last = f"{len(md.brokers)} brokers in Metadata"
            except Exception as e:  # a broker still starting
                last = repr(e)
            time.sleep(0.2)
        raise AssertionError(f"cluster not serving after {timeout}s: {last}")

    @property
    def host(self) -> str:
        return self.brokers[0].host

    @property
    def port(self) -> int:
        return self.brokers[0].port

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap()

    @property
    def nodes(self) -> list[tuple[str, int]]:
        return [(b.host, b.port) for b in self.brokers]

    replication_factor = 3

    def leader_port(self, topic: str, partition: int = 0, timeout: float = 20.0) -> int:
        """The port of the broker leading topic-partition (a raw Produce, Fetch or ListOffsets
        sent to another broker is answered NOT_LEADER_OR_FOLLOWER, as Kafka does). Waits until
        Metadata names a leader; asks without auto-creating the topic."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                md = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(topic, timeout=5)
                pm = md.topics[topic].partitions.get(partition)
                if pm is not None and pm.leader >= 0 and pm.leader in md.brokers:
                    return md.brokers[pm.leader].port
                last = pm
            except Exception as e:  # a broker still starting
                last = repr(e)
            time.sleep(0.2)
        raise AssertionError(f"no leader for {topic}-{partition} after {timeout}s: {last}")

    @property
    def data_dir(self) -> Path:
        return self.brokers[0].data_dir

    @property
    def pid(self) -> int | None:
        return self.brokers[0].pid

    def alive(self) -> bool:
        return all(b.alive() for b in self.brokers)

    def _all(self, fn) -> list:
        """Runs fn(broker) on every node at once (a voter waits for the others at start)."""
        results: list = [None] * len(self.brokers)
        errors: list[BaseException] = []

        def run(i: int, b) -> None:
            try:
                results[i] = fn(b)
            except BaseException as e:  # re-raised below, in the test's thread
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i, b)) for i, b in enumerate(self.brokers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results

    def start(self) -> None:
        self._all(lambda b: b.restart())
        self.wait_serving()

    def stop(self) -> int:
        codes = self._all(lambda b: b.stop())
        return next((c for c in codes if c != 0), 0)

    def stop_running(self) -> None:
        """Stops every node still running, all at once (the broker fixture's teardown). One by
        one, the last node has no controller quorum left for its controlled-shutdown heartbeat
        and waits out the heartbeat's timeout (10 s, sometimes more) before it exits. A node
        that died by itself is left alone, so the fixture still reports it."""
        self._all(lambda b: b.stop() if b.alive() else None)

    def kill9(self) -> None:
        for b in self.brokers:
            b.kill9()

    def restart(self) -> None:
        """Starts every node again (after stop() or kill9()), as Broker.restart does."""
        if any(b.alive() for b in self.brokers):
            raise AssertionError("restart while a node is still running: stop or kill it first")
        self.start()

    def log_text(self) -> str:
        return "\n".join(b.log_text() for b in self.brokers)

    def rss_kib(self) -> int:
        return self.brokers[0].rss_kib()

    def vm_peak_kib(self) -> int:
        return self.brokers[0].vm_peak_kib()
