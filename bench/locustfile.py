"""Locust: the users a transit system has, against a running API, in the bench's traffic mix.

Run from the project root (it imports bench.mix; Locust puts the working directory on sys.path):

    make locust                                   # web UI on http://127.0.0.1:8089, API at http://127.0.0.1:8000
    ADMIN_TOKEN=... .venv/bin/python -m locust -f bench/locustfile.py --host http://127.0.0.1:8000 \\
        --headless --users 200 --spawn-rate 50 --run-time 60s --only-summary

Each role of bench/mix.py is a user class weighted by its share of the mix, each kind a task
weighted by its own (every user waits alike, so users' shares are requests' shares):

- riders (most traffic) read their card's balance and latest trips;
- the operators' dashboards read the totals, the user counts and a person's recharges (with the
  admin token);
- recharge points recharge cards with an Idempotency-Key, and now and then send the same
  request again (an answer lost on a flaky link): it must replay the first recharge;
- validators board cards onto routes, and now and then end a trip they opened.

The retries and the trips' ends follow a recharge or a boarding, outside the mix's shares.
Recharge points and validators get a token of their own role in `on_start`, made through the
admin API (`POST /api/v1/tokens`) with ADMIN_TOKEN from the environment, as the service reads
it; where that endpoint does not exist yet they use the admin token itself. Cards are ids
1..CARDS (DEMO_SCALE × 10,000 for the demo data; default 10,000), users 1..USERS (default
8 per 10 cards, as the demo data has); RECHARGE_POINT is the point the recharge points'
tokens belong to (default 1); RETRY_SHARE the share of recharges sent twice (default 0.1);
END_SHARE the share of boardings followed by the end of an open trip (default 0.5).

A boarding answered 402 (balance short of the fare), or a recharge or boarding answered 409
(a blocked or lost card), is the system working as it should, not a failure.
"""

from __future__ import annotations

import itertools
import os
import random
import uuid
from collections.abc import Callable
from typing import Any

from locust import FastHttpUser, TaskSet, between, events, task
from locust.env import Environment

from bench.mix import Kind, Role, kinds_of, role_weight

API = "/api/v1"
CARDS = int(os.environ.get("CARDS", "10000"))
USERS = int(os.environ.get("USERS", str(CARDS * 8 // 10)))
RECHARGE_POINT = int(os.environ.get("RECHARGE_POINT", "1"))
RETRY_SHARE = float(os.environ.get("RETRY_SHARE", "0.1"))  # recharges sent twice, same Idempotency-Key
END_SHARE = float(os.environ.get("END_SHARE", "0.5"))  # boardings followed by the end of an open trip
WAIT = between(0.5, 2.0)  # every user alike: then the classes' weights are the requests' shares
AMOUNTS = (2000, 5000, 10000, 20000, 50000)
# Answers, not failures: a card that is blocked or lost (409), short of the fare (402).
RECHARGE_REFUSALS = (409,)
BOARDING_REFUSALS = (402, 409)


def admin_token() -> str:
    token = os.environ.get("ADMIN_TOKEN", "")
    if not token:
        raise SystemExit("ADMIN_TOKEN must be set (make run prints it; it is in .data/admin.token)")
    return token


def check_admin_token(environment: Environment, **_: Any) -> None:
    admin_token()  # fail at start, not in every user


events.init.add_listener(check_admin_token)  # type: ignore[no-untyped-call]  # locust leaves it unannotated


class TransitUser(FastHttpUser):
    """A user that may hold a token of its own role (made through the admin API)."""

    abstract = True
    wait_time = WAIT
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


def read(kind: Kind) -> Callable[[TransitUser], None]:
    """A task that GETs the kind's next path (in turn, across all users of the class)."""
    paths = itertools.cycle(kind.paths)

    def task(user: TransitUser) -> None:
        path = next(paths)
        headers = user.bearer(admin_token()) if kind.role == "operator" else {}
        filled = path.format(card=random.randint(1, CARDS), user=random.randint(1, USERS))
        user.client.get(
            API + filled, headers=headers, name=API + path.replace("{card}", "[id]").replace("{user}", "[id]")
        )

    task.__name__ = kind.name.replace(" ", "_")
    return task


def reads(role: Role) -> list[TaskSet | Callable[..., Any]]:
    """The role's read tasks, each as many times as its weight (Locust's way of weighting)."""
    return [task for kind in kinds_of(role) for task in [read(kind)] * kind.weight]


class Rider(TransitUser):
    """Reads a card's balance and latest trips: most of the traffic, nearly all cache hits."""

    weight = role_weight("rider")
    tasks = reads("rider")


class Operator(TransitUser):
    """An operator's dashboard: the totals, the user counts, a person's recharges."""

    weight = role_weight("operator")
    tasks = reads("operator")


class RechargePoint(TransitUser):
    """Recharges cards; sometimes sends a recharge again, which must replay the first answer."""

    weight = role_weight("recharge_point")
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
    """Boards cards onto routes at stations; now and then ends a trip it opened."""

    weight = role_weight("validator")
    role = "validator"

    def on_start(self) -> None:
        super().on_start()
        self.routes = [route["route_id"] for route in self.client.get(f"{API}/routes").json() if route["is_active"]]
        self.stations = [station["station_id"] for station in self.client.get(f"{API}/stations").json()]
        self.open_trips: list[int] = []

    @task
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
        if self.open_trips and random.random() < END_SHARE:
            self.end_trip(self.open_trips.pop(0))

    def end_trip(self, trip_id: int) -> None:
        self.client.post(
            f"{API}/trips/{trip_id}/end",
            json={"disembarking_station_id": random.choice(self.stations)},
            headers=self.bearer(self.token),
            name=f"{API}/trips/[id]/end",
        )
