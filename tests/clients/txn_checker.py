"""A Jepsen-style check of transactions (issue 14) on a three-broker, replication-factor-3
Sluice cluster: consume-transform-produce workers (confluent-kafka, one transactional producer
and one group consumer each, offsets sent in the transaction) copy an input topic to an output
topic while brokers (the transaction coordinators' and partition leaders among them) are killed
-9 and restarted. Then the output, read read_committed, must hold every input record exactly
once; no record of an aborted transaction may be read committed; every committed transaction
must be visible in full; the group's committed offsets must be at the input's end.

    SLUICE_BIN=target/release/sluice .venv/bin/python tests/clients/txn_checker.py \\
        --seed 1 --records 3000 --workers 3 --kill-every 6

Prints a JSON verdict and exits 1 on any violation. Every broker it starts is stopped, and
the data directories are removed, at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition  # noqa: E402

from sluice_broker import Broker  # noqa: E402
from sluice_cluster import Cluster  # noqa: E402

IN, OUT = "txn-check-in", "txn-check-out"
GROUP = "txn-check"


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

    def _rewind(self, c: Consumer) -> None:
        assigned = c.assignment()
        if not assigned:
            return
        committed = c.committed(assigned, timeout=10)
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
                    msgs = [m for m in c.consume(num_messages=20, timeout=0.5) if m.error() is None]
                except KafkaException as e:
                    self._count("consume_errors", e)
                    continue
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
                    try:
                        self._rewind(c)
                    except KafkaException as e4:
                        self._count("rewind_errors", e4)
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


def run(seed: int, records: int, workers: int, partitions: int, kill_every: float, max_seconds: float,
        root: Path) -> dict:
    rng = random.Random(seed)
    brokers: list = []
    cluster = Cluster(make_factory(root, brokers), "isr", extra=[
        "--set", "default.replication.factor=3",
        "--set", "broker.session.timeout.ms=4000",
        "--set", "replica.lag.time.max.ms=6000",
        "--set", "transaction.abort.timed.out.transaction.cleanup.interval.ms=1000",
        "--set", "transaction.state.log.num.partitions=6",
        "--set", "offsets.topic.num.partitions=6",
    ], shards=2)
    faults = Counter()
    try:
        bootstrap = cluster.bootstrap()
        cfg = {"min.insync.replicas": "2"}
        cluster.create_topic(IN, partitions, 3, cfg)
        cluster.create_topic(OUT, partitions, 3, cfg)
        src = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
        for i in range(records):
            src.produce(IN, key=str(i).encode(), value=f"in-{i}".encode(), partition=i % partitions)
            if i % 500 == 0:
                src.poll(0)
        assert src.flush(60) == 0, "input not fully written"
        stop = threading.Event()
        lock = threading.Lock()
        stats: Counter = Counter()
        committed_txns: list = []
        ws = [Worker(k, bootstrap, partitions, stop, stats, committed_txns, lock) for k in range(workers)]
        for w in ws:
            w.start()
        started = time.monotonic()
        next_kill = started + kill_every
        down: tuple[int, float] | None = None
        done = False
        while time.monotonic() - started < max_seconds:
            now = time.monotonic()
            if down and now >= down[1]:
                cluster.broker(down[0]).restart()
                faults["restart"] += 1
                down = None
                next_kill = now + kill_every
            elif down is None and now >= next_kill:
                victim = rng.choice(cluster.ids)
                cluster.broker(victim).kill9()
                faults["kill9"] += 1
                down = (victim, now + rng.uniform(2.0, 5.0))
            if down is None and now - started > 10 and committed_offsets(bootstrap, partitions) >= records:
                # Finished: the group's committed offsets reached the input's end.
                done = True
                break
            time.sleep(0.5)
        if down:
            cluster.broker(down[0]).restart()
            faults["restart"] += 1
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
            w.join(30)
        elapsed = time.monotonic() - started
        cluster_bootstrap = cluster.bootstrap()
        rc = read_all(cluster_bootstrap, OUT, partitions, "read_committed")
        ru = read_all(cluster_bootstrap, OUT, partitions, "read_uncommitted")
        want = Counter(f"out-{i}".encode() for i in range(records))
        got = Counter(rc)
        lost = sorted(set(want) - set(got))
        dups = {v.decode(): n for v, n in got.items() if n > 1}
        unexpected = sorted(set(got) - set(want))
        rc_set = set(rc)
        partial = [t for t in committed_txns if not all(v in rc_set for v in t)]
        verdict = {
            "seed": seed,
            "records": records,
            "workers": workers,
            "partitions": partitions,
            "finished_under_faults": done,
            "committed_input_offsets": committed_total,
            "seconds": round(elapsed, 1),
            "transactions_committed": stats["committed"],
            "transactions_aborted": stats["aborted"],
            "producer_restarts": stats["fatal_producer_restarts"] + stats["abort_failed_producer_restarts"],
            "faults": dict(faults),
            "read_committed": len(rc),
            "read_uncommitted": len(ru),
            "lost": len(lost),
            "duplicated": len(dups),
            "unexpected": len(unexpected),
            "committed_transactions_not_in_full": len(partial),
            "examples": {"lost": [v.decode() for v in lost[:5]], "duplicated": list(dups.items())[:5]},
        }
        verdict["ok"] = committed_total >= records and not lost and not dups and not unexpected and not partial
        return verdict
    finally:
        for b in brokers:
            if b.alive():
                b.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--records", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--kill-every", type=float, default=6.0, help="seconds between a restart and the next kill")
    ap.add_argument("--max-seconds", type=float, default=180.0)
    ap.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="txn-checker-"))
    try:
        v = run(args.seed, args.records, args.workers, args.partitions, args.kill_every, args.max_seconds, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}", file=sys.stderr)
    print(json.dumps(v, indent=2))
    return 0 if v["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
