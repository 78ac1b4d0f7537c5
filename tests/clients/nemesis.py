"""The nemesis suite (issue 16): seeded random fault schedules against a real Sluice cluster.

Each broker is a real `sluice` process in its own network namespace (a veth into a bridge in
the root namespace, where this harness, its clients and its proxies live), so partitions are
iptables rules dropping real packets. Every inter-broker Kafka connection passes through a
delaying proxy (`nemesis_proxy.py`), so one link can be slowed. Under load from real clients
(librdkafka through confluent-kafka: idempotent acks=all producers and a consumer group that
commits synchronously), a schedule drawn from the seed injects, one after the other:

    kill       kill -9 a broker (the leader of a partition, the controller, or any), restart later
    pause      SIGSTOP a broker, SIGCONT later
    restart    SIGTERM a broker (bounded, then SIGKILL) and start it again at once
    isolate    cut a broker (leader, controller or any) off from every other broker
    split      a random minority cut off from the majority (on 3 brokers, one broker)
    bridge     a partial partition: two groups cut apart, one broker still sees both
    slow       one broker's requests to the others delayed 50-400 ms (the proxy)
    lossy      a broker's interface dropping 5-30 % of incoming packets (iptables statistic)

then heals everything, waits until every partition has a leader and a full ISR, lets the
clients finish, reads every partition back and runs the checker (`nemesis_check.py`) on the
history. Reproducible from the seed: the schedule (kinds, roles, times, parameters) is a pure
function of it; which broker a role resolves to ("the leader of partition 1") is decided at
run time and printed with the schedule.

    sudo .venv/bin/python tests/clients/nemesis.py --seed 1 --schedules 10 --mode both
    sudo .venv/bin/python tests/clients/nemesis.py --seed 7 --mode quorum   # replay one

Exits 1 on any violation (printing each failing seed, its mode and its schedule), 2 when a
schedule could not run (set-up failure), 0 otherwise. Needs root (`ip netns`, iptables).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import nemesis_check  # noqa: E402
from sluice_broker import free_port, sluice_binary  # noqa: E402

KAFKA_PORT = 9092
CONTROLLER_PORT = 19091
TOPIC = "nemesis"
OFFSETS_TOPIC = "__consumer_offsets"
PARTITIONS = 3
BROKER_SETTINGS = [
    "broker.session.timeout.ms=2000",
    "broker.heartbeat.interval.ms=200",
    "controller.quorum.election.timeout.ms=500",
    "replica.lag.time.max.ms=3000",
    "replica.fetch.wait.max.ms=200",
    "min.insync.replicas=2",
    # Metadata for the topic before it exists must not create it with one replica.
    "auto.create.topics.enable=false",
]
# After healing, the group has this long to read every record (a stuck rebalance waits out
# the rebalance timeout, max.poll.interval.ms = 10 s, first).
GROUP_CATCH_UP_S = 40
FAULT_KINDS = ("kill", "pause", "restart", "isolate", "split", "bridge", "slow", "lossy")
ROLES = ("leader", "controller", "any")
# Unreachable routes for the subnets of networks this or an earlier harness made
# (Network.fence): one file per subnet, holding the PID of its process.
FENCE_DIR = Path(tempfile.gettempdir()) / "nemesis-fences"
FENCE_METRIC = "4242"


def log(msg: str) -> None:
    print(f"[nemesis {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {r.stderr.strip()}")
    return r


def available() -> str | None:
    """Why the nemesis cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    for tool in (["ip", "-V"], ["iptables", "-V"]):
        try:
            if subprocess.run(tool, capture_output=True, timeout=10).returncode != 0:
                return f"`{' '.join(tool)}` fails"
        except OSError:
            return f"no `{tool[0]}`"
    if sh("ip", "netns", "list", check=False).returncode != 0:
        return "`ip netns` is unavailable"
    return None


# ------------------------------------------------------------------------------- schedule


