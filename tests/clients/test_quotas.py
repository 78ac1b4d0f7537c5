"""Client quotas with real clients: a confluent-kafka producer (client.id `slow`) under
producer_byte_rate=262144 set with sluicectl is held to the quota, measured over 10 s, while an
unthrottled producer on the same broker keeps the throughput and latency it had alone; a
consumer under consumer_byte_rate likewise; removing the quota takes effect without a restart.

The quota windows: Kafka's defaults (quota.window.num=11 of 1 s) let a new sensor take 10 s of
quota at once, and with a greedy client that burst comes back every ~11 s (the windows holding
it expire together), so a 10-s measurement would see between 0.2x and 1.1x the quota depending
on its phase. These tests run the broker with quota.window.num=5, the same algorithm with a
4-s burst that the measurement does not see (it starts after a warm-up)."""

from __future__ import annotations

import json
import statistics
import subprocess
import threading
import time

from clientutil import ck_create_topic
from test_sluicectl_groups import sluicectl_binary

QUOTA = 262144  # bytes per second
WINDOWS = ["--set", "quota.window.num=5"]


def ctl(broker, *args: str) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [str(sluicectl_binary()), "--bootstrap", broker.bootstrap, "--request-timeout-ms", "10000", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 0, f"sluicectl {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def describe_quotas(broker) -> list[dict]:
    return json.loads(ctl(broker, "--output", "json", "quotas", "describe").stdout)


class GreedyProducer(threading.Thread):
    """Keeps librdkafka's queue full of 10 KiB messages; records (time, bytes) per delivery."""

    def __init__(self, bootstrap: str, topic: str, client_id: str):
        super().__init__(daemon=True)
        from confluent_kafka import Producer

        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": client_id,
                "acks": "1",
                "linger.ms": 5,
                # Requests of at most ~64 KiB, so one request is a small part of a window.
                "batch.size": 65536,
                "queue.buffering.max.kbytes": 2048,
                "message.timeout.ms": 120000,
            }
        )
        self.topic = topic
        self.deliveries: list[tuple[float, int]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.payload = b"s" * 10240

    def _cb(self, err, msg):
        if err is not None:
            # Messages still queued when the test stops the producer are purged.
            if "PURGE" not in err.name():
                self.errors.append(str(err))
        else:
            self.deliveries.append((time.monotonic(), len(msg.value())))

    def run(self):
        while not self.stop.is_set():
            try:
                self.producer.produce(self.topic, self.payload, on_delivery=self._cb)
            except BufferError:
                self.producer.poll(0.05)
                continue
            self.producer.poll(0)
        self.producer.purge()
        self.producer.poll(0.1)
        self.producer = None  # librdkafka's handle goes with its last reference

    def rate(self, start: float, end: float) -> float:
        """Delivered payload bytes per second between two monotonic times."""
        return sum(n for t, n in self.deliveries if start <= t < end) / (end - start)


def paced_produce(bootstrap: str, topic: str, client_id: str, seconds: float, per_second: int = 500):
    """Produces 1 KiB messages at a fixed rate; returns (delivered bytes/s, delivery latencies)."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "client.id": client_id, "acks": "1", "linger.ms": 1})
    latencies: list[float] = []
    delivered = [0]

    def cb(err, msg, sent):
        assert err is None, err
        latencies.append(time.monotonic() - sent)
        delivered[0] += len(msg.value())

    payload = b"f" * 1024
    start = time.monotonic()
    n = 0
    while (now := time.monotonic()) < start + seconds:
        due = int((now - start) * per_second)
        while n < due:
            sent = time.monotonic()
            p.produce(topic, payload, on_delivery=lambda e, m, s=sent: cb(e, m, s))
            n += 1
        p.poll(0.005)
    assert p.flush(30) == 0
    return delivered[0] / seconds, latencies


def test_producer_quota_throttles_only_its_client(make_broker, topic_name):
    broker = make_broker(extra_args=WINDOWS)
    slow_topic, fast_topic = f"{topic_name}-slow", f"{topic_name}-fast"
    ck_create_topic(broker.bootstrap, slow_topic, 1)
    ck_create_topic(broker.bootstrap, fast_topic, 1)

    ctl(broker, "quotas", "alter", "--entity-type", "clients", "--entity-name", "slow",
        "--add-config", f"producer_byte_rate={QUOTA}")
    assert describe_quotas(broker) == [{"entity": {"client-id": "slow"}, "values": {"producer_byte_rate": QUOTA}}]

    # Baseline: the other producer alone.
    base_rate, base_lat = paced_produce(broker.bootstrap, fast_topic, "fast", 4)

    slow = GreedyProducer(broker.bootstrap, slow_topic, "slow")
    slow.start()
    try:
        time.sleep(6)  # past the new sensor's burst
        m_start = time.monotonic()
        during_rate, during_lat = paced_produce(broker.bootstrap, fast_topic, "fast", 10)
        m_end = time.monotonic()
        slow_rate = slow.rate(m_start, m_end)
        print(f"slow producer {slow_rate:.0f} B/s over {m_end - m_start:.1f} s (quota {QUOTA}); "
              f"fast producer {base_rate:.0f} B/s alone, {during_rate:.0f} B/s beside it; "
              f"p50 latency {statistics.median(base_lat) * 1000:.1f} ms alone, "
              f"{statistics.median(during_lat) * 1000:.1f} ms beside it")
        assert 0.8 * QUOTA <= slow_rate <= 1.2 * QUOTA, f"slow producer at {slow_rate:.0f} B/s"
        # The other client is not held back: same throughput, latency of the same order.
        assert during_rate >= 0.9 * base_rate
        assert statistics.median(during_lat) <= 5 * statistics.median(base_lat) + 0.02

        # Quota removed: the same producer, same connection, runs free without a restart.
        ctl(broker, "quotas", "alter", "--entity-type", "clients", "--entity-name", "slow",
            "--delete-config", "producer_byte_rate")
        assert describe_quotas(broker) == []
        time.sleep(3)  # a mute in place runs out
        f_start = time.monotonic()
        time.sleep(3)
        free_rate = slow.rate(f_start, time.monotonic())
        print(f"slow producer after the quota was removed: {free_rate:.0f} B/s")
        assert free_rate > 3 * QUOTA
    finally:
        slow.stop.set()
        slow.join(15)
    assert not slow.errors, slow.errors[:3]


def test_consumer_quota_throttles_fetches(make_broker, topic_name):
    from confluent_kafka import Consumer, TopicPartition

    broker = make_broker(extra_args=WINDOWS)
    ck_create_topic(broker.bootstrap, topic_name, 1)
    rate, _ = paced_produce(broker.bootstrap, topic_name, "loader", 8, per_second=1024)
    total = round(rate * 8)  # ~8 MiB
    ctl(broker, "quotas", "alter", "--entity-type", "clients", "--entity-name", "slowc",
        "--add-config", f"consumer_byte_rate={QUOTA}")

    def consume(client_id: str, seconds: float) -> list[tuple[float, int]]:
        c = Consumer({
            "bootstrap.servers": broker.bootstrap,
            "group.id": "quota-assign-only",
            "client.id": client_id,
            "enable.auto.commit": False,
            # Responses of at most ~64 KiB, so one response is a small part of a window.
            "fetch.max.bytes": 65536,
            "message.max.bytes": 65536,
            "max.partition.fetch.bytes": 65536,
            "fetch.wait.max.ms": 100,
        })
        c.assign([TopicPartition(topic_name, 0, 0)])
        got: list[tuple[float, int]] = []
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end and sum(n for _, n in got) < total:
                for m in c.consume(500, 0.2):
                    assert m.error() is None, m.error()
                    got.append((time.monotonic(), len(m.value())))
        finally:
            c.close()
        return got

    fast = consume("fastc", 30)
    assert sum(n for _, n in fast) == total
    fast_rate = total / (fast[-1][0] - fast[0][0])
    slow = consume("slowc", 17)
    start = slow[0][0] + 6  # past the new sensor's burst
    slow_rate = sum(n for t, n in slow if start <= t < start + 10) / 10
    print(f"consumer under the quota {slow_rate:.0f} B/s (quota {QUOTA}); unthrottled {fast_rate:.0f} B/s")
    assert 0.8 * QUOTA <= slow_rate <= 1.2 * QUOTA, f"throttled consumer at {slow_rate:.0f} B/s"
    assert fast_rate > 3 * QUOTA

    # Quota removed: the same client id reads the rest at full speed.
    ctl(broker, "quotas", "alter", "--entity-type", "clients", "--entity-name", "slowc",
        "--delete-config", "consumer_byte_rate")
    again = consume("slowc", 30)
    assert sum(n for _, n in again) == total
    again_rate = total / (again[-1][0] - again[0][0])
    assert again_rate > 3 * QUOTA, f"after removal {again_rate:.0f} B/s"


def test_request_percentage_throttles_only_its_client(make_broker, topic_name):
    """request_percentage=1 (1% of one thread) on client.id `busyreq`: a producer sending one
    tiny message per request, back to back (a few µs of shard time each: 100 ms of it takes
    some 20 000 requests), is told to back off (librdkafka's throttle
    callback, from Produce's throttle_time_ms), while the same load from another client id is
    not; the quota removed, the same client id runs without throttles."""
    from confluent_kafka import Producer

    broker = make_broker()
    ck_create_topic(broker.bootstrap, topic_name, 1)
    ctl(broker, "quotas", "alter", "--entity-type", "clients", "--entity-name", "busyreq",
        "--add-config", "request_percentage=1")
    assert describe_quotas(broker) == [{"entity": {"client-id": "busyreq"}, "values": {"request_percentage": 1}}]

    def one_by_one(client_id: str, max_messages: int, stop_when_throttled: bool) -> tuple[list[int], int]:
        throttles: list[int] = []
        p = Producer({
            "bootstrap.servers": broker.bootstrap,
            "client.id": client_id,
            "acks": "1",
            "linger.ms": 0,
            "throttle_cb": lambda ev: throttles.append(int(ev.throttle_time * 1000)),
        })
        sent = 0
        deadline = time.monotonic() + 90
        while sent < max_messages and time.monotonic() < deadline:
            p.produce(topic_name, b"r")
            p.flush(30)
            sent += 1
            if stop_when_throttled and throttles:
                break
        p.flush(30)
        p.poll(0)
        return throttles, sent

    busy, sent = one_by_one("busyreq", 1_000_000, True)
    print(f"busyreq throttled after {sent} requests: {busy[:3]} ms")
    assert busy and max(busy) > 0, f"no throttle after {sent} requests"
    free, _ = one_by_one("freereq", sent, False)
    assert not free, f"a client id without a request quota was throttled: {free[:3]}"

    ctl(broker, "quotas", "alter", "--entity-type", "clients", "--entity-name", "busyreq",
        "--delete-config", "request_percentage")
    assert describe_quotas(broker) == []
    after, _ = one_by_one("busyreq", min(sent, 500), False)
    assert not after, f"throttled after the quota was removed: {after[:3]}"
