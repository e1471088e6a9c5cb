"""The operator dashboard (issue 13) in a real headless Chromium, driven by selenium: it loads
with no console error and asks no other host, its tiles equal the API's answers, it follows
writes within 5 s, says so when Redis stops and keeps updating, and recovers. It writes the
README's screenshot, docs/dashboard.png.

The API runs on demo data (scale 1) and a Redis of this module's own, which these tests stop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.api import board, json_body, make_user_with_card, recharge
from tests.support.db import connected
from tests.support.polling import eventually_async
from tests.support.stack import Api, copy_template, serve_api
from travel import database
from travel.startup.embedded import EmbeddedStack, LocalRedis

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"
FOLLOWS_WITHIN = 5.0  # seconds for a write to show (the page refreshes every 3 s)
TILES = {
    "tile-trips": ("/trips/total", "total_trips"),
    "tile-active-trips": ("/trips/total", "active_trips"),
    "tile-revenue": ("/trips/total", "total_revenue"),
    "tile-users": ("/users/count", "count"),
    "tile-active-users": ("/users/active/count", "count"),
}
T = TypeVar("T")


# ---------------------------------------------------------------- the API, its Redis, the browser
@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    redis = LocalRedis(tmp_path_factory.mktemp("dashboard-redis"))
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


@pytest.fixture(scope="module")
async def demo_api(stack: EmbeddedStack, template_url: str, own_redis: LocalRedis) -> AsyncIterator[Api]:
    url = await copy_template(stack, "dashboard_demo")
    async with connected(url) as conn:
        assert await database.load_demo_data(conn, 1)
    async with serve_api(url, own_redis.url) as api:
        yield api


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "install Debian's chromium and chromium-driver (.ci/system-packages does)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1600,1000",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield chrome
    finally:
        chrome.quit()


async def in_browser(call: Callable[[], T]) -> T:
    """Selenium blocks: run it off the event loop, where the API serves."""
    return await asyncio.to_thread(call)


async def until(condition: Callable[[], Any], within: float, what: str) -> Any:
    """Poll `condition` in the browser until it holds; fail after `within` seconds."""
    return await eventually_async(lambda: in_browser(condition), within, what, every=0.1)


def attribute(browser: WebDriver, element_id: str, name: str) -> str | None:
    return browser.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
        element_id,
        name,
    )


def tiles(browser: WebDriver) -> dict[str, int | None]:
    values = browser.execute_script(
        "return Object.fromEntries(arguments[0].map(id => [id, document.querySelector('#' + id + ' output').dataset.value]));",
        list(TILES),
    )
    return {key: None if value is None else int(value) for key, value in values.items()}


def current_hour(browser: WebDriver) -> tuple[int, int] | None:
    trips, revenue = (attribute(browser, "current-hour", name) for name in ("data-trips", "data-revenue"))
    return None if trips is None or revenue is None else (int(trips), int(revenue))


def refreshes(browser: WebDriver) -> int:
    return int(browser.execute_script("return Number(document.body.dataset.refreshes || 0);"))


async def api_tiles(api: Api) -> dict[str, int]:
    return {tile: json_body(await api.http.get(path))[member] for tile, (path, member) in TILES.items()}


# ---------------------------------------------------------------- tests
@pytest.mark.browser
@pytest.mark.slow
async def test_page_loads_clean_shows_the_api_figures_and_is_photographed(demo_api: Api, browser: WebDriver) -> None:
    await in_browser(lambda: browser.get(demo_api.url + "/dashboard"))
    await until(lambda: refreshes(browser) >= 4, 20, "four refreshes")  # the cache chart has a line
    shown = await in_browser(lambda: tiles(browser))
    assert shown == await api_tiles(demo_api)
    assert shown["tile-trips"] == 100_000 and shown["tile-revenue"] > 0
    revenue_text = await in_browser(
        lambda: browser.execute_script("return document.querySelector('#tile-revenue output').textContent;")
    )
    assert revenue_text.startswith("$") and "." in revenue_text  # thousands separated, as in Colombia
    assert "".join(ch for ch in revenue_text if ch.isdigit()) == str(shown["tile-revenue"])

    hourly = json_body(await demo_api.http.get("/trips/hourly?hours=24"))
    assert await in_browser(lambda: current_hour(browser)) == (hourly[-1]["trips"], hourly[-1]["revenue"])
    localities = await in_browser(
        lambda: browser.execute_script(
            "return [...document.querySelectorAll('#bars-trips li')].map(li => Number(li.dataset.value));"
        )
    )
    assert localities == [row["total_trips"] for row in json_body(await demo_api.http.get("/trips/total/localities"))]
    route_rows = await in_browser(
        lambda: browser.execute_script(
            "return [...document.querySelectorAll('#routes tr')].map(tr => tr.dataset.route);"
        )
    )
    assert "/api/v1/trips/total" in route_rows
    families = await in_browser(
        lambda: browser.execute_script("return [...document.querySelectorAll('#bars-keys .name')].map(s => s.title);")
    )
    assert families and not [name for name in families if name.startswith("gen:")], families  # internal keys
    assert await in_browser(lambda: attribute(browser, "cache-state", "data-state")) == "ok"
    assert await in_browser(lambda: attribute(browser, "banner", "hidden")) is not None

    console = await in_browser(lambda: browser.get_log("browser"))  # type: ignore[attr-defined]
    assert [entry for entry in console if entry["level"] in ("SEVERE", "WARNING")] == []
    asked = set()
    for entry in await in_browser(lambda: browser.get_log("performance")):  # type: ignore[attr-defined]
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            asked.add(message["params"]["request"]["url"])
    own = urlsplit(demo_api.url).netloc
    assert asked and {url for url in asked if urlsplit(url).scheme != "data" and urlsplit(url).netloc != own} == set()
    assert {demo_api.url + "/static/uplot/uPlot.iife.min.js", demo_api.url + "/api/v1/stats"} <= asked

    for _ in range(2):  # the whole page: charts resize with the window, so measure twice
        height = await in_browser(
            lambda: browser.execute_script(
                "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight + 40;"
            )
        )
        await in_browser(functools.partial(browser.set_window_size, 1600, min(height, 2600)))
    await until(lambda: refreshes(browser) >= 6, 10, "charts redrawn at the new size")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    assert await in_browser(lambda: browser.save_screenshot(str(SCREENSHOT)))
    assert SCREENSHOT.stat().st_size > 20_000


@pytest.mark.browser
async def test_tiles_and_the_current_hour_follow_writes_within_seconds(demo_api: Api, browser: WebDriver) -> None:
    await in_browser(lambda: browser.get(demo_api.url + "/dashboard"))
    await until(lambda: refreshes(browser) >= 1, 10, "the first refresh")
    before, hour_before = await in_browser(lambda: tiles(browser)), await in_browser(lambda: current_hour(browser))
    assert before == await api_tiles(demo_api) and hour_before is not None
    _, card = await make_user_with_card(demo_api)  # a user, holding an active card
    assert (await recharge(demo_api, card["card_id"], 20_000)).status_code == 201
    fare = json_body(await board(demo_api, card["card_id"], route_id=1, station_id=1), 201)["fare_charged"]
    expected = {
        "tile-trips": before["tile-trips"] + 1,
        "tile-active-trips": before["tile-active-trips"] + 1,
        "tile-revenue": before["tile-revenue"] + fare,
        "tile-users": before["tile-users"] + 1,
        "tile-active-users": before["tile-active-users"] + 1,
    }
    await until(lambda: tiles(browser) == expected, FOLLOWS_WITHIN, f"tiles {expected}")
    hour_after = (hour_before[0] + 1, hour_before[1] + fare)
    await until(lambda: current_hour(browser) == hour_after, FOLLOWS_WITHIN, f"this hour's bar at {hour_after}")


@pytest.mark.browser
@pytest.mark.slow
async def test_redis_stopped_is_shown_the_rest_keeps_updating_and_it_recovers(
    demo_api: Api, browser: WebDriver, own_redis: LocalRedis
) -> None:
    await in_browser(lambda: browser.get(demo_api.url + "/dashboard"))
    await until(lambda: attribute(browser, "cache-state", "data-state") == "ok", 10, "the cache panel up")
    own_redis.stop()
    try:
        await until(lambda: attribute(browser, "cache-state", "data-state") == "down", FOLLOWS_WITHIN, "cache down")
        panel = await in_browser(lambda: browser.find_element("id", "panel-cache").text)
        assert "Redis down" in panel
        banner = await in_browser(lambda: browser.find_element("id", "banner").text)
        assert "Redis is down" in banner
        assert await in_browser(lambda: attribute(browser, "status-database", "data-state")) == "ok"
        trips = (await in_browser(lambda: tiles(browser)))["tile-trips"]
        _, card = await make_user_with_card(demo_api, balance=10_000)
        assert (await board(demo_api, card["card_id"])).status_code == 201
        await until(lambda: tiles(browser)["tile-trips"] == trips + 1, FOLLOWS_WITHIN, "trips without Redis")
    finally:
        own_redis.start()  # same port and password
    await until(lambda: attribute(browser, "cache-state", "data-state") == "ok", 10, "the cache panel back")
    await until(lambda: attribute(browser, "banner", "hidden") is not None, 10, "the banner gone")


@pytest.mark.slow
async def test_root_redirects_to_the_dashboard_without_echoing_host(demo_api: Api) -> None:
    async with httpx.AsyncClient(base_url=demo_api.url) as http:
        response = await http.get("/", headers={"Host": "evil.example"})
        assert (response.status_code, response.headers["location"]) == (302, "/dashboard")
        page = await http.get("/dashboard")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        for asset in (
            "/static/dashboard/dashboard.js",
            "/static/dashboard/dashboard.css",
            "/static/uplot/uPlot.iife.min.js",
            "/static/uplot/uPlot.min.css",
            "/static/uplot/LICENSE",
        ):
            assert (await http.get(asset)).status_code == 200, asset
