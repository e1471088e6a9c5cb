"""A client that runs inside one network namespace and does what its parent asks.

`ip netns exec trclient python agent.py` reads one JSON request per line on stdin and
writes one JSON answer per line on stdout, until stdin closes. It keeps one HTTP keep-alive
client, so the figures it reports are those of a client host on the LAN, not of Python's
start-up. Everything it does is bounded: every HTTP request and every wait has a timeout.

Requests:
  {"op": "http", "method": "GET", "url": "...", "headers": {...}, "json": ..., "timeout": 5}
      -> {"status": 200, "headers": {...}, "body": <JSON or text>, "elapsed_ms": 1.2}
         or {"error": "ConnectTimeout", "elapsed_ms": ...}
  {"op": "wait_tcp", "host": "...", "port": 6379, "timeout": 30}
      -> {"ok": true, "elapsed_ms": ...}
  {"op": "wait_http", "url": "...", "timeout": 60}
      -> {"ok": true, "status": 200, "elapsed_ms": ...}   (any answer counts as up)
  {"op": "tcp_rtt", "host": "...", "port": 8000, "count": 20}
      -> {"ok": true, "min_ms": ..., "median_ms": ...}     (TCP connect time: one round trip)
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import time
from typing import Any

import httpx


def http(client: httpx.Client, request: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        response = client.request(
            request.get("method", "GET"),
            request["url"],
            headers=request.get("headers"),
            json=request.get("json"),
            timeout=float(request.get("timeout", 5.0)),
        )
    except httpx.HTTPError as error:
        return {"error": f"{error.__class__.__name__}: {error}", "elapsed_ms": (time.perf_counter() - started) * 1000}
    elapsed = (time.perf_counter() - started) * 1000
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text[:2000]
    return {"status": response.status_code, "headers": dict(response.headers), "body": body, "elapsed_ms": elapsed}


def wait_tcp(host: str, port: int, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + min(timeout, 300.0)
    last = ""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return {"ok": True, "elapsed_ms": (time.monotonic() - started) * 1000}
        except OSError as error:
            last = str(error)
            time.sleep(0.05)
    return {"ok": False, "error": last, "elapsed_ms": (time.monotonic() - started) * 1000}


def wait_http(client: httpx.Client, url: str, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + min(timeout, 300.0)
    last = ""
    while time.monotonic() < deadline:
        try:
            response = client.get(url, timeout=2.0)
            return {"ok": True, "status": response.status_code, "elapsed_ms": (time.monotonic() - started) * 1000}
        except httpx.HTTPError as error:
            last = f"{error.__class__.__name__}: {error}"
            time.sleep(0.1)
    return {"ok": False, "error": last, "elapsed_ms": (time.monotonic() - started) * 1000}


def tcp_rtt(host: str, port: int, count: int) -> dict[str, Any]:
    samples = []
    for _ in range(max(1, min(count, 1000))):
        started = time.perf_counter()
        with socket.create_connection((host, port), timeout=2.0):
            samples.append((time.perf_counter() - started) * 1000)
    return {"ok": True, "min_ms": min(samples), "median_ms": statistics.median(samples)}


def main() -> None:
    with httpx.Client() as client:
        for line in sys.stdin:
            if not line.strip():
                continue
            request = json.loads(line)
            op = request.get("op")
            try:
                if op == "http":
                    answer = http(client, request)
                elif op == "wait_tcp":
                    answer = wait_tcp(request["host"], int(request["port"]), float(request.get("timeout", 30)))
                elif op == "wait_http":
                    answer = wait_http(client, request["url"], float(request.get("timeout", 60)))
                elif op == "tcp_rtt":
                    answer = tcp_rtt(request["host"], int(request["port"]), int(request.get("count", 20)))
                else:
                    answer = {"error": f"unknown op {op!r}"}
            except Exception as error:
                answer = {"error": f"{error.__class__.__name__}: {error}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
