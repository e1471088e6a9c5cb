"""bench/locustfile.py, headless for 10 s against the real server on demo data: every kind of
request is made, and none fails (a replayed recharge must be the same recharge)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from tests.support.stack import TOKENS, serve_api, with_database
from travel import database
from travel.startup.embedded import EmbeddedStack

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
API = "/api/v1"
EVERY_KIND = {
    ("GET", f"{API}/cards/[id]/balance"),
    ("GET", f"{API}/trips/card/[id]"),  # riders
    ("POST", f"{API}/recharges"),
    ("POST", f"{API}/recharges (retry)"),  # recharge points
    ("POST", f"{API}/trips"),
    ("POST", f"{API}/trips/[id]/end"),  # validators
    *(
        ("GET", API + path)
        for path in (
            "/trips/total",
            "/trips/total/localities",
            "/finance/revenue",
            "/finance/revenue/localities",
            "/users/count",
            "/users/active/count",
            "/users/latest",
        )
    ),  # the operator
}


async def demo_database(stack: EmbeddedStack) -> str:
    """A new database holding the demo data at scale 1 (10,000 cards), as `make run` has."""
    admin = await asyncpg.connect(stack.postgres.url)
    try:
        await admin.execute("CREATE DATABASE locust_demo")
    finally:
        await admin.close()
    url = with_database(stack.postgres.url, "locust_demo")
    conn = await asyncpg.connect(url)
    try:
        await database.apply_schema(conn)
        assert await database.load_demo_data(conn, 1)
    finally:
        await conn.close()
    return url


async def test_locust_headless_makes_every_kind_of_request_and_none_fails(stack: EmbeddedStack, tmp_path: Path) -> None:
    url = await demo_database(stack)
    report = tmp_path / "stats.json"
    async with serve_api(url, stack.redis.url) as api:
        locust = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(ROOT / "bench" / "locustfile.py"),
            "--headless",
            "--host",
            api.url,
            "--users",
            "30",
            "--spawn-rate",
            "30",
            "--run-time",
            "10s",
            "--stop-timeout",
            "5",
            "--only-summary",
            "--json-file",
            str(report.with_suffix("")),
            env={"ADMIN_TOKEN": TOKENS["admin"], "CARDS": "10000", "RETRY_SHARE": "0.5", "PATH": ""},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=ROOT,  # the locustfile imports bench.mix: Locust puts the working directory on sys.path
        )
        output, _ = await asyncio.wait_for(locust.communicate(), timeout=60)
    assert report.exists(), output.decode(errors="replace")[-3000:]  # Locust did not run: why
    stats = {(entry["method"], entry["name"]): entry for entry in json.loads(report.read_text())}
    failed = {kind: entry["num_failures"] for kind, entry in stats.items() if entry["num_failures"]}
    assert failed == {}, output.decode()[-3000:]
    made = {kind for kind, entry in stats.items() if entry["num_requests"] > 0}
    assert EVERY_KIND <= made, f"never made: {EVERY_KIND - made}"
    assert locust.returncode == 0, output.decode()


def test_make_locust_serves_its_web_ui_on_this_machine_only_unless_asked() -> None:
    """Locust's default is every interface (0.0.0.0:8089): an open load generator (issue 20)."""
    root = Path(__file__).resolve().parent.parent
    dry_run = subprocess.run(["make", "-n", "locust"], cwd=root, capture_output=True, text=True, check=True).stdout
    assert "--web-host 127.0.0.1" in dry_run, dry_run
    asked = subprocess.run(
        ["make", "-n", "locust", "LOCUST_WEB_HOST=0.0.0.0"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    assert "--web-host 0.0.0.0" in asked, asked
