"""PostgreSQL fails over under a stream of recharges, and no acknowledged recharge is lost.

deploy/topology/failover.py builds, in network namespaces, three etcd members (VM2, VM3, VM4),
PostgreSQL 15 under Patroni on VM3 and VM4 (synchronous replication, pg_rewind) with
deploy/patroni's own configuration, HAProxy on VM1 on Patroni's REST checks, and the API on
VM1. From the client host, deploy/topology/recharge_stream.py sends recharges, each under its
own Idempotency-Key, while each scenario breaks something:

- the primary's postmaster killed (`kill -9`);
- the primary's link cut (its bridge port down: packets vanish, nothing is killed), restored
  once writes are back;
- a planned switchover (`patronictl switchover`);
- the replica's link cut instead of the primary's.

Each time: every recharge answered 201 is in the database afterwards (0 lost); every request
in doubt (503, or no answer) is retried with its key and applied exactly once; every card
reconciles and the API's (cached) balances are the database's; writes are back within 15 s of
the fault; the member that was lost comes back as a replica by itself, in sync again.
One line per scenario is printed at the end (and kept in /tmp/trft-failover-summary for
`make failover-test`):

    SCENARIO: acknowledged N, lost 0, in doubt M (applied once after retry), writes back in X s

Needs root, `ip netns` and Debian's patroni, etcd and haproxy (`bash .ci/system-packages`):
without them it fails saying what is missing.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from starlette.requests import Request

from deploy.topology import failover, topology
from deploy.topology.failover import Cluster, Stream
from travel import errors

PREFIX = "trft"  # the CLI's is "trf": a test run never tears down a cluster left up by hand
ROOT = Path(__file__).resolve().parent.parent
SUMMARY = Path("/tmp") / f"{PREFIX}-failover-summary"
WRITES_BACK_S = 15.0  # after a crash or a cut link
SWITCHOVER_BACK_S = 8.0
LINES: list[str] = []


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    reason = topology.netns_unavailable_reason(PREFIX)
    if reason:
        pytest.fail(f"cannot build the failover topology: {reason}", pytrace=False)
    missing = failover.missing_programs()
    if missing:
        pytest.fail(f"not installed: {' '.join(missing)} (bash .ci/system-packages, as root)", pytrace=False)
    SUMMARY.unlink(missing_ok=True)
    with topology.exclusive(PREFIX, timeout=120):
        built = Cluster(Path("/tmp") / f"{PREFIX}-failover", PREFIX)
        try:
            built.up()
            yield built
        finally:
            built.down()
            shutil.rmtree(built.work_dir, ignore_errors=True)
            assert built.network.existing() == [], "namespaces left behind"
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            capture = request.config.pluginmanager.get_plugin("capturemanager")
            if reporter is not None and capture is not None and LINES:
                with capture.global_and_fixture_disabled():
                    reporter.write_line("")
                    for line in LINES:
                        reporter.write_line(line)


def scenario(
    cluster: Cluster,
    name: str,
    fault: Callable[[str, str], None],
    heal: Callable[[str, str], None] | None = None,
    *,
    primary_changes: bool,
    back_within: float = WRITES_BACK_S,
) -> dict[str, object]:
    cluster.wait_healthy(60)
    old = cluster.leader()
    assert old is not None
    other = next(member for member in failover.MEMBERS if member != old)
    epoch_before = int(cluster.psql(old, "SELECT epoch FROM cache_state"))
    stream = Stream(cluster)
    try:
        stream.ask(op="setup", cards=20)
        stream.ask(op="run", concurrency=4, pause=0.02)
        time.sleep(2.0)
        fault_at = time.monotonic()
        fault(old, other)
        deadline = fault_at + 40
        while True:  # until writes are answered 201 again (or never failed at all)
            time.sleep(0.5)
            status = stream.ask(op="status", since=fault_at)
            if status["back_at"] is not None:
                break
            if status["first_failure_at"] is None and time.monotonic() > fault_at + 10 and status["ok"]:
                break
            assert time.monotonic() < deadline, f"{name}: writes not back within 40 s: {status}"
        if heal is not None:
            heal(old, other)
        # The lost member returns by itself: as a replica of the new primary, or of the same one.
        rejoined = cluster.wait_healthy(90)
        time.sleep(1.0)
        result = stream.ask(op="stop", fault_at=fault_at)
    except BaseException:
        for name in ("api", "haproxy", f"patroni-{old}", f"patroni-{other}"):
            print(f"--- {name}.log\n{cluster.log(name, 4000)}")
        raise
    finally:
        stream.close()
    leader = cluster.leader()
    line = (
        f"{name}: acknowledged {result['acknowledged']}, lost {result['lost']}, in doubt {result['in_doubt']}"
        f" (applied once after retry), writes back in {result['back_s']:.1f} s"
        if result["back_s"] is not None
        else f"{name}: writes never came back"
    )
    LINES.append(line)
    with SUMMARY.open("a") as summary:
        summary.write(line + "\n")
    print(f"\n{line}\n  {result}; rejoined {rejoined:.1f} s after writes were back; leader now {leader}")
    assert result["lost"] == 0, result
    assert result["unresolved"] == 0 and result["in_doubt_applied_once"], result
    assert result["unexpected"] == [] and result["cards_not_matching_keys"] == [], result
    assert result["unreconciled_cards"] == 0 and result["cache_incoherent_cards"] == [], result
    assert result["acknowledged"] > 0
    assert result["back_s"] is not None and result["back_s"] <= back_within, result
    assert leader == (other if primary_changes else old), (leader, old, other)
    if primary_changes:  # the new primary moved the cache to a new epoch (on-role-change.sh)
        assert int(cluster.psql(other, "SELECT epoch FROM cache_state")) > epoch_before
    return result


@pytest.mark.root
@pytest.mark.slow
def test_switchover(cluster: Cluster) -> None:
    scenario(
        cluster,
        "SWITCHOVER",
        lambda old, other: cluster.switchover(old, other),
        primary_changes=True,
        back_within=SWITCHOVER_BACK_S,
    )


@pytest.mark.root
@pytest.mark.slow
def test_kill_the_primary_postmaster(cluster: Cluster) -> None:
    scenario(cluster, "KILL -9 PRIMARY", lambda old, _: cluster.kill_postmaster(old), primary_changes=True)


@pytest.mark.root
@pytest.mark.slow
def test_cut_the_primary_link(cluster: Cluster) -> None:
    scenario(
        cluster,
        "PRIMARY LINK CUT",
        lambda old, _: cluster.network.cut(old),
        lambda old, _: cluster.network.restore(old),
        primary_changes=True,
    )


@pytest.mark.root
@pytest.mark.slow
def test_lose_the_replica(cluster: Cluster) -> None:
    """Synchronous mode, not strict: commits wait for the lost standby until its walsender
    times out and Patroni takes it out of synchronous_standby_names; then writes go on, on
    one host, until it returns (deploy/README.md: when the replica is gone)."""
    scenario(
        cluster,
        "REPLICA LOST",
        lambda _, other: cluster.network.cut(other),
        lambda _, other: cluster.network.restore(other),
        primary_changes=False,
    )


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.InternalClientError("unknown error in protocol implementation"),
        asyncpg.exceptions.ProtocolError("unexpected message"),
        asyncpg.exceptions.TargetServerAttributeNotMatched("no host is read-write"),
        asyncpg.exceptions.ConnectionDoesNotExistError("terminating connection due to administrator command"),
    ],
)
async def test_a_connection_broken_by_a_failover_is_a_503_to_retry(error: Exception) -> None:
    """What asyncpg raises while the primary goes away is a fast 503 problem (retryable,
    answered as unanswered by group commit), never a 500."""
    handler = next(h for kind, h in errors.EXCEPTION_HANDLERS.items() if isinstance(error, kind))
    answer = await handler(Request({"type": "http", "method": "POST", "path": "/", "headers": []}), error)
    assert answer.status_code == 503 and answer.headers["content-type"] == errors.PROBLEM_JSON
    assert b'"DATABASE_UNAVAILABLE"' in answer.body and answer.headers["retry-after"] == "2"
