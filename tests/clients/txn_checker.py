"""A Jepsen-style check of transactions (issue 14) on a three-broker, replication-factor-3
Sluice cluster: consume-transform-produce workers (confluent-kafka, one transactional producer
and one group consumer each, offsets sent in the transaction) copy an input topic to an output
topic while brokers (the transaction coordinators' and partition leaders among them) are killed
-9 and restarted. Then the output, read read_committed, must hold every input record exactly
once; no record of an aborted transaction may be read committed; every committed transaction
must be visible in full; the group's committed offsets must be at the input's end.

    SLUICE_BIN=target/release/sluice .venv/bin/python tests/clients/txn_checker.py \\
        --seed 1 --records 3000 --workers 3 --kill-every 6
    sudo SLUICE_BIN=... .venv/bin/python tests/clients/txn_checker.py --faults nemesis \\
        --mode quorum --seed 7 --duration 30   # partitions, pauses, slow links too (root)

Prints a JSON verdict and exits 1 on any violation. Every broker it starts is stopped, and
the data directories are removed, at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition  # noqa: E402

from sluice_broker import Broker, sluice_binary  # noqa: E402
from sluice_cluster import Cluster  # noqa: E402

IN, OUT = "txn-check-in", "txn-check-out"
GROUP = "txn-check"
TXN_STATE_PARTITIONS = 6
TXN_SETTINGS = [
    "transaction.abort.timed.out.transaction.cleanup.interval.ms=1000",
    f"transaction.state.log.num.partitions={TXN_STATE_PARTITIONS}",
    "offsets.topic.num.partitions=6",
]


def make_factory(root: Path, brokers: list):
    def make(shards: int = 2, extra_args=None, start: bool = True):
        n = len(brokers)
        b = Broker(root / f"data{n}", root / f"sluice{n}.log", shards=shards, extra_args=extra_args)
        brokers.append(b)
        if start:
            b.start()
        return b

    return make


class Worker(threading.Thread):
    """consume -> transform -> produce, with the input offsets in the same transaction."""

    def __init__(self, k: int, bootstrap: str, partitions: int, stop: threading.Event, stats: Counter,
                 committed_txns: list, lock: threading.Lock):
        super().__init__(daemon=True)
        self.k, self.bootstrap, self.partitions, self.stop = k, bootstrap, partitions, stop
        self.stats, self.committed_txns, self.lock = stats, committed_txns, lock
        self.errors: list[str] = []

    def _producer(self) -> Producer:
        p = Producer({
            "bootstrap.servers": self.bootstrap,
            "transactional.id": f"txn-check-worker-{self.k}",
            "transaction.timeout.ms": 10000,
            "linger.ms": 5,
            "message.timeout.ms": 10000,
            # TXN_CHECK_PRODUCER_DEBUG=eos,protocol: librdkafka's debug log (stderr) on a replay.
            **({"debug": os.environ["TXN_CHECK_PRODUCER_DEBUG"]} if os.environ.get("TXN_CHECK_PRODUCER_DEBUG") else {}),
        })
        while not self.stop.is_set():
            try:
                p.init_transactions(15)
                return p
            except KafkaException as e:
                self._count("init_retries", e)
                time.sleep(0.5)
        return p

    def _count(self, what: str, e=None) -> None:
        with self.lock:
            self.stats[what] += 1
        if e is not None and len(self.errors) < 20:
            self.errors.append(f"{time.strftime('%H:%M:%S')} {what}: {e}")

    def _rewind(self, c: Consumer) -> None:
        assigned = c.assignment()
        if not assigned:
            return
        committed = c.committed(assigned, timeout=10)
        for tp in committed:
            if tp.error is not None:
                raise KafkaException(tp.error)
        for tp in committed:
            c.seek(TopicPartition(IN, tp.partition, tp.offset if tp.offset >= 0 else 0))

    def run(self) -> None:
        c = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": GROUP,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "session.timeout.ms": 10000,
            "fetch.wait.max.ms": 100,
        })
        c.subscribe([IN])
        p = self._producer()
        try:
            while not self.stop.is_set():
                try:
                    got = c.consume(num_messages=20, timeout=0.5)
                except KafkaException as e:
                    self._count("consume_errors", e)
                    continue
                for m in got:
                    if m.error() is not None:
                        self._count("consume_errors", m.error())
                msgs = [m for m in got if m.error() is None]
                if not msgs:
                    continue
                values = [m.value().replace(b"in-", b"out-") for m in msgs]
                try:
                    p.begin_transaction()
                    for m, v in zip(msgs, values):
                        p.produce(OUT, value=v, key=m.key(), partition=m.partition())
                    p.send_offsets_to_transaction(c.position(c.assignment()), c.consumer_group_metadata(), 15)
                    p.commit_transaction(15)
                    with self.lock:
                        self.stats["committed"] += 1
                        self.committed_txns.append(values)
                except KafkaException as e:
                    err = e.args[0]
                    if err.retriable() and not err.txn_requires_abort() and not err.fatal():
                        # The outcome of the commit is unknown: retrying it is the protocol.
                        try:
                            p.commit_transaction(15)
                            with self.lock:
                                self.stats["committed"] += 1
                                self.committed_txns.append(values)
                            continue
                        except KafkaException as e2:
                            err = e2.args[0]
                    if err.fatal():
                        self._count("fatal_producer_restarts", e)
                        p = self._producer()
                    else:
                        try:
                            p.abort_transaction(15)
                            self._count("aborted")
                        except KafkaException as e3:
                            self._count("abort_failed_producer_restarts", e3)
                            p = self._producer()
                    # The transaction's input must be read again: back to the committed
                    # offsets before anything else is consumed (going on from the position
                    # would skip it).
                    while not self.stop.is_set():
                        try:
                            self._rewind(c)
                            break
                        except KafkaException as e4:
                            self._count("rewind_errors", e4)
                            time.sleep(0.5)
        finally:
            try:
                c.close()
            except Exception:
                pass


def read_all(bootstrap: str, topic: str, partitions: int, isolation: str, timeout: float = 60.0) -> list[bytes]:
    c = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "txn-check-reader", "enable.auto.commit": False,
        "enable.partition.eof": True, "isolation.level": isolation, "fetch.wait.max.ms": 100,
    })
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        out, eof = [], set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(eof) < partitions:
            for m in c.consume(num_messages=1000, timeout=0.3):
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        eof.add(m.partition())
                    continue
                eof.discard(m.partition())
                out.append(m.value())
        if len(eof) < partitions:
            raise AssertionError(f"{topic}: not every partition reached its end in {timeout}s")
        return out
    finally:
        c.close()


def committed_offsets(bootstrap: str, partitions: int) -> int:
    """The sum of the group's committed input offsets (stable ones: OffsetFetch
    require_stable, as a read_committed consumer asks), -1 when they cannot be read now."""
    try:
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP, "isolation.level": "read_committed"})
        try:
            got = c.committed([TopicPartition(IN, p) for p in range(partitions)], timeout=5)
        finally:
            c.close()
        return sum(max(tp.offset, 0) for tp in got)
    except KafkaException:
        return -1


def java_hash(s: str) -> int:
    """Java's String.hashCode (UTF-16 code units), as Kafka places a transactional id."""
    h = 0
    for unit in s.encode("utf-16-be").hex(" ", 2).split():
        h = (31 * h + int(unit, 16)) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def coordinator_partition(transactional_id: str, partitions: int = TXN_STATE_PARTITIONS) -> int:
    h = java_hash(transactional_id)
    return (0 if h == -(1 << 31) else abs(h)) % partitions


