"""A three-broker cluster whose brokers talk to each other over TLS only: the inter-broker
listener is SSL with client certificates required (the follower fetcher and forwarded calls
present the broker's certificate), and the controller channel (Raft between the voters, the
brokers' heartbeats and proposals) is mutual TLS through `controller.listener.names`. Clients
use a PLAINTEXT listener beside them. Plain bytes and untrusted certificates on either internal
port are refused, and the cluster keeps serving."""

from __future__ import annotations

import json
import socket
import ssl
import struct
import time

import pytest
from confluent_kafka import Producer

import kafka_wire as kw
from sluice_broker import free_port
from sluice_cluster import Cluster, consume_values
from test_security import certs  # noqa: F401  (a fixture)

pytestmark = pytest.mark.timeout(180)


def _secure_internals(certs, internal_ports: dict[int, int]):  # noqa: F811
    def per_node(node: int, b) -> list[str]:
        internal_ports[node] = free_port()
        keystore, ca = certs / "server.keystore.pem", certs / "ca.pem"
        return [
            "--set", f"listeners=PLAINTEXT://127.0.0.1:{b.port},INTERNAL://127.0.0.1:{internal_ports[node]}",
            "--set", "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,INTERNAL:SSL,CONTROLLER:SSL",
            "--set", "inter.broker.listener.name=INTERNAL",
            "--set", "controller.listener.names=CONTROLLER",
            "--set", f"listener.name.internal.ssl.keystore.location={keystore}",
            "--set", f"listener.name.internal.ssl.truststore.location={ca}",
            "--set", "listener.name.internal.ssl.client.auth=required",
            "--set", f"listener.name.controller.ssl.keystore.location={keystore}",
            "--set", f"listener.name.controller.ssl.truststore.location={ca}",
        ]
    return per_node


def _refused_plain(port: int) -> bool:
    """Plain bytes (a controller frame, then a Kafka ApiVersions) get no answer in kind."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(5)
        body = json.dumps("ReadMetadata").encode()
        s.sendall(struct.pack(">I", len(body)) + body)
        s.sendall(kw.api_versions_request(2, 1))
        try:
            data = s.recv(4096)
        except (ConnectionResetError, socket.timeout):
            return True
        # A TLS server answers a non-TLS hello with an alert record (0x15) or closes.
        return data == b"" or data[:1] == b"\x15"


def _tls_handshake_ok(certs, port: int, cert: str | None) -> bool:  # noqa: F811
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if cert:
        ctx.load_cert_chain(str(certs / f"{cert}.pem"), str(certs / f"{cert}.key"))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                # TLS 1.3 reports a refused client certificate on the first read.
                s.settimeout(5)
                body = json.dumps("ReadMetadata").encode()
                s.sendall(struct.pack(">I", len(body)) + body)
                head = s.recv(4)
                return len(head) == 4
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError, socket.timeout, OSError):
        return False


def test_brokers_and_controllers_talk_over_mutual_tls(make_broker, certs, topic_name):  # noqa: F811
    internal: dict[int, int] = {}
    cluster = Cluster(make_broker, "isr", per_node=_secure_internals(certs, internal))
    cluster.create_topic(topic_name, partitions=3, rf=3, timeout=40)
    # Every follower fetches over the SSL inter-broker listener: the ISR fills up.
    for p in range(3):
        cluster.wait_partition(topic_name, "ISR of 3", lambda l, r, i: len(i) == 3, p=p, timeout=40)

    producer = Producer({"bootstrap.servers": cluster.bootstrap(), "acks": "all"})
    want = {b"tls-%d" % i for i in range(90)}
    for v in sorted(want):
        producer.produce(topic_name, value=v)
    assert producer.flush(30) == 0
    got = consume_values(cluster.bootstrap(), topic_name, 3, want, timeout=40)
    assert want <= set(got), f"{len(want - set(got))} acks=all records not read back"

    # The internal ports speak TLS only, and only to certificates of the cluster's CA.
    for port in [*cluster.voter_ports, *internal.values()]:
        assert _refused_plain(port), f"port {port} answered plain bytes"
    voter = cluster.voter_ports[0]
    assert _tls_handshake_ok(certs, voter, "server"), "a cluster certificate is refused"
    assert not _tls_handshake_ok(certs, voter, None), "the controller channel took a peer without a certificate"
    assert not _tls_handshake_ok(certs, voter, "rogue"), "the controller channel took an untrusted certificate"
    assert not _tls_handshake_ok(certs, internal[1], "rogue"), "the inter-broker listener took an untrusted certificate"
    log = cluster.broker(1).log_path.read_text(errors="replace")
    assert "controller channel TLS handshake failed" in log

    # After the refusals the cluster still replicates: a second batch is acknowledged by all.
    more = {b"after-%d" % i for i in range(30)}
    for v in sorted(more):
        producer.produce(topic_name, value=v)
    assert producer.flush(30) == 0
    got = consume_values(cluster.bootstrap(), topic_name, 3, want | more, timeout=40)
    assert more <= set(got)
