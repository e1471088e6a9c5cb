"""One structured log line per request, and Prometheus metrics."""

from __future__ import annotations

import json
import logging
import re

import pytest

import metrics
from api_helpers import make_user_with_card
from conftest import TOKENS, Api


async def test_each_request_logs_one_json_line_without_secrets(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    _, card = await make_user_with_card(api, balance=1000)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="travel.access"):
        read = await api.http.get(f"/cards/{card['card_id']}/balance", headers={"X-Request-ID": "trace-42"})
        write = await api.http.post("/recharges", headers={**api.auth("recharge_point"), "Idempotency-Key": "k-obs"},
                                    json={"card_id": card["card_id"], "amount": 4321})
    lines = [record for record in caplog.records if record.name == "travel.access"]
    formatted = [json.loads(metrics.JSONFormatter().format(record)) for record in lines]

    assert read.headers["x-request-id"] == "trace-42"
    assert [line["request"]["status"] for line in formatted] == [200, 201]
    first = formatted[0]["request"]
    assert (first["id"], first["method"], first["route"], first["cache"]) == \
        ("trace-42", "GET", "/api/v1/cards/{card_id}/balance", "MISS")
    assert formatted[1]["request"]["id"] == write.headers["x-request-id"]
    assert all(line["request"]["ms"] > 0 for line in formatted)
    text = "\n".join(json.dumps(line) for line in formatted)
    for secret in (TOKENS["recharge_point"], "4321", "k-obs"):
        assert secret not in text


@pytest.mark.parametrize("request_id", ["x" * 65, "bad id", "a\"b", ""])
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
    for name in ("travel_cache_hits_total", "travel_cache_misses_total", "travel_db_pool_size",
                 "travel_db_pool_idle", "travel_db_in_flight", "travel_database_unavailable_total"):
        assert f"\n{name} " in text, name
