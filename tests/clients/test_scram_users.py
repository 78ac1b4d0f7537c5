"""SCRAM users in the cluster metadata, managed with confluent-kafka's AdminClient
(`alter_user_scram_credentials`, `describe_user_scram_credentials`: AlterUserScramCredentials
and DescribeUserScramCredentials). A user created on a running broker authenticates at once
over SASL_PLAINTEXT with SCRAM-SHA-256 and SCRAM-SHA-512 without a restart; deleted, it no
longer does. On three brokers, a user created through one authenticates on the others.

The admin client speaks PLAINTEXT (no authorizer: the APIs are open, as Kafka's); the SASL
listener enables both SCRAM mechanisms.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from sluice_broker import free_port

pytestmark = pytest.mark.timeout(120)

AUTH_FAILED = "Invalid username or password"
MECHS = {"SCRAM-SHA-256": ScramMechanism.SCRAM_SHA_256, "SCRAM-SHA-512": ScramMechanism.SCRAM_SHA_512}


def sasl_conf(port: int, mech: str, user: str, pw: str) -> dict:
    return {
        "bootstrap.servers": f"127.0.0.1:{port}",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mech,
        "sasl.username": user,
        "sasl.password": pw,
    }


def sasl_listener_args(plain_port: int, sasl_port: int) -> list[str]:
    return [
        "--set", f"listeners=PLAINTEXT://127.0.0.1:{plain_port},SASL_PLAINTEXT://127.0.0.1:{sasl_port}",
        "--set", "inter.broker.listener.name=PLAINTEXT",
        "--set", "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512",
    ]


def authenticates(port: int, mech: str, user: str, pw: str, timeout: float = 10.0) -> tuple[bool, str]:
    """Whether a SCRAM login succeeds (a Metadata request answered over the SASL listener), and
    the errors librdkafka reported. Stops at the first authentication failure."""
    from confluent_kafka import Producer

    errors: list[str] = []
    p = Producer({**sasl_conf(port, mech, user, pw), "error_cb": lambda e: errors.append(str(e))})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            p.list_topics(timeout=1)
            return True, ""
        except KafkaException as e:
            errors.append(str(e))
        p.poll(0.1)  # serves error_cb
        if any(AUTH_FAILED in e for e in errors):
            return False, " | ".join(errors)
    return False, " | ".join(errors)


def eventually(port: int, mech: str, user: str, pw: str, want: bool, timeout: float = 15.0) -> str:
    """Retries a login until its outcome is `want` (another broker's image may lag by a moment);
    returns the last errors when it never is."""
    deadline = time.monotonic() + timeout
    errors = ""
    while time.monotonic() < deadline:
        ok, errors = authenticates(port, mech, user, pw, timeout=5.0)
        # A refusal counts only as the broker's authentication failure, not a timeout.
        if ok == want and (want or AUTH_FAILED in errors):
            return ""
        time.sleep(0.2)
    return errors or "never changed"


def alter(admin: AdminClient, alterations) -> dict:
    """user -> None on success, or the error's name."""
    out = {}
    for user, fut in admin.alter_user_scram_credentials(alterations, request_timeout=15).items():
        try:
            fut.result(timeout=20)
            out[user] = None
        except KafkaException as e:
            out[user] = e.args[0].name()
    return out


def describe(admin: AdminClient, users: list[str]) -> dict:
    """user -> {mechanism: iterations}, or the error's name."""
    out = {}
    for user, fut in admin.describe_user_scram_credentials(users, request_timeout=15).items():
        try:
            d = fut.result(timeout=20)
            out[user] = {i.mechanism: i.iterations for i in d.scram_credential_infos}
        except KafkaException as e:
            out[user] = e.args[0].name()
    return out


def test_admin_client_creates_a_scram_user_that_logs_in_then_deletes_it(make_broker):
    sasl_port = free_port()
    b = make_broker(shards=2, start=False)
    b.extra_args += sasl_listener_args(b.port, sasl_port)
    b.start()
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    # Unknown before it exists, and it cannot log in.
    assert describe(admin, ["carol"]) == {"carol": "RESOURCE_NOT_FOUND"}
    ok, errors = authenticates(sasl_port, "SCRAM-SHA-256", "carol", "carol-secret")
    assert not ok and AUTH_FAILED in errors, errors

    # One request per mechanism: a user named twice in one request is a DUPLICATE_RESOURCE.
    assert alter(admin, [
        UserScramCredentialUpsertion("carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096),
                                     b"carol-secret"),
        UserScramCredentialUpsertion("carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                                     b"carol-secret"),
    ]) == {"carol": "DUPLICATE_RESOURCE"}
    assert alter(admin, [
        UserScramCredentialUpsertion("carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096),
                                     b"carol-secret"),
        UserScramCredentialUpsertion("dave", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4095),
                                     b"dave-secret"),
    ]) == {"carol": None, "dave": "UNACCEPTABLE_CREDENTIAL"}
    assert alter(admin, [
        UserScramCredentialUpsertion("carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                                     b"carol-secret"),
    ]) == {"carol": None}
    assert describe(admin, ["carol", "dave"]) == {
        "carol": {ScramMechanism.SCRAM_SHA_256: 4096, ScramMechanism.SCRAM_SHA_512: 8192},
        "dave": "RESOURCE_NOT_FOUND",
    }

    # Both mechanisms log in at once, no restart; a wrong password does not.
    for mech in MECHS:
        ok, errors = authenticates(sasl_port, mech, "carol", "carol-secret")
        assert ok, f"{mech}: {errors}"
    ok, errors = authenticates(sasl_port, "SCRAM-SHA-512", "carol", "not-her-password")
    assert not ok and AUTH_FAILED in errors, errors

    # Deleted, the SHA-256 credential no longer logs in; SHA-512 still does.
    assert alter(admin, [UserScramCredentialDeletion("carol", ScramMechanism.SCRAM_SHA_256)]) == {"carol": None}
    ok, errors = authenticates(sasl_port, "SCRAM-SHA-256", "carol", "carol-secret")
    assert not ok and AUTH_FAILED in errors, errors
    assert authenticates(sasl_port, "SCRAM-SHA-512", "carol", "carol-secret")[0]
    # Deleting what does not exist.
    assert alter(admin, [UserScramCredentialDeletion("carol", ScramMechanism.SCRAM_SHA_256)]) == {
        "carol": "RESOURCE_NOT_FOUND"}
    assert alter(admin, [UserScramCredentialDeletion("carol", ScramMechanism.SCRAM_SHA_512)]) == {"carol": None}
    assert describe(admin, ["carol"]) == {"carol": "RESOURCE_NOT_FOUND"}
    ok, errors = authenticates(sasl_port, "SCRAM-SHA-512", "carol", "carol-secret")
    assert not ok and AUTH_FAILED in errors, errors

    # The credentials live in the metadata log: a user created now survives a restart.
    assert alter(admin, [
        UserScramCredentialUpsertion("erin", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096),
                                     b"erin-secret"),
    ]) == {"erin": None}
    b.stop()
    b.restart()
    assert authenticates(sasl_port, "SCRAM-SHA-256", "erin", "erin-secret")[0]
    assert not authenticates(sasl_port, "SCRAM-SHA-512", "carol", "carol-secret")[0]


def test_a_user_created_through_one_broker_logs_in_on_the_others(make_broker, topic_name):
    """Three brokers, each with its own SASL_PLAINTEXT listener: the credential goes through
    the controller once and every broker's image has it."""
    from sluice_cluster import Cluster

    sasl_ports: dict[int, int] = {}

    def listeners(node: int, b) -> list[str]:
        sasl_ports[node] = free_port()
        return sasl_listener_args(b.port, sasl_ports[node])

    cluster = Cluster(make_broker, "isr", per_node=listeners)
    # The cluster's way of saying it is ready: a controller is elected and every broker registered.
    cluster.create_topic(topic_name, rf=3)
    admin = AdminClient({"bootstrap.servers": cluster.broker(1).bootstrap})
    assert alter(admin, [
        UserScramCredentialUpsertion("frank", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096),
                                     b"frank-secret"),
    ]) == {"frank": None}
    for node in (2, 3):
        errors = eventually(sasl_ports[node], "SCRAM-SHA-512", "frank", "frank-secret", want=True)
        assert not errors, f"node {node}: {errors}"
    # Described on another broker, deleted through a third: the first refuses it.
    admin2 = AdminClient({"bootstrap.servers": cluster.broker(2).bootstrap})
    assert describe(admin2, ["frank"]) == {"frank": {ScramMechanism.SCRAM_SHA_512: 4096}}
    admin3 = AdminClient({"bootstrap.servers": cluster.broker(3).bootstrap})
    assert alter(admin3, [UserScramCredentialDeletion("frank", ScramMechanism.SCRAM_SHA_512)]) == {"frank": None}
    errors = eventually(sasl_ports[1], "SCRAM-SHA-512", "frank", "frank-secret", want=False)
    assert not errors, f"a deleted user still logs in on node 1: {errors}"


