"""Security: TLS listeners (server and client certificates) and SASL (SCRAM-SHA-256/512) with
real clients (confluent-kafka, kafka-python, kcat), and the refusals: wrong password, unknown
user, untrusted or expired client certificate, plaintext bytes on a TLS port, an unknown SASL
mechanism, garbage in SaslAuthenticate, a request before authentication. After every refusal
the broker keeps serving good clients.

Certificates are made with the openssl CLI in a temporary directory.
"""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
import time
import uuid

import pytest

import kafka_wire as kw
from sluice_broker import free_port, sluice_binary

pytestmark = pytest.mark.timeout(120)

SCRAM_USERS = {"SCRAM-SHA-256": ("alice", "alice-secret"), "SCRAM-SHA-512": ("bob", "bob-secret")}
AUTH_FAILED = "Invalid username or password"


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _issue(d, name: str, subject: str, ca: str, days: str = "2", server: bool = False) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
             f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n" if server else "extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", days, "-extfile", ext.name, cwd=d)
    # A PEM keystore holds the key and the chain.
    (d / f"{name}.keystore.pem").write_text((d / f"{name}.key").read_text() + (d / f"{name}.pem").read_text())


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    for ca in ("ca", "rogue-ca"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-subj", f"/CN={ca}", "-days", "2", cwd=d)
    _issue(d, "server", "/CN=localhost", "ca", server=True)
    _issue(d, "client", "/C=US/O=Sluice Test/CN=alice", "ca")
    _issue(d, "rogue", "/CN=mallory", "rogue-ca")
    _issue(d, "expired", "/CN=old", "ca", days="-1")
    return d


class SecureBroker:
    def __init__(self, broker, ports):
        self.b = broker
        self.ports = ports

    def addr(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"


@pytest.fixture
def secure(make_broker, certs):
    ports = {"SASL_SSL": free_port(), "SSL": free_port(), "SASL_PLAINTEXT": free_port()}
    b = make_broker(shards=2, start=False)
    listeners = f"PLAINTEXT://127.0.0.1:{b.port},SASL_SSL://127.0.0.1:{ports['SASL_SSL']}," \
                f"SSL://127.0.0.1:{ports['SSL']},SASL_PLAINTEXT://127.0.0.1:{ports['SASL_PLAINTEXT']}"
    b.extra_args += [
        "--set", f"listeners={listeners}",
        "--set", f"ssl.keystore.location={certs / 'server.keystore.pem'}",
        "--set", f"ssl.truststore.location={certs / 'ca.pem'}",
        "--set", "listener.name.ssl.ssl.client.auth=required",
        "--set", "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512",
    ]
    b.data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(sluice_binary()), "format", "--data-dir", str(b.data_dir)]
    for mech, (user, pw) in SCRAM_USERS.items():
        cmd += ["--add-scram", f"{mech}=[name={user},password={pw}]"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)
    assert "SCRAM-SHA-512" in out.stdout
    stored = (b.data_dir / "scram-credentials.json").read_text()
    assert "alice-secret" not in stored and "bob-secret" not in stored
    b.start()
    return SecureBroker(b, ports)


def ck_sasl(certs, mech: str, user: str, pw: str) -> dict:
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": mech,
        "sasl.username": user,
        "sasl.password": pw,
        "ssl.ca.location": str(certs / "ca.pem"),
    }


def ck_ssl(certs, name: str = "client") -> dict:
    return {
        "security.protocol": "SSL",
        "ssl.ca.location": str(certs / "ca.pem"),
        "ssl.certificate.location": str(certs / f"{name}.pem"),
        "ssl.key.location": str(certs / f"{name}.key"),
    }


