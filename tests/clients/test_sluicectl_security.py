"""sluicectl on secured listeners: SASL_SSL with SCRAM (librdkafka-style -X properties and a
Java-style --command-config file), SSL with a client certificate, SASL PLAIN (also checked with
confluent-kafka and kafka-python, so the broker's PLAIN is tested with real clients), and the
refusals: a wrong password, a mechanism the listener does not offer, an untrusted CA, a
misspelt property."""

from __future__ import annotations

import subprocess

import pytest

from sluice_broker import free_port, sluice_binary
from test_security import SCRAM_USERS, certs, ck_round_trip  # noqa: F401  (certs: a fixture)
from test_sluicectl_groups import sluicectl_binary

pytestmark = pytest.mark.timeout(120)

PLAIN_USERS = {"carol": "carol-secret", "dave": "dave pw=x"}


def ctl(addr: str, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [str(sluicectl_binary()), "--bootstrap", addr, "--request-timeout-ms", "5000", *args],
        capture_output=True, text=True, timeout=60,
    )
    if expect is not None:
        assert p.returncode == expect, f"sluicectl {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture
def secured_broker(make_broker, certs):  # noqa: F811
    """One broker with SASL_SSL (SCRAM and PLAIN), SSL (client certificates required) and
    SASL_PLAINTEXT (PLAIN only) listeners. Not the topology-parametrised `broker` fixture (a
    fixture of that name here would run its "cluster3" cases on this one broker):
    test_cluster_listeners.py covers SASL listeners on a three-broker cluster."""
    ports = {"SASL_SSL": free_port(), "SSL": free_port(), "SASL_PLAINTEXT": free_port()}
    b = make_broker(shards=2, start=False)
    jaas = "org.apache.kafka.common.security.plain.PlainLoginModule required " + " ".join(
        f'user_{u}="{p}"' for u, p in PLAIN_USERS.items()) + ";"
    b.extra_args += [
        "--set", f"listeners=PLAINTEXT://127.0.0.1:{b.port},SASL_SSL://127.0.0.1:{ports['SASL_SSL']},"
                 f"SSL://127.0.0.1:{ports['SSL']},SASL_PLAINTEXT://127.0.0.1:{ports['SASL_PLAINTEXT']}",
        "--set", f"ssl.keystore.location={certs / 'server.keystore.pem'}",
        "--set", f"ssl.truststore.location={certs / 'ca.pem'}",
        "--set", "listener.name.ssl.ssl.client.auth=required",
        "--set", "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN",
        "--set", "listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN",
        "--set", f"sasl.jaas.config={jaas}",
    ]
    b.data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(sluice_binary()), "format", "--data-dir", str(b.data_dir)]
    for mech, (user, pw) in SCRAM_USERS.items():
        cmd += ["--add-scram", f"{mech}=[name={user},password={pw}]"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)
    b.start()
    b.ports = ports
    return b


def addr(b, listener: str) -> str:
    return f"127.0.0.1:{b.ports[listener]}"


def test_sluicectl_sasl_ssl_scram_with_flags_and_a_command_config(secured_broker, certs, tmp_path, topic_name):  # noqa: F811
    user, pw = SCRAM_USERS["SCRAM-SHA-512"]
    flags = ["-X", "security.protocol=SASL_SSL", "-X", "sasl.mechanisms=SCRAM-SHA-512",
             "-X", f"sasl.username={user}", "-X", f"sasl.password={pw}",
             "-X", f"ssl.ca.location={certs / 'ca.pem'}"]
    ctl(addr(secured_broker, "SASL_SSL"), *flags, "topics", "create", topic_name, "--partitions", "2")
    p = subprocess.run(
        [str(sluicectl_binary()), "--bootstrap", addr(secured_broker, "SASL_SSL"), *flags, "produce", topic_name],
        input="one\ntwo\nthree\n", capture_output=True, text=True, timeout=60,
    )
    assert p.returncode == 0, p.stderr
    # The Java client's spelling, in a properties file.
    user, pw = SCRAM_USERS["SCRAM-SHA-256"]
    props = tmp_path / "client.properties"
    props.write_text(
        "# as kafka-topics.sh --command-config takes it\n"
        "security.protocol=SASL_SSL\n"
        "sasl.mechanism=SCRAM-SHA-256\n"
        f'sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="{user}" password="{pw}";\n'
        "ssl.truststore.type=PEM\n"
        f"ssl.truststore.location={certs / 'ca.pem'}\n"
    )
    out = ctl(addr(secured_broker, "SASL_SSL"), "--command-config", str(props), "consume", topic_name,
              "--from-beginning", "--max-messages", "3", "--timeout-ms", "10000").stdout
    assert sorted(out.split()) == ["one", "three", "two"]
    desc = ctl(addr(secured_broker, "SASL_SSL"), "--command-config", str(props), "cluster", "describe").stdout
    # Metadata advertises the listener the client came through.
    assert f"{secured_broker.ports['SASL_SSL']}" in desc, desc


