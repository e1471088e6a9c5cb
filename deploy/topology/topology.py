"""The seed's three VMs on one machine: network namespaces joined by a bridge.

    python -m deploy.topology.topology up      # build it and leave it running
    python -m deploy.topology.topology bench   # build it, run bench/run.py from the client, tear down
    python -m deploy.topology.topology down    # tear down whatever `up` (or a crashed run) left

Five namespaces (names carry a prefix, `tr` by default, so that nothing else is touched):

    trlan     the LAN: bridge trbr0 and one veth port per host (tr-vm1, tr-vm2 ...)
    trvm1     192.168.100.10/24 on eth1   the API (python server.py, HOST=192.168.100.10, port 8000)
    trvm2     192.168.100.20/24 on eth1   Redis (the wheel's valkey-server), bound to .20:6379
    trvm3     192.168.100.30/24 on eth1   PostgreSQL (the embedded stack's cluster), listening on .30:5432
    trclient  192.168.100.40/24 on eth1   the client: curl, the tests' agent, bench/run.py

The bridge itself lives in a namespace of its own: the root namespace gets no interface, no
address and no route, so nothing on this machine can reach the 192.168.100.0/24 addresses and
no packet for them ever leaves through the machine's own network. Each host's eth1 delays
what it sends with `tc netem` (0.5 ms by default: 1 ms round trip between two hosts), when the
kernel has sch_netem; a kernel built without it (CONFIG_NET_SCH_NETEM unset) gets the plain
veth/bridge LAN and says so. `cut("vm2")` takes Redis's bridge port down: packets to and from
VM2 vanish, no process is touched; `restore("vm2")` brings it back.

Needs root (CAP_NET_ADMIN, `ip netns`). Everything runs under a lock file per prefix, so two
runs never build over each other; a run first removes what a crashed run with the same
prefix left (its processes by pid, then its namespaces).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from travel.startup import embedded
from travel.startup.processes import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

SUBNET = "192.168.100"
HOSTS = {"vm1": 10, "vm2": 20, "vm3": 30, "client": 40}  # the seed's addresses (+ a client)
HOST_IFACE = "eth1"  # as on the seed's VMs: eth1 is the private network
API_PORT, REDIS_PORT, POSTGRES_PORT = 8000, 6379, 5432  # inside the namespaces: no clash with the machine's
DEFAULT_PREFIX = "tr"
DEFAULT_DELAY_MS = 0.5
COMMAND_TIMEOUT = 60.0


class TopologyError(RuntimeError):
    pass


def address(host: str) -> str:
    return f"{SUBNET}.{HOSTS[host]}"


def _run(*command: str, check: bool = True, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise TopologyError(f"{shlex.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def netns_unavailable_reason(prefix: str = DEFAULT_PREFIX) -> str | None:
    """None when this process can create network namespaces, else why not (for a clear failure)."""
    if os.geteuid() != 0:
        return "the three-VM topology needs root (CAP_NET_ADMIN) to create network namespaces"
    probe = f"{prefix}probe{os.getpid()}"
    try:
        added = _run("ip", "netns", "add", probe, check=False, timeout=10)
    except FileNotFoundError:
        return "`ip` (iproute2) is not installed: apt-get install iproute2"
    if added.returncode != 0:
        return f"`ip netns add` does not work here: {added.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False, timeout=10)
    return None


@contextlib.contextmanager
def exclusive(prefix: str, timeout: float = 300.0) -> Iterator[None]:
    """Hold the lock of `prefix`: two runs with one prefix would delete each other's namespaces."""
    path = Path("/tmp") / f"{prefix}-topology.lock"
    with open(path, "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TopologyError(f"another topology run holds {path} for more than {timeout:.0f} s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ---------------------------------------------------------------- the network
@dataclass
class Network:
    """The namespaces, the bridge and the veths of one prefix."""

    prefix: str = DEFAULT_PREFIX
    delay_ms: float = DEFAULT_DELAY_MS
    netem: bool = False  # whether the delay is applied (the kernel may lack sch_netem)
    netem_note: str = ""
    hosts: dict[str, int] = field(default_factory=lambda: dict(HOSTS))  # name -> last octet

    def address(self, host: str) -> str:
        return f"{SUBNET}.{self.hosts[host]}"

    def __post_init__(self) -> None:
        if len(self.port("client")) > 15:
            raise TopologyError(f"prefix {self.prefix!r} is too long for interface names")

    @property
    def lan(self) -> str:
        return f"{self.prefix}lan"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br0"

    def ns(self, host: str) -> str:
        return f"{self.prefix}{host}"

    def port(self, host: str) -> str:
        """The bridge-side end of `host`'s veth (it lives in the LAN namespace)."""
        return f"{self.prefix}-{host}"

    def namespaces(self) -> list[str]:
        return [self.ns(host) for host in self.hosts] + [self.lan]

    def exec_prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host)]

    def existing(self) -> list[str]:
        listed = _run("ip", "netns", "list", check=False).stdout.split("\n")
        names = {line.split()[0] for line in listed if line.strip()}
        return [name for name in self.namespaces() if name in names]

    def create(self) -> None:
        self.destroy()  # whatever a crashed run with this prefix left
        lan = self.lan
        _run("ip", "netns", "add", lan)
        _run("ip", "-n", lan, "link", "add", self.bridge, "type", "bridge")
        _run("ip", "-n", lan, "link", "set", self.bridge, "up")
        self.netem, self.netem_note = self.delay_ms > 0, ""
        for host in self.hosts:
            ns = self.ns(host)
            _run("ip", "netns", "add", ns)
            _run(
                "ip", "-n", lan, "link", "add", self.port(host), "type", "veth", "peer", "name", HOST_IFACE, "netns", ns
            )
            _run("ip", "-n", lan, "link", "set", self.port(host), "master", self.bridge, "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", HOST_IFACE)
            _run("ip", "-n", ns, "link", "set", HOST_IFACE, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            if self.netem:
                self._delay(host)

    def _delay(self, host: str) -> None:
        done = _run(
            *self.exec_prefix(host),
            "tc",
            "qdisc",
            "add",
            "dev",
            HOST_IFACE,
            "root",
            "netem",
            "delay",
            f"{self.delay_ms}ms",
            check=False,
        )
        if done.returncode != 0:
            if "unknown" not in done.stderr.lower():
                raise TopologyError(f"tc netem on {self.ns(host)}: {done.stderr.strip()}")
            self.netem = False
            self.netem_note = (
                f"no delay applied: this kernel ({os.uname().release}) has no sch_netem "
                f"(`tc qdisc add ... netem` says: {done.stderr.strip()})"
            )

    def describe_delay(self) -> str:
        if self.netem:
            return (
                f"tc netem delay {self.delay_ms:g} ms on every host's {HOST_IFACE} "
                f"(one way {self.delay_ms:g} ms, round trip {2 * self.delay_ms:g} ms between two hosts)"
            )
        return self.netem_note or "no delay asked (--delay-ms 0)"

    def cut(self, host: str) -> None:
        """Take `host`'s bridge port down: its packets vanish; its processes are not touched."""
        _run("ip", "-n", self.lan, "link", "set", self.port(host), "down")

    def restore(self, host: str) -> None:
        _run("ip", "-n", self.lan, "link", "set", self.port(host), "up")

    def pids(self, namespace: str) -> list[int]:
        done = _run("ip", "netns", "pids", namespace, check=False)
        return [int(pid) for pid in done.stdout.split() if pid.isdigit()]

    def stop_processes(self, namespace: str, grace: float = 10.0) -> None:
        """SIGTERM every process of `namespace` (by pid), SIGKILL what is left after `grace`."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids(namespace)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while pids and time.monotonic() < deadline:
                pids = self.pids(namespace)
                if pids:
                    time.sleep(0.05)
            if not pids:
                return

    def destroy(self) -> None:
        """Stop every process in this prefix's namespaces, then delete them (the LAN last)."""
        for namespace in self.existing():
            self.stop_processes(namespace)
        for namespace in self.existing():
            _run("ip", "netns", "del", namespace, check=False)
        left = self.existing()
        if left:
            raise TopologyError(f"could not delete namespaces {left}")


# ---------------------------------------------------------------- the servers
def namespaced_postgres(data_dir: Path, ns: str, host: str) -> embedded.LocalPostgres:
    """VM3: the embedded stack's cluster run inside `ns`, listening on `host`, admitting the LAN."""
    return embedded.LocalPostgres(
        data_dir,
        durable=False,
        host=host,
        enter=("ip", "netns", "exec", ns),
        hba_lines=(
            "# the three-VM topology's private network",
            f"host    all    all    {SUBNET}.0/24    scram-sha-256",
        ),
    )


def start_redis(network: Network, data_dir: Path, password: str) -> subprocess.Popen[bytes]:
    """VM2: a Redis-protocol server bound to the private address only."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            *network.exec_prefix("vm2"),
            str(embedded.redis_server_binary()),
            "--bind",
            address("vm2"),
            "--port",
            str(REDIS_PORT),
            "--requirepass",
            password,
            "--protected-mode",
            "yes",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data_dir),
            "--logfile",
            str(data_dir / "server.log"),
            "--maxmemory",
            "256mb",
            "--maxmemory-policy",
            "allkeys-lru",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # it logs to its file
        start_new_session=True,
    )


def start_api(
    network: Network,
    database_url: str,
    redis_url: str,
    token: str,
    log_path: Path,
    demo_scale: int = 0,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """VM1: `python server.py` on the private address, with the seed's port (its health is
    polled from the client's namespace: this one has no route to it)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "HOST": address("vm1"),
        "WORKERS": str(workers),
        "ADMIN_TOKEN": token,
        "LOG_LEVEL": "warning",
    }
    if demo_scale:
        env["DEMO_SCALE"] = str(demo_scale)
    env.update(extra_env or {})
    command = [*network.exec_prefix("vm1"), sys.executable, "server.py"]
    return ServerProcess(env, command=command, port=API_PORT, log_path=log_path, inherit_env=False).process