def ck_round_trip(bootstrap: str, conf: dict, topic: str, n: int = 20) -> None:
    """Admin (create topic), produce, consume in a group, all over `conf`."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, **conf})
    fs = admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)], request_timeout=15)
    fs[topic].result(timeout=20)
    md = admin.list_topics(timeout=10)
    # Metadata advertises the listener the client connected through.
    assert [f"{b.host}:{b.port}" for b in md.brokers.values()] == [bootstrap]
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", **conf})
    for i in range(n):
        p.produce(topic, key=str(i).encode(), value=f"v{i}".encode())
    assert p.flush(20) == 0
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4()}", "auto.offset.reset": "earliest",
                  "session.timeout.ms": 6000, **conf})
    c.subscribe([topic])
    got = set()
    deadline = time.monotonic() + 30
    while len(got) < n and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.add(m.value())
    c.commit(asynchronous=False)
    c.close()
    assert got == {f"v{i}".encode() for i in range(n)}


def ck_auth_error(bootstrap: str, conf: dict) -> str:
    """The errors librdkafka reports (error_cb) while it fails to authenticate."""
    from confluent_kafka import Producer

    errors: list[str] = []
    p = Producer({"bootstrap.servers": bootstrap, "error_cb": lambda e: errors.append(str(e)), **conf})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not any(AUTH_FAILED in e for e in errors):
        p.poll(0.2)
    return " | ".join(errors)


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_confluent_sasl_ssl_scram(secure, certs, topic_name, mech):
    user, pw = SCRAM_USERS[mech]
    ck_round_trip(secure.addr("SASL_SSL"), ck_sasl(certs, mech, user, pw), topic_name)
    assert f"principal=User:{user}" in secure.b.log_text()


def test_confluent_ssl_client_certificate(secure, certs, topic_name):
    ck_round_trip(secure.addr("SSL"), ck_ssl(certs), topic_name)


def test_confluent_sasl_plaintext_scram(secure, topic_name):
    user, pw = SCRAM_USERS["SCRAM-SHA-256"]
    conf = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-256",
            "sasl.username": user, "sasl.password": pw}
    ck_round_trip(secure.addr("SASL_PLAINTEXT"), conf, topic_name)


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_kafka_python_sasl_ssl_scram(secure, certs, topic_name, mech):
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.admin import NewTopic

    user, pw = SCRAM_USERS[mech]
    conf = dict(bootstrap_servers=secure.addr("SASL_SSL"), security_protocol="SASL_SSL", sasl_mechanism=mech,
                sasl_plain_username=user, sasl_plain_password=pw, ssl_cafile=str(certs / "ca.pem"),
                ssl_check_hostname=False)
    admin = KafkaAdminClient(request_timeout_ms=15000, **conf)
    admin.create_topics([NewTopic(topic_name, num_partitions=1, replication_factor=1)])
    admin.close()
    p = KafkaProducer(acks="all", **conf)
    for i in range(10):
        p.send(topic_name, f"m{i}".encode())
    p.flush(20)
    p.close()
    c = KafkaConsumer(topic_name, group_id=f"kp-{uuid.uuid4()}", auto_offset_reset="earliest",
                      consumer_timeout_ms=15000, **conf)
    got = []
    for m in c:
        got.append(m.value)
        if len(got) == 10:
            break
    c.close()
    assert got == [f"m{i}".encode() for i in range(10)]


def test_kafka_python_ssl_client_certificate(secure, certs, topic_name):
    from kafka import KafkaConsumer, KafkaProducer

    conf = dict(bootstrap_servers=secure.addr("SSL"), security_protocol="SSL", ssl_cafile=str(certs / "ca.pem"),
                ssl_certfile=str(certs / "client.pem"), ssl_keyfile=str(certs / "client.key"),
                ssl_check_hostname=False)
    p = KafkaProducer(acks="all", **conf)
    for i in range(5):
        p.send(topic_name, f"s{i}".encode()).get(timeout=20)
    p.close()
    c = KafkaConsumer(topic_name, group_id=f"kps-{uuid.uuid4()}", auto_offset_reset="earliest",
                      consumer_timeout_ms=15000, **conf)
    got = [m.value for _, m in zip(range(5), c)]
    c.close()
    assert got == [f"s{i}".encode() for i in range(5)]
    assert "User:CN=alice,O=Sluice Test,C=US" in secure.b.log_text()


def _kcat(args: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["kcat", *args], input=stdin, capture_output=True, timeout=60)


def test_kcat_sasl_ssl_and_ssl(secure, certs, topic_name):
    sasl = ["-b", secure.addr("SASL_SSL"), "-X", "security.protocol=SASL_SSL", "-X", "sasl.mechanisms=SCRAM-SHA-512",
            "-X", "sasl.username=bob", "-X", "sasl.password=bob-secret", "-X", f"ssl.ca.location={certs / 'ca.pem'}"]
    r = _kcat([*sasl, "-P", "-t", topic_name], stdin=b"one\ntwo\nthree\n")
    assert r.returncode == 0, r.stderr
    tls = ["-b", secure.addr("SSL"), "-X", "security.protocol=SSL", "-X", f"ssl.ca.location={certs / 'ca.pem'}",
           "-X", f"ssl.certificate.location={certs / 'client.pem'}", "-X", f"ssl.key.location={certs / 'client.key'}"]
    r = _kcat([*tls, "-C", "-t", topic_name, "-o", "beginning", "-c", "3", "-e"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [b"one", b"two", b"three"]


def test_wrong_password_and_unknown_user_look_alike(secure, certs, topic_name):
    wrong = ck_auth_error(secure.addr("SASL_SSL"), ck_sasl(certs, "SCRAM-SHA-256", "alice", "nope"))
    unknown = ck_auth_error(secure.addr("SASL_SSL"), ck_sasl(certs, "SCRAM-SHA-256", "nobody", "alice-secret"))
    other_mech = ck_auth_error(secure.addr("SASL_SSL"), ck_sasl(certs, "SCRAM-SHA-512", "alice", "alice-secret"))
    for e in (wrong, unknown, other_mech):
        assert AUTH_FAILED in e, e
    assert "SASL authentication failed" in secure.b.log_text()
    # The broker keeps serving good clients.
    ck_round_trip(secure.addr("SASL_SSL"), ck_sasl(certs, "SCRAM-SHA-256", *SCRAM_USERS["SCRAM-SHA-256"]), topic_name)


def _tls_socket(certs, port: int, cert: str | None = None) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.check_hostname = False
    if cert:
        ctx.load_cert_chain(str(certs / f"{cert}.pem"), str(certs / f"{cert}.key"))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw)


def _closed(sock) -> bool:
    sock.settimeout(5)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
        return True


def _untrusted_refused(certs, port: int, cert: str) -> bool:
    """A client certificate the broker must refuse: the handshake or the first read fails."""
    try:
        s = _tls_socket(certs, port, cert)
    except (ssl.SSLError, OSError):
        return True
    try:
        s.sendall(kw.api_versions_request(0, 1))
        return _closed(s)
    finally:
        s.close()


def test_untrusted_expired_and_missing_client_certificates(secure, certs, topic_name):
    port = secure.ports["SSL"]
    assert _untrusted_refused(certs, port, "rogue")
    assert _untrusted_refused(certs, port, "expired")
    assert _untrusted_refused(certs, port, None)  # ssl.client.auth=required
    log = secure.b.log_text()
    assert "TLS handshake failed" in log
    ck_round_trip(secure.addr("SSL"), ck_ssl(certs), topic_name)


def test_plaintext_bytes_on_a_tls_port(secure):
    for name in ("SSL", "SASL_SSL"):
        with kw.connect(secure.ports[name]) as s:
            s.sendall(kw.api_versions_request(0, 1))
            assert _closed(s)
    assert "TLS handshake failed" in secure.b.log_text()
    with kw.connect(secure.b.port) as s:  # the PLAINTEXT listener still answers
        assert kw.api_versions(s).error_code == kw.NONE


def _sasl_handshake(s, mech: str) -> tuple[int, list[str]]:
    body = kw.string(mech)
    resp = kw.roundtrip(s, 17, 1, 11, body)
    code = struct.unpack(">h", resp[:2])[0]
    n = struct.unpack(">i", resp[2:6])[0]
    pos, mechs = 6, []
    for _ in range(n):
        ln = struct.unpack(">h", resp[pos:pos + 2])[0]
        mechs.append(resp[pos + 2:pos + 2 + ln].decode())
        pos += 2 + ln
    return code, mechs


def _sasl_authenticate_v1(s, data: bytes) -> tuple[int, str | None]:
    body = struct.pack(">i", len(data)) + data
    resp = kw.roundtrip(s, 36, 1, 12, body)
    code = struct.unpack(">h", resp[:2])[0]
    ln = struct.unpack(">h", resp[2:4])[0]
    msg = resp[4:4 + ln].decode() if ln >= 0 else None
    return code, msg


def test_unknown_mechanism_garbage_and_early_requests(secure, certs):
    port = secure.ports["SASL_SSL"]
    s = _tls_socket(certs, port)
    code, mechs = _sasl_handshake(s, "GSSAPI")
    assert code == 33 and mechs == ["SCRAM-SHA-256", "SCRAM-SHA-512"]
    assert _closed(s)
    s = _tls_socket(certs, port)
    assert _sasl_handshake(s, "SCRAM-SHA-256")[0] == 0
    code, msg = _sasl_authenticate_v1(s, b"\xff\x00garbage")
    assert code == 58 and AUTH_FAILED in msg
    assert _closed(s)
    # A request other than ApiVersions/SaslHandshake before authentication closes the connection.
    s = _tls_socket(certs, port)
    assert kw.api_versions(s).error_code == kw.NONE
    s.sendall(kw.request(3, 1, 5, kw.metadata_body_v1(None)))
    assert _closed(s)
    # SASL on the plain-text SASL listener, same rules.
    with kw.connect(secure.ports["SASL_PLAINTEXT"]) as p:
        p.sendall(kw.request(3, 1, 5, kw.metadata_body_v1(None)))
        assert _closed(p)
    log = secure.b.log_text()
    assert "unsupported SASL mechanism" in log and "before SASL authentication" in log
    # The PLAINTEXT listener is untouched and advertises itself.
    with kw.connect(secure.b.port) as p:
        md = kw.metadata(p)
        assert [(host, port) for _, host, port, _ in md.brokers] == [("127.0.0.1", secure.b.port)]
