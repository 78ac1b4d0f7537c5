"""Three-broker Sluice clusters with real clients (confluent-kafka / librdkafka).

Each test starts three `sluice` processes on free 127.0.0.1 ports with a shared
`--controller-voters` list, short session and election timeouts, and kills them at the end
(the make_broker fixture stops every broker and fails the test on a panic).
"""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest
from confluent_kafka import KafkaError, Producer
from prometheus_client.parser import text_string_to_metric_families

from sluice_cluster import Cluster, consume_values


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["isr", "quorum"])
def test_acks_all_survives_leader_kill9(make_broker, mode):
    cluster = Cluster(make_broker, mode)
    topic = f"failover-{mode}"
    cluster.create_topic(topic, partitions=1, rf=3)
    leader, replicas, isr = cluster.wait_partition(topic, "ISR of 3", lambda l, r, i: len(i) == 3)
    # Any broker answers Metadata for the whole cluster.
    for node in (1, 2, 3):
        assert cluster.partition(topic, via=node)[0] == leader

    acked: list[bytes] = []
    errors: list[str] = []
    lock = threading.Lock()
    # The failover figure (docs/cluster.md): from the kill to the first acknowledgement of a
    # message produced after it.
    kill: dict = {}

    def on_delivery(err, msg):
        with lock:
            if err is None:
                acked.append(msg.value())
                if "index" in kill and int(msg.value()[2:]) > kill["index"]:
                    kill.setdefault("first_ack", time.monotonic())
            else:
                errors.append(str(err))

    producer = Producer({"bootstrap.servers": cluster.bootstrap(), "acks": "all", "linger.ms": 5,
                         "message.timeout.ms": 30000, "retry.backoff.ms": 100})
    killed = False
    for i in range(400):
        producer.produce(topic, value=b"m-%05d" % i, callback=on_delivery)
        producer.poll(0)
        time.sleep(0.005)
        if not killed and len(acked) >= 100:
            cluster.broker(leader).kill9()
            with lock:
                kill["at"], kill["index"] = time.monotonic(), i
            killed = True
    assert producer.flush(60) == 0, "messages still in flight"
    assert killed, f"leader never killed ({len(acked)} acked)"
    assert "first_ack" in kill, "nothing produced after the kill was acknowledged"
    print(f"{mode}: first acks=all produce acknowledged {kill['first_ack'] - kill['at']:.1f}s "
          f"after kill -9 of leader {leader}")
    new_leader, _, new_isr = cluster.wait_partition(
        topic, "new leader", lambda l, r, i: l not in (-1, leader), exclude=(leader,))
    assert new_leader in replicas and new_leader != leader

    got = consume_values(cluster.bootstrap(exclude=(leader,)), topic, 1, set(acked))
    missing = set(acked) - set(got)
    assert not missing, f"{len(missing)} acknowledged messages lost (e.g. {sorted(missing)[:3]}); errors {errors[:3]}"
    # Acknowledged messages come back in the order they were acknowledged (one partition).
    first_seen = {}
    for pos, v in enumerate(got):
        first_seen.setdefault(v, pos)
    order = [first_seen[v] for v in acked]
    assert order == sorted(order), "acknowledged messages out of order"


@pytest.mark.timeout(90)
def test_follower_restart_catches_up_and_rejoins_isr(make_broker):
    cluster = Cluster(make_broker, "isr")
    topic = "rejoin"
    cluster.create_topic(topic, partitions=1, rf=3)
    leader, replicas, _ = cluster.wait_partition(topic, "ISR of 3", lambda l, r, i: len(i) == 3)
    follower = next(b for b in replicas if b != leader)
    cluster.broker(follower).kill9()
    cluster.wait_partition(topic, "follower out of the ISR", lambda l, r, i: follower not in i,
                           exclude=(follower,))
    p = Producer({"bootstrap.servers": cluster.bootstrap(exclude=(follower,)), "acks": "all"})
    for i in range(200):
        p.produce(topic, value=b"r-%d" % i)
    assert p.flush(30) == 0
    cluster.broker(follower).restart()
    cluster.wait_partition(topic, "follower back in the ISR", lambda l, r, i: follower in i)
    # Back in the ISR means it holds the high watermark; its copy is the leader's, byte for byte
    # (followers append the leader's batches verbatim).
    def log_bytes(node: int) -> bytes:
        d = cluster.broker(node).data_dir / f"{topic}-0"
        return b"".join(f.read_bytes() for f in sorted(d.glob("*.log")))

    deadline = time.monotonic() + 10
    while log_bytes(follower) != log_bytes(leader) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert log_bytes(follower) == log_bytes(leader)
    assert log_bytes(leader).count(b"r-199") == 1
    # The cluster's /metrics counted the shrink and the expansion the leader committed, and the
    # elections; with the ISR whole again nothing is under-replicated. Summed over the brokers
    # and polled: each broker counts when it applies the metadata change, which may come after
    # the broker that answered Metadata above, and a leader that lost its session on this loaded
    # machine hands the counting to its successor.
    def cluster_totals() -> dict[str, float]:
        totals: dict[str, float] = {}
        for port in cluster.admin_ports:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals

    def settled(t: dict[str, float]) -> bool:
        return (t["sluice_isr_shrinks_total"] >= 1 and t["sluice_isr_expands_total"] >= 1
                and t["sluice_leader_elections_total"] >= 1 and t["sluice_under_replicated_partitions"] == 0)

    deadline = time.monotonic() + 20
    totals = cluster_totals()
    while not settled(totals) and time.monotonic() < deadline:
        time.sleep(0.2)
        totals = cluster_totals()
    assert settled(totals), {k: v for k, v in totals.items() if k.startswith(("sluice_isr", "sluice_leader", "sluice_under"))}