def check_output(records: int, rc: list[bytes], ru: list[bytes], committed_txns: list) -> dict:
    want = Counter(f"out-{i}".encode() for i in range(records))
    got = Counter(rc)
    lost = sorted(set(want) - set(got))
    dups = {v.decode(): n for v, n in got.items() if n > 1}
    unexpected = sorted(set(got) - set(want))
    rc_set = set(rc)
    partial = [t for t in committed_txns if not all(v in rc_set for v in t)]
    return {
        "read_committed": len(rc),
        "read_uncommitted": len(ru),
        "lost": len(lost),
        "duplicated": len(dups),
        "unexpected": len(unexpected),
        "committed_transactions_not_in_full": len(partial),
        "examples": {"lost": [v.decode() for v in lost[:5]], "duplicated": list(dups.items())[:5],
                     "unexpected": [v.decode() for v in unexpected[:5]],
                     "not_in_full": [{"size": len(t), "missing": [v.decode() for v in t if v not in rc_set][:10]}
                                     for t in partial[:3]]},
    }


class KillFaults:
    """kill -9 of a random broker, restarted 2-5 s later, the next kill `kill_every` s after."""

    def __init__(self, root: Path, mode: str, rng: random.Random, kill_every: float):
        self.brokers: list = []
        self.rng, self.kill_every = rng, kill_every
        self.cluster = Cluster(make_factory(root, self.brokers), mode, extra=[
            "--set", "default.replication.factor=3",
            "--set", "broker.session.timeout.ms=4000",
            "--set", "replica.lag.time.max.ms=6000",
            *[x for kv in TXN_SETTINGS for x in ("--set", kv)],
        ], shards=2)
        self.faults: list[dict] = []
        self.down: tuple[int, float] | None = None
        self.next_kill = time.monotonic() + kill_every

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap()

    def create_topics(self, partitions: int) -> None:
        for t in (IN, OUT):
            self.cluster.create_topic(t, partitions, 3, {"min.insync.replicas": "2"})

    def step(self, t: float) -> bool:
        """Injects or undoes what is due; True while a fault is in force."""
        now = time.monotonic()
        if self.down and now >= self.down[1]:
            self.cluster.broker(self.down[0]).restart()
            self.down = None
            self.next_kill = now + self.kill_every
        elif self.down is None and now >= self.next_kill:
            victim = self.rng.choice(self.cluster.ids)
            self.cluster.broker(victim).kill9()
            self.faults.append({"at": round(t, 2), "kind": "kill", "label": f"kill -9 {victim}"})
            self.down = (victim, now + self.rng.uniform(2.0, 5.0))
        return self.down is not None

    def finished_schedule(self, t: float) -> bool:
        return False  # kills go on until the work is done or the time is up

    def heal(self) -> None:
        if self.down:
            self.cluster.broker(self.down[0]).restart()
            self.down = None

    def close(self) -> None:
        for b in self.brokers:
            if b.alive():
                b.stop()


