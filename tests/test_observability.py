"""The request log (one JSON line per request, buffered) and Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.support.api import make_user_with_card
from tests.support.polling import eventually_async
from tests.support.stack import TOKENS, Api, serve_api
from travel.observability import logs
from travel.settings import Settings
from travel.startup.embedded import EmbeddedStack


def access_lines(text: str) -> list[dict[str, Any]]:
    """The request log's lines in `text` (other lines, and other output, are skipped)."""
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "travel.access"]


def without_counters(text: str) -> str:
    """`text` with each JSON line's time, request id and duration left out."""
    kept = []
    for line in text.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            record.pop("ts", None)
            if isinstance(record.get("request"), dict):
                record["request"] = {k: v for k, v in record["request"].items() if k not in ("id", "ms")}
            line = json.dumps(record, ensure_ascii=False)
        kept.append(line)
    return "\n".join(kept)


@pytest.fixture
async def logged_api(
    database_url: str, stack: EmbeddedStack, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Api]:
    """The real server with its request log on (travel.access at INFO, as LOG_LEVEL=info)."""
    caplog.set_level(logging.INFO, logger="travel.access")
    async with serve_api(database_url, stack.redis.url) as running:
        yield running
    logs.ACCESS_LOG.flush()


async def test_each_request_logs_one_json_line_in_order_without_secrets(
    logged_api: Api, capfd: pytest.CaptureFixture[str]
) -> None:
    api = logged_api
    _, card = await make_user_with_card(api, balance=1000)
    logs.ACCESS_LOG.flush()
    capfd.readouterr()
    read = await api.http.get(f"/cards/{card['card_id']}/balance", headers={"X-Request-ID": "trace-42"})
    write = await api.http.post(
        "/recharges",
        headers={**api.auth("recharge_point"), "Idempotency-Key": "k-obs"},
        json={"card_id": card["card_id"], "amount": 4321},
    )
    more = [await api.http.get("/routes") for _ in range(20)]
    assert capfd.readouterr().err == ""  # buffered: not one write per request
    logs.ACCESS_LOG.flush()
    text = capfd.readouterr().err
    lines = access_lines(text)

    assert read.headers["x-request-id"] == "trace-42"
    assert [line["request"]["id"] for line in lines] == [
        response.headers["x-request-id"] for response in (read, write, *more)
    ]
    assert [line["request"]["status"] for line in lines] == [200, 201] + [200] * 20
    first = lines[0]
    assert set(first) == {"ts", "level", "logger", "msg", "request"}
    assert (first["level"], first["logger"], first["msg"]) == ("info", "travel.access", "request")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert first["request"] == {
        **first["request"],
        "id": "trace-42",
        "method": "GET",
        "path": f"/api/v1/cards/{card['card_id']}/balance",
        "route": "/api/v1/cards/{card_id}/balance",
        "status": 200,
        "cache": "MISS",
    }
    assert set(first["request"]) == {"id", "method", "path", "route", "status", "ms", "cache"}
    assert lines[1]["request"]["cache"] is None and lines[-1]["request"]["cache"] == "HIT"
    assert all(line["request"]["ms"] > 0 for line in lines)
    # Nothing of a request is logged but these fields: no body value, no header.
    assert all(set(line["request"]) == set(first["request"]) for line in lines)
    for secret in (TOKENS["recharge_point"], "k-obs"):
        assert secret not in text
    # The amount is digits, which a request id, a time or a duration may hold by chance (the ids
    # count this process's requests): it is looked for everywhere but there.
    assert "4321" not in without_counters(text)


async def test_a_warning_follows_the_request_lines_buffered_before_it(
    logged_api: Api, capfd: pytest.CaptureFixture[str]
) -> None:
    """Errors and warnings are written at once, after what the request log held: one file in time order."""
    handler = logs.StderrHandler()
    handler.setFormatter(logs.JSONFormatter())
    await logged_api.http.get("/routes")
    handler.emit(logging.LogRecord("travel.api", logging.WARNING, __file__, 1, "redis read failed", None, None))
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines()]
    assert [(line["logger"], line["level"]) for line in lines] == [("travel.access", "info"), ("travel.api", "warning")]


@pytest.mark.parametrize("settings", [{"access_log": False}, {}], ids=["ACCESS_LOG=off", "LOG_LEVEL=warning"])
async def test_the_request_log_is_off_with_access_log_off_or_above_info(
    database_url: str,
    stack: EmbeddedStack,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    settings: dict[str, Any],
) -> None:
    caplog.set_level(logging.INFO if settings else logging.WARNING, logger="travel.access")
    async with serve_api(database_url, stack.redis.url, **settings) as api:
        assert (await api.http.get("/routes")).status_code == 200
    logs.ACCESS_LOG.flush()
    assert access_lines(capfd.readouterr().err) == []


@pytest.fixture
def message_socket() -> Any:
    """A socket pair that keeps each write() a message of its own (SOCK_SEQPACKET)."""
    writer, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    reader.setblocking(False)
    yield writer, reader
    writer.close()
    reader.close()


def writes(reader: socket.socket) -> list[bytes]:
    found = []
    while True:
        try:
            found.append(reader.recv(1 << 20))
        except BlockingIOError:
            return found


