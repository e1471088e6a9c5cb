"""The seed's three VMs on one machine (deploy/topology/topology.py), driven from a fourth.

Network namespaces joined by a bridge (in a namespace of its own) with the seed's addresses:
the API on 192.168.100.10, Redis on .20, PostgreSQL on .30, the client on .40; each host's
eth1 delays what it sends with tc netem where the kernel has it. Every request comes from the
client namespace (an agent process there); nothing in the root namespace ever addresses
192.168.100.x.

Then Redis's link is cut (its bridge port goes down: packets vanish, no process is killed):
the API keeps answering reads and writes, each well within its budget (100 ms Redis
timeouts), /health says the cache is down; the link comes back and the cache is used again,
without ever serving what Redis held from before the cut.

Needs root and `ip netns`: without them this test fails (it does not skip), saying why.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from deploy.topology import topology
from deploy.topology.topology import Agent, Topology, address
from travel.startup.processes import eventually

pytestmark = pytest.mark.root

PREFIX = "trt"  # the CLI's default is "tr": a test run never tears down a topology left up by hand
BUDGET_S = 0.5  # each request while Redis is unreachable
API = f"http://{address('vm1')}:{topology.API_PORT}/api/v1"


class Client:
    """HTTP from the client namespace, through the agent."""

    def __init__(self, agent: Agent, token: str) -> None:
        self.agent = agent
        self.auth = {"Authorization": f"Bearer {token}"}

    def request(self, method: str, path: str, body: Any = None, auth: bool = False) -> dict[str, Any]:
        answer = self.agent.ask(
            op="http", method=method, url=API + path, json=body, headers=self.auth if auth else {}, timeout=5
        )
        assert "error" not in answer, f"{method} {path}: {answer}"
        return answer

    def get(self, path: str) -> dict[str, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> dict[str, Any]:
        return self.request("POST", path, body, auth=True)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    reason = topology.netns_unavailable_reason(PREFIX)
    if reason:
        pytest.fail(f"cannot build the three-VM topology: {reason}", pytrace=False)
    with topology.exclusive(PREFIX, timeout=120):
        built = Topology(tmp_path_factory.mktemp("topology"), prefix=PREFIX)
        try:
            built.up(timeout=60)
            yield built
        finally:
            built.down()
            assert built.network.existing() == [], "namespaces left behind"


@pytest.fixture(scope="module")
def client(running: Topology) -> Iterator[Client]:
    agent = Agent(running.network)
    try:
        yield Client(agent, running.token)
    finally:
        agent.close()


def test_the_hosts_have_the_seed_addresses_and_only_the_root_namespace_is_untouched(running: Topology) -> None:
    for host in ("vm1", "vm2", "vm3", "client"):
        shown = topology._run(
            *running.network.exec_prefix(host), "ip", "-4", "-o", "addr", "show", "dev", topology.HOST_IFACE
        ).stdout
        assert f"{address(host)}/24" in shown
    root = topology._run("ip", "-4", "-o", "addr", "show").stdout
    assert "192.168.100." not in root, "the root namespace must not join the topology's network"
    root_links = topology._run("ip", "-o", "link", "show").stdout
    assert running.network.bridge not in root_links


def test_the_lan_delay_is_there_when_the_kernel_has_netem(running: Topology) -> None:
    agent = Agent(running.network, "client")  # TCP connect time from the client to the API host: one RTT
    try:
        measured = agent.ask(op="tcp_rtt", host=address("vm1"), port=topology.API_PORT, count=20)
    finally:
        agent.close()
    assert measured.get("ok"), measured
    if running.network.netem:
        assert measured["min_ms"] >= 2 * running.delay_ms * 0.9, measured
    else:  # a kernel without sch_netem (CONFIG_NET_SCH_NETEM unset): the plain veth LAN, said so
        print(f"\n{running.network.describe_delay()}; measured {measured}")
        assert "sch_netem" in running.network.netem_note


def test_health_write_and_cached_read_across_the_network(running: Topology, client: Client) -> None:
    health = client.get("/health")
    assert health["status"] == 200 and health["body"] == {"status": "ok", "database": "ok", "cache": "ok"}
    user = client.post(
        "/users", {"first_name": "Ana", "last_name": "Red", "email": "ana@topology.example", "id_number": "TOPO-1"}
    )
    assert user["status"] == 201, user
    card = client.post("/cards", {"user_id": user["body"]["user_id"]})
    assert card["status"] == 201, card
    card_id = card["body"]["card_id"]
    assert client.post("/recharges", {"card_id": card_id, "amount": 5000})["status"] == 201
    first, second = client.get(f"/cards/{card_id}/balance"), client.get(f"/cards/{card_id}/balance")
    assert (first["status"], first["headers"]["x-cache"]) == (200, "MISS")
    assert (second["status"], second["headers"]["x-cache"]) == (200, "HIT")
    assert first["body"]["balance"] == second["body"]["balance"] == 5000
    running.card_id = card_id  # type: ignore[attr-defined]  # for the next test (module order)


def test_redis_link_cut_the_api_answers_within_budget_then_uses_the_cache_again(
    running: Topology, client: Client
) -> None:
    card_id = running.card_id  # type: ignore[attr-defined]
    assert client.get(f"/cards/{card_id}/balance")["headers"]["x-cache"] == "HIT"  # 5000 sits in Redis
    running.network.cut("vm2")
    try:
        answers = []
        for _ in range(3):
            answers.append(("read", client.get(f"/cards/{card_id}/balance")))
        answers.append(("write", client.post("/recharges", {"card_id": card_id, "amount": 1000})))
        for _ in range(3):
            answers.append(("read", client.get(f"/cards/{card_id}/balance")))
        answers.append(("routes", client.get("/routes")))
        health = client.get("/health")
        for what, answer in answers:
            assert 200 <= answer["status"] < 300, (what, answer)
            assert answer["elapsed_ms"] < BUDGET_S * 1000, (what, answer["elapsed_ms"])
        print(
            "\nwhile Redis is cut off: "
            + ", ".join(f"{what} {answer['elapsed_ms']:.0f} ms" for what, answer in answers)
        )
        assert all(answer["headers"].get("x-cache") == "MISS" for what, answer in answers if what == "read")
        balances = [answer["body"]["balance"] for what, answer in answers if what == "read"]
        assert balances == [5000] * 3 + [6000] * 3, "reads come from PostgreSQL while Redis is away"
        assert health["elapsed_ms"] < BUDGET_S * 1000
        assert health["status"] == 200
        assert health["body"] == {"status": "degraded", "database": "ok", "cache": "down"}
        # Redis was not stopped: its process still runs in VM2, only the link is gone.
        assert running.redis is not None and running.redis.poll() is None
    finally:
        running.network.restore("vm2")

    def cache_hit() -> bool:  # the API retries Redis after its bypass window; reconnects after ARP
        answer = client.get(f"/cards/{card_id}/balance")
        assert answer["status"] == 200
        assert answer["body"]["balance"] == 6000, "a value cached before the cut must never come back"
        return bool(answer["headers"]["x-cache"] == "HIT")

    eventually(cache_hit, 15, "the cache used again after the link came back", every=0.1)
    assert client.get("/health")["body"] == {"status": "ok", "database": "ok", "cache": "ok"}
