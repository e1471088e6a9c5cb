"""The router's memory of path shapes (endpoints.ShapeRouter): a remembered shape still
answers with the ids of its own path, and everything that is not a full match goes the
ordinary way (405, 404, 422)."""

from __future__ import annotations

import pytest
from starlette.routing import Route

import server
from tests.support.api import assert_problem, json_body, make_user_with_card
from tests.support.stack import Api
from travel.endpoints.routing import ShapeRouter


async def test_a_remembered_shape_answers_with_its_own_path_ids(api: Api) -> None:
    _, first = await make_user_with_card(api, 1000)
    _, second = await make_user_with_card(api, 2000)
    router = api.app.router
    assert isinstance(router, ShapeRouter)
    assert json_body(await api.http.get(f"/cards/{first['card_id']}/balance"))["balance"] == 1000
    remembered, ids = router.by_shape[("GET", "/api/v1/cards/#/balance")]
    assert remembered.path == "/api/v1/cards/{card_id}/balance"
    assert ids == ((4, "card_id"),)  # "", "api", "v1", "cards", the id
    assert json_body(await api.http.get(f"/cards/{second['card_id']}/balance"))["balance"] == 2000


async def test_what_is_not_a_full_match_goes_the_ordinary_way(api: Api) -> None:
    _, card = await make_user_with_card(api)
    path = f"/cards/{card['card_id']}/balance"
    json_body(await api.http.get(path))
    assert_problem(await api.http.post(path, json={}), 405, "METHOD_NOT_ALLOWED")
    assert_problem(await api.http.get("/cards/abc/balance"), 422, "VALIDATION_ERROR")
    assert_problem(await api.http.get("/cards/1/balance/more"), 404, "NOT_FOUND")
    router = api.app.router
    assert isinstance(router, ShapeRouter)
    assert ("POST", "/api/v1/cards/#/balance") not in router.by_shape


def test_a_route_with_an_all_digit_segment_is_refused() -> None:
    async def nothing(_: object) -> None: ...

    with pytest.raises(ValueError, match="all-digit segment"):
        ShapeRouter([Route("/api/v1/reports/2026/{card_id}", nothing)], server.create_app().router.lifespan_context)