@pytest.mark.timeout(90)
def test_min_insync_replicas_refuses_acks_all(make_broker):
    # The controller quorum is the same three nodes, so at most one may die and ISR changes
    # still commit: min.insync.replicas=3 with one follower down is the refusal case here.
    cluster = Cluster(make_broker, "isr")
    topic = "min-isr"
    cluster.create_topic(topic, partitions=1, rf=3, config={"min.insync.replicas": "3"})
    leader, replicas, _ = cluster.wait_partition(topic, "ISR of 3", lambda l, r, i: len(i) == 3)
    followers = tuple(b for b in replicas if b != leader)[:1]
    for f in followers:
        cluster.broker(f).kill9()
    cluster.wait_partition(topic, "ISR shrunk to two", lambda l, r, i: len(i) == 2 and l == leader,
                           exclude=followers)
    results: list = []
    p = Producer({"bootstrap.servers": cluster.broker(leader).bootstrap, "acks": "all", "retries": 0,
                  "message.timeout.ms": 10000})
    p.produce(topic, value=b"refused", callback=lambda err, msg: results.append(err))
    p.flush(15)
    assert len(results) == 1 and results[0] is not None, results
    assert results[0].code() == KafkaError.NOT_ENOUGH_REPLICAS, results[0]
    # Lowering min.insync.replicas (IncrementalAlterConfigs through the controller) takes
    # effect on the running leader: acks=all is accepted again with two in sync.
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    admin = cluster.admin(exclude=followers)
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("min.insync.replicas", "2", incremental_operation=AlterConfigOpType.SET)])
    [fut] = admin.incremental_alter_configs([res], request_timeout=15).values()
    fut.result(15)
    # Delivery results are KafkaError or None; test them with `is None`: KafkaError's == against
    # None leaves a TypeError pending that the next confluent-kafka call raises.
    # A loaded machine may re-elect the controller meanwhile, so an attempt may time out too.
    accepted: list = []
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and not (accepted and accepted[-1] is None):
        p.produce(topic, value=b"accepted", callback=lambda err, msg: accepted.append(err))
        p.flush(15)
        time.sleep(0.2)
    assert accepted and accepted[-1] is None, accepted
    # acks=1 still works.
    ok: list = []
    p1 = Producer({"bootstrap.servers": cluster.broker(leader).bootstrap, "acks": 1})
    p1.produce(topic, value=b"acks1", callback=lambda err, msg: ok.append(err))
    p1.flush(15)
    assert len(ok) == 1 and ok[0] is None, ok


@pytest.mark.timeout(90)
def test_min_insync_two_with_two_followers_down(make_broker):
    # Four brokers, three of them controller voters: pick a partition whose followers are the
    # broker-only node 4 and one voter, so two followers can die while the controller quorum
    # (two voters) lives on and commits the ISR shrink.
    cluster = Cluster(make_broker, "isr", nodes=4)
    topic = "min-isr-2"
    cluster.create_topic(topic, partitions=8, rf=3, config={"min.insync.replicas": "2"})
    chosen = None
    for p in range(8):
        leader, replicas, isr = cluster.wait_partition(topic, "ISR of 3", lambda l, r, i: len(i) == 3, p=p)
        followers = [b for b in replicas if b != leader]
        if leader != 4 and 4 in followers:
            chosen = (p, leader, tuple(followers))
            break
    assert chosen is not None, "no partition with broker 4 as a follower"
    p, leader, followers = chosen
    for f in followers:
        cluster.broker(f).kill9()
    cluster.wait_partition(topic, "ISR shrunk to the leader", lambda l, r, i: i == [leader], p=p,
                           exclude=followers)
    results: list = []
    prod = Producer({"bootstrap.servers": cluster.broker(leader).bootstrap, "acks": "all", "retries": 0,
                     "message.timeout.ms": 10000})
    prod.produce(topic, partition=p, value=b"refused", callback=lambda err, msg: results.append(err))
    prod.flush(15)
    assert len(results) == 1 and results[0] is not None, results
    assert results[0].code() == KafkaError.NOT_ENOUGH_REPLICAS, results[0]


