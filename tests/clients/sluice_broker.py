"""Start, stop, kill and restart a real `sluice` broker process for the client tests.

The suite never builds anything: it runs the binary named by $SLUICE_BIN, or
<repo>/target/release/sluice. Each broker gets a free 127.0.0.1 port and its own data dir; its
stdout/stderr go to a log file that conftest.py attaches to every failing test's report.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import kafka_wire as kw

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "target" / "release" / "sluice"

# How long a broker may take to start answering ApiVersions, and to exit after SIGTERM.
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0


def sluice_binary() -> Path:
    """The broker binary under test; a clear error if it is missing (the suite builds nothing)."""
    path = Path(os.environ.get("SLUICE_BIN", DEFAULT_BIN))
    if not path.is_file() or not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"sluice binary not found at {path}: build it first with "
            f"`cargo build --release -p engine --bin sluice` or point $SLUICE_BIN at it"
        )
    return path


# Ports come from below the kernel's ephemeral range: a port picked by binding port 0 is an
# ephemeral one, and between its release and the broker's bind (or across a broker restart) the
# kernel may give it to any client's outgoing connection. Ports below the range are never given
# to outgoing connections. 19091-19093 are scripts/cluster.sh's; a port goes out once per process.
_FIRST_PORT = 10_000
_RESERVED_PORTS = {19091, 19092, 19093}
_given_ports: set[int] = set()


def _ephemeral_start() -> int:
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
    return first if first > _FIRST_PORT + 1000 else 32768


def free_port() -> int:
    """A 127.0.0.1 port nothing listens on now, below the ephemeral range, never handed out twice."""
    end = _ephemeral_start()
    span = end - _FIRST_PORT
    start = (os.getpid() * 2654435761 ^ time.time_ns()) % span
    for step in range(span):
        port = _FIRST_PORT + (start + step) % span
        if port in _RESERVED_PORTS or port in _given_ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given_ports.add(port)
        return port
    raise BrokerError(f"no free 127.0.0.1 port in {_FIRST_PORT}..{end}")


class BrokerError(Exception):
    """The broker did not start, stop or behave as a process should."""


class Broker:
    """One sluice process: a fixed port and data dir that survive kill -9 and restarts."""

    def __init__(self, data_dir: Path, log_path: Path, shards: int = 2, extra_args: list[str] | None = None):
        self.binary = sluice_binary()
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = Path(log_path)
        self.port = free_port()
        self.shards = shards
        # $SLUICE_TEST_ARGS first, so a test's own flags (e.g. a fetch path it is about) win.
        self.extra_args = shlex.split(os.environ.get("SLUICE_TEST_ARGS", "")) + list(extra_args or [])
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        # Exit codes of every process we stopped or killed on purpose, in order.
        self.exit_codes: list[int] = []

    # ------------------------------------------------------------------ addresses

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def bootstrap(self) -> str:
        """host:port for a client's bootstrap.servers."""
        return f"{self.host}:{self.port}"

    @property
    def nodes(self) -> list[tuple[str, int]]:
        """(host, port) of every broker a client's Metadata should list: this one."""
        return [(self.host, self.port)]

    # Replicas of every partition a test creates: one here, three on a ClusterBroker.
    replication_factor = 1

    def leader_port(self, topic: str, partition: int = 0, timeout: float = 20.0) -> int:
        """The port of the broker leading topic-partition, for raw-socket requests that only
        the leader answers (Produce, Fetch, ListOffsets): this broker's own port."""
        return self.port

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        return [
            str(self.binary),
            "--listen",
            self.bootstrap,
            "--data-dir",
            str(self.data_dir),
            "--shards",
            str(self.shards),
            *self.extra_args,
        ]

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the process and wait until it answers ApiVersions on its port."""
        if self.proc is not None and self.proc.poll() is None:
            raise BrokerError("broker already running")
        self.starts += 1
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("NO_COLOR", "1")  # plain log files
        cmd = self.command()
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts}: {shlex.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.data_dir.parent
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise BrokerError(f"broker exited with code {code} during start-up\n{self.log_tail()}")
            try:
                with kw.connect(self.port, timeout=2.0) as s:
                    resp = kw.api_versions(s, correlation_id=7, version=0)
                    if resp.error_code == kw.NONE and resp.apis:
                        return
                    last_error = BrokerError(f"ApiVersions answered error {resp.error_code}")
            except (OSError, kw.ConnectionClosed, ValueError) as e:
                last_error = e
            time.sleep(0.05)
        raise BrokerError(f"broker not answering ApiVersions on {self.bootstrap} after {timeout}s: {last_error!r}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code (negative = signal)."""
        if self.proc is None:
            raise BrokerError("broker never started")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                self._note(f"did not exit within {timeout}s of SIGTERM: SIGKILLed")
        code = self.proc.returncode
        self.exit_codes.append(code)
        return code

    def kill9(self) -> None:
        """SIGKILL the process (a crash: nothing flushed by the broker itself) and reap it."""
        if self.proc is None or self.proc.poll() is not None:
            raise BrokerError("kill9 on a broker that is not running")
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.exit_codes.append(self.proc.returncode)
        self._note("killed with SIGKILL by the test")

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start again on the same port and data dir (after stop() or kill9())."""
        if self.alive():
            raise BrokerError("restart while the broker is still running: stop or kill it first")
        self.start(timeout)

    # ------------------------------------------------------------------ diagnostics

    def _note(self, text: str) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"===== {text}\n".encode())

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 150) -> str:
        text = self.log_text().splitlines()
        return "\n".join(text[-lines:])

    def rss_kib(self) -> int:
        return self._status_field("VmRSS")

    def vm_peak_kib(self) -> int:
        return self._status_field("VmPeak")

    def _status_field(self, name: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
        raise BrokerError(f"{name} missing from /proc/{self.pid}/status")
