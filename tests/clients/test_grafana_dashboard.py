"""The Grafana dashboard (scripts/deploy/grafana-dashboard.json): it is the generator's output,
its structure is one Grafana imports, and every series it queries, with every label it groups
or names legends by, exists in live scrapes of a three-broker cluster that served producers, a
consumer group and a bad request."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from confluent_kafka import Consumer
from prometheus_client.parser import text_string_to_metric_families

import kafka_wire as kw
from clientutil import ck_produce, make_messages
from sluice_cluster import Cluster

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "scripts" / "deploy" / "grafana_dashboard.py"
DASHBOARD = ROOT / "scripts" / "deploy" / "grafana-dashboard.json"
# Labels Prometheus adds at scrape time, or histogram buckets: not in a broker's exposition.
SCRAPE_LABELS = {"instance", "job", "le"}


def load_generator():
    sys.path.insert(0, str(GENERATOR.parent))
    try:
        import grafana_dashboard
    finally:
        sys.path.pop(0)
    return grafana_dashboard


def test_committed_dashboard_is_the_generators_output():
    r = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_dashboard_structure():
    d = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    variables = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["type"] in {"timeseries", "stat"}, p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert 'instance=~"$instance"' in t["expr"], (p["title"], t["expr"])
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]


def scrape(port: int) -> dict[str, set[str]]:
    """{sample name: every label name seen on it} of one broker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def grouped_labels(expr: str, legend: str) -> set[str]:
    """Label names an expression groups by (`by (a, b)`) or its legend names (`{{a}}`)."""
    labels = set()
    for group in re.findall(r"\bby \(([^)]*)\)", expr):
        labels |= {x.strip() for x in group.split(",") if x.strip()}
    labels |= set(re.findall(r"\{\{(\w+)\}\}", legend))
    return labels - SCRAPE_LABELS


def test_every_queried_metric_exists_in_a_live_cluster_scrape(make_broker):
    c = Cluster(make_broker)
    c.create_topic("dash", partitions=2, rf=3)
    msgs = make_messages(200, partitions=2, seed=7)
    ck_produce(c.bootstrap(), "dash", msgs)
    # A consumer group commits, so the coordinator reports its lag.
    consumer = Consumer({
        "bootstrap.servers": c.bootstrap(),
        "group.id": "dash-group",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    try:
        consumer.subscribe(["dash"])
        got = 0
        deadline = time.monotonic() + 30
        while got < 100 and time.monotonic() < deadline:
            m = consumer.poll(0.5)
            if m is not None and m.error() is None:
                got += 1
        assert got >= 100, f"consumed {got}"
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    # A fetch of a partition that does not exist is an error the metrics count.
    with kw.connect(c.broker(1).port) as s:
        assert kw.fetch(s, "dash", 99, 0, max_wait_ms=0).error_code != 0

    dash = load_generator().build()
    wanted: list[tuple[str, str, str]] = []  # (panel, expr, legend)
    for p in dash["panels"]:
        for t in p.get("targets", []):
            wanted.append((p["title"], t["expr"], t["legendFormat"]))
    missing: list[str] = []
    deadline = time.monotonic() + 30
    while True:
        seen: dict[str, set[str]] = {}
        for port in c.admin_ports:
            for name, labels in scrape(port).items():
                seen.setdefault(name, set()).update(labels)
        missing = []
        for title, expr, legend in wanted:
            names = set(re.findall(r"\bsluice_[a-z0-9_]+", expr))
            absent = sorted(n for n in names if n not in seen)
            if absent:
                missing.append(f"{title}: {absent}")
                continue
            have = set().union(*(seen[n] for n in names))
            bad = sorted(grouped_labels(expr, legend) - have)
            if bad:
                missing.append(f"{title}: labels {bad} not on {sorted(names)}")
        # Group lag appears once the coordinator has the commit; partition gauges after a scrape.
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing, "dashboard queries what no broker exposes:\n" + "\n".join(missing)