@pytest.mark.timeout(90)
def test_controller_kill9_another_voter_takes_over(make_broker):
    cluster = Cluster(make_broker, "isr")
    cluster.create_topic("before", partitions=1, rf=3)
    admin = cluster.admin()
    controller = admin.describe_cluster().result(10).controller.id
    assert controller in (1, 2, 3)
    cluster.broker(controller).kill9()
    survivors = tuple(b for b in (1, 2, 3) if b != controller)
    deadline = time.monotonic() + 20
    new_controller = None
    while time.monotonic() < deadline:
        admin = cluster.admin(exclude=(controller,))
        try:
            c = admin.describe_cluster(request_timeout=3).result(5).controller
        except Exception:  # the request went to the dead controller; ask again
            continue
        if c is not None and c.id in survivors:
            new_controller = c.id
            break
        time.sleep(0.2)
    assert new_controller is not None, "no new controller"
    # The new controller gives every broker a fresh session before fencing; once the dead one
    # is fenced it leaves the broker list and receives no new replicas.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        admin = cluster.admin(exclude=(controller,))
        if controller not in admin.list_topics(timeout=5).brokers:
            break
        time.sleep(0.2)
    # Topic creation works through the new controller (RF 2: two brokers are alive).
    cluster.create_topic("after", partitions=2, rf=2, exclude=(controller,))
    # Every broker's image reaches the new topic (metadata propagates through the quorum).
    deadline = time.monotonic() + 10
    while True:
        admin = cluster.admin(exclude=(controller,))
        md = admin.list_topics(timeout=5)
        if "after" in md.topics or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert set(md.topics["after"].partitions) == {0, 1}
    assert all(controller not in p.replicas for p in md.topics["after"].partitions.values())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["isr", "quorum"])
def test_paused_leader_is_fenced_and_rejoins(make_broker, mode):
    """A leader cut off from everyone (SIGSTOP: no heartbeats, no fetches, no client traffic)
    loses its session and leadership; when it resumes it is fenced by the new epoch, truncates
    what the new leader does not have, follows it and rejoins the ISR. No acknowledged write
    is lost. (A stand-in for the network-namespace partition test.)"""
    import os
    import signal

    cluster = Cluster(make_broker, mode)
    topic = f"paused-{mode}"
    cluster.create_topic(topic, partitions=1, rf=3)
    leader, replicas, _ = cluster.wait_partition(topic, "ISR of 3", lambda l, r, i: len(i) == 3)
    others = tuple(b for b in cluster.ids if b != leader)

    acked: list[bytes] = []
    lock = threading.Lock()

    def on_delivery(err, msg):
        if err is None:
            with lock:
                acked.append(msg.value())

    producer = Producer({"bootstrap.servers": cluster.bootstrap(), "acks": "all", "linger.ms": 5,
                         "message.timeout.ms": 30000, "retry.backoff.ms": 100})
    pid = cluster.broker(leader).pid
    paused = resumed = False
    t_pause = 0.0
    i = 0
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        producer.produce(topic, value=b"p-%05d" % i, callback=on_delivery)
        producer.poll(0)
        i += 1
        time.sleep(0.01)
        if not paused and len(acked) >= 50:
            os.kill(pid, signal.SIGSTOP)
            paused, t_pause = True, time.monotonic()
        if paused and not resumed and time.monotonic() - t_pause > 5:
            os.kill(pid, signal.SIGCONT)
            resumed = True
        if resumed and time.monotonic() - t_pause > 8:
            break
    if paused and not resumed:
        os.kill(pid, signal.SIGCONT)
    assert producer.flush(40) == 0
    assert resumed, "leader never paused and resumed"
    new_leader, _, isr = cluster.wait_partition(
        topic, "old leader back in the ISR under a new leader",
        lambda l, r, i: l not in (-1, leader) and leader in i, exclude=(leader,))
    got = consume_values(cluster.bootstrap(exclude=(leader,)), topic, 1, set(acked))
    missing = set(acked) - set(got)
    assert not missing, f"{len(missing)} acknowledged messages lost"

    def log_bytes(node: int) -> bytes:
        d = cluster.broker(node).data_dir / f"{topic}-0"
        return b"".join(f.read_bytes() for f in sorted(d.glob("*.log")))

    # The deposed leader's log becomes the new leader's, byte for byte (divergent tail cut).
    end = time.monotonic() + 10
    while log_bytes(leader) != log_bytes(new_leader) and time.monotonic() < end:
        time.sleep(0.2)
    assert log_bytes(leader) == log_bytes(new_leader)
