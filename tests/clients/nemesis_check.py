"""The nemesis checker: judges one schedule's recorded history (issue 16).

Pure functions over plain data (what `nemesis.py` records, also as JSON), so the checker is
tested on its own on histories with planted faults (`test_nemesis.py`). A history is a dict:

- ``acks``: every acknowledged produce: ``{"producer", "seq", "partition", "offset", "value"}``
  (``producer`` names one producer incarnation; ``seq`` its send order).
- ``final``: ``{partition: [[offset, value], ...]}``, every data record of the topic read
  from offset 0 to the high watermark after healing (a fresh librdkafka consumer).
- ``consumer_events``: per group member, in the order it saw them:
  ``{"consumer", "kind": "assign"|"revoke"|"msg", "partitions"|"partition", "offset"}``.
- ``commits``: ``{"consumer", "partition", "offset", "t_sent", "t_done", "ok"}``.
- ``committed_final``: ``{partition: offset}`` read from the group after healing (-1: none).
- ``replicas``: ``{partition: {"hw": int, "nodes": {node: [[base, last, digest], ...]}}}``,
  each replica's own log files parsed batch by batch up to the high watermark.
- ``metadata``, ``offsets_metadata``: ``{partition: {"leader", "replicas", "isr"}}`` after
  healing, of the topic and of ``__consumer_offsets``.
- ``healed``: whether the cluster converged (every partition led, full ISR) in time.

Values are ``"<producer>:<seq>:<padding>"``: unique, so every record read back names the
acknowledgement it belongs to.
"""

from __future__ import annotations

from collections import defaultdict

# Violation kinds, in report order. Every one of them fails the verdict.
KINDS = (
    "lost",  # acknowledged, absent from the log
    "misplaced",  # the acknowledged offset holds another record (or none)
    "duplicated",  # one produced record at more than one offset
    "reordered",  # a producer's records out of its send order within a partition
    "read_then_lost",  # a group member read it at an offset that now holds something else
    "consumer_nonmonotonic",  # a member's offsets on a partition went back within one assignment
    "commit_backwards",  # a committed offset went below one committed (acknowledged) earlier
    "replica_divergence",  # replicas differ below the high watermark
    "unhealed",  # after healing: a partition without leader or with a short ISR
)

# Examples kept per kind (counts are always complete).
EXAMPLES = 10


def _key(p) -> int:
    return int(p)


