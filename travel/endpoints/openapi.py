"""The OpenAPI document, built from the route table's endpoints, and its two viewers.

Each `Endpoint` (declaration.py) carries what the document needs: body and answer Structs,
status, errors, who may call it, its cache key and TTL. `/docs` (Swagger UI) and `/redoc`
load their assets from ./static: they work with no internet access (Swagger UI's
online-validator badge is turned off, and ReDoc's footer logo is cut from the vendored
bundle: static/README.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from travel import PROJECT_ROOT
from travel.endpoints.declaration import Endpoint
from travel.errors import TITLES, ProblemBody

STATIC_DIR = PROJECT_ROOT / "static"
VALIDATION_ERRORS = (400, 413, 415, 422)


def _problem_response(status: int) -> dict[str, Any]:
    return {
        "description": TITLES.get(status, "Error"),
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemBody"}}},
    }


def openapi_document(operations: Iterable[Endpoint], title: str, version: str) -> dict[str, Any]:
    """OpenAPI 3.1 for `operations`, with JSON Schemas from their msgspec Structs."""
    operations = list(operations)
    types: set[Any] = {ProblemBody}
    for op in operations:
        types.update(t for t in (op.body, op.answer, op.unavailable) if t is not None)
    typed = list(types)
    refs, components = msgspec.json.schema_components(typed, ref_template="#/components/schemas/{name}")
    ref_of = dict(zip(typed, refs, strict=False))
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        entry: dict[str, Any] = {
            "summary": op.summary,
            "operationId": op.handler.__name__,
            "tags": [op.path.split("/")[3] if op.path.startswith("/api/") else "service"],
            "responses": {},
        }
        description = [op.notes] if op.notes else []
        if op.cache:
            description.append(f"Cached: `{op.cache}`; the `X-Cache` header says HIT or MISS.")
        if op.guarded:
            who = ", ".join(("admin", *op.roles))
            description.append(f"Needs a bearer token of role: {who}.")
            entry["security"] = [{"bearer": []}]
        if description:
            entry["description"] = " ".join(description)
        parameters = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
            }
            for name in op.path_ids()
        ]
        parameters += [
            {
                "name": header,
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }
            for header in op.headers
        ]
        parameters += [{"name": name, "in": "query", "required": False, "schema": schema} for name, schema in op.query]
        if parameters:
            entry["parameters"] = parameters
        if op.body is not None:
            entry["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref_of[op.body]}}}
        answer: dict[str, Any] = {"description": {201: "Created", 204: "No Content"}.get(op.status, "OK")}
        if op.answer is not None:
            answer["content"] = {"application/json": {"schema": ref_of[op.answer]}}
        entry["responses"][str(op.status)] = answer
        errors = set(op.errors) | ({422} if parameters else set()) | {503}
        if op.body is not None:
            errors |= set(VALIDATION_ERRORS)
        if op.guarded:
            errors |= {401, 403}
        for status in sorted(errors):
            entry["responses"][str(status)] = _problem_response(status)
        if op.unavailable is not None:
            entry["responses"]["503"] = {
                "description": f"{TITLES[503]}: the same body, saying what is down",
                "content": {"application/json": {"schema": ref_of[op.unavailable]}},
            }
        for status, example in getattr(op.answer, "EXAMPLES", {}).items():  # a model's own samples
            entry["responses"][str(status)]["content"]["application/json"]["example"] = example
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Transit-card recharge backend. Money is integer Colombian pesos. "
            "Errors are RFC 9457 problem+json with a stable `code`.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


SWAGGER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="/static/swagger-ui/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/static/swagger-ui/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({{url: "/openapi.json", dom_id: "#swagger-ui", validatorUrl: null}});</script>
</body></html>"""

REDOC_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title></head>
<body><redoc spec-url="/openapi.json"></redoc>
<script src="/static/redoc/redoc.standalone.js"></script>
</body></html>"""


def routes(operations: Iterable[Endpoint], title: str, version: str) -> list[BaseRoute]:
    """/openapi.json, /docs, /redoc and their static assets, at the root as the seed links them."""
    document = msgspec.json.encode(openapi_document(operations, title, version))

    async def openapi_json(_: Request) -> Response:
        return Response(document, media_type="application/json")

    async def swagger(_: Request) -> Response:
        return HTMLResponse(SWAGGER_PAGE.format(title=title))

    async def redoc(_: Request) -> Response:
        return HTMLResponse(REDOC_PAGE.format(title=title))

    return [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", swagger, methods=["GET"]),
        Route("/redoc", redoc, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
