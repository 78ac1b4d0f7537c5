#!/usr/bin/env python3
"""Builds the Grafana dashboard for Sluice's /metrics families.

    scripts/deploy/grafana_dashboard.py            # rewrites scripts/deploy/grafana-dashboard.json
    scripts/deploy/grafana_dashboard.py --check    # exit 1 if the committed JSON is stale

The JSON is what operators import (Grafana: Dashboards -> New -> Import); this script is its one
source, so panels are described once, as data, below. The test
tests/clients/test_grafana_dashboard.py checks that the committed file is this script's output
and that every metric a panel queries exists in a live scrape of a broker and of a cluster.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).with_name("grafana-dashboard.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance"'
RATE = "$__rate_interval"

# (row title, [(panel title, kind, unit, [(expr, legend)], description)]).
# kind: "ts" (time series) or "stat"; expressions use {SEL} for the instance filter and {RATE}
# for Grafana's rate interval.
ROWS = [
    ("Health", [
        ("Offline partitions", "stat", "none",
         [("sum(sluice_offline_partitions{{{SEL}}})", "offline")],
         "Partitions whose log cannot serve (failed to open, write or fsync error). Alert on > 0."),
        ("Under-replicated partitions", "stat", "none",
         [("sum(sluice_under_replicated_partitions{{{SEL}}})", "under-replicated")],
         "Partitions led here whose ISR is smaller than the replica set."),
        ("Open connections", "stat", "none",
         [("sum(sluice_connections_open{{{SEL}}})", "connections")],
         "Client connections open on every shard."),
        ("Consumer lag (records)", "stat", "none",
         [("sum(sluice_consumer_group_lag{{{SEL}}})", "lag")],
         "High watermark minus committed offset, summed over groups and partitions."),
    ]),
    ("Requests", [
        ("Requests per second by API", "ts", "reqps",
         [("sum by (api) (rate(sluice_requests_total{{{SEL}}}[{RATE}]))", "{{{{api}}}}")],
         "Kafka's RequestsPerSec, per API."),
        ("p99 request latency by API", "ts", "s",
         [("histogram_quantile(0.99, sum by (api, le) "
           "(rate(sluice_request_duration_seconds_bucket{{{SEL}}}[{RATE}])))", "{{{{api}}}}")],
         "Frame read to response ready (the socket write is not included)."),
        ("Errors per second", "ts", "reqps",
         [("sum by (api, error) (rate(sluice_request_errors_total{{{SEL}}}[{RATE}]))",
           "{{{{api}}}} {{{{error}}}}")],
         "Partitions answered with an error code, and requests that closed the connection."),
    ]),
    ("Throughput", [
        ("Produce and fetch bytes per second", "ts", "Bps",
         [("sum(rate(sluice_produce_bytes_total{{{SEL}}}[{RATE}]))", "produce (BytesIn)"),
          ("sum(rate(sluice_fetch_bytes_total{{{SEL}}}[{RATE}]))", "fetch (BytesOut)")],
         "Record-batch bytes appended by Produce and sent by Fetch."),
        ("Records produced per second", "ts", "short",
         [("sum(rate(sluice_produce_records_total{{{SEL}}}[{RATE}]))", "records")],
         "Kafka's MessagesInPerSec."),
        ("Fetch requests by session use (KIP-227)", "ts", "reqps",
         [("sum by (kind) (rate(sluice_fetch_requests_total{{{SEL}}}[{RATE}]))", "{{{{kind}}}}")],
         "Sessionless, full (opening a session) and incremental fetches."),
        ("Incremental fetch sessions", "ts", "short",
         [("sum(sluice_fetch_sessions{{{SEL}}})", "sessions"),
          ("sum(sluice_fetch_session_partitions{{{SEL}}})", "partitions in sessions"),
          ("sum(rate(sluice_fetch_session_evictions_total{{{SEL}}}[{RATE}]))", "evictions/s")],
         "Open sessions, the partitions they cache, and evictions (the cache is full)."),
        ("Network bytes per second", "ts", "Bps",
         [("sum(rate(sluice_network_received_bytes_total{{{SEL}}}[{RATE}]))", "received"),
          ("sum(rate(sluice_network_sent_bytes_total{{{SEL}}}[{RATE}]))", "sent")],
         "Request and response bytes on the Kafka listeners."),
    ]),
    ("Shards", [
        ("Shard load (0..1)", "ts", "percentunit",
         [("rate(sluice_shard_busy_seconds_total{{{SEL}}}[{RATE}])", "{{{{instance}}}} shard {{{{shard}}}}")],
         "Time each shard's event loop ran tasks. One shard near 1 while others idle: a hot partition."),
        ("Cross-shard mailbox backlog", "ts", "short",
         [("sluice_shard_mailbox_jobs{{{SEL}}}", "{{{{instance}}}} shard {{{{shard}}}}")],
         "Jobs queued for a shard by the others; growth means they wait on it."),
        ("Connections accepted per second", "ts", "short",
         [("rate(sluice_connections_accepted_total{{{SEL}}}[{RATE}])", "{{{{instance}}}} shard {{{{shard}}}}")],
         "How SO_REUSEPORT spreads new connections over shards."),
        ("io_uring operations in flight", "ts", "short",
         [("sum by (instance, shard) (sluice_io_uring_submitted_total{{{SEL}}}) - "
           "sum by (instance, shard) (sluice_io_uring_completed_total{{{SEL}}})",
           "{{{{instance}}}} shard {{{{shard}}}}")],
         "Submitted minus completed file operations."),
    ]),
    ("Storage", [
        ("p99 fsync", "ts", "s",
         [("histogram_quantile(0.99, sum by (instance, le) "
           "(rate(sluice_fsync_duration_seconds_bucket{{{SEL}}}[{RATE}])))", "{{{{instance}}}}")],
         "Slow fsyncs are the first sign of a failing or overloaded disk."),
        ("Disk used by topic", "ts", "bytes",
         [("sum by (topic) (sluice_partition_size_bytes{{{SEL}}})", "{{{{topic}}}}")],
         "Bytes of every hosted partition's segments (replicas included)."),
        ("Segments by topic", "ts", "short",
         [("sum by (topic) (sluice_partition_segments{{{SEL}}})", "{{{{topic}}}}")],
         "Segment files per topic."),
        ("Append rate by topic (offsets per second)", "ts", "short",
         [("sum by (topic) (rate(sluice_partition_log_end_offset{{{SEL}}}[{RATE}]))", "{{{{topic}}}}")],
         "How fast log end offsets grow."),
        ("Uncommitted records by topic", "ts", "short",
         [("sum by (topic) (sluice_partition_log_end_offset{{{SEL}}} - "
           "sluice_partition_high_watermark{{{SEL}}})", "{{{{topic}}}}")],
         "Log end offset minus high watermark: records waiting for replication."),
        ("Retained records by topic", "ts", "short",
         [("sum by (topic) (sluice_partition_high_watermark{{{SEL}}} - "
           "sluice_partition_log_start_offset{{{SEL}}})", "{{{{topic}}}}")],
         "High watermark minus log start offset (what retention keeps)."),
    ]),
    ("Replication and groups", [
        ("ISR changes per second", "ts", "short",
         [("sum(rate(sluice_isr_shrinks_total{{{SEL}}}[{RATE}]))", "shrinks"),
          ("sum(rate(sluice_isr_expands_total{{{SEL}}}[{RATE}]))", "expands")],
         "Committed ISR shrinks and expansions of partitions led here (cluster mode)."),
        ("Leader elections per second", "ts", "short",
         [("sum by (instance) (rate(sluice_leader_elections_total{{{SEL}}}[{RATE}]))", "{{{{instance}}}}")],
         "Partitions each broker became leader of."),
        ("Consumer lag by group and topic", "ts", "short",
         [("sum by (group, topic) (sluice_consumer_group_lag{{{SEL}}})", "{{{{group}}}} {{{{topic}}}}")],
         "What kafka-consumer-groups.sh shows as LAG."),
    ]),
]


def panel(pid: int, title: str, kind: str, unit: str, targets, description: str, x: int, y: int,
          w: int, h: int) -> dict:
    p = {
        "id": pid,
        "type": "timeseries" if kind == "ts" else "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DS,
                "expr": expr.format(SEL=SEL, RATE=RATE),
                "legendFormat": legend.format(),
            }
            for i, (expr, legend) in enumerate(targets)
        ],
    }
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"}
        p["fieldConfig"]["defaults"]["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}],
        }
    else:
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom"},
                        "tooltip": {"mode": "multi"}}
    return p


def build() -> dict:
    panels = []
    pid = 1
    y = 0
    for title, row in ROWS:
        panels.append({"id": pid, "type": "row", "title": title, "collapsed": False,
                       "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})
        pid += 1
        y += 1
        stat = all(kind == "stat" for _, kind, *_ in row)
        w, h = (6, 4) if stat else (8, 8)
        for i, (ptitle, kind, unit, targets, desc) in enumerate(row):
            per_line = 24 // w
            x = (i % per_line) * w
            py = y + (i // per_line) * h
            panels.append(panel(pid, ptitle, kind, unit, targets, desc, x, py, w, h))
            pid += 1
        y += ((len(row) + (24 // w) - 1) // (24 // w)) * h
    return {
        "title": "Sluice",
        "uid": "sluice-overview",
        "description": "Sluice brokers: requests, throughput, shards, storage, replication, groups.",
        "tags": ["sluice", "kafka"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
            {"name": "instance", "type": "query", "label": "Broker", "datasource": DS,
             "query": "label_values(sluice_requests_total, instance)",
             "definition": "label_values(sluice_requests_total, instance)",
             "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2},
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def metric_names(dashboard: dict) -> set[str]:
    """Every sluice_* series name the panels and variables query (histograms by family name)."""
    text = json.dumps(dashboard)
    names = set(re.findall(r"\bsluice_[a-z0-9_]+", text))
    return {re.sub(r"_bucket$", "", n) for n in names}


def main() -> int:
    if sys.argv[1:] == ["--check"]:
        if not OUT.exists() or OUT.read_text() != render():
            print(f"{OUT} is stale: run {sys.argv[0]}", file=sys.stderr)
            return 1
        return 0
    if sys.argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    OUT.write_text(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
