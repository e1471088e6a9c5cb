"""PostgreSQL under Patroni in the namespace topology: the API follows the primary by itself.

    python -m deploy.topology.failover up       # build it and leave it running
    python -m deploy.topology.failover bench    # recharges with synchronous vs asynchronous replication
    python -m deploy.topology.failover down     # tear down whatever `up` (or a crashed run) left

The seed's hosts plus a second PostgreSQL host, with deploy/patroni's own files:

    vm1     192.168.100.10  the API (DATABASE_URL through HAProxy: haproxy-vm1.cfg, 127.0.0.1:5000/5001)
    vm2     192.168.100.20  Redis; etcd member vm2 (etcd/vm2.env)
    vm3     192.168.100.30  PostgreSQL 15 under Patroni (patroni-vm3.yml); etcd member vm3
    vm4     192.168.100.40  PostgreSQL 15 under Patroni (patroni-vm4.yml); etcd member vm4
    client  192.168.100.90  the recharge stream (recharge_stream.py)

What differs from the deployment: paths (data, sockets, logs under the work directory),
passwords (made per run), memory (128 MB shared_buffers), and one pg_hba line for the test's
database owner `travel` (the API applies the schema itself here, as `make run` does).
Patroni's TTLs are the deployment's. Needs root, `ip netns` and Debian's patroni, etcd-server,
etcd-client, postgresql and haproxy (.ci/system-packages installs them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deploy.topology import topology
from deploy.topology.topology import Agent, Network, TopologyError

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PATRONI = ROOT / "deploy" / "patroni"

HOSTS = {"vm1": 10, "vm2": 20, "vm3": 30, "vm4": 40, "client": 90}
MEMBERS = ("vm3", "vm4")
ETCD_HOSTS = ("vm2", "vm3", "vm4")
DEFAULT_PREFIX = "trf"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
NEEDED = {
    "patroni": "patroni",
    "patronictl": "patroni",
    "etcd": "etcd-server",
    "etcdctl": "etcd-client",
    "haproxy": "haproxy",
    "psql": "postgresql-client",
}


def missing_programs() -> list[str]:
    """Debian packages whose programs are not installed (PostgreSQL 15's server included)."""
    missing = [package for program, package in NEEDED.items() if shutil.which(program) is None]
    if not (PG_BIN / "postgres").exists():
        missing.append("postgresql-15")
    if shutil.which("haproxy") is None and Path("/usr/sbin/haproxy").exists():
        missing.remove("haproxy")
    return sorted(set(missing))


def address(host: str) -> str:
    return f"{topology.SUBNET}.{HOSTS[host]}"


@dataclass
class Cluster:
    work_dir: Path
    prefix: str = DEFAULT_PREFIX
    delay_ms: float = topology.DEFAULT_DELAY_MS
    network: Network = field(init=False)
    passwords: dict[str, str] = field(default_factory=dict)
    token: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.network = Network(self.prefix, self.delay_ms, hosts=dict(HOSTS))

    # ------------------------------------------------------------ addresses and URLs
    @property
    def api_url(self) -> str:
        return f"http://{address('vm1')}:{topology.API_PORT}/api/v1"

    @property
    def api_database_url(self) -> str:  # on VM1, through HAProxy
        return f"postgresql://travel:{self.passwords['travel']}@127.0.0.1:5000/travel"

    @property
    def checker_database_url(self) -> str:  # from the client host, straight to whichever is writable
        hosts = ",".join(f"{address(m)}:5432" for m in MEMBERS)
        return f"postgresql://travel:{self.passwords['travel']}@{hosts}/travel?target_session_attrs=read-write"

    def run_in(self, host: str, *command: str, check: bool = True, timeout: float = 30.0) -> str:
        done = subprocess.run(
            [*self.network.exec_prefix(host), *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and done.returncode != 0:
            raise TopologyError(f"{host}: {shlex.join(command)}: {done.returncode}: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def spawn(self, name: str, host: str, command: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.work_dir / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [*self.network.exec_prefix(host), *command],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **(env or {})},
            start_new_session=True,
            cwd=self.work_dir,
        )
        log.close()

    def log(self, name: str, tail: int = 3000) -> str:
        path = self.work_dir / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    # ------------------------------------------------------------ building
    def up(self) -> None:
        missing = missing_programs()
        if missing:
            raise TopologyError(f"not installed: {' '.join(missing)} (bash .ci/system-packages installs them as root)")
        self.network.create()
        if self.work_dir.exists():
            shutil.rmtree(self.work_dir)
        self.work_dir.mkdir(parents=True)
        self.work_dir.chmod(0o755)  # Patroni and PostgreSQL run as postgres
        self.passwords = {
            name: secrets.token_hex(16) for name in ("superuser", "replication", "rewind", "travel", "redis")
        }
        self.token = secrets.token_urlsafe(24)
        for host in ETCD_HOSTS:
            self.start_etcd(host)
        self.wait_etcd()
        self.start_patroni("vm3")
        self.wait_for(lambda: self.roles().get("vm3") == "Leader", 90, "vm3 to bootstrap as the leader")
        self.create_database("vm3")
        self.start_patroni("vm4")
        self.wait_healthy(120)
        topology.start_redis(self.network, self.work_dir / "redis", self.passwords["redis"])
        self.spawn("haproxy", "vm1", [haproxy_binary(), "-db", "-f", str(PATRONI / "haproxy-vm1.cfg")])
        redis_url = f"redis://:{self.passwords['redis']}@{address('vm2')}:{topology.REDIS_PORT}/0"
        self.processes["api"] = topology.start_api(
            self.network,
            self.api_database_url,
            redis_url,
            self.token,
            self.work_dir / "api.log",
            extra_env={
                "READ_DATABASE_URL": self.api_database_url.replace(":5000/", ":5001/"),
                "LOG_LEVEL": "warning",
            },
        )
        agent = Agent(self.network, "client")
        try:
            ready = agent.ask(op="wait_http", url=self.api_url + "/health", timeout=90)
        finally:
            agent.close()
        if not ready.get("ok"):
            raise TopologyError(f"the API on VM1 did not come up: {ready}\n{self.log('api')}")

    def start_etcd(self, host: str) -> None:
        env: dict[str, str] = {}
        for line in (PATRONI / "etcd" / f"{host}.env").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, value = line.partition("=")
                env[name] = value
        env["ETCD_DATA_DIR"] = str(self.work_dir / host / "etcd")
        env["ETCD_LOG_LEVEL"] = "warn"
        env["ETCD_LOGGER"] = "zap"
        (self.work_dir / host).mkdir(exist_ok=True)
        self.spawn(f"etcd-{host}", host, ["etcd"], env)

    def wait_etcd(self) -> None:
        endpoints = ",".join(f"http://{address(h)}:2379" for h in ETCD_HOSTS)

        def healthy() -> bool:
            done = subprocess.run(
                [*self.network.exec_prefix("vm2"), "etcdctl", f"--endpoints={endpoints}", "endpoint", "health"],
                capture_output=True,
                text=True,
                timeout=20,
                env={"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
            return done.returncode == 0

        self.wait_for(healthy, 30, "etcd's three members")

    def patroni_config(self, member: str) -> Path:
        config = yaml.safe_load((PATRONI / f"patroni-{member}.yml").read_text())
        home = self.work_dir / member
        home.mkdir(exist_ok=True)
        (home / "run").mkdir(exist_ok=True)
        postgres = pwd.getpwnam("postgres")
        for path in (home, home / "run"):
            os.chown(path, postgres.pw_uid, postgres.pw_gid)
        pg = config["postgresql"]
        pg["data_dir"] = str(home / "data")
        pg["pgpass"] = str(home / "pgpass")
        pg["bin_dir"] = str(PG_BIN)
        pg["parameters"]["unix_socket_directories"] = str(home / "run")
        for role, password in (
            ("superuser", "superuser"),
            ("replication", "replication"),
            ("rewind", "rewind"),
        ):
            pg["authentication"][role]["password"] = self.passwords[password]
        # The test's database owner (the API applies the schema as it) from VM1 and the client.
        pg["pg_hba"].append(f"host    travel    travel    {topology.SUBNET}.0/24    scram-sha-256")
        callback = home / "on-role-change"
        callback.write_text(
            f'#!/bin/sh\nPGHOST={home / "run"} exec {shlex.quote(str(self.work_dir / "on-role-change.sh"))} "$@"\n'
        )
        callback.chmod(0o755)
        shutil.copy(PATRONI / "on-role-change.sh", self.work_dir / "on-role-change.sh")
        pg["callbacks"]["on_role_change"] = str(callback)
        parameters = config["bootstrap"]["dcs"]["postgresql"]["parameters"]
        parameters.update(shared_buffers="128MB", effective_cache_size="512MB")
        path = home / "patroni.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o644)
        return path

    def start_patroni(self, member: str) -> None:
        config = self.patroni_config(member)
        self.spawn(f"patroni-{member}", member, ["runuser", "-u", "postgres", "--", "patroni", str(config)])

    def create_database(self, member: str) -> None:
        sql = f"CREATE ROLE travel LOGIN PASSWORD '{self.passwords['travel']}'; CREATE DATABASE travel OWNER travel;"
        for statement in sql.split("; "):
            self.psql(member, statement.rstrip(";"), database="postgres")

    def psql(self, member: str, sql: str, database: str = "travel") -> str:
        return self.run_in(
            member,
            "runuser",
            "-u",
            "postgres",
            "--",
            "psql",
            "-X",
            "-At",
            "-h",
            str(self.work_dir / member / "run"),
            "-d",
            database,
            "-c",
            sql,
        ).strip()

    # ------------------------------------------------------------ watching
    def patronictl(self, *args: str, timeout: float = 30.0) -> str:
        config = str(self.work_dir / "vm3" / "patroni.yml")
        return self.run_in("vm2", "patronictl", "-c", config, *args, timeout=timeout)

    def members(self) -> list[dict[str, Any]]:
        try:
            return list(json.loads(self.patronictl("list", "-f", "json", timeout=15) or "[]"))
        except (TopologyError, ValueError, subprocess.TimeoutExpired):
            return []

    def roles(self) -> dict[str, str]:
        return {m["Member"]: m["Role"] for m in self.members() if m.get("State") in ("running", "streaming")}

    def leader(self) -> str | None:
        return next((name for name, role in self.roles().items() if role == "Leader"), None)

    def healthy(self, synchronous: bool = True) -> bool:
        """A leader and a replica, both running on one timeline, the replica in sync if asked."""
        members = self.members()
        running = [m for m in members if m.get("State") in ("running", "streaming")]
        if len(running) != 2 or len({m.get("TL") for m in running}) != 1:
            return False
        roles = sorted(m["Role"] for m in running)
        return roles == (["Leader", "Sync Standby"] if synchronous else ["Leader", "Replica"])

    def wait_healthy(self, within: float = 60.0, synchronous: bool = True) -> float:
        return self.wait_for(lambda: self.healthy(synchronous), within, "a leader and a streaming replica")

    def wait_for(self, condition: Any, within: float, what: str) -> float:
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > within:
                raise TopologyError(
                    f"no {what} within {within:g} s; members: {self.members()}\n"
                    + "\n".join(f"--- {name}\n{self.log(name, 1500)}" for name in self.processes)
                )
            time.sleep(0.5)
        return time.monotonic() - started

    # ------------------------------------------------------------ faults
    def kill_postmaster(self, member: str) -> None:
        pid = int((self.work_dir / member / "data" / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 9)

    def switchover(self, leader: str, candidate: str) -> None:
        self.patronictl("switchover", "--leader", leader, "--candidate", candidate, "--force", timeout=60)

    def set_synchronous(self, on: bool) -> None:
        value = "true" if on else "false"
        self.patronictl("edit-config", "--force", "-s", f"synchronous_mode={value}")
        self.wait_healthy(30, synchronous=on)

    # ------------------------------------------------------------ tearing down
    def down(self) -> None:
        """Stop everything this prefix started (Patroni first, so that it stops PostgreSQL),
        then delete the namespaces. Safe on a half-built cluster, and twice."""
        for name in ("api", "haproxy", "patroni-vm4", "patroni-vm3"):
            process = self.processes.get(name)
            if process is not None and process.poll() is None:
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=20)
        self.network.destroy()
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)


def haproxy_binary() -> str:
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


class Stream(Agent):
    """recharge_stream.py on the client host: JSON lines in and out, an error raised."""

    def __init__(self, cluster: Cluster) -> None:  # not Agent.__init__: that starts agent.py
        self.process = subprocess.Popen(
            [
                *cluster.network.exec_prefix("client"),
                sys.executable,
                str(HERE / "recharge_stream.py"),
                cluster.api_url,
                cluster.token,
                cluster.checker_database_url,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
            cwd=ROOT,
        )

    def ask(self, **request: Any) -> dict[str, Any]:
        answer = super().ask(**request)
        if "error" in answer:
            raise TopologyError(f"recharge stream: {request['op']}: {answer['error']}")
        return answer


def bench(cluster: Cluster, seconds: float, concurrency: int, rounds: int) -> list[dict[str, Any]]:
    """Closed-loop recharges with synchronous replication, then without, alternating."""
    stream = Stream(cluster)
    results: list[dict[str, Any]] = []
    try:
        stream.ask(op="setup", cards=200)
        stream.ask(op="bench", seconds=2, concurrency=concurrency)  # warm-up
        for number in range(rounds):
            for synchronous in (True, False) if number % 2 == 0 else (False, True):
                cluster.set_synchronous(synchronous)
                result = stream.ask(op="bench", seconds=seconds, concurrency=concurrency)
                result["synchronous"] = synchronous
                results.append(result)
                print(json.dumps(result), flush=True)
    finally:
        stream.close()
        cluster.set_synchronous(True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "bench"))
    parser.add_argument("--prefix", default=DEFAULT_PREFIX)
    parser.add_argument("--delay-ms", type=float, default=topology.DEFAULT_DELAY_MS)
    parser.add_argument("--seconds", type=float, default=10.0, help="bench: seconds per run")
    parser.add_argument("--concurrency", type=int, default=16, help="bench: requests in flight")
    parser.add_argument("--rounds", type=int, default=3, help="bench: sync/async pairs")
    args = parser.parse_args(argv)
    reason = topology.netns_unavailable_reason(args.prefix)
    if reason:
        print(f"failover: {reason}", file=sys.stderr)
        return 2
    work_dir = Path("/tmp") / f"{args.prefix}-failover"
    cluster = Cluster(work_dir, args.prefix, args.delay_ms)
    with topology.exclusive(args.prefix):
        if args.command == "down":
            cluster.network.destroy()
            shutil.rmtree(work_dir, ignore_errors=True)
            return 0
        try:
            cluster.up()
        except BaseException:
            cluster.down()
            raise
        if args.command == "up":
            print(json.dumps({"api": cluster.api_url, "token": cluster.token, "members": cluster.members()}, indent=2))
            print(f"client: {shlex.join(cluster.network.exec_prefix('client'))}")
            return 0
        try:
            print(f"network: {cluster.network.describe_delay()}")
            results = bench(cluster, args.seconds, args.concurrency, args.rounds)
            for synchronous in (True, False):
                runs = [r for r in results if r["synchronous"] is synchronous]
                print(
                    f"{'synchronous' if synchronous else 'asynchronous'}: "
                    + ", ".join(
                        f"{r['throughput']:.0f}/s p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms" for r in runs
                    )
                )
        finally:
            cluster.down()
            shutil.rmtree(work_dir, ignore_errors=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