def check(h: dict) -> dict:
    """Returns ``{"ok", "counts": {kind: n}, "examples": {kind: [...]}, "stats": {...}}``."""
    v: dict[str, list] = {k: [] for k in KINDS}
    final = {_key(p): {int(o): val for o, val in recs} for p, recs in h.get("final", {}).items()}
    where: dict[str, list] = defaultdict(list)
    for p, recs in final.items():
        for o, val in recs.items():
            where[val].append((p, o))

    # Acknowledged records: present, at their offset, once.
    acks = h.get("acks", [])
    no_offset = 0
    for a in acks:
        p, val = _key(a["partition"]), a["value"]
        if a["offset"] is None:
            # Acknowledged without an offset (librdkafka reports one for a batch it was told
            # was a duplicate of one already written): only its presence can be checked.
            no_offset += 1
            if val not in where:
                v["lost"].append({"partition": p, "offset": None, "value": val})
            continue
        o = int(a["offset"])
        held = final.get(p, {}).get(o)
        if val not in where:
            v["lost"].append({"partition": p, "offset": o, "value": val, "offset_holds": held})
        if held != val:
            v["misplaced"].append(
                {"partition": p, "offset": o, "value": val, "offset_holds": held, "found_at": where.get(val, [])}
            )
    for val, places in where.items():
        if len(places) > 1:
            v["duplicated"].append({"value": val, "at": sorted(places)})

    # Per producer and partition, offsets follow the send order: in the log (acknowledged or
    # not: an idempotent producer never reorders) and in the acknowledgements.
    by_prod: dict[tuple, list] = defaultdict(list)
    for val, places in where.items():
        parts = val.split(":")
        if len(parts) < 2:
            continue
        prod, seq = parts[0], int(parts[1])
        # The first copy only: further copies are reported as duplicates.
        p, o = min(places)
        by_prod[(prod, p, "log")].append((seq, o))
    for a in acks:
        if a["offset"] is not None:
            by_prod[(a["producer"], _key(a["partition"]), "ack")].append((int(a["seq"]), int(a["offset"])))
    for (prod, p, src), pairs in sorted(by_prod.items()):
        pairs.sort()
        for (s1, o1), (s2, o2) in zip(pairs, pairs[1:]):
            if s2 != s1 and o2 <= o1:
                v["reordered"].append(
                    {"producer": prod, "partition": p, "source": src, "earlier": [s1, o1], "later": [s2, o2]}
                )

    # Group members: within one assignment a member's offsets per partition strictly
    # increase; what it read is in the final log at that offset.
    for c, events in _by_consumer(h.get("consumer_events", [])).items():
        last: dict[int, int] = {}
        for e in events:
            if e["kind"] in ("assign", "revoke"):
                last.clear()
                continue
            p, o = _key(e["partition"]), int(e["offset"])
            if p in last and o <= last[p]:
                v["consumer_nonmonotonic"].append({"consumer": c, "partition": p, "previous": last[p], "offset": o})
            last[p] = o
            held = final.get(p, {}).get(o)
            if "value" in e and held != e["value"]:
                v["read_then_lost"].append({"consumer": c, "partition": p, "offset": o, "read": e["value"], "now": held})

    # Commits: one that started after another had been acknowledged never carries a smaller
    # offset; after healing the group's committed offset is at least every acknowledged one.
    ok_commits: dict[int, list] = defaultdict(list)
    for cm in h.get("commits", []):
        if cm.get("ok"):
            ok_commits[_key(cm["partition"])].append(cm)
    for p, cms in ok_commits.items():
        done = sorted(cms, key=lambda c: c["t_done"])
        i, best = 0, None
        for cm in sorted(cms, key=lambda c: c["t_sent"]):
            while i < len(done) and done[i]["t_done"] < cm["t_sent"]:
                if best is None or done[i]["offset"] > best["offset"]:
                    best = done[i]
                i += 1
            if best is not None and cm["offset"] < best["offset"]:
                v["commit_backwards"].append(
                    {"partition": p, "earlier": best["offset"], "earlier_by": best["consumer"],
                     "later": cm["offset"], "later_by": cm["consumer"]}
                )
        top = max(c["offset"] for c in cms)
        after = int(h.get("committed_final", {}).get(str(p), h.get("committed_final", {}).get(p, -1)))
        if after < top:
            v["commit_backwards"].append({"partition": p, "acknowledged": top, "after_healing": after})

    # Replicas: identical batches below the high watermark, and each reaches it.
    for p, r in h.get("replicas", {}).items():
        hw = int(r["hw"])
        logs = {n: [tuple(b) for b in bs if int(b[0]) < hw] for n, bs in r["nodes"].items()}
        ref_node = min(logs) if logs else None
        for n, bs in logs.items():
            end = int(bs[-1][1]) + 1 if bs else 0
            if end < hw:
                v["replica_divergence"].append({"partition": _key(p), "node": n, "ends_at": end, "hw": hw})
            if bs != logs[ref_node]:
                first = next(
                    (i for i, (x, y) in enumerate(zip(bs, logs[ref_node])) if x != y), min(len(bs), len(logs[ref_node]))
                )
                v["replica_divergence"].append(
                    {"partition": _key(p), "node": n, "differs_from": ref_node, "first_batch": first, "hw": hw}
                )

    # Healing: every partition led, ISR = replicas.
    if not h.get("healed", False):
        v["unhealed"].append({"reason": h.get("heal_error", "did not converge")})
    for topic, md in (("topic", h.get("metadata", {})), ("__consumer_offsets", h.get("offsets_metadata", {}))):
        for p, m in md.items():
            if m["leader"] < 0 or sorted(m["isr"]) != sorted(m["replicas"]):
                v["unhealed"].append({"topic": topic, "partition": _key(p), **m})

    counts = {k: len(x) for k, x in v.items()}
    return {
        "ok": not any(counts.values()),
        "counts": counts,
        "examples": {k: x[:EXAMPLES] for k, x in v.items() if x},
        "stats": {
            "acknowledged": len(acks),
            "acknowledged_without_offset": no_offset,
            "records_in_log": sum(len(r) for r in final.values()),
            "consumed": sum(1 for e in h.get("consumer_events", []) if e["kind"] == "msg"),
            "commits_ok": sum(len(c) for c in ok_commits.values()),
        },
    }


def _by_consumer(events: list) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for e in events:
        out[e["consumer"]].append(e)
    return out
