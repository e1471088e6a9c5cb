"""/docs and /redoc work with no internet access (docs/design.md: who may read what, issue 11): no asset they load
names another host, read statically from the vendored files and from a real headless
Chromium's network log while it renders both viewers from a served app."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import urllib.parse
from pathlib import Path

import pytest

from tests.support.stack import Api
from travel.endpoints.openapi import STATIC_DIR

pytestmark = pytest.mark.browser

# What makes a browser fetch a URL: an element's src, a CSS url(), a stylesheet import, and the
# usual CDN hosts. (Plain links, schema ids and XML namespaces name hosts without loading them.)
LOADS_ANOTHER_HOST = re.compile(
    rb"""src\s*[:=]\s*["'`]https?://|url\(\s*["']?https?://|@import\s+["']?https?://"""
    rb"""|fonts\.googleapis|cdn\.redoc\.ly|cdn\.jsdelivr|unpkg\.com|cdnjs\."""
)


def test_no_vendored_asset_loads_another_host() -> None:
    assets = sorted(path for path in STATIC_DIR.rglob("*") if path.suffix in (".js", ".css", ".html"))
    assert len(assets) >= 3
    found = {
        str(path.relative_to(STATIC_DIR)): [m.group().decode() for m in LOADS_ANOTHER_HOST.finditer(path.read_bytes())]
        for path in assets
    }
    assert {name: hits for name, hits in found.items() if hits} == {}


def requests_while_rendering(url: str, ready_css: str) -> list[str]:
    """Every URL Chromium requests while it loads `url` and renders `ready_css`."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--window-size=1400,1000",
        "--disable-background-networking",
        "--disable-component-update",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get(url)
        WebDriverWait(driver, 30).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ready_css)))
        driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # lazy parts too
        driver.execute_script("return document.readyState")
        messages = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    finally:
        driver.quit()
    return [
        message["params"]["request"]["url"] for message in messages if message["method"] == "Network.requestWillBeSent"
    ]


@pytest.mark.parametrize(
    ("page", "ready_css"), [("/docs", ".swagger-ui .info .title"), ("/redoc", "a[href^='https://redocly.com']")]
)
async def test_a_real_browser_loads_nothing_from_another_host(api: Api, page: str, ready_css: str) -> None:
    assert shutil.which("chromium") and shutil.which("chromedriver"), (
        "needs Debian's chromium and chromium-driver: bash .ci/system-packages (as root) installs them"
    )
    requested = await asyncio.to_thread(requests_while_rendering, api.url + page, ready_css)
    here = urllib.parse.urlsplit(api.url).netloc
    assert f"{api.url}/openapi.json" in requested  # the viewer did render our document
    assert any(url.startswith(f"{api.url}/static/") for url in requested)
    parts = [urllib.parse.urlsplit(url) for url in requested]
    elsewhere = [part.geturl() for part in parts if part.scheme not in ("data", "blob") and part.netloc != here]
    assert elsewhere == []


def test_static_readme_tells_how_the_bundle_was_changed() -> None:
    readme = (Path(STATIC_DIR) / "README.md").read_text()
    assert "cdn.redoc.ly" in readme and "validatorUrl" in readme
