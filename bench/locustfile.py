"""Locust: the users a transit system has, against a running API.

    make locust                                   # web UI on http://127.0.0.1:8089, API at http://127.0.0.1:8000
    ADMIN_TOKEN=... .venv/bin/locust -f bench/locustfile.py --host http://127.0.0.1:8000 \\
        --headless --users 200 --spawn-rate 50 --run-time 60s --only-summary

- riders (most traffic) read their card's balance and latest trips;
- recharge points recharge cards with an Idempotency-Key, and now and then send the same
  request again (an answer lost on a flaky link): it must replay the first recharge;
- validators board cards onto routes and end the trips they opened;
- one operator polls the totals and the latest registrations.

Recharge points and validators get a token of their own role in `on_start`, made through the
admin API (`POST /api/v1/tokens`) with ADMIN_TOKEN from the environment, as the service reads
it; where that endpoint does not exist yet they use the admin token itself. Cards are ids
1..CARDS (DEMO_SCALE × 10,000 for the demo data; default 10,000); RECHARGE_POINT is the point
the recharge points' tokens belong to (default 1); RETRY_SHARE the share of recharges sent
twice (default 0.1).

A boarding answered 402 (balance short of the fare), or a recharge or boarding answered 409
(a blocked or lost card), is the system working as it should, not a failure.
"""

from __future__ import annotations

import logging
import os
import random
import uuid
from typing import Any

from locust import FastHttpUser, between, constant, events, task
from locust.env import Environment

API = "/api/v1"
CARDS = int(os.environ.get("CARDS", "10000"))
RECHARGE_POINT = int(os.environ.get("RECHARGE_POINT", "1"))
RETRY_SHARE = float(os.environ.get("RETRY_SHARE", "0.1"))  # recharges sent twice, same Idempotency-Key
AMOUNTS = (2000, 5000, 10000, 20000, 50000)
# Answers, not failures: a card that is blocked or lost (409), short of the fare (402).
RECHARGE_REFUSALS = (409,)
BOARDING_REFUSALS = (402, 409)

log = logging.getLogger("locustfile")


def admin_token() -> str:
    token = os.environ.get("ADMIN_TOKEN", "")
    if not token:
        raise SystemExit("ADMIN_TOKEN must be set (make run prints it; it is in .data/admin.token)")
    return token


@events.init.add_listener
def check_admin_token(environment: Environment, **_: Any) -> None:
    admin_token()  # fail at start, not in every user


class TransitUser(FastHttpUser):
    """A user that may hold a token of its own role (made through the admin API)."""

    abstract = True
    role = ""
    token = ""
    token_id: int | None = None

    def on_start(self) -> None:
        if self.role:
            self.token, self.token_id = self.make_token()

    def on_stop(self) -> None:
        if self.token_id is not None:
            self.client.delete(
                f"{API}/tokens/{self.token_id}", headers=self.bearer(admin_token()), name=f"{API}/tokens/[id]"
            )

    def make_token(self) -> tuple[str, int | None]:
        body: dict[str, Any] = {"role": self.role, "label": f"locust {self.role}"}
        if self.role == "recharge_point":
            body["recharge_point_id"] = RECHARGE_POINT
        with self.client.post(
            f"{API}/tokens", json=body, headers=self.bearer(admin_token()), catch_response=True
        ) as response:
            if response.status_code in (404, 405):  # a service without the tokens API
                response.success()
                return admin_token(), None
            if response.status_code != 201:
                response.failure(f"token for {self.role}: {response.status_code} {response.text}")
                return admin_token(), None
            made = response.json()
            return str(made["token"]), made.get("token_id")

    @staticmethod
    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


class Rider(TransitUser):
    """Checks a card's balance and latest trips: most of the traffic, all cache hits."""

    weight = 70
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.card_id = random.randint(1, CARDS)

    @task(3)
    def balance(self) -> None:
        self.client.get(f"{API}/cards/{self.card_id}/balance", name=f"{API}/cards/[id]/balance")

    @task(2)
    def trips(self) -> None:
        self.client.get(f"{API}/trips/card/{self.card_id}", name=f"{API}/trips/card/[id]")


class RechargePoint(TransitUser):
    """Recharges cards; sometimes sends a recharge again, which must replay the first answer."""

    weight = 10
    wait_time = between(0.5, 2.0)
    role = "recharge_point"

    @task
    def recharge(self) -> None:
        key = str(uuid.uuid4())
        body = {
            "card_id": random.randint(1, CARDS),
            "amount": random.choice(AMOUNTS),
            "recharge_point_id": RECHARGE_POINT,
        }
        headers = {**self.bearer(self.token), "Idempotency-Key": key}
        with self.client.post(f"{API}/recharges", json=body, headers=headers, catch_response=True) as first:
            if first.status_code in RECHARGE_REFUSALS:
                first.success()
        if first.status_code != 201 or random.random() >= RETRY_SHARE:
            return
        with self.client.post(
            f"{API}/recharges", json=body, headers=headers, name=f"{API}/recharges (retry)", catch_response=True
        ) as again:
            if again.status_code != 201 or again.headers.get("Idempotent-Replayed") != "true":
                again.failure(f"retry not replayed: {again.status_code} {again.text}")
            elif again.json()["recharge_id"] != first.json()["recharge_id"]:
                again.failure("retry made a second recharge")


class Validator(TransitUser):
    """Boards cards onto routes at stations and ends the trips it opened."""

    weight = 15
    wait_time = between(0.5, 2.0)
    role = "validator"

    def on_start(self) -> None:
        super().on_start()
        self.routes = [route["route_id"] for route in self.client.get(f"{API}/routes").json() if route["is_active"]]
        self.stations = [station["station_id"] for station in self.client.get(f"{API}/stations").json()]
        self.open_trips: list[int] = []

    @task(3)
    def board(self) -> None:
        body = {
            "card_id": random.randint(1, CARDS),
            "route_id": random.choice(self.routes),
            "boarding_station_id": random.choice(self.stations),
        }
        with self.client.post(
            f"{API}/trips", json=body, headers=self.bearer(self.token), catch_response=True
        ) as response:
            if response.status_code == 201:
                self.open_trips.append(response.json()["trip_id"])
            elif response.status_code in BOARDING_REFUSALS:
                response.success()

    @task(2)
    def end_trip(self) -> None:
        if not self.open_trips:
            return
        trip_id = self.open_trips.pop(0)
        self.client.post(
            f"{API}/trips/{trip_id}/end",
            json={"disembarking_station_id": random.choice(self.stations)},
            headers=self.bearer(self.token),
            name=f"{API}/trips/[id]/end",
        )


class Operator(TransitUser):
    """One operator's dashboard, polling the totals."""

    fixed_count = 1
    wait_time = constant(1.0)

    @task
    def poll(self) -> None:
        for path in (
            "/trips/total",
            "/trips/total/localities",
            "/finance/revenue",
            "/finance/revenue/localities",
            "/users/count",
            "/users/active/count",
        ):
            self.client.get(API + path)
        self.client.get(f"{API}/users/latest", headers=self.bearer(admin_token()))