def test_sluicectl_ssl_client_certificate(secured_broker, certs, topic_name):  # noqa: F811
    base = ["-X", "security.protocol=SSL", "-X", f"ssl.ca.location={certs / 'ca.pem'}"]
    good = [*base, "-X", f"ssl.certificate.location={certs / 'client.pem'}",
            "-X", f"ssl.key.location={certs / 'client.key'}"]
    ctl(addr(secured_broker, "SSL"), *good, "topics", "create", topic_name, "--partitions", "1")
    assert topic_name in ctl(addr(secured_broker, "SSL"), *good, "topics", "list").stdout.split()
    # The same with a PEM keystore (key and chain in one file).
    ks = [*base, "-X", "ssl.keystore.type=PEM", "-X", f"ssl.keystore.location={certs / 'client.keystore.pem'}"]
    assert topic_name in ctl(addr(secured_broker, "SSL"), *ks, "topics", "list").stdout.split()
    # No client certificate on a listener that requires one: refused, not a hang.
    ctl(addr(secured_broker, "SSL"), *base, "topics", "list", expect=3)
    # A CA that did not sign the broker's certificate.
    p = ctl(addr(secured_broker, "SSL"), "-X", "security.protocol=SSL", "-X", f"ssl.ca.location={certs / 'rogue-ca.pem'}",
            "topics", "list", expect=3)
    assert "TLS" in p.stderr, p.stderr


def test_sasl_plain_with_sluicectl_confluent_and_kafka_python(secured_broker, topic_name):
    user = "dave"
    ctl(addr(secured_broker, "SASL_PLAINTEXT"), "-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanism=PLAIN",
        "-X", f"sasl.username={user}", "-X", f"sasl.password={PLAIN_USERS[user]}", "topics", "list")
    conf = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
            "sasl.username": "carol", "sasl.password": PLAIN_USERS["carol"]}
    ck_round_trip(addr(secured_broker, "SASL_PLAINTEXT"), conf, topic_name)

    from kafka import KafkaConsumer
    c = KafkaConsumer(topic_name, bootstrap_servers=addr(secured_broker, "SASL_PLAINTEXT"), security_protocol="SASL_PLAINTEXT",
                      sasl_mechanism="PLAIN", sasl_plain_username="carol", sasl_plain_password=PLAIN_USERS["carol"],
                      auto_offset_reset="earliest", consumer_timeout_ms=10000)
    try:
        got = [m.value for m in c]
    finally:
        c.close()
    assert len(got) >= 20, got


def test_sluicectl_refusals(secured_broker, certs):  # noqa: F811
    sasl = ["-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanism=PLAIN", "-X", "sasl.username=carol"]
    p = ctl(addr(secured_broker, "SASL_PLAINTEXT"), *sasl, "-X", "sasl.password=wrong", "topics", "list", expect=1)
    assert "SASL_AUTHENTICATION_FAILED" in p.stderr, p.stderr
    assert "wrong" not in p.stderr
    # SCRAM is not offered on this listener: the error lists what is.
    p = ctl(addr(secured_broker, "SASL_PLAINTEXT"), "-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanism=SCRAM-SHA-256",
            "-X", "sasl.username=alice", "-X", "sasl.password=alice-secret", "topics", "list", expect=1)
    assert "UNSUPPORTED_SASL_MECHANISM" in p.stderr and "PLAIN" in p.stderr, p.stderr
    # A misspelt property is a usage error, not a silent downgrade.
    p = ctl(addr(secured_broker, "SASL_PLAINTEXT"), *sasl, "-X", "sasl.pasword=x", "topics", "list", expect=2)
    assert "sasl.pasword" in p.stderr, p.stderr
    p = ctl(addr(secured_broker, "SASL_SSL"), "-X", "security.protocol=SASL_SSL", "-X", "sasl.mechanism=PLAIN",
            "-X", "sasl.username=carol", "-X", "sasl.password=carol-secret", "topics", "list", expect=2)
    assert "ssl.ca.location" in p.stderr, p.stderr
    # The broker still serves good clients.
    ctl(addr(secured_broker, "SASL_PLAINTEXT"), *sasl, "-X", f"sasl.password={PLAIN_USERS['carol']}", "topics", "list")