def test_format_bootstrap_credentials_of_one_node_reach_every_broker(make_broker, topic_name):
    """`sluice format --add-scram` on node 2 only: once the quorum answers, that node imports
    its bootstrap file into the cluster metadata (then renames it), and the user logs in on
    every broker."""
    import subprocess

    from sluice_broker import sluice_binary
    from sluice_cluster import Cluster

    sasl_ports: dict[int, int] = {}

    def listeners(node: int, b) -> list[str]:
        sasl_ports[node] = free_port()
        if node == 2:
            b.data_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run([str(sluice_binary()), "format", "--data-dir", str(b.data_dir),
                            "--add-scram", "SCRAM-SHA-256=[name=boot,password=boot-secret]"],
                           check=True, capture_output=True, timeout=30)
        return sasl_listener_args(b.port, sasl_ports[node])

    cluster = Cluster(make_broker, "isr", per_node=listeners)
    cluster.create_topic(topic_name, rf=3)
    for node in cluster.ids:
        errors = eventually(sasl_ports[node], "SCRAM-SHA-256", "boot", "boot-secret", want=True, timeout=30)
        assert not errors, f"node {node}: {errors}"
    data = cluster.broker(2).data_dir
    assert not (data / "scram-credentials.json").exists()
    assert (data / "scram-credentials.json.imported").exists()