def make_schedule(seed: int, duration: float, nodes: int, kinds: tuple[str, ...] = FAULT_KINDS) -> list[dict]:
    """The fault steps of a seed: a pure function of (seed, duration, nodes, kinds)."""
    rng = random.Random(seed)
    steps, t = [], 2.0 + rng.uniform(0, 1.5)
    while t < duration - 1.0:
        kind = rng.choice(kinds)
        hold = round(rng.uniform(1.0, 5.0), 2)
        step = {"at": round(t, 2), "kind": kind, "hold": hold, "role": rng.choice(ROLES),
                "partition": rng.randrange(PARTITIONS), "pick": rng.randrange(1 << 30)}
        if kind == "slow":
            step["ms"] = rng.choice([50, 100, 200, 400])
        if kind == "lossy":
            step["loss"] = rng.choice([0.05, 0.1, 0.2, 0.3])
        if kind == "split":
            step["minority"] = rng.randint(1, (nodes - 1) // 2)
        if kind == "restart":
            step["hold"] = 0.0
        steps.append(step)
        # A third of the time the next fault starts while this one still holds (two at once:
        # say a broker killed while another is cut off, which leaves no majority).
        t += (hold if rng.random() < 0.67 else rng.uniform(0.0, hold)) + rng.uniform(0.3, 2.0)
    return steps


# -------------------------------------------------------------------------------- network


def _free_subnet() -> int:
    used = sh("ip", "-o", "addr", check=False).stdout
    for x in random.Random(os.getpid()).sample(range(1, 250), 249):
        if f"10.233.{x}." not in used:
            return x
    raise RuntimeError("no free 10.233.X.0/24 subnet")


class Network:
    """Namespaces nm<pid>n<i> (10.233.S.i), veths into bridge nm<pid>b (10.233.S.254). Fault
    rules live in chain NEMESIS of each namespace's filter table; `heal` flushes them."""

    def __init__(self, nodes: int):
        self.nodes = nodes
        self.prefix = f"nm{os.getpid() % 10_000_000}"
        self.subnet = _free_subnet()
        self.proxy_port: dict[tuple[int, int], int] = {}
        self.created = False

    def ns(self, n: int) -> str:
        return f"{self.prefix}n{n}"

    def ip(self, n: int) -> str:
        return f"10.233.{self.subnet}.{n}"

    @property
    def host_ip(self) -> str:
        return f"10.233.{self.subnet}.254"

    def create(self) -> None:
        self.remove()
        self.created = True
        self.fence()
        br = f"{self.prefix}b"
        sh("ip", "link", "add", br, "type", "bridge")
        sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", br)
        sh("ip", "link", "set", br, "up")
        for n in range(1, self.nodes + 1):
            ns, host, peer = self.ns(n), f"{self.prefix}h{n}", f"{self.prefix}p{n}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
            sh("ip", "link", "set", peer, "netns", ns)
            sh("ip", "link", "set", host, "master", br, "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.ip(n)}/24", "dev", peer)
            sh("ip", "-n", ns, "link", "set", peer, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            self.ipt(n, "-N", "NEMESIS")
            self.ipt(n, "-I", "INPUT", "-j", "NEMESIS")
            self.ipt(n, "-I", "OUTPUT", "-j", "NEMESIS")

    def fence(self) -> None:
        """An `unreachable` route for the subnet, below the bridge's own route: while the
        bridge is up its route wins; once it is gone, a client still dialling a broker's
        address (librdkafka's threads live until their process exits) fails at once here
        instead of following the default route out of the machine. The route outlives this
        process; the next harness to create a network removes those whose process is gone."""
        FENCE_DIR.mkdir(parents=True, exist_ok=True)
        for f in FENCE_DIR.glob("10.233.*"):
            try:
                pid = int(f.read_text().strip() or "0")
                if pid > 0:
                    os.kill(pid, 0)
                    continue  # its process still runs
            except (ProcessLookupError, ValueError):
                pass
            except (PermissionError, OSError):
                continue
            sh("ip", "route", "del", "unreachable", f"{f.name}/24", "metric", FENCE_METRIC, check=False)
            f.unlink(missing_ok=True)
        net = f"10.233.{self.subnet}.0"
        sh("ip", "route", "replace", "unreachable", f"{net}/24", "metric", FENCE_METRIC)
        (FENCE_DIR / net).write_text(str(os.getpid()))

    def ipt(self, n: int, *args: str) -> None:
        sh("ip", "netns", "exec", self.ns(n), "iptables", "-w", *args)

    def redirect(self, frm: int, to: int, port: int) -> None:
        """Broker `frm`'s new connections to broker `to`'s Kafka port go to the proxy `port`."""
        self.proxy_port[(frm, to)] = port
        self.ipt(frm, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", self.ip(to), "--dport", str(KAFKA_PORT),
                 "-j", "DNAT", "--to-destination", f"{self.host_ip}:{port}")

    def rule(self, n: int, *spec: str) -> tuple:
        """Appends a fault rule to broker n's NEMESIS chain; returns it for `unrule`."""
        self.ipt(n, "-A", "NEMESIS", *spec)
        return (n, spec)

    def unrule(self, rules: list[tuple]) -> None:
        """Deletes these rules (one copy each: a rule added twice by overlapping faults stays
        until both are undone)."""
        for n, spec in rules:
            sh("ip", "netns", "exec", self.ns(n), "iptables", "-w", "-D", "NEMESIS", *spec, check=False)

    def cut(self, a: int, b: int) -> list[tuple]:
        """Drops every packet between brokers a and b (direct, and through their proxies)."""
        rules = []
        for x, y in ((a, b), (b, a)):
            rules.append(self.rule(x, "-s", self.ip(y), "-j", "DROP"))
            rules.append(self.rule(x, "-d", self.ip(y), "-j", "DROP"))
            port = self.proxy_port.get((x, y))
            if port:
                rules.append(self.rule(x, "-p", "tcp", "-d", self.host_ip, "--dport", str(port), "-j", "DROP"))
                rules.append(self.rule(x, "-p", "tcp", "-s", self.host_ip, "--sport", str(port), "-j", "DROP"))
        return rules

    def lossy(self, n: int, p: float) -> list[tuple]:
        return [self.rule(n, "-i", f"{self.prefix}p{n}", "-m", "statistic", "--mode", "random",
                          "--probability", str(p), "-j", "DROP")]

    def heal(self) -> None:
        for n in range(1, self.nodes + 1):
            self.ipt(n, "-F", "NEMESIS")

    def remove(self) -> None:
        for n in range(1, self.nodes + 1):
            sh("ip", "netns", "del", self.ns(n), check=False)
            sh("ip", "link", "del", f"{self.prefix}h{n}", check=False)
        sh("ip", "link", "del", f"{self.prefix}b", check=False)


# -------------------------------------------------------------------------------- cluster


class Cluster:
    """Brokers 1..n (all controller voters), each `ip netns exec`ed (the child's PID is the
    broker's: every signal goes to a process this harness started)."""

    def __init__(self, binary: Path, mode: str, nodes: int, root: Path, settings: list[str] | None = None):
        self.binary, self.mode, self.nodes, self.root = binary, mode, nodes, root
        self.settings = BROKER_SETTINGS + list(settings or [])
        self.net = Network(nodes)
        self.procs: dict[int, subprocess.Popen] = {}
        self.paused: set[int] = set()
        self.proxy: subprocess.Popen | None = None

    def addr(self, n: int) -> str:
        return f"{self.net.ip(n)}:{KAFKA_PORT}"

    @property
    def bootstrap(self) -> str:
        return ",".join(self.addr(n) for n in range(1, self.nodes + 1))

    def start(self) -> None:
        self.net.create()
        specs = []
        for a in range(1, self.nodes + 1):
            for b in range(1, self.nodes + 1):
                if a != b:
                    port = free_port_on(self.net.host_ip)
                    specs.append(f"{a}-{b}={self.net.host_ip}:{port}={self.net.ip(b)}:{KAFKA_PORT}")
                    self.net.redirect(a, b, port)
        self.proxy = subprocess.Popen([sys.executable, str(HERE / "nemesis_proxy.py"), *specs],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proxy.stdout.readline().strip() != "ready":
            raise RuntimeError("the delaying proxies did not start")
        for n in range(1, self.nodes + 1):
            self.spawn(n)

    def set_delay(self, frm: int, to: int, ms: int) -> None:
        self.proxy.stdin.write(f"delay {frm}-{to} {ms}\n")
        self.proxy.stdin.flush()

    def spawn(self, n: int) -> None:
        if n in self.procs and self.procs[n].poll() is None:
            return  # already running (overlapping faults on one broker)
        data = self.root / f"node{n}"
        data.mkdir(parents=True, exist_ok=True)
        voters = ",".join(f"{i}@{self.net.ip(i)}:{CONTROLLER_PORT}" for i in range(1, self.nodes + 1))
        cmd = ["ip", "netns", "exec", self.net.ns(n), str(self.binary), "--node-id", str(n),
               "--data-dir", str(data), "--listen", self.addr(n), "--shards", "1",
               "--controller-voters", voters, "--set", f"replication.mode={self.mode}"]
        for s in self.settings:
            cmd += ["--set", s]
        with open(self.root / f"node{n}.log", "ab") as out:
            self.procs[n] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                             env=self.broker_env())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.procs[n].poll() is not None:
                raise RuntimeError(f"broker {n} exited ({self.procs[n].returncode}) at start; see node{n}.log")
            try:
                socket.create_connection((self.net.ip(n), KAFKA_PORT), timeout=0.3).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"broker {n} did not listen")

    @staticmethod
    def broker_env() -> dict[str, str]:
        # The broker reads SLUICE_* variables as settings and warns about unknown ones.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env.setdefault("RUST_LOG", "info")
        return env

    def alive(self) -> list[int]:
        return sorted(n for n, p in self.procs.items() if p.poll() is None)

    def kill(self, n: int) -> None:
        p = self.procs.pop(n, None)
        if p is not None:
            p.kill()
            p.wait(10)
        self.paused.discard(n)

    def pause(self, n: int) -> None:
        if n in self.procs:
            os.kill(self.procs[n].pid, signal.SIGSTOP)
            self.paused.add(n)

    def resume(self, n: int) -> None:
        if n in self.paused and n in self.procs:
            os.kill(self.procs[n].pid, signal.SIGCONT)
        self.paused.discard(n)

    def stop(self, n: int) -> None:
        p = self.procs.pop(n, None)
        if p is None:
            return
        self.resume_pid(p)
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
        self.paused.discard(n)

    @staticmethod
    def resume_pid(p: subprocess.Popen) -> None:
        try:
            os.kill(p.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def heal(self) -> None:
        """Undoes every fault: rules flushed, delays zero, paused resumed, dead restarted."""
        self.net.heal()
        for a in range(1, self.nodes + 1):
            for b in range(1, self.nodes + 1):
                if a != b:
                    self.set_delay(a, b, 0)
        for n in list(self.paused):
            self.resume(n)
        for n in range(1, self.nodes + 1):
            if n not in self.procs or self.procs[n].poll() is not None:
                self.procs.pop(n, None)
                self.spawn(n)

    def close(self) -> None:
        for n, p in list(self.procs.items()):
            self.resume_pid(p)
            p.kill()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        if self.proxy is not None:
            try:
                self.proxy.stdin.close()
            except OSError:
                pass
            self.proxy.kill()
            self.proxy.wait(10)
        self.net.remove()


def free_port_on(host: str) -> int:
    """A port below the ephemeral range (the test support's rule) free on `host` too."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind((host, port))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free port on {host}")


# -------------------------------------------------------------------------------- clients


class Workload:
    """Real librdkafka clients: `producers` idempotent acks=all producers, each sending
    `rate` records/s round-robin over the partitions, and `consumers` members of one group
    committing synchronously what they have read."""

    def __init__(self, bootstrap: str, seed: int, producers: int = 2, consumers: int = 2, rate: float = 60.0):
        self.bootstrap, self.seed, self.rate = bootstrap, seed, rate
        self.group = f"nemesis-{seed}"
        self.lock = threading.Lock()
        self.acks: list[dict] = []
        self.failed: list[dict] = []
        self.events: list[dict] = []
        self.commits: list[dict] = []
        self.errors: list[str] = []
        self.stop_producing = threading.Event()
        self.stop_consuming = threading.Event()
        self.aborted = threading.Event()
        self.threads = [threading.Thread(target=self._produce, args=(f"p{i}",), daemon=True)
                        for i in range(producers)]
        self.cthreads = [threading.Thread(target=self._consume, args=(f"c{i}",), daemon=True)
                         for i in range(consumers)]
        self.sent = 0

    def start(self) -> None:
        for t in self.threads + self.cthreads:
            t.start()

    def _produce(self, name: str) -> None:
        from confluent_kafka import KafkaException, Producer

        incarnation, seq = 0, 0
        pad = "x" * 64
        while not self.stop_producing.is_set():
            prod_name = f"{name}.{incarnation}"
            fatal_seen = threading.Event()

            def on_error(err, prod_name=prod_name, fatal_seen=fatal_seen):
                if err.fatal():
                    with self.lock:
                        self.errors.append(f"{prod_name}: fatal: {err}")
                    fatal_seen.set()

            p = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "acks": "all",
                          "error_cb": on_error,
                          "max.in.flight.requests.per.connection": 5, "linger.ms": 5,
                          "message.timeout.ms": 30000, "request.timeout.ms": 5000,
                          "retry.backoff.ms": 100, "socket.timeout.ms": 5000,
                          "topic.metadata.refresh.interval.ms": 1000,
                          **({"debug": os.environ["NEMESIS_PRODUCER_DEBUG"]}
                             if os.environ.get("NEMESIS_PRODUCER_DEBUG") else {})})

            def on_delivery(err, msg, prod_name=prod_name):
                val = msg.value().decode()
                s = int(val.split(":")[1])
                with self.lock:
                    if err is None:
                        self.acks.append({"producer": prod_name, "seq": s, "partition": msg.partition(),
                                          "offset": msg.offset(), "value": val})
                    else:
                        self.failed.append({"producer": prod_name, "seq": s, "error": str(err)})

            fatal = False
            next_at = time.monotonic()
            try:
                while not self.stop_producing.is_set():
                    now = time.monotonic()
                    if now < next_at:
                        p.poll(min(0.05, next_at - now))
                        continue
                    next_at += 1.0 / self.rate
                    val = f"{prod_name}:{seq}:{pad}"
                    try:
                        p.produce(TOPIC, value=val.encode(), partition=seq % PARTITIONS, on_delivery=on_delivery)
                        seq += 1
                        with self.lock:
                            self.sent += 1
                    except BufferError:
                        p.poll(0.1)
                    p.poll(0)
                    if fatal_seen.is_set():
                        fatal = True
                        break
            except KafkaException as e:
                # A fatal error (say OUT_OF_ORDER_SEQUENCE_NUMBER after an unclean election):
                # this incarnation is done; a new one (new producer id) carries on.
                with self.lock:
                    self.errors.append(f"{prod_name}: {e}")
                fatal = True
            # Deliver or fail everything sent (bounded by message.timeout.ms); on abort, fail
            # it at once so no client outlives the cluster's network.
            try:
                if self.aborted.is_set() or fatal:
                    p.purge()
                    p.flush(5)
                else:
                    p.flush(40)
            except KafkaException as e:  # a producer in a fatal state refuses even these
                with self.lock:
                    self.errors.append(f"{prod_name}: closing: {e}")
            del p
            if not fatal or self.aborted.is_set():
                return
            incarnation += 1
            seq = 0

    def _consume(self, name: str) -> None:
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group,
                      "enable.auto.commit": False, "auto.offset.reset": "earliest",
                      "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
                      "max.poll.interval.ms": 10000, "socket.timeout.ms": 5000,
                      "topic.metadata.refresh.interval.ms": 1000, "enable.partition.eof": False,
                      **({"debug": os.environ["NEMESIS_CONSUMER_DEBUG"]}
                         if os.environ.get("NEMESIS_CONSUMER_DEBUG") else {})})

        def on_assign(consumer, parts):
            with self.lock:
                self.events.append({"consumer": name, "kind": "assign", "partitions": [tp.partition for tp in parts],
                                    "t": time.monotonic()})

        pending: dict[int, int] = {}

        def commit(c, parts: list[int]) -> None:
            """Commits what was read of these partitions synchronously and records it."""
            offsets = [TopicPartition(TOPIC, p, pending.pop(p)) for p in parts if p in pending]
            if not offsets:
                return
            t_sent = time.monotonic()
            try:
                res = c.commit(offsets=offsets, asynchronous=False)
                t_done = time.monotonic()
                with self.lock:
                    for tp in res:
                        self.commits.append({"consumer": name, "partition": tp.partition, "offset": tp.offset,
                                             "t_sent": t_sent, "t_done": t_done, "ok": tp.error is None})
            except KafkaException as e:
                with self.lock:
                    for tp in offsets:
                        self.commits.append({"consumer": name, "partition": tp.partition, "offset": tp.offset,
                                             "t_sent": t_sent, "t_done": time.monotonic(), "ok": False,
                                             "error": str(e)})

        def on_revoke(consumer, parts):
            # As applications do: commit what was read of the partitions being given up, then
            # forget them (a later commit of a partition another member now owns would move
            # its offset back: the application's mistake, not the broker's).
            commit(consumer, [tp.partition for tp in parts])
            for tp in parts:
                pending.pop(tp.partition, None)
            with self.lock:
                self.events.append({"consumer": name, "kind": "revoke", "partitions": [tp.partition for tp in parts],
                                    "t": time.monotonic()})

        c.subscribe([TOPIC], on_assign=on_assign, on_revoke=on_revoke)
        last_commit = time.monotonic()
        try:
            while not self.stop_consuming.is_set():
                msg = c.poll(0.2)
                if msg is not None:
                    if msg.error():
                        with self.lock:
                            self.errors.append(f"{name}: {msg.error()}")
                    else:
                        with self.lock:
                            self.events.append({"consumer": name, "kind": "msg", "partition": msg.partition(),
                                                "offset": msg.offset(), "value": msg.value().decode()})
                        pending[msg.partition()] = msg.offset() + 1
                if pending and time.monotonic() - last_commit > 0.3:
                    commit(c, list(pending))
                    last_commit = time.monotonic()
        finally:
            c.close()

    def abort(self) -> None:
        """Stops every client now and waits for each to close (before the network goes)."""
        self.aborted.set()
        self.stop_producing.set()
        self.stop_consuming.set()
        for t in self.threads + self.cthreads:
            t.join()

    def max_seen(self) -> dict[int, int]:
        """Per partition, the highest offset any member has read."""
        out: dict[int, int] = {}
        with self.lock:
            for e in self.events:
                if e["kind"] == "msg":
                    out[e["partition"]] = max(out.get(e["partition"], -1), e["offset"])
        return out

    def consumed_upto(self) -> dict[int, int]:
        """Per partition, the highest committed offset acknowledged so far."""
        out: dict[int, int] = {}
        with self.lock:
            for cm in self.commits:
                if cm["ok"]:
                    out[cm["partition"]] = max(out.get(cm["partition"], -1), cm["offset"])
        return out


# ----------------------------------------------------------------------------- inspection


def admin(bootstrap: str):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 3000})


def topic_metadata(bootstrap: str, timeout: float = 3.0, topic: str = TOPIC) -> dict[int, dict] | None:
    try:
        md = admin(bootstrap).list_topics(topic, timeout=timeout)
    except Exception:
        return None
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return None
    return {p: {"leader": pm.leader, "replicas": list(pm.replicas), "isr": list(pm.isrs)}
            for p, pm in t.partitions.items()}


def controller_of(bootstrap: str) -> int | None:
    try:
        a = admin(bootstrap)  # must outlive its future
        d = a.describe_cluster(request_timeout=3).result(5)
        return d.controller.id if d.controller is not None else None
    except Exception:
        return None


def create_topic(bootstrap: str, deadline: float, config: dict | None = None) -> None:
    from confluent_kafka.admin import NewTopic

    while True:
        try:
            a = admin(bootstrap)  # must outlive its future
            a.create_topics([NewTopic(TOPIC, PARTITIONS, 3, config=config or {})])[TOPIC].result(10)
        except Exception as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e) and time.monotonic() > deadline:
                raise RuntimeError(f"creating {TOPIC}: {e}") from e
        md = topic_metadata(bootstrap)
        if md and len(md) == PARTITIONS and all(m["leader"] > 0 and len(m["isr"]) == 3 for m in md.values()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {TOPIC} not ready: {md}")
        time.sleep(0.3)


def wait_healed(bootstrap: str, timeout: float) -> tuple[bool, dict | None, dict | None]:
    """Waits until every partition of the topic and of `__consumer_offsets` has a leader and
    ISR = replicas (3); returns whether it happened and the last metadata of both."""
    deadline = time.monotonic() + timeout
    md = offsets = None

    def full(m: dict | None, n: int | None) -> bool:
        return bool(m) and (n is None or len(m) == n) and all(
            x["leader"] > 0 and sorted(x["isr"]) == sorted(x["replicas"]) and len(x["replicas"]) == 3
            for x in m.values())

    while time.monotonic() < deadline:
        md = topic_metadata(bootstrap)
        offsets = topic_metadata(bootstrap, topic=OFFSETS_TOPIC)
        if full(md, PARTITIONS) and full(offsets, None):
            return True, md, offsets
        time.sleep(0.3)
    return False, md, offsets


def read_committed(bootstrap: str, group: str) -> dict[int, int]:
    """The group's committed offsets (OffsetFetch through librdkafka)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    deadline = time.monotonic() + 30
    try:
        while True:  # the coordinator may still be moving: retried for up to 30 s
            try:
                return {tp.partition: tp.offset
                        for tp in c.committed([TopicPartition(TOPIC, p) for p in range(PARTITIONS)], timeout=10)}
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        c.close()


def read_back(bootstrap: str) -> tuple[dict, dict]:
    """Every record of every partition up to its high watermark, and the high watermarks: a
    fresh librdkafka consumer, assigned (no group)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "nemesis-reader", "enable.auto.commit": False,
                  "auto.offset.reset": "error", "enable.partition.eof": False})
    try:
        # Leadership may still settle (NOT_LEADER answers): retried for up to 30 s.
        deadline = time.monotonic() + 30
        while True:
            try:
                hws = {p: c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)[1]
                       for p in range(PARTITIONS)}
                break
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        c.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        final: dict[int, list] = {p: [] for p in range(PARTITIONS)}
        deadline = time.monotonic() + 60
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"read-back did not reach the high watermarks {hws}")
            msg = c.poll(0.2)
            if msg is None:
                # Done when the position (past control batches too) reached every watermark.
                pos = {tp.partition: tp.offset for tp in c.position(
                    [TopicPartition(TOPIC, p) for p in range(PARTITIONS)])}
                if all(hw == 0 or pos.get(p, -1) >= hw for p, hw in hws.items()):
                    return final, hws
                continue
            if msg.error():
                raise RuntimeError(f"read-back: {msg.error()}")
            if msg.offset() < hws[msg.partition()]:
                final[msg.partition()].append([msg.offset(), msg.value().decode()])
    finally:
        c.close()


def replica_digests(root: Path, replicas: dict[int, list[int]], hws: dict[int, int]) -> dict:
    """Each replica's own log files, batch by batch up to the high watermark."""
    out = {}
    for p, hw in hws.items():
        out[p] = {"hw": hw, "nodes": {}}
        for n in replicas[p]:
            d = root / f"node{n}" / f"{TOPIC}-{p}"
            batches = []
            for seg in sorted(d.glob("*.log")):
                data = seg.read_bytes()
                pos = 0
                while pos + 61 <= len(data):
                    base, length = struct.unpack_from(">qi", data, pos)
                    if length <= 0 or pos + 12 + length > len(data) or data[pos + 16] != 2:
                        break
                    last_delta = struct.unpack_from(">i", data, pos + 23)[0]
                    if base < hw:
                        batches.append([base, base + last_delta,
                                        hashlib.sha256(data[pos:pos + 12 + length]).hexdigest()[:16]])
                    pos += 12 + length
            out[p]["nodes"][str(n)] = batches
    return out


# --------------------------------------------------------------------------------- runner


def resolve(step: dict, cluster: Cluster, rng: random.Random) -> int:
    """The broker a role names now (a random live one when it cannot be learnt)."""
    nodes = list(range(1, cluster.nodes + 1))
    target = None
    if step["role"] == "leader":
        md = topic_metadata(cluster.bootstrap, timeout=2)
        if md and step["partition"] in md and md[step["partition"]]["leader"] > 0:
            target = md[step["partition"]]["leader"]
    elif step["role"] == "controller":
        target = controller_of(cluster.bootstrap)
    elif step["role"] == "follower":  # hand-written schedules only (not in ROLES)
        md = topic_metadata(cluster.bootstrap, timeout=2)
        if md and step["partition"] in md:
            m = md[step["partition"]]
            followers = sorted(r for r in m["replicas"] if r != m["leader"])
            if followers:
                target = followers[step["pick"] % len(followers)]
    if target not in nodes:
        target = nodes[step["pick"] % len(nodes)]
    return target


def apply_step(step: dict, cluster: Cluster, target: int | None = None) -> tuple[str, list]:
    """Injects one fault; returns its label and the undo actions to run after `hold`. The
    broker is `target` when given (a caller resolving roles of its own), else the step's role."""
    rng = random.Random(step["pick"])
    n = target if target is not None else resolve(step, cluster, rng)
    others = [m for m in range(1, cluster.nodes + 1) if m != n]
    kind = step["kind"]
    undo: list = []
    if kind == "kill":
        cluster.kill(n)
        undo.append(lambda: cluster.spawn(n))
        label = f"kill -9 {step['role']} {n}"
    elif kind == "pause":
        cluster.pause(n)
        undo.append(lambda: cluster.resume(n))
        label = f"SIGSTOP {step['role']} {n}"
    elif kind == "restart":
        cluster.stop(n)
        cluster.spawn(n)
        label = f"restart (SIGTERM) {step['role']} {n}"
    elif kind == "isolate":
        rules = [r for m in others for r in cluster.net.cut(n, m)]
        undo.append(lambda: cluster.net.unrule(rules))
        label = f"isolate {step['role']} {n}"
    elif kind == "split":
        minority = [n] + rng.sample(others, step["minority"] - 1)
        majority = [m for m in range(1, cluster.nodes + 1) if m not in minority]
        rules = [r for a in minority for b in majority for r in cluster.net.cut(a, b)]
        undo.append(lambda: cluster.net.unrule(rules))
        label = f"split {sorted(minority)} | {majority}"
    elif kind == "bridge":
        # n sees everyone; the others split into two halves that cannot see each other.
        rng.shuffle(others)
        half = len(others) // 2
        left, right = others[:half], others[half:]
        rules = [r for a in left for b in right for r in cluster.net.cut(a, b)]
        undo.append(lambda: cluster.net.unrule(rules))
        label = f"bridge {n} between {sorted(left)} and {sorted(right)}"
    elif kind == "slow":
        for m in others:
            cluster.set_delay(n, m, step["ms"])
            cluster.set_delay(m, n, step["ms"])
        undo.append(lambda: [cluster.set_delay(a, b, 0) for m in others for a, b in ((n, m), (m, n))])
        label = f"slow links of {step['role']} {n} +{step['ms']} ms"
    elif kind == "lossy":
        rules = cluster.net.lossy(n, step["loss"])
        undo.append(lambda: cluster.net.unrule(rules))
        label = f"lossy {step['role']} {n} drops {int(step['loss'] * 100)}% in"
    else:
        raise ValueError(kind)
    return label, undo


def run_schedule(seed: int, mode: str, duration: float, binary: Path, nodes: int = 3, workdir: Path | None = None,
                 rate: float = 60.0, keep: Path | None = None, kinds: tuple[str, ...] = FAULT_KINDS,
                 settings: list[str] | None = None, schedule: list[dict] | None = None,
                 topic_config: dict | None = None) -> dict:
    """One schedule: fresh cluster, load, faults, heal, check. Returns the verdict dict.
    `settings` (KEY=VALUE) are added to every broker's (say, an unsafe configuration, to see
    the checker catch what it allows). `schedule` replaces the seed's (a hand-written one)."""
    handwritten = schedule is not None
    schedule = schedule if handwritten else make_schedule(seed, duration, nodes, kinds)
    root = Path(tempfile.mkdtemp(prefix=f"nemesis-{seed}-{mode}-", dir=workdir))
    cluster = Cluster(binary, mode, nodes, root, settings)
    wl = None
    applied: list[dict] = []
    started = time.monotonic()
    verdict: dict = {"seed": seed, "mode": mode, "nodes": nodes, "duration": duration, "schedule": schedule}
    if kinds != FAULT_KINDS:
        verdict["kinds"] = list(kinds)
    if handwritten:
        verdict["handwritten"] = True
    if topic_config:
        verdict["topic_config"] = topic_config
    if settings:
        verdict["settings"] = list(settings)
    try:
        cluster.start()
        create_topic(cluster.bootstrap, time.monotonic() + 40, topic_config)
        wl = Workload(cluster.bootstrap, seed, rate=rate)
        wl.start()
        t0 = time.monotonic()
        # (due time, undo actions) of the faults in force; they may overlap.
        pending: list[tuple[float, list]] = []

        def undo_due(until: float) -> None:
            for due, undo in sorted(pending, key=lambda x: x[0]):
                if due <= until:
                    while time.monotonic() < t0 + due:
                        time.sleep(0.02)
                    for u in undo:
                        u()
                    pending.remove((due, undo))

        for step in schedule:
            undo_due(step["at"])
            while time.monotonic() < t0 + step["at"]:
                time.sleep(0.02)
            label, undo = apply_step(step, cluster)
            at = round(time.monotonic() - t0, 2)
            log(f"seed {seed} {mode} t={at}: {label}")
            pending.append((at + step["hold"], undo))
            applied.append({"at": at, "kind": step["kind"], "label": label, "hold": step["hold"]})
        undo_due(float("inf"))
        while time.monotonic() < t0 + duration:
            time.sleep(0.05)
        cluster.heal()
        healed, _, _ = wait_healed(cluster.bootstrap, 45)
        wl.stop_producing.set()
        for t in wl.threads:
            t.join(60)
        healed2, md, offsets_md = wait_healed(cluster.bootstrap, 30)
        if md is None:
            raise RuntimeError("no metadata for the topic after healing")
        final, hws = read_back(cluster.bootstrap)
        # The group must read every record to the end once healed (bounded), then it stops.
        last = {p: recs[-1][0] for p, recs in final.items() if recs}
        deadline = time.monotonic() + GROUP_CATCH_UP_S
        caught_up = False
        while time.monotonic() < deadline:
            seen = wl.max_seen()
            if all(seen.get(p, -1) >= o for p, o in last.items()):
                caught_up = True
                break
            time.sleep(0.3)
        wl.stop_consuming.set()
        for t in wl.cthreads:
            t.join(30)
        committed = read_committed(cluster.bootstrap, wl.group)
        # The followers' last fetches of the tail (quorum mode commits on a majority): up to
        # 10 s for every replica to reach the watermark; whatever differs then is reported.
        for _ in range(20):
            replicas = replica_digests(root, {p: m["replicas"] for p, m in md.items()}, hws)
            if not nemesis_check.check({"replicas": replicas, "healed": True})["counts"]["replica_divergence"]:
                break
            time.sleep(0.5)
        history = {
            "acks": wl.acks,
            "final": {str(p): recs for p, recs in final.items()},
            "consumer_events": wl.events,
            "commits": wl.commits,
            "committed_final": {str(p): o for p, o in committed.items()},
            "replicas": {str(p): r for p, r in replicas.items()},
            "metadata": {str(p): m for p, m in (md or {}).items()},
            "offsets_metadata": {str(p): m for p, m in (offsets_md or {}).items()},
            "healed": healed and healed2 and caught_up,
            "heal_error": "no leader or short ISR 45 s after healing" if not (healed and healed2)
            else None if caught_up else f"the group did not read to the end within {GROUP_CATCH_UP_S} s after healing",
        }
        result = nemesis_check.check(history)
        verdict.update(result)
        verdict["faults"] = applied
        verdict["stats"].update({"sent": wl.sent, "failed_sends": len(wl.failed),
                                 "client_errors": len(wl.errors), "high_watermarks": hws})
        verdict["client_errors"] = wl.errors[:10]
        if not result["ok"] and keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            (keep / f"history-{seed}-{mode}.json").write_text(json.dumps(history) + "\n")
            for n in range(1, nodes + 1):
                f = root / f"node{n}.log"
                if f.exists():
                    shutil.copy(f, keep / f"seed{seed}-{mode}-node{n}.log")
                # The topic's partition directories (segments, indexes, producer snapshots):
                # the batch headers show what each replica holds.
                for d in (root / f"node{n}").glob(f"{TOPIC}-*"):
                    shutil.copytree(d, keep / f"seed{seed}-{mode}-node{n}" / d.name, dirs_exist_ok=True)
    except Exception as e:
        verdict["ok"] = None
        verdict["error"] = f"{type(e).__name__}: {e}"
        verdict["traceback"] = traceback.format_exc()
        verdict["faults"] = applied
    finally:
        # Clients first: one left running would keep dialling the brokers' addresses after
        # their namespaces are gone (a route out of the machine).
        if wl is not None:
            wl.abort()
        cluster.close()
        if not os.environ.get("NEMESIS_KEEP_DATA"):
            shutil.rmtree(root, ignore_errors=True)
    verdict["seconds"] = round(time.monotonic() - started, 1)
    return verdict


def replay_args(v: dict) -> str:
    args = f"--seed {v['seed']} --mode {v['mode']} --duration {v['duration']} --nodes {v['nodes']}"
    if v.get("kinds"):
        args += " --kinds " + ",".join(v["kinds"])
    for kv in v.get("settings", []):
        args += f" --set {kv}"
    return args


def human(v: dict) -> str:
    head = f"seed {v['seed']} mode {v['mode']} ({v.get('seconds', '?')} s): "
    if v.get("ok") is None:
        return head + f"COULD NOT RUN: {v.get('error')}"
    s = v["stats"]
    line = head + ("ok" if v["ok"] else "VIOLATIONS") + (
        f"; {len(v['faults'])} faults, {s['acknowledged']} acknowledged of {s.get('sent', '?')} sent "
        f"({s.get('acknowledged_without_offset', 0)} without offset), "
        f"{s['records_in_log']} in the log, {s['consumed']} consumed, {s['commits_ok']} commits")
    if not v["ok"]:
        bad = {k: n for k, n in v["counts"].items() if n}
        line += f"\n  violations: {bad}\n  examples: {json.dumps(v['examples'])[:2000]}"
    if not v["ok"]:
        line += "\n  faults applied:\n" + "\n".join(f"    t={f['at']}: {f['label']} (hold {f['hold']} s)"
                                                   for f in v["faults"])
        line += "\n  replay: sudo .venv/bin/python tests/clients/nemesis.py " + replay_args(v)
    return line


def summarize(paths: list[Path]) -> dict:
    """Totals over JSON verdict files (one verdict per line): what results/faults records."""
    tot: dict = {"modes": {}, "faults_by_kind": {}, "violating_seeds": [], "could_not_run": []}
    for path in paths:
        text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
        for line in text.splitlines():
            if not line.strip():
                continue
            v = json.loads(line)
            m = tot["modes"].setdefault(v["mode"], {"schedules": 0, "ok": 0, "violations": 0, "could_not_run": 0,
                                                    "acknowledged": 0, "faults": 0, "seconds": 0.0,
                                                    "violations_by_kind": {}})
            m["schedules"] += 1
            m["seconds"] = round(m["seconds"] + v.get("seconds", 0), 1)
            for f in v.get("faults", []):
                tot["faults_by_kind"][f["kind"]] = tot["faults_by_kind"].get(f["kind"], 0) + 1
                m["faults"] += 1
            if v.get("ok") is None:
                m["could_not_run"] += 1
                tot["could_not_run"].append([v["seed"], v["mode"], v.get("error", "")[:200]])
                continue
            m["acknowledged"] += v["stats"]["acknowledged"]
            if v["stats"].get("acknowledged_without_offset"):
                m["acknowledged_without_offset"] = (m.get("acknowledged_without_offset", 0)
                                                    + v["stats"]["acknowledged_without_offset"])
                tot.setdefault("seeds_with_acks_without_offset", []).append(
                    [v["seed"], v["mode"], v["stats"]["acknowledged_without_offset"]])
            if v["ok"]:
                m["ok"] += 1
            else:
                m["violations"] += 1
                for k, n in v["counts"].items():
                    if n:
                        m["violations_by_kind"][k] = m["violations_by_kind"].get(k, 0) + n
                tot["violating_seeds"].append([v["seed"], v["mode"], {k: n for k, n in v["counts"].items() if n}])
    return tot


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1, help="first seed")
    ap.add_argument("--schedules", type=int, default=1, help="seeds seed..seed+N-1")
    ap.add_argument("--mode", choices=["isr", "quorum", "both", "alternate"], default="both",
                    help="both: every seed in each mode; alternate: even seeds isr, odd quorum")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of faults per schedule")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rate", type=float, default=60.0, help="records/s per producer")
    ap.add_argument("--binary", type=Path, default=None)
    ap.add_argument("--kinds", default=",".join(FAULT_KINDS), help="fault kinds to draw from (comma-separated)")
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                    help="extra broker setting (repeatable)")
    ap.add_argument("--json", type=Path, default=None, help="append one JSON verdict per line")
    ap.add_argument("--keep", type=Path, default=None, help="failing histories and broker logs go here")
    ap.add_argument("--until", type=float, default=None, help="start no schedule after this Unix time")
    ap.add_argument("--print-schedule", action="store_true", help="print the seed's schedule and exit")
    ap.add_argument("--summarize", type=Path, nargs="+", default=None,
                    help="print the totals of these JSON verdict files and exit")
    a = ap.parse_args(argv)
    kinds = tuple(k for k in a.kinds.split(",") if k)
    if not kinds or any(k not in FAULT_KINDS for k in kinds):
        ap.error(f"--kinds takes some of {','.join(FAULT_KINDS)}")
    if a.summarize:
        print(json.dumps(summarize(a.summarize), indent=1))
        return 0
    if a.print_schedule:
        print(json.dumps(make_schedule(a.seed, a.duration, a.nodes, kinds), indent=1))
        return 0
    why = available()
    if why:
        print(f"nemesis: {why}", file=sys.stderr)
        return 2
    binary = a.binary or sluice_binary()
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    runs = []
    for seed in range(a.seed, a.seed + a.schedules):
        modes = ["isr", "quorum"] if a.mode == "both" else [a.mode] if a.mode in ("isr", "quorum") else \
            ["isr" if seed % 2 == 0 else "quorum"]
        runs += [(seed, m) for m in modes]
    bad, broken = [], []
    try:
        for seed, mode in runs:
            if stop["now"] or (a.until and time.time() > a.until):
                break
            v = run_schedule(seed, mode, a.duration, binary, a.nodes, rate=a.rate, keep=a.keep, kinds=kinds,
                             settings=a.settings)
            print(human(v), flush=True)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps({k: x for k, x in v.items() if k != "traceback"}) + "\n")
            if v.get("ok") is None:
                broken.append(v)
                print(v.get("traceback", ""), file=sys.stderr)
            elif not v["ok"]:
                bad.append(v)
    except KeyboardInterrupt:
        print("nemesis: interrupted", file=sys.stderr)
    for v in bad:
        print(f"FAILED seed {v['seed']} mode {v['mode']}: replay with {replay_args(v)}", flush=True)
    return 1 if bad else 2 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
