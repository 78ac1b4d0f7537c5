"""A three-broker cluster with two listeners on every broker: PLAINTEXT between the brokers and
SASL_PLAINTEXT (PLAIN) for clients. Each client is told the endpoints of the listener it came in
on, as Kafka does, so a client of the SASL listener never lands on a plaintext port."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from sluice_broker import free_port
from sluice_cluster import Cluster

USERS = {"erin": "erin-secret"}
SASL = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
        "sasl.username": "erin", "sasl.password": USERS["erin"]}


@pytest.mark.timeout(120)
def test_each_listener_advertises_its_own_endpoints_in_a_cluster(make_broker, topic_name):
    sasl_ports: dict[int, int] = {}
    jaas = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
            + " ".join(f'user_{u}="{p}"' for u, p in USERS.items()) + ";")

    def listeners(node: int, b) -> list[str]:
        sasl_ports[node] = free_port()
        return ["--set", f"listeners=PLAINTEXT://127.0.0.1:{b.port},SASL_PLAINTEXT://127.0.0.1:{sasl_ports[node]}",
                "--set", "inter.broker.listener.name=PLAINTEXT",
                "--set", "sasl.enabled.mechanisms=PLAIN",
                "--set", f"sasl.jaas.config={jaas}"]

    cluster = Cluster(make_broker, "isr", per_node=listeners)
    cluster.create_topic(topic_name, partitions=3, rf=3)
    for p in range(3):
        cluster.wait_partition(topic_name, "ISR of 3", lambda l, r, i: len(i) == 3, p=p)
    sasl_bootstrap = ",".join(f"127.0.0.1:{sasl_ports[n]}" for n in cluster.ids)

    # Metadata over SASL names every broker's SASL port; over PLAINTEXT, the plaintext ports.
    def brokers(conf: dict) -> dict[int, int]:
        md = AdminClient(conf).list_topics(timeout=10)
        return {b.id: b.port for b in md.brokers.values()}

    deadline = time.monotonic() + 20
    seen = brokers({"bootstrap.servers": sasl_bootstrap, **SASL})
    while seen != sasl_ports and time.monotonic() < deadline:  # brokers register one by one
        time.sleep(0.2)
        seen = brokers({"bootstrap.servers": sasl_bootstrap, **SASL})
    assert seen == sasl_ports
    assert brokers({"bootstrap.servers": cluster.bootstrap()}) == {n: cluster.broker(n).port for n in cluster.ids}

    # Produce with acks=all and consume through a group, all over SASL: the partition leaders
    # and the group coordinator are reached on their SASL ports.
    p = Producer({"bootstrap.servers": sasl_bootstrap, "acks": "all", **SASL})
    want = {b"s-%d" % i for i in range(60)}
    for v in sorted(want):
        p.produce(topic_name, value=v)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": sasl_bootstrap, "group.id": "sasl-group",
                  "auto.offset.reset": "earliest", **SASL})
    try:
        c.subscribe([topic_name])
        got: set[bytes] = set()
        deadline = time.monotonic() + 40
        while not want <= got and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got.add(m.value())
        assert want <= got, f"{len(want - got)} messages not consumed over SASL"
        c.commit(asynchronous=False)
    finally:
        c.close()
