"""Fixtures for the real-client suite: a fresh sluice broker per test, its log on failure."""

from __future__ import annotations

import itertools
import os
import re
import shutil

import pytest

from sluice_broker import Broker, sluice_binary
from sluice_cluster import ClusterBroker

_topic_counter = itertools.count()

# A Rust panic anywhere in the broker is a bug even if the process survives it (a shard task
# that panicked has dropped its connections or partitions).
_PANIC = re.compile(r"panicked at")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the log of every broker a failing test used to its report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for i, b in enumerate(getattr(item, "_sluice_brokers", [])):
            report.sections.append((f"sluice log #{i} ({b.log_path})", b.log_tail(200)))


# Tests that fail because of a known broker defect (none today).
# They run (and fail) normally. With SLUICE_XFAIL_KNOWN_BUGS=1 they become strict xfails, so a
# tree with those defects can pass CI while the list stays visible; strict means a fixed bug
# turns its test into a failure (XPASS) until its line here is removed.
KNOWN_BROKER_BUGS: dict[str, str] = {
    # "test_file.py::test_name[param]": "bug id",  (B1-B4 were found here and are fixed)
}


def pytest_collection_modifyitems(config, items):
    # cluster_ci selects what scripts/test.sh runs on the cluster (`-m cluster_ci` with
    # SLUICE_TOPOLOGIES=cluster3): a marked test without the broker fixture would run there on
    # one broker, and a marked single_node test would only be skipped.
    wrong = [
        item.nodeid
        for item in items
        if item.get_closest_marker("cluster_ci")
        and ("broker" not in getattr(item, "fixturenames", ()) or item.get_closest_marker("single_node"))
    ]
    if wrong:
        raise pytest.UsageError(f"cluster_ci needs the broker fixture and no single_node mark: {wrong}")
    if os.environ.get("SLUICE_XFAIL_KNOWN_BUGS") != "1":
        return
    for item in items:
        key = item.nodeid.split("tests/clients/")[-1]
        bug = KNOWN_BROKER_BUGS.get(key)
        if bug:
            item.add_marker(pytest.mark.xfail(reason=f"known broker bug {bug} (broker-bugs.md)", strict=True))


def pytest_sessionstart(session):
    # Fail fast and loudly (never skip) when the binary is missing.
    try:
        sluice_binary()
    except FileNotFoundError as e:
        raise pytest.UsageError(str(e)) from e


def _check_after_test(b: Broker) -> list[str]:
    problems = []
    died = b.proc is not None and b.proc.poll() is not None and len(b.exit_codes) < b.starts
    if died:
        problems.append(f"broker (pid {b.pid}) died during the test with exit code {b.proc.returncode}")
    if b.alive():
        b.stop()
    panics = [line for line in b.log_text().splitlines() if _PANIC.search(line)]
    if panics:
        problems.append("broker log shows a panic: " + panics[0])
    return problems


@pytest.fixture
def make_broker(request, tmp_path):
    """Factory: make_broker(shards=2, extra_args=[...], start=True) -> Broker.

    Every broker made is stopped after the test; the test fails if one died by itself or
    panicked.
    """
    brokers: list[Broker] = []
    request.node._sluice_brokers = brokers

    def make(shards: int = 2, extra_args: list[str] | None = None, start: bool = True) -> Broker:
        n = len(brokers)
        b = Broker(tmp_path / f"data{n}", tmp_path / f"sluice{n}.log", shards=shards, extra_args=extra_args)
        brokers.append(b)
        if start:
            b.start()
        return b

    yield make

    problems = []
    for b in brokers:
        problems += _check_after_test(b)
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)
    # Data dirs can be large (100k-message tests); free them as soon as the test passes.
    for b in brokers:
        shutil.rmtree(b.data_dir, ignore_errors=True)


# A test that takes the `broker` fixture can run on two topologies: "one" (a single broker, the
# cluster of one that `sluice` with no flags starts) and "cluster3" (three brokers, the
# controller voters, topics created with replication factor 3, sluice_cluster.ClusterBroker).
# SLUICE_TOPOLOGIES picks them (default "one"; "one,cluster3" runs both). A test that is really
# about one process says so with @pytest.mark.single_node("why"): its cluster run is skipped
# with that reason. scripts/test.sh runs the whole suite on "one", then the tests and
# parametrised cases marked @pytest.mark.cluster_ci on "cluster3" (a cluster per test costs
# about 12 s more, so CI runs a representative subset there; docs/testing.md).
TOPOLOGIES = ("one", "cluster3")


def pytest_generate_tests(metafunc):
    if "broker" not in metafunc.fixturenames:
        return
    wanted = os.environ.get("SLUICE_TOPOLOGIES", "one").split(",")
    params = []
    for topo in TOPOLOGIES:
        if topo not in wanted:
            continue
        marks = []
        single = metafunc.definition.get_closest_marker("single_node")
        if topo != "one" and single is not None:
            reason = single.args[0] if single.args else "single-node behaviour"
            marks.append(pytest.mark.skip(reason=f"single node only: {reason}"))
        params.append(pytest.param(topo, marks=marks, id=topo))
    metafunc.parametrize("broker", params, indirect=True)


@pytest.fixture
def broker(request, make_broker):
    """A running broker on a free port with a fresh data dir: one 2-shard broker, or a
    three-broker RF-3 cluster behind the same interface (sluice_cluster.ClusterBroker)."""
    topo = getattr(request, "param", "one")
    if topo == "one":
        yield make_broker()
        return
    cluster = ClusterBroker(make_broker)
    yield cluster
    cluster.stop_running()  # make_broker's teardown then checks every node's log


@pytest.fixture
def topic_name(request) -> str:
    """A topic name unique within the session, readable in broker logs."""
    base = re.sub(r"[^A-Za-z0-9._-]", "-", request.node.name)[:120]
    return f"{base}-{next(_topic_counter)}"
