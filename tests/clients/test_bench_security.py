"""sluice-bench on a secured listener: a short run producing and consuming (as a consumer
group) over SASL_SSL with SCRAM-SHA-512, every message reconciled; the same run over SSL
with a client certificate; and a wrong password refused with a message naming the mechanism,
the user and Kafka's error, before any load is generated."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sluice_broker import sluice_binary
from test_security import SCRAM_USERS, certs, secure  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(120)

SMOKE = Path(__file__).resolve().parents[2] / "bench" / "workloads" / "smoke.toml"


def bench_binary() -> Path:
    """sluice-bench, next to the broker binary under test (the suite builds nothing)."""
    path = sluice_binary().parent / "sluice-bench"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: `cargo build --release -p bench` first")
    return path


def bench(addr: str, results: Path, *props: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(bench_binary()), "run", "--no-progress", "--threads", "2", "--duration", "2",
         "--workload", str(SMOKE), "--bootstrap", addr, "--name", "secure",
         "--results-dir", str(results), *props],
        capture_output=True, text=True, timeout=90,
    )


def check_reconciled(results: Path) -> dict:
    s = json.loads((results / "secure" / "summary.json").read_text())
    r = s["reconciliation"]
    # smoke.toml: 2000 msg/s for 1 s warm-up + 2 s, one subscription.
    assert r["acked"] >= 5000, r
    assert r["consumed"] == r["acked"] and r["lost"] == 0 and r["failed"] == 0, r
    assert s["rates"]["publish_msgs_per_sec"] > 0, s["rates"]
    return s


def test_bench_produces_and_consumes_over_sasl_ssl_scram(secure, certs, tmp_path):  # noqa: F811
    user, pw = SCRAM_USERS["SCRAM-SHA-512"]
    p = bench(secure.addr("SASL_SSL"), tmp_path,
              "-X", "security.protocol=SASL_SSL", "-X", "sasl.mechanism=SCRAM-SHA-512",
              "-X", f"sasl.username={user}", "-X", f"sasl.password={pw}",
              "-X", f"ssl.ca.location={certs / 'ca.pem'}")
    assert p.returncode == 0, f"{p.stdout}\n{p.stderr}"
    s = check_reconciled(tmp_path)
    # The command line stamped on the result does not carry the password.
    assert pw not in s["command"] and "sasl.password=***" in s["command"], s["command"]
    assert pw not in (tmp_path / "secure" / "summary.json").read_text()


def test_bench_over_ssl_with_a_client_certificate_from_a_command_config(secure, certs, tmp_path):  # noqa: F811
    props = tmp_path / "client.properties"
    props.write_text(
        "security.protocol=SSL\n"
        f"ssl.truststore.location={certs / 'ca.pem'}\nssl.truststore.type=PEM\n"
        f"ssl.keystore.location={certs / 'client.keystore.pem'}\nssl.keystore.type=PEM\n"
    )
    p = bench(secure.addr("SSL"), tmp_path, "--command-config", str(props))
    assert p.returncode == 0, f"{p.stdout}\n{p.stderr}"
    check_reconciled(tmp_path)


def test_bench_wrong_password_fails_clearly(secure, certs, tmp_path):  # noqa: F811
    user, _ = SCRAM_USERS["SCRAM-SHA-256"]
    p = bench(secure.addr("SASL_SSL"), tmp_path,
              "-X", "security.protocol=SASL_SSL", "-X", "sasl.mechanism=SCRAM-SHA-256",
              "-X", f"sasl.username={user}", "-X", "sasl.password=not-the-password",
              "-X", f"ssl.ca.location={certs / 'ca.pem'}")
    assert p.returncode != 0, p.stdout
    err = p.stderr
    assert f"authentication with {secure.addr('SASL_SSL')} failed" in err, err
    assert f'SASL SCRAM-SHA-256 as "{user}"' in err and "SaslAuthenticationFailed (58)" in err, err
    assert "Invalid username or password" in err, err
    # Refused before the run: no results were written.
    assert not (tmp_path / "secure" / "summary.json").exists()
    # A plaintext client on the TLS port gets a TLS error, not a hang.
    p = bench(secure.addr("SASL_SSL"), tmp_path)
    assert p.returncode != 0 and "creating topic" in p.stderr, p.stderr
