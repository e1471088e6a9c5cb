"""The HTTP API's happy paths (docs/design.md: who may read what) and its cache over HTTP (§6), on the real server.

Writes that succeed are here too (their bodies are part of the contract); refusals are in
test_api_errors.py, concurrency and roles in test_api_writes.py.
"""

from __future__ import annotations

import datetime as dt
import operator
import re
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

import cachekeys
import server
from tests.support.api import (
    CABLE_FARE,
    SITP_FARE,
    TRANSFER_FARE,
    board,
    end_trip,
    execute,
    fetch,
    fetchval,
    get_cached,
    json_body,
    make_card,
    make_user,
    make_user_with_card,
    recharge,
    set_status,
    user_fields,
)
from tests.support.stack import Api
from travel import models
from travel.endpoints.openapi import openapi_document

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def recent(value: str, seconds: float = 60) -> dt.datetime:
    """An ISO 8601 timestamp with a zone, within `seconds` of now."""
    assert ISO.match(value), value
    moment = dt.datetime.fromisoformat(value)
    assert abs((dt.datetime.now(dt.UTC) - moment).total_seconds()) < seconds, value
    return moment


async def fare_ids(api: Api) -> dict[str, int]:
    return {row["fare_type"]: row["fare_id"] for row in await fetch(api, "SELECT fare_type, fare_id FROM fares")}


async def locality_ids(api: Api) -> dict[str, int]:
    return {row["name"]: row["location_id"] for row in await fetch(api, "SELECT name, location_id FROM locations")}


# ---------------------------------------------------------------- service
async def test_health_reports_both_backends(api: Api) -> None:
    response = await api.http.get("/health")
    assert json_body(response) == {"status": "ok", "database": "ok", "cache": "ok"}
    assert "x-cache" not in response.headers


