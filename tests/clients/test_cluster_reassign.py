"""Partition reassignment under load, with real clients, on a four-broker cluster.

A topic on brokers {1,2,3} is moved to {2,3,4} with `sluicectl topics reassign` (generate,
execute, verify) while a confluent-kafka producer writes with acks=all and a consumer group
reads: every acknowledged record is consumed, the new replicas are in the ISR, leadership has
left broker 1, and broker 1 holds no replica and no partition directory afterwards.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from sluice_cluster import Cluster
from test_sluicectl_groups import sluicectl_binary

TOPIC = "moving"


def ctl(cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(sluicectl_binary()), "--bootstrap", cluster.bootstrap(), "--request-timeout-ms", "10000", *args],
        capture_output=True, text=True, timeout=30,
    )


@pytest.mark.timeout(120)
def test_reassign_under_load_loses_nothing_and_empties_the_old_broker(make_broker, tmp_path):
    cluster = Cluster(make_broker, nodes=4, extra=["--set", "auto.leader.rebalance.enable=false"])
    # The topic is placed while broker 4 is down, so its replicas are {1,2,3}.
    cluster.broker(4).stop()
    cluster.create_topic(TOPIC, partitions=1, rf=3, exclude=(4,))
    _, replicas, _ = cluster.wait_partition(TOPIC, "ISR of 3", lambda l, r, i: len(i) == 3 and l >= 0,
                                            exclude=(4,))
    assert sorted(replicas) == [1, 2, 3]
    cluster.broker(4).restart()
    deadline = time.monotonic() + 20
    while len(AdminClient({"bootstrap.servers": cluster.bootstrap()}).list_topics(timeout=5).brokers) < 4:
        assert time.monotonic() < deadline, "broker 4 did not register again"
        time.sleep(0.2)

    acked: list[bytes] = []
    failed: list[str] = []
    consumed: list[bytes] = []
    stop_producing = threading.Event()
    stop_consuming = threading.Event()

    def produce() -> None:
        p = Producer({"bootstrap.servers": cluster.bootstrap(), "acks": "all", "enable.idempotence": True,
                      "linger.ms": 5})

        def done(err, msg) -> None:
            if err is None:
                acked.append(msg.value())
            else:
                failed.append(str(err))

        i = 0
        while not stop_producing.is_set():
            p.produce(TOPIC, f"m-{i}".encode(), on_delivery=done)
            i += 1
            p.poll(0)
            time.sleep(0.005)
        assert p.flush(30) == 0, "records left unacknowledged"

    def consume() -> None:
        c = Consumer({"bootstrap.servers": cluster.bootstrap(), "group.id": "reassign-readers",
                      "auto.offset.reset": "earliest", "enable.auto.commit": True})
        try:
            c.subscribe([TOPIC])
            while not stop_consuming.is_set():
                m = c.poll(0.2)
                if m is not None and m.error() is None:
                    consumed.append(m.value())
        finally:
            c.close()

    producer = threading.Thread(target=produce, daemon=True)
    consumer = threading.Thread(target=consume, daemon=True)
    producer.start()
    consumer.start()
    try:
        time.sleep(2)
        gen = ctl(cluster, "--output", "json", "topics", "reassign", "generate", "--topics", TOPIC,
                  "--brokers", "2,3,4")
        assert gen.returncode == 0, gen.stderr
        proposal = json.loads(gen.stdout)
        assert [sorted(p["replicas"]) for p in proposal["current"]["partitions"]] == [[1, 2, 3]]
        assert proposal["proposed"]["partitions"] == [{"topic": TOPIC, "partition": 0, "replicas": [2, 3, 4]}]
        plan = tmp_path / "plan.json"
        plan.write_text(json.dumps(proposal["proposed"]))

        ex = ctl(cluster, "topics", "reassign", "execute", "--plan", str(plan))
        assert ex.returncode == 0, ex.stdout + ex.stderr
        deadline = time.monotonic() + 30
        while True:
            v = ctl(cluster, "--output", "json", "topics", "reassign", "verify", "--plan", str(plan))
            rows = json.loads(v.stdout)
            assert rows[0]["status"] in ("complete", "in_progress"), rows
            if v.returncode == 0:
                assert rows[0]["status"] == "complete"
                break
            assert time.monotonic() < deadline, f"reassignment never completed: {rows}"
            time.sleep(0.3)
        time.sleep(2)  # keep writing to the new leader for a while
    finally:
        stop_producing.set()
        producer.join(40)
    assert not producer.is_alive()
    assert not failed, failed[:5]
    assert len(acked) > 100

    # Every acknowledged record reaches the group.
    want = set(acked)
    deadline = time.monotonic() + 20
    while not want.issubset(consumed) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop_consuming.set()
    consumer.join(20)
    missing = want.difference(consumed)
    assert not missing, f"{len(missing)} acknowledged records never consumed, e.g. {sorted(missing)[:5]}"

    leader, replicas, isr = cluster.partition(TOPIC, exclude=(1,))
    assert replicas == [2, 3, 4]
    assert sorted(isr) == [2, 3, 4]
    assert leader in (2, 3, 4)
    # Broker 1 stopped its replica and deleted the partition directory.
    gone = cluster.broker(1).data_dir / f"{TOPIC}-0"
    deadline = time.monotonic() + 10
    while gone.exists():
        assert time.monotonic() < deadline, f"{gone} still exists"
        time.sleep(0.2)
    assert (cluster.broker(4).data_dir / f"{TOPIC}-0").is_dir()
    # Nothing left to cancel.
    cancel = ctl(cluster, "--output", "json", "topics", "reassign", "cancel", "--plan", str(plan))
    assert cancel.returncode == 0, cancel.stderr
    assert json.loads(cancel.stdout)[0]["error"] == "NO_REASSIGNMENT_IN_PROGRESS"