class Agent:
    """A client process inside one namespace (deploy/topology/agent.py): JSON lines in and out."""

    def __init__(self, network: Network, host: str = "client") -> None:
        self.process = subprocess.Popen(
            [*network.exec_prefix(host), sys.executable, str(HERE / "agent.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def ask(self, **request: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()  # every op of the agent is bounded in time
        if not line:
            raise TopologyError(f"the agent exited ({self.process.wait(timeout=5)})")
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(BrokenPipeError):
                assert self.process.stdin is not None
                self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# ---------------------------------------------------------------- the whole topology
@dataclass
class Topology:
    """The network and the three servers; `state` is what `down` and the bench need later."""

    work_dir: Path
    prefix: str = DEFAULT_PREFIX
    delay_ms: float = DEFAULT_DELAY_MS
    demo_scale: int = 0
    workers: int = 1
    network: Network = field(init=False)
    token: str = ""
    redis_password: str = ""
    postgres: embedded.LocalPostgres | None = None
    redis: subprocess.Popen[bytes] | None = None
    api: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.network = Network(self.prefix, self.delay_ms)

    @property
    def api_url(self) -> str:
        return f"http://{address('vm1')}:{API_PORT}"

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.redis_password}@{address('vm2')}:{REDIS_PORT}/0"

    @property
    def database_url(self) -> str:
        assert self.postgres is not None
        return self.postgres.url

    def up(self, timeout: float = 120.0) -> None:
        """Build the network, start PostgreSQL (VM3), Redis (VM2) and the API (VM1), wait for all."""
        self.network.create()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_urlsafe(24)
        self.redis_password = secrets.token_urlsafe(24)
        self.postgres = namespaced_postgres(self.work_dir / "postgres" / "data", self.network.ns("vm3"), address("vm3"))
        self.postgres.port = POSTGRES_PORT
        self.postgres.start()
        self.redis = start_redis(self.network, self.work_dir / "redis", self.redis_password)
        self.api = start_api(
            self.network,
            self.database_url,
            self.redis_url,
            self.token,
            self.work_dir / "api.log",
            self.demo_scale,
            self.workers,
        )
        agent = Agent(self.network)
        try:
            ready = agent.ask(op="wait_tcp", host=address("vm2"), port=REDIS_PORT, timeout=30)
            if not ready.get("ok"):
                raise TopologyError(f"Redis on VM2 did not come up: {ready}")
            ready = agent.ask(op="wait_http", url=self.api_url + "/api/v1/health", timeout=timeout)
            if not ready.get("ok") or self.api.poll() is not None:
                raise TopologyError(f"the API on VM1 did not come up: {ready}; log:\n{self.api_log()}")
        finally:
            agent.close()
        self.save_state()

    def api_log(self) -> str:
        path = self.work_dir / "api.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def state(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "work_dir": str(self.work_dir),
            "api_url": self.api_url,
            "token": self.token,
            "redis_url": self.redis_url,
            "database_url": self.database_url,
            "delay": self.network.describe_delay(),
            "netem": self.network.netem,
            "client": shlex.join(self.network.exec_prefix("client")),
        }

    def save_state(self) -> None:
        path = self.work_dir / "state.json"
        path.write_text(json.dumps(self.state(), indent=2))
        path.chmod(0o600)

    def down(self) -> None:
        """Stop the API, Redis and PostgreSQL (in that order), then delete the namespaces.
        Safe to call on a half-built topology, and twice."""
        errors: list[BaseException] = []
        for process in (self.api, self.redis):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
        if self.postgres is not None and self.network.ns("vm3") in self.network.existing():
            try:
                self.postgres.stop()
            except Exception as error:
                errors.append(error)
        self.network.destroy()
        if errors:
            raise TopologyError(f"PostgreSQL did not stop cleanly: {errors[0]}")


def down_by_prefix(prefix: str, work_dir: Path | None = None) -> None:
    """`down` from another process: stop PostgreSQL properly if its data is known, then sweep."""
    network = Network(prefix)
    if network.ns("vm1") in network.existing():
        network.stop_processes(network.ns("client"))
        network.stop_processes(network.ns("vm1"))
        network.stop_processes(network.ns("vm2"))
    data_dir = (work_dir or default_work_dir(prefix)) / "postgres" / "data"
    if (data_dir / "postmaster.pid").exists() and network.ns("vm3") in network.existing():
        with contextlib.suppress(Exception):
            namespaced_postgres(data_dir, network.ns("vm3"), address("vm3")).stop()
    network.destroy()


def default_work_dir(prefix: str) -> Path:
    return Path("/tmp") / f"{prefix}-topology"


# ---------------------------------------------------------------- bench
def measure_rtt(network: Network) -> dict[str, float]:
    """TCP connect times (one round trip each) along the seed's three links."""
    rtts: dict[str, float] = {}
    for source, target, port in (
        ("client", "vm1", API_PORT),
        ("vm1", "vm2", REDIS_PORT),
        ("vm1", "vm3", POSTGRES_PORT),
    ):
        agent = Agent(network, source)
        try:
            answer = agent.ask(op="tcp_rtt", host=address(target), port=port, count=50)
        finally:
            agent.close()
        if answer.get("ok"):
            rtts[f"{source} → {target}"] = answer["median_ms"]
    return rtts


def run_bench(topology: Topology, requests: int, output: Path | None, extra: list[str]) -> int:
    command = [
        sys.executable,
        "-m",
        "bench.run",
        "--url",
        topology.api_url,
        "--token",
        topology.token,
        "--redis",
        topology.redis_url,
        "--database-url",
        topology.database_url,
        "--no-throughput",
        "--requests",
        str(requests),
        *extra,
    ]
    shown = shlex.join(
        [
            *topology.network.exec_prefix("client"),
            "python",
            "-m",
            "bench.run",
            "--url",
            topology.api_url,
            "--token",
            "…",
            "--redis",
            f"redis://:…@{address('vm2')}:{REDIS_PORT}/0",
            "--database-url",
            f"postgresql://travel:…@{address('vm3')}:{POSTGRES_PORT}/travel",
            "--no-throughput",
            "--requests",
            str(requests),
            *extra,
        ]
    )
    rtts = measure_rtt(topology.network)
    done = subprocess.run(
        [*topology.network.exec_prefix("client"), *command], cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=3600
    )
    sys.stdout.write(done.stdout)
    if done.returncode == 0 and output is not None:
        report = done.stdout.split("\nsaved: ")[0].strip()
        report = report.replace(topology.token, "…").replace(topology.redis_password, "…")
        report = report.replace(topology.database_url.split("@")[0].split(":")[-1], "…")
        header = [
            "# Latency across the three-VM topology (network namespaces on one machine)",
            "",
            "Reproduced with `make topology-bench` (or "
            f"`python -m deploy.topology.topology bench --requests {requests} --output {shown_path(output)}`),"
            " which builds",
            "the seed's topology (API 192.168.100.10, Redis .20, PostgreSQL .30, client .40; one bridge) and runs",
            "inside the client's namespace:",
            "",
            f"    {shown}",
            "",
            f"- network delay: {topology.network.describe_delay()}",
            "- measured round trips (TCP connect, median of 50): "
            + ", ".join(f"{link} {ms:.3f} ms" for link, ms in rtts.items()),
            f"- API: one worker (WORKERS={topology.workers}), DEMO_SCALE={topology.demo_scale}",
            "",
        ]
        output.write_text(
            "\n".join(header) + "\n" + report.replace("# Travel Recharge API — bench", "## bench/run.py", 1) + "\n"
        )
        print(f"\nwritten: {output}")
    return done.returncode


def shown_path(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(ROOT))
    return str(path)


# ---------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "bench"))
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="namespace name prefix (default tr)")
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=DEFAULT_DELAY_MS,
        help="netem delay on each host's eth1, one way (default 0.5)",
    )
    parser.add_argument("--work-dir", type=Path, help="data and logs (default /tmp/PREFIX-topology)")
    parser.add_argument(
        "--demo-scale", type=int, default=None, help="DEMO_SCALE of the API (default: 1 for bench, 0 for up)"
    )
    parser.add_argument("--requests", type=int, default=200, help="bench: requests per latency-table row")
    parser.add_argument("--output", type=Path, help="bench: write the Markdown report here as well")
    parser.add_argument("--keep", action="store_true", help="bench: leave the topology running afterwards")
    args, extra = parser.parse_known_args(argv)
    reason = netns_unavailable_reason(args.prefix)
    if reason:
        print(f"topology: {reason}", file=sys.stderr)
        return 2
    work_dir = args.work_dir or default_work_dir(args.prefix)
    with exclusive(args.prefix):
        if args.command == "down":
            down_by_prefix(args.prefix, work_dir)
            if work_dir.exists():
                subprocess.run(["rm", "-rf", "--one-file-system", str(work_dir)], check=True, timeout=60)
            print(f"topology {args.prefix}: down")
            return 0
        if work_dir.exists():
            subprocess.run(["rm", "-rf", "--one-file-system", str(work_dir)], check=True, timeout=60)
        demo_scale = args.demo_scale if args.demo_scale is not None else (1 if args.command == "bench" else 0)
        topology = Topology(work_dir, args.prefix, args.delay_ms, demo_scale)
        try:
            topology.up()
        except BaseException:
            topology.down()
            raise
        if args.command == "up":
            print(json.dumps(topology.state(), indent=2))
            print(
                f"\ntry: {topology.state()['client']} curl -s {topology.api_url}/api/v1/health\n"
                f"stop: python -m deploy.topology.topology down --prefix {args.prefix}"
            )
            return 0
        try:
            return run_bench(topology, args.requests, args.output, extra)
        finally:
            if not args.keep:
                topology.down()
                subprocess.run(["rm", "-rf", "--one-file-system", str(work_dir)], check=True, timeout=60)


if __name__ == "__main__":
    sys.exit(main())