class NemesisFaults:
    """The nemesis suite's faults (tests/clients/nemesis.py): each broker in its own network
    namespace; kill -9, SIGSTOP, SIGTERM restarts, isolation, splits, bridges, slow and lossy
    links, drawn from the seed; roles are the leader of an output partition, the controller,
    the transaction coordinator of a worker, or any broker."""

    def __init__(self, root: Path, mode: str, seed: int, duration: float, workers: int):
        import nemesis

        self.nemesis = nemesis
        self.cluster = nemesis.Cluster(sluice_binary(), mode, 3, root, settings=TXN_SETTINGS)
        self.schedule = nemesis.make_schedule(seed, duration, 3)
        self.duration, self.workers = duration, workers
        self.faults: list[dict] = []
        self.pending: list[tuple[float, list]] = []
        self.next = 0
        self.cluster.start()

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap

    def create_topics(self, partitions: int) -> None:
        from confluent_kafka.admin import NewTopic

        deadline = time.monotonic() + 40
        for t in (IN, OUT):
            while True:
                try:
                    a = self.nemesis.admin(self.bootstrap)  # must outlive its future
                    a.create_topics([NewTopic(t, partitions, 3, config={"min.insync.replicas": "2"})])[t].result(10)
                except Exception as e:
                    if "TOPIC_ALREADY_EXISTS" not in str(e) and time.monotonic() > deadline:
                        raise RuntimeError(f"creating {t}: {e}") from e
                md = self.nemesis.topic_metadata(self.bootstrap, topic=t)
                if md and len(md) == partitions and all(m["leader"] > 0 and len(m["isr"]) == 3 for m in md.values()):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"topic {t} not ready: {md}")
                time.sleep(0.3)

    def target(self, step: dict) -> int:
        """The broker a step's role names now (any broker when it cannot be learnt)."""
        target = None
        if step["role"] == "leader":
            md = self.nemesis.topic_metadata(self.bootstrap, timeout=2, topic=OUT)
            if md and step["partition"] in md:
                target = md[step["partition"]]["leader"]
        elif step["role"] == "controller":
            target = self.nemesis.controller_of(self.bootstrap)
        elif step["pick"] % 2 == 0:  # "any": half the time a worker's transaction coordinator
            worker = (step["pick"] // 2) % self.workers
            md = self.nemesis.topic_metadata(self.bootstrap, timeout=2, topic="__transaction_state")
            p = coordinator_partition(f"txn-check-worker-{worker}")
            if md and p in md:
                target = md[p]["leader"]
        if target not in range(1, 4):
            target = 1 + step["pick"] % 3
        return target

    def step(self, t: float) -> bool:
        for due, undo in sorted(self.pending, key=lambda x: x[0]):
            if due <= t:
                for u in undo:
                    u()
                self.pending.remove((due, undo))
        while self.next < len(self.schedule) and self.schedule[self.next]["at"] <= t:
            step = self.schedule[self.next]
            self.next += 1
            n = self.target(step)
            label, undo = self.nemesis.apply_step(step, self.cluster, target=n)
            if step["role"] == "any" and step["pick"] % 2 == 0:
                label += " (a transaction coordinator)"
            self.faults.append({"at": round(t, 2), "kind": step["kind"], "label": label, "hold": step["hold"]})
            self.pending.append((t + step["hold"], undo))
        return bool(self.pending)

    def finished_schedule(self, t: float) -> bool:
        return t >= self.duration and not self.pending

    def heal(self) -> None:
        for _, undo in self.pending:
            for u in undo:
                u()
        self.pending.clear()
        self.cluster.heal()

    def close(self) -> None:
        self.cluster.close()


def run(seed: int, records: int, workers: int, partitions: int, max_seconds: float, root: Path,
        mode: str = "isr", faults: str = "kill", kill_every: float = 6.0, duration: float = 30.0) -> dict:
    """One check. faults="kill": kill -9 and restarts until the work is done (or max_seconds);
    faults="nemesis": the nemesis schedule of the seed for `duration` s, then healed."""
    driver = None
    stop = threading.Event()
    ws: list[Worker] = []
    try:
        driver = (KillFaults(root, mode, random.Random(seed), kill_every) if faults == "kill"
                  else NemesisFaults(root, mode, seed, duration, workers))
        bootstrap = driver.bootstrap
        driver.create_topics(partitions)
        src = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
        for i in range(records):
            src.produce(IN, key=str(i).encode(), value=f"in-{i}".encode(), partition=i % partitions)
            if i % 500 == 0:
                src.poll(0)
        assert src.flush(60) == 0, "input not fully written"
        del src  # no client may outlive the brokers' addresses
        lock = threading.Lock()
        stats: Counter = Counter()
        committed_txns: list = []
        ws = [Worker(k, bootstrap, partitions, stop, stats, committed_txns, lock) for k in range(workers)]
        for w in ws:
            w.start()
        started = time.monotonic()
        done = False
        last_poll = 0.0
        while time.monotonic() - started < max_seconds:
            t = time.monotonic() - started
            in_force = driver.step(t)
            if driver.finished_schedule(t):
                break
            if not in_force and t > 10 and t - last_poll > 1.0 and faults == "kill":
                last_poll = t
                if committed_offsets(bootstrap, partitions) >= records:
                    # Finished: the group's committed offsets reached the input's end.
                    done = True
                    break
            time.sleep(0.05)
        driver.heal()
        # Healed: the workers go on without faults until the group's offsets reach the end.
        heal_deadline = time.monotonic() + 90
        committed_total = -1
        while time.monotonic() < heal_deadline:
            committed_total = committed_offsets(bootstrap, partitions)
            if committed_total >= records:
                break
            time.sleep(1)
        stop.set()
        for w in ws:
            w.join(60)
        frames = sys._current_frames()
        stuck = {f"worker-{w.k}": traceback.format_stack(frames[w.ident])[-6:]
                 for w in ws if w.is_alive() and w.ident in frames}
        elapsed = time.monotonic() - started
        rc = read_all(bootstrap, OUT, partitions, "read_committed")
        ru = read_all(bootstrap, OUT, partitions, "read_uncommitted")
        verdict = {
            "seed": seed,
            "mode": mode,
            "faults_kind": faults,
            "records": records,
            "workers": workers,
            "partitions": partitions,
            "finished_under_faults": done,
            "committed_input_offsets": committed_total,
            "seconds": round(elapsed, 1),
            "transactions_committed": stats["committed"],
            "transactions_aborted": stats["aborted"],
            "producer_restarts": stats["fatal_producer_restarts"] + stats["abort_failed_producer_restarts"],
            "faults": Counter(f["kind"] for f in driver.faults),
            "fault_log": driver.faults,
            "worker_errors": [x for w in ws for x in w.errors],
            "worker_stats": dict(stats),
            "stuck_workers": stuck,
            **check_output(records, rc, ru, committed_txns),
        }
        verdict["ok"] = (committed_total >= records and not stuck and not verdict["lost"] and not verdict["duplicated"]
                         and not verdict["unexpected"] and not verdict["committed_transactions_not_in_full"])
        return verdict
    finally:
        # Clients first: one left running would keep dialling addresses of namespaces that are
        # gone (a route out of the machine).
        stop.set()
        for w in ws:
            w.join(60)
        if driver is not None:
            driver.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--records", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--mode", choices=["isr", "quorum"], default="isr", help="replication mode")
    ap.add_argument("--faults", choices=["kill", "nemesis"], default="kill",
                    help="kill: kill -9 and restarts; nemesis: the nemesis suite's schedule of the seed "
                         "(partitions, pauses, slow and lossy links too; needs root)")
    ap.add_argument("--kill-every", type=float, default=6.0, help="kill: seconds between a restart and the next kill")
    ap.add_argument("--duration", type=float, default=30.0, help="nemesis: seconds of faults")
    ap.add_argument("--max-seconds", type=float, default=180.0)
    ap.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    args = ap.parse_args()
    if args.faults == "nemesis":
        import nemesis

        why = nemesis.available()
        if why:
            print(f"txn_checker: --faults nemesis: {why}", file=sys.stderr)
            return 2
    root = Path(tempfile.mkdtemp(prefix="txn-checker-"))
    try:
        v = run(args.seed, args.records, args.workers, args.partitions, args.max_seconds, root, args.mode,
                args.faults, args.kill_every, args.duration)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}", file=sys.stderr)
    print(json.dumps(v, indent=2))
    return 0 if v["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
