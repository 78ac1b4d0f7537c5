"""The transactions checker (issue 14) in CI: three brokers with replication factor 3, three
consume-transform-produce workers (confluent-kafka transactional producers with their input
offsets in the transaction) while brokers are killed -9 and restarted; then the output read
read_committed must hold every input record exactly once, nothing of an aborted transaction,
every committed transaction in full, and the group's committed offsets at the input's end.

A short run per replication mode, at fixed seeds (the kill times and victims follow the seed;
what they hit depends on timing). The long runs and the runs under the nemesis suite's faults
are in results/transactions/README.md; `TXN_CHECK_SEED=<n>` picks another seed here."""

from __future__ import annotations

import json
import os

import pytest

import txn_checker

CI_SEEDS = {"isr": 14, "quorum": 13}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["isr", "quorum"])
def test_transactions_survive_kill_9_exactly_once(mode, tmp_path):
    seed = int(os.environ.get("TXN_CHECK_SEED", CI_SEEDS[mode]))
    print(f"txn checker: seed {seed}, mode {mode} (TXN_CHECK_SEED={seed} replays it)", flush=True)
    v = txn_checker.run(seed, records=1500, workers=3, partitions=6, max_seconds=60, root=tmp_path,
                        mode=mode, faults="kill", kill_every=4.0)
    report = json.dumps(v, indent=1, default=str)
    assert v["faults"].get("kill", 0) >= 1, report
    assert v["transactions_committed"] > 0, report
    assert v["ok"], report
