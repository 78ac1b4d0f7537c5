"""Start-up errors an operator makes: each is a clear message naming the problem and a
non-zero exit, never a panic or a hang. Also the configured socket.request.max.bytes."""

from __future__ import annotations

import socket
import subprocess

import pytest

import kafka_wire as kw
from sluice_broker import free_port, sluice_binary


def run_sluice(*args: str, timeout: float = 15) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([str(sluice_binary()), *args], capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env={"RUST_LOG": "info", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"sluice {' '.join(args)} was still running after {timeout}s instead of refusing to start")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--set", "num.partitions=lots"], "num.partitions"),
        (["--set", "log.segment.bytes=-5"], "log.segment.bytes"),
        (["--shards", "two"], "shards"),
        (["--listen", "not-an-address"], "not-an-address"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, args, needle):
    """The message names the key (or value) the operator actually wrote."""
    listen = [] if "--listen" in args else ["--listen", f"127.0.0.1:{free_port()}"]
    r = run_sluice("--data-dir", str(tmp_path / "d"), *listen, *args)
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode != 0, f"sluice {args} started (exit {r.returncode}):\n{out[-2000:]}"
    assert "panicked" not in out, f"sluice {args} panicked:\n{out[-2000:]}"
    assert needle in out, f"the error for {args} does not name {needle!r}:\n{out[-2000:]}"


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_sluice("--data-dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}")
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode != 0, f"started on a port that is in use:\n{out[-2000:]}"
    assert "panicked" not in out and str(port) in out, out[-2000:]


def test_data_dir_that_is_a_file_is_a_clear_error(tmp_path):
    f = tmp_path / "not-a-dir"
    f.write_text("x")
    r = run_sluice("--data-dir", str(f), "--listen", f"127.0.0.1:{free_port()}")
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode != 0 and "panicked" not in out, out[-2000:]
    assert "not-a-dir" in out, f"the error does not name the data dir:\n{out[-2000:]}"


def test_socket_request_max_bytes_is_enforced(make_broker, topic_name):
    """With socket.request.max.bytes=1 MiB a 2 MiB frame closes the connection; a 512 KiB
    request is served."""
    broker = make_broker(extra_args=["--set", "socket.request.max.bytes=1048576"])
    with kw.connect(broker.port) as s:
        body = kw.metadata_body_v1([topic_name[:50]])
        ok = kw.request(kw.METADATA, 1, 1, body)
        # Pad with a big client id so the request is 512 KiB but still valid.
        pad = "x" * 30000
        big_ok = kw.frame(kw.i16(kw.METADATA) + kw.i16(1) + kw.i32(2) + kw.string(pad) + body)
        s.sendall(ok + big_ok)
        assert kw.read_response(s)[0] == 1
        assert kw.read_response(s)[0] == 2
    with kw.connect(broker.port) as s:
        try:
            s.sendall(kw.i32(2 * 1024 * 1024) + b"\x00" * (2 * 1024 * 1024))
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert kw.outcome_after(s, 5) == "closed"
    with kw.connect(broker.port) as s:
        assert kw.api_versions(s).error_code == kw.NONE