async def test_a_full_buffer_is_written_in_whole_lines_of_at_most_pipe_buf(message_socket: Any) -> None:
    """With other workers on the same stderr (WORKERS > 1)."""
    writer, reader = message_socket
    access = logs.AccessLog(writer.fileno())
    access.share_with_workers(True)
    count = 0
    while not (found := writes(reader)):  # until the buffer passes 32 KiB by itself
        path = f"/api/v1/cards/{count}/balance" + "x" * (count % 97)
        access.request(b"r-%d" % count, "GET", path, "/api/v1/cards/{card_id}/balance", 200, 0.0004, b"HIT")
        count += 1
    access.request(b"long", "GET", "/" + "y" * 3 * logs.ATOMIC_WRITE, "unmatched", 404, 0.001, b"")
    access.flush()
    found += writes(reader)

    assert sum(map(len, found)) >= logs.BUFFER_BYTES
    assert all(chunk.endswith(b"\n") for chunk in found)  # never a line split between writes
    assert all(len(chunk) <= logs.ATOMIC_WRITE for chunk in found[:-1])
    assert found[-1].count(b"\n") == 1  # the one line longer than PIPE_BUF: alone in its write
    lines = [json.loads(line) for chunk in found for line in chunk.splitlines()]
    assert [line["request"]["id"] for line in lines] == [f"r-{n}" for n in range(count)] + ["long"]


async def test_a_lone_worker_writes_its_full_buffer_at_once(message_socket: Any) -> None:
    writer, reader = message_socket
    access = logs.AccessLog(writer.fileno())
    count = 0
    while not (found := writes(reader)):
        access.request(
            b"r-%d" % count,
            "GET",
            f"/api/v1/cards/{count}/balance",
            "/api/v1/cards/{card_id}/balance",
            200,
            0.0004,
            b"MISS",
        )
        count += 1
    written = b"".join(found)
    # One write of the whole buffer (a socket may take it in two parts): not 8 of PIPE_BUF.
    assert len(found) <= 2 and len(written) >= logs.BUFFER_BYTES and written.endswith(b"\n")
    assert [json.loads(line)["request"]["id"] for line in written.splitlines()] == [f"r-{n}" for n in range(count)]


@pytest.mark.slow  # waits for the log's one-second flush
async def test_lines_are_written_within_a_second_without_more_traffic(message_socket: Any) -> None:
    writer, reader = message_socket
    access = logs.AccessLog(writer.fileno())
    access.request(b"lonely", "GET", "/api/v1/routes", "/api/v1/routes", 200, 0.0004, b"HIT")
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert writes(reader) == []
    chunk = await asyncio.wait_for(loop.sock_recv(reader, 65536), timeout=logs.FLUSH_SECONDS + 2)
    assert json.loads(chunk)["request"]["id"] == "lonely"
    assert loop.time() - started <= logs.FLUSH_SECONDS + 0.5


@pytest.mark.parametrize("request_id", ["x" * 65, "bad id", 'a"b', ""])
async def test_an_unsafe_request_id_is_replaced(api: Api, request_id: str) -> None:
    response = await api.http.get("/health", headers={"X-Request-ID": request_id})
    assert response.headers["x-request-id"] != request_id
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9]+", response.headers["x-request-id"])


async def test_metrics_expose_requests_latency_cache_and_pool(api: Api) -> None:
    await api.http.get("/trips/total")
    await api.http.get("/trips/total")
    text = (await api.http.get(api.url + "/metrics")).text
    assert 'travel_requests_total{method="GET",route="/api/v1/trips/total",status="200"}' in text
    assert 'travel_request_seconds_bucket{le="0.005",route="/api/v1/trips/total"}' in text
    for name in (
        "travel_cache_hits_total",
        "travel_cache_misses_total",
        "travel_cache_loads_total",
        "travel_db_pool_size",
        "travel_db_pool_idle",
        "travel_db_in_flight",
        "travel_database_unavailable_total",
    ):
        assert f"\n{name} " in text, name


def served_with_status(text: str, route: str, status: int) -> float:
    pattern = rf'^travel_requests_total\{{method="\w+",route="{re.escape(route)}",status="{status}"\}} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))


async def test_a_client_gone_mid_body_is_499_without_a_500_or_a_traceback(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    port = int(api.url.rsplit(":", 1)[1])
    route = "/api/v1/recharges"
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /api/v1/recharges HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + TOKENS["admin"].encode() + b'\r\nContent-Length: 100\r\n\r\n{"card_'
    )
    await writer.drain()
    writer.close()  # 93 bytes short
    await writer.wait_closed()

    async def counted() -> str | None:
        text = (await api.http.get(api.url + "/metrics")).text
        return text if served_with_status(text, route, 499) >= 1 else None

    text = await eventually_async(counted, 10, "the disconnect counted as 499", every=0)
    assert served_with_status(text, route, 500) == 0
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []


async def test_a_client_gone_mid_answer_is_499(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """An ASGI 2.4 server's send raises OSError once the client has gone (uvicorn's drops the
    answer instead): a fault injected here, as a real server cannot be made to raise it."""
    received: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def gone(message: dict[str, Any]) -> None:
        received.append(message)
        raise ConnectionResetError("client went away")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/api/v1/routes",
        "raw_path": b"/api/v1/routes",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"x")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": dict(api.state),
    }
    app: Any = api.app
    await app(scope, receive, gone)

    text = (await api.http.get(api.url + "/metrics")).text
    assert served_with_status(text, "/api/v1/routes", 499) == 1
    assert served_with_status(text, "/api/v1/routes", 500) == 0
    assert [message["type"] for message in received] == ["http.response.start"]
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []


def test_settings_read_access_log_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCESS_LOG", "off")
    assert Settings.from_env().access_log is False
    monkeypatch.delenv("ACCESS_LOG")
    assert Settings.from_env().access_log is True
