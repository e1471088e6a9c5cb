"""GET /dashboard, the operator dashboard (docs/design.md: the dashboard), and GET / that leads to it.

The page is static/dashboard/index.html; its script, style and the vendored chart library
are served from /static. It reads only this service's API. The Content-Security-Policy
holds the page to that: no other host is ever asked for anything.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from travel import PROJECT_ROOT

PAGE = PROJECT_ROOT / "static" / "dashboard" / "index.html"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


def routes() -> list[BaseRoute]:
    """/dashboard and the redirect of / to it (a relative Location: the Host header is never echoed)."""
    page = PAGE.read_bytes()

    async def dashboard(_: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    async def root(_: Request) -> Response:
        return RedirectResponse("/dashboard", status_code=302)

    return [Route("/dashboard", dashboard, methods=["GET"]), Route("/", root, methods=["GET"])]