async def test_metrics_are_prometheus_text_with_requests_and_cache_counters(api: Api) -> None:
    def value(text: str, name: str) -> float:
        found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        assert found, name
        return float(found.group(1))

    before = (await api.http.get(api.url + "/metrics")).text
    await get_cached(api, "/trips/total", "MISS")
    await get_cached(api, "/trips/total", "HIT")
    response = await api.http.get(api.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE travel_requests_total counter" in text
    assert re.search(r'^travel_requests_total\{[^}]*route="/api/v1/trips/total"[^}]*\} \d', text, re.MULTILINE)
    assert value(text, "travel_cache_hits_total") == value(before, "travel_cache_hits_total") + 1
    assert value(text, "travel_cache_misses_total") == value(before, "travel_cache_misses_total") + 1


async def test_openapi_lists_every_operation_with_body_schemas(api: Api) -> None:
    document = json_body(await api.http.get(api.url + "/openapi.json"))
    assert document["openapi"].startswith("3.")
    schemas = document["components"]["schemas"]
    for operation in server.ENDPOINTS:
        entry = document["paths"].get(operation.path, {}).get(operation.method.lower())
        assert entry is not None, (operation.method, operation.path)
        assert str(operation.status) in entry["responses"]
        if operation.body is not None:
            ref = entry["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            name = ref.removeprefix("#/components/schemas/")
            assert ref.startswith("#/components/schemas/") and name in schemas, ref
            assert set(schemas[name]["properties"]) == set(operation.body.__struct_fields__)
        else:
            assert "requestBody" not in entry


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_doc_viewers_load_only_local_assets(api: Api, page: str) -> None:
    response = await api.http.get(api.url + page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "http://" not in html and "https://" not in html
    assets = re.findall(r'(?:src|href|spec-url)\s*=\s*["\']([^"\']+)["\']', html)
    assets += re.findall(r'url:\s*["\']([^"\']+)["\']', html)
    assert assets, html
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), asset
        fetched = await api.http.get(api.url + asset)
        assert fetched.status_code == 200, asset
        assert len(fetched.content) > 0, asset
    assert "/openapi.json" in assets


# ---------------------------------------------------------------- users and cards
async def test_register_user_answers_201_with_the_whole_user(api: Api) -> None:
    fields = user_fields(
        contact_number="+57 300 123 4567",
        gender="F",
        date_of_birth="1990-05-17",
        residential_address="Calle 1 # 2-3",
        city_of_birth="Bogotá",
    )
    response = await api.http.post("/users", headers=api.auth("admin"), json=fields)
    user = json_body(response, 201)
    stored_email = await fetchval(api, "SELECT email FROM users WHERE user_id = $1", user.pop("user_id"))
    assert stored_email == fields["email"]  # the id names the stored user
    recent(user.pop("registration_date"))
    assert user == fields

    minimal = user_fields()
    user = await make_user(api, **minimal)
    assert {
        k: user[k] for k in ("contact_number", "gender", "date_of_birth", "residential_address", "city_of_birth")
    } == dict.fromkeys(("contact_number", "gender", "date_of_birth", "residential_address", "city_of_birth"))


async def test_user_count_latest_and_active_count(api: Api) -> None:
    assert json_body(await api.http.get("/users/count")) == {"count": 0}
    assert json_body(await api.http.get("/users/active/count")) == {"count": 0}
    assert json_body(await api.http.get("/users/latest", headers=api.auth("admin"))) == []

    users = [await make_user(api) for _ in range(12)]
    assert json_body(await api.http.get("/users/count")) == {"count": 12}
    assert json_body(await api.http.get("/users/active/count")) == {"count": 0}  # nobody holds a card
    latest = json_body(await api.http.get("/users/latest", headers=api.auth("admin")))
    assert latest == users[::-1][:10]  # newest first, the whole user

    card = await make_card(api, users[0]["user_id"])
    await make_card(api, users[1]["user_id"])
    assert json_body(await api.http.get("/users/active/count")) == {"count": 2}
    await set_status(api, card["card_id"], "lost")  # a user with only a lost card is not active
    assert json_body(await api.http.get("/users/active/count")) == {"count": 1}
    second = await make_card(api, users[0]["user_id"])  # a replacement card makes them active again
    assert json_body(await api.http.get("/users/active/count")) == {"count": 2}
    await set_status(api, second["card_id"], "blocked")
    assert json_body(await api.http.get("/users/active/count")) == {"count": 1}
    assert "x-cache" not in (await api.http.get("/users/count")).headers


async def test_issue_card_generates_a_number_with_balance_0_and_active(api: Api) -> None:
    user = await make_user(api)
    response = await api.http.post("/cards", headers=api.auth("admin"), json={"user_id": user["user_id"]})
    card = json_body(response, 201)
    assert set(card) == {
        "card_id",
        "card_number",
        "user_id",
        "acquisition_date",
        "status",
        "balance",
        "last_used_date",
        "update_date",
    }
    assert (
        await fetchval(api, "SELECT card_number FROM cards WHERE card_id = $1", card["card_id"]) == card["card_number"]
    )  # the id names the stored card
    assert re.fullmatch(r"[0-9]{8,20}", card["card_number"])
    assert (card["user_id"], card["status"], card["balance"], card["last_used_date"]) == (
        user["user_id"],
        "active",
        0,
        None,
    )
    recent(card["acquisition_date"])
    recent(card["update_date"])
    other = await make_card(api, user["user_id"])
    assert other["card_number"] != card["card_number"]

    chosen = await make_card(api, user["user_id"], "0012345678901")
    assert chosen["card_number"] == "0012345678901"
    assert await fetchval(api, "SELECT count(*) FROM cards WHERE user_id = $1", user["user_id"]) == 3


async def test_generated_card_number_skips_numbers_issued_by_hand(api: Api) -> None:
    """A card issued with an explicit number must not make later generated issues fail."""
    user = await make_user(api)
    first = await make_card(api, user["user_id"])
    following = str(int(first["card_number"]) + 1)
    await make_card(api, user["user_id"], following)  # e.g. a migrated card
    response = await api.http.post("/cards", headers=api.auth("admin"), json={"user_id": user["user_id"]})
    card = json_body(response, 201)
    assert card["card_number"] not in (first["card_number"], following)


async def test_patch_card_status_answers_the_card(api: Api) -> None:
    _, card = await make_user_with_card(api, 5000)
    for status in ("blocked", "lost", "inactive", "active"):
        response = await api.http.patch(f"/cards/{card['card_id']}", headers=api.auth("admin"), json={"status": status})
        changed = json_body(response)
        assert changed["status"] == status
        assert {k: changed[k] for k in ("card_id", "card_number", "user_id", "balance")} == {
            k: card[k] for k in ("card_id", "card_number", "user_id", "balance")
        }
        assert await fetchval(api, "SELECT status FROM cards WHERE card_id = $1", card["card_id"]) == status


# ---------------------------------------------------------------- recharges
async def test_recharge_answers_201_with_the_new_balance(api: Api) -> None:
    _user, card = await make_user_with_card(api)
    response = await recharge(api, card["card_id"], 20_000)
    answer = json_body(response, 201)
    assert set(answer) == {"recharge_id", "card_id", "amount", "balance", "recharge_timestamp", "recharge_point_id"}
    stored = await fetch(api, "SELECT card_id, amount FROM recharges WHERE recharge_id = $1", answer["recharge_id"])
    assert [tuple(row) for row in stored] == [(card["card_id"], 20_000)]  # the id names the stored recharge
    assert (answer["card_id"], answer["amount"], answer["balance"], answer["recharge_point_id"]) == (
        card["card_id"],
        20_000,
        20_000,
        None,
    )
    recent(answer["recharge_timestamp"])
    assert "idempotent-replayed" not in response.headers

    keyed = json_body(await recharge(api, card["card_id"], 1, key="till-7/receipt-1"), 201)
    assert (keyed["amount"], keyed["balance"]) == (1, 20_001)
    assert keyed["recharge_id"] != answer["recharge_id"]
    replay = await recharge(api, card["card_id"], 1, key="till-7/receipt-1")
    assert json_body(replay, 201) == keyed
    assert replay.headers["idempotent-replayed"] == "true"

    at_point = json_body(await recharge(api, card["card_id"], 1_000_000, role="recharge_point"), 201)
    assert (at_point["recharge_point_id"], at_point["balance"]) == (1, 1_020_001)
    own_point = json_body(await recharge(api, card["card_id"], 5, role="recharge_point", recharge_point_id=1), 201)
    assert own_point["recharge_point_id"] == 1
    admin_names_a_point = json_body(await recharge(api, card["card_id"], 10, recharge_point_id=2), 201)
    assert (admin_names_a_point["recharge_point_id"], admin_names_a_point["balance"]) == (2, 1_020_016)
    rows = await fetch(
        api, "SELECT recharge_point_id, amount FROM recharges WHERE card_id = $1 ORDER BY recharge_id", card["card_id"]
    )
    assert [tuple(row) for row in rows] == [(None, 20_000), (None, 1), (1, 1_000_000), (1, 5), (2, 10)]
    assert await fetchval(api, "SELECT balance FROM cards WHERE card_id = $1", card["card_id"]) == 1_020_016


async def test_user_recharges_newest_first_across_cards(api: Api) -> None:
    user = await make_user(api)
    assert await get_cached(api, f"/users/{user['user_id']}/recharges", "MISS", "admin") == []
    first = await make_card(api, user["user_id"])
    second = await make_card(api, user["user_id"])
    made = []
    for card, amount in ((first, 1000), (second, 2000), (first, 3000)):
        made.append(json_body(await recharge(api, card["card_id"], amount, role="recharge_point"), 201))
    _other_user, _other_card = await make_user_with_card(api, 777)  # not theirs
    listed = await get_cached(api, f"/users/{user['user_id']}/recharges", "MISS", "admin")
    transactions = {
        row["recharge_id"]: row["transaction_id"]
        for row in await fetch(api, "SELECT recharge_id, transaction_id FROM recharges")
    }
    numbers = {first["card_id"]: first["card_number"], second["card_id"]: second["card_number"]}
    assert listed == [
        {
            "recharge_id": r["recharge_id"],
            "card_id": r["card_id"],
            "card_number": numbers[r["card_id"]],
            "amount": r["amount"],
            "recharge_timestamp": r["recharge_timestamp"],
            "recharge_point_id": 1,
            "transaction_id": transactions[r["recharge_id"]],
        }
        for r in reversed(made)
    ]


# ---------------------------------------------------------------- trips
async def test_boarding_charges_fares_and_transfers(api: Api) -> None:
    fares = await fare_ids(api)
    _, card = await make_user_with_card(api, 10_000)
    response = await board(api, card["card_id"], 1, 1)
    first = json_body(response, 201)
    assert set(first) == {
        "trip_id",
        "card_id",
        "route_id",
        "boarding_station_id",
        "boarding_time",
        "fare_id",
        "fare_charged",
        "is_transfer",
        "transfer_group_id",
        "balance",
    }
    recent(first["boarding_time"])
    assert {k: v for k, v in first.items() if k not in ("trip_id", "boarding_time")} == {
        "card_id": card["card_id"],
        "route_id": 1,
        "boarding_station_id": 1,
        "fare_id": fares["STANDARD_SITP"],
        "fare_charged": SITP_FARE,
        "is_transfer": False,
        "transfer_group_id": None,
        "balance": 10_000 - SITP_FARE,
    }

    transfer = json_body(await board(api, card["card_id"], 2, 3), 201)  # another bus route within 90 min
    assert (
        transfer["fare_id"],
        transfer["fare_charged"],
        transfer["is_transfer"],
        transfer["transfer_group_id"],
        transfer["balance"],
    ) == (fares["TRANSFER_200_COST"], TRANSFER_FARE, True, first["trip_id"], 10_000 - SITP_FARE - TRANSFER_FARE)
    cable = json_body(await board(api, card["card_id"], 3, 3), 201)  # onto TransMiCable: free
    assert (
        cable["fare_id"],
        cable["fare_charged"],
        cable["is_transfer"],
        cable["transfer_group_id"],
        cable["balance"],
    ) == (fares["TRANSFER_0_COST"], 0, True, first["trip_id"], 10_000 - SITP_FARE - TRANSFER_FARE)
    again = json_body(await board(api, card["card_id"], 3, 4), 201)  # the same route again: a new fare
    assert (again["fare_id"], again["fare_charged"], again["is_transfer"], again["balance"]) == (
        fares["STANDARD_CABLE"],
        CABLE_FARE,
        False,
        10_000 - SITP_FARE - TRANSFER_FARE - CABLE_FARE,
    )
    assert await fetchval(api, "SELECT balance FROM cards WHERE card_id = $1", card["card_id"]) == again["balance"]
    assert (
        json_body(await api.http.get(f"/cards/{card['card_id']}/balance"))["last_used_date"] == again["boarding_time"]
    )


async def test_boarding_after_90_minutes_is_a_full_fare(api: Api) -> None:
    _, card = await make_user_with_card(api, 10_000)
    first = json_body(await board(api, card["card_id"], 1), 201)
    await execute(
        api, "UPDATE trips SET boarding_time = now() - interval '91 minutes' WHERE trip_id = $1", first["trip_id"]
    )
    later = json_body(await board(api, card["card_id"], 2, 3), 201)
    assert (later["fare_charged"], later["is_transfer"], later["balance"]) == (SITP_FARE, False, 10_000 - 2 * SITP_FARE)


async def test_end_trip_and_get_trip(api: Api) -> None:
    fares = await fare_ids(api)
    _, card = await make_user_with_card(api, 5000)
    boarded = json_body(await board(api, card["card_id"], 1, 1), 201)
    trip_path = f"/trips/{boarded['trip_id']}"
    open_trip = await get_cached(api, trip_path, "MISS")
    assert open_trip == {
        "trip_id": boarded["trip_id"],
        "card_id": card["card_id"],
        "vehicle_id": None,
        "route_id": 1,
        "boarding_station_id": 1,
        "disembarking_station_id": None,
        "boarding_time": boarded["boarding_time"],
        "disembarking_time": None,
        "fare_id": fares["STANDARD_SITP"],
        "fare_charged": SITP_FARE,
        "is_transfer": False,
        "transfer_group_id": None,
        "driver_id": None,
    }

    ended = json_body(await end_trip(api, boarded["trip_id"], 2))
    disembarked = recent(ended["disembarking_time"])
    assert disembarked >= dt.datetime.fromisoformat(boarded["boarding_time"])
    assert ended == {**open_trip, "disembarking_station_id": 2, "disembarking_time": ended["disembarking_time"]}
    assert await get_cached(api, trip_path, "MISS") == ended
    assert await get_cached(api, trip_path, "HIT") == ended
    assert await fetchval(api, "SELECT balance FROM cards WHERE card_id = $1", card["card_id"]) == 5000 - SITP_FARE


async def test_card_trips_newest_first_and_empty_for_a_card_without_trips(api: Api) -> None:
    _, card = await make_user_with_card(api, 20_000)
    _, idle = await make_user_with_card(api)
    assert await get_cached(api, f"/trips/card/{idle['card_id']}", "MISS") == []
    assert await get_cached(api, f"/trips/card/{idle['card_id']}", "HIT") == []
    boarded = [
        json_body(await board(api, card["card_id"], route, station), 201) for route, station in ((1, 1), (2, 3), (1, 2))
    ]
    await end_trip(api, boarded[0]["trip_id"], 2)
    listed = await get_cached(api, f"/trips/card/{card['card_id']}", "MISS")
    assert [trip["trip_id"] for trip in listed] == [trip["trip_id"] for trip in reversed(boarded)]
    for trip in listed:
        assert trip == json_body(await api.http.get(f"/trips/{trip['trip_id']}"))
    assert listed[-1]["disembarking_station_id"] == 2
    assert [trip["fare_charged"] for trip in listed] == [
        TRANSFER_FARE,
        TRANSFER_FARE,
        SITP_FARE,
    ]  # back on route 1: a transfer too


async def test_card_balance(api: Api) -> None:
    _, card = await make_user_with_card(api, 4000)
    assert await get_cached(api, f"/cards/{card['card_id']}/balance", "MISS") == {
        "card_id": card["card_id"],
        "balance": 4000,
        "status": "active",
        "last_used_date": None,
    }


async def test_totals_localities_and_revenue_follow_the_trips(api: Api, redis_client: aioredis.Redis) -> None:
    places = await locality_ids(api)
    assert json_body(await api.http.get("/trips/total")) == {
        "total_trips": 0,
        "completed_trips": 0,
        "active_trips": 0,
        "total_revenue": 0,
    }
    assert json_body(await api.http.get("/trips/total/localities")) == []
    assert json_body(await api.http.get("/finance/revenue")) == {"total_revenue": 0, "currency": "COP"}
    assert json_body(await api.http.get("/finance/revenue/localities")) == []

    _, a = await make_user_with_card(api, 10_000)
    _, b = await make_user_with_card(api, 10_000)
    first = json_body(await board(api, a["card_id"], 1, 1), 201)  # Usaquén, 2950
    json_body(await board(api, a["card_id"], 2, 3), 201)  # Tunjuelito, transfer 200
    json_body(await board(api, b["card_id"], 3, 4), 201)  # Ciudad Bolívar, cable 2950
    json_body(await end_trip(api, first["trip_id"], 2))
    await redis_client.flushdb()  # the figures below come from PostgreSQL

    revenue = SITP_FARE + TRANSFER_FARE + CABLE_FARE
    assert json_body(await api.http.get("/trips/total")) == {
        "total_trips": 3,
        "completed_trips": 1,
        "active_trips": 2,
        "total_revenue": revenue,
    }
    assert json_body(await api.http.get("/finance/revenue")) == {"total_revenue": revenue, "currency": "COP"}
    usaquen, tunjuelito, bolivar = places["Usaquén"], places["Tunjuelito"], places["Ciudad Bolívar"]
    expected_trips = sorted(
        [
            {"location_id": usaquen, "locality": "Usaquén", "total_trips": 1, "completed_trips": 1, "active_trips": 0},
            {
                "location_id": tunjuelito,
                "locality": "Tunjuelito",
                "total_trips": 1,
                "completed_trips": 0,
                "active_trips": 1,
            },
            {
                "location_id": bolivar,
                "locality": "Ciudad Bolívar",
                "total_trips": 1,
                "completed_trips": 0,
                "active_trips": 1,
            },
        ],
        key=operator.itemgetter("location_id"),
    )
    assert json_body(await api.http.get("/trips/total/localities")) == expected_trips
    assert json_body(await api.http.get("/finance/revenue/localities")) == [
        *sorted(
            (
                {"location_id": usaquen, "locality": "Usaquén", "total_revenue": SITP_FARE, "currency": "COP"},
                {"location_id": bolivar, "locality": "Ciudad Bolívar", "total_revenue": CABLE_FARE, "currency": "COP"},
            ),
            key=operator.itemgetter("location_id"),
        ),
        {"location_id": tunjuelito, "locality": "Tunjuelito", "total_revenue": TRANSFER_FARE, "currency": "COP"},
    ]
    # The maintained figures agree with the trips themselves.
    row = (await fetch(api, "SELECT count(*), count(disembarking_time), sum(fare_charged) FROM trips"))[0]
    assert tuple(row) == (3, 1, revenue)


async def test_routes_and_stations_are_the_whole_reference_data(api: Api) -> None:
    places = await locality_ids(api)
    routes = await get_cached(api, "/routes", "MISS")
    assert routes == [
        {
            "route_id": 1,
            "route_code": "B74",
            "route_name": "Portal Norte - Calle 100",
            "route_type": "TRUNK",
            "origin_station_id": 1,
            "destination_station_id": 2,
            "is_active": True,
        },
        {
            "route_id": 2,
            "route_code": "H20",
            "route_name": "Tunal - Portal Norte",
            "route_type": "TRUNK",
            "origin_station_id": 3,
            "destination_station_id": 1,
            "is_active": True,
        },
        {
            "route_id": 3,
            "route_code": "TC1",
            "route_name": "TransMiCable Tunal - Mirador",
            "route_type": "CABLE",
            "origin_station_id": 3,
            "destination_station_id": 4,
            "is_active": True,
        },
        {
            "route_id": 4,
            "route_code": "X99",
            "route_name": "Retired route",
            "route_type": "ZONAL",
            "origin_station_id": 1,
            "destination_station_id": 3,
            "is_active": False,
        },
    ]
    assert await get_cached(api, "/routes", "HIT") == routes

    def station(station_id: int, name: str, code: str, kind: str, locality: str) -> dict[str, Any]:
        return {
            "station_id": station_id,
            "name": name,
            "station_code": code,
            "station_type": kind,
            "location_id": places[locality],
            "locality": locality,
            "latitude": None,
            "longitude": None,
            "is_active": True,
        }

    stations = await get_cached(api, "/stations", "MISS")
    assert stations == [
        station(4, "Mirador del Paraíso", "TC-001", "CABLE", "Ciudad Bolívar"),
        station(1, "Portal Norte", "TM-001", "PORTAL", "Usaquén"),
        station(2, "Calle 100", "TM-002", "TRUNK", "Chapinero"),
        station(3, "Tunal", "TM-003", "PORTAL", "Tunjuelito"),
    ]
    assert await get_cached(api, "/stations", "HIT") == stations


# ---------------------------------------------------------------- the cache over HTTP
CACHED_READS = [
    "/trips/total",
    "/trips/total/localities",
    "/finance/revenue",
    "/finance/revenue/localities",
    "/routes",
    "/stations",
    "/cards/{card}/balance",
    "/trips/card/{card}",
    "/trips/{trip}",
    "/users/{user}/recharges",
    "/trips/hourly",
    "/trips/hourly?hours=168",
]


async def test_every_cached_read_is_a_miss_then_a_hit_with_the_same_body(api: Api) -> None:
    user, card = await make_user_with_card(api, 9000)
    trip = json_body(await board(api, card["card_id"]), 201)
    for template in CACHED_READS:
        path = template.format(card=card["card_id"], trip=trip["trip_id"], user=user["user_id"])
        miss = await api.http.get(path, headers=api.auth("admin"))  # public reads ignore it
        hit = await api.http.get(path, headers=api.auth("admin"))
        assert (miss.status_code, hit.status_code) == (200, 200), path
        assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT"), path
        assert hit.content == miss.content, path
        assert hit.headers["content-type"] == "application/json"


def path_of(key: bytes, card: int, user: int, trip: int) -> str:
    """The read that a cache key (cachekeys.py) stands for."""
    paths = {
        cachekeys.card_balance(card): f"/cards/{card}/balance",
        cachekeys.card_trips(card): f"/trips/card/{card}",
        cachekeys.user_recharges(user): f"/users/{user}/recharges",
        cachekeys.trip(trip): f"/trips/{trip}",
        cachekeys.trips_total(): "/trips/total",
        cachekeys.trips_by_locality(): "/trips/total/localities",
        cachekeys.revenue_total(): "/finance/revenue",
        cachekeys.revenue_by_locality(): "/finance/revenue/localities",
        cachekeys.trips_hourly.family_name: "/trips/hourly",
    }  # the family: every N, here the default
    return paths[key]


async def prime(api: Api, paths: list[str]) -> dict[str, Any]:
    """Read each path until it is cached; returns what the cache holds."""
    held = {}
    for path in paths:
        await api.http.get(path, headers=api.auth("admin"))  # public reads ignore it
        held[path] = await get_cached(api, path, "HIT", "admin")
    return held


async def test_each_write_makes_its_stale_keys_miss_with_the_new_value(api: Api) -> None:
    user, card = await make_user_with_card(api, 10_000)
    card_id, user_id = card["card_id"], user["user_id"]
    earlier = json_body(await board(api, card_id, 1, 1), 201)  # so that every key has a value to hold
    every = sorted(
        {
            path_of(key, card_id, user_id, earlier["trip_id"])
            for key in (
                *cachekeys.after_recharge(card_id, user_id),
                *cachekeys.after_boarding(card_id),
                *cachekeys.after_trip_end(earlier["trip_id"], card_id),
                *cachekeys.after_card_change(card_id),
            )
        }
    )
    held = await prime(api, every)
    answer = json_body(await recharge(api, card_id, 5000, role="recharge_point"), 201)
    balance = await get_cached(api, f"/cards/{card_id}/balance", "MISS")
    assert balance["balance"] == answer["balance"] == 10_000 - SITP_FARE + 5000
    recharges = await get_cached(api, f"/users/{user_id}/recharges", "MISS", "admin")
    assert recharges[0]["recharge_id"] == answer["recharge_id"] and len(recharges) == 2
    for path in set(every) - {f"/cards/{card_id}/balance", f"/users/{user_id}/recharges"}:
        assert await get_cached(api, path, "HIT", "admin") == held[path], path  # untouched keys stay cached

    held = await prime(api, every)
    boarded = json_body(await board(api, card_id, 2, 3), 201)
    assert (await get_cached(api, f"/cards/{card_id}/balance", "MISS"))["balance"] == boarded["balance"]
    trips = await get_cached(api, f"/trips/card/{card_id}", "MISS")
    assert [trip["trip_id"] for trip in trips] == [boarded["trip_id"], earlier["trip_id"]]
    total = await get_cached(api, "/trips/total", "MISS")
    assert total == {
        "total_trips": 2,
        "completed_trips": 0,
        "active_trips": 2,
        "total_revenue": SITP_FARE + TRANSFER_FARE,
    }
    assert (await get_cached(api, "/finance/revenue", "MISS"))["total_revenue"] == SITP_FARE + TRANSFER_FARE
    assert sum(row["total_trips"] for row in await get_cached(api, "/trips/total/localities", "MISS")) == 2
    assert sum(row["total_revenue"] for row in await get_cached(api, "/finance/revenue/localities", "MISS")) == (
        SITP_FARE + TRANSFER_FARE
    )

    held = await prime(api, every)
    ended = json_body(await end_trip(api, earlier["trip_id"], 2))
    assert await get_cached(api, f"/trips/{earlier['trip_id']}", "MISS") == ended
    trips = await get_cached(api, f"/trips/card/{card_id}", "MISS")
    assert trips[1]["disembarking_station_id"] == 2
    assert (await get_cached(api, "/trips/total", "MISS"))["completed_trips"] == 1
    assert sum(row["completed_trips"] for row in await get_cached(api, "/trips/total/localities", "MISS")) == 1
    assert await get_cached(api, f"/cards/{card_id}/balance", "HIT") == held[f"/cards/{card_id}/balance"]

    held = await prime(api, every)
    await set_status(api, card_id, "blocked")
    assert (await get_cached(api, f"/cards/{card_id}/balance", "MISS"))["status"] == "blocked"
    assert await get_cached(api, "/trips/total", "HIT") == held["/trips/total"]
    await set_status(api, card_id, "active")
    assert (await get_cached(api, f"/cards/{card_id}/balance", "MISS"))["status"] == "active"


def test_the_documented_health_samples_are_true_ones() -> None:
    """ReDoc shows a response's example, else one made from each enum's first value: for
    /health's 200 that was {"status": "degraded", "database": "down", ...} (issue 20)."""
    responses = openapi_document(server.ENDPOINTS, "t", "1")["paths"]["/api/v1/health"]["get"]["responses"]
    ok = msgspec.convert(responses["200"]["content"]["application/json"]["example"], models.Health)
    down = msgspec.convert(responses["503"]["content"]["application/json"]["example"], models.Health)
    assert (ok.status, ok.database, ok.cache) == ("ok", "ok", "ok")
    assert down.database == "down"
