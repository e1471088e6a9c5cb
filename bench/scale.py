"""Aggregate miss cost against data size: a stack per DEMO_SCALE, loaded once and kept."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

from bench.fixture import API, Target, fetch_json, prepare_fixture
from bench.latency import aggregate_miss_costs
from bench.stack import Pinning, Progress, every_core, start_api
from travel.startup.embedded import EmbeddedStack


async def measure_scale(
    scale: int, requests: int, pinning: Pinning, root: Path, log_dir: Path, progress: Progress
) -> dict[str, Any]:
    """The miss cost of every aggregate on a stack holding DEMO_SCALE=`scale` (in root/demoN)."""
    stack = EmbeddedStack(root / f"demo{scale}")
    with every_core():
        database_url, redis_url = stack.start()
    server = None
    try:
        progress.step(f"scale {scale}: starting the API (the first start loads the demo data)")
        token = secrets.token_urlsafe(16)
        server = start_api(
            database_url, redis_url, token, 1, pinning, log_dir, {"DEMO_SCALE": str(scale)}, f"api-scale{scale}"
        )
        await asyncio.to_thread(server.wait_healthy, 3600)
        target = Target(f"scale{scale}", server.base_url, token)
        run_id = "s" + secrets.token_hex(4)
        target.fixture = await prepare_fixture(target, run_id)
        costs = await aggregate_miss_costs(target, requests, run_id)
        totals = await fetch_json(server.base_url, API + "/trips/total")
        users = await fetch_json(server.base_url, API + "/users/count")
        return {"scale": scale, "trips": totals["total_trips"], "users": users["count"], "costs": costs}
    finally:
        if server is not None:
            server.stop()
        stack.stop()
