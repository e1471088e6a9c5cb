"""Guards on what the service borrows from its libraries' private sides: uvicorn's httptools
protocol (travel/edge/protocol.py subclasses it) and its response cycle (travel/edge/onewrite.py
stands in for the cycle's transport), and Starlette's router (travel/endpoints/routing.py).
An upgrade that moves any of it fails here, naming what moved, before a behaviour test has to
find out why a connection hangs."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterable
from typing import Any

import httpx
import starlette.routing
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http import flow_control, httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from travel.edge import protocol
from travel.edge.onewrite import OneWrite
from travel.endpoints.routing import ShapeRouter

# uvicorn's methods that EdgeProtocol overrides.
OVERRIDDEN_HOOKS = {
    "connection_made",
    "connection_lost",
    "data_received",
    "pause_writing",
    "resume_writing",
    "on_header",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
    "on_response_complete",
    "timeout_keep_alive_handler",
    "send_400_response",
}


def _class_node(module: Any, name: str) -> ast.ClassDef:
    tree = ast.parse(inspect.getsource(module))
    return next(node for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.name == name)


def _attributes_on(node: ast.AST, owner: str) -> set[str]:
    """Every `owner.<name>` read or written inside `node`."""
    return {
        sub.attr
        for sub in ast.walk(node)
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == owner
    }


def _assigned_on_self(node: ast.ClassDef) -> set[str]:
    """Every `self.<name> = ...` in the class's methods, and its methods' own names."""
    assigned = {item.name for item in node.body if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)}
    for sub in ast.walk(node):
        targets: Iterable[ast.expr] = []
        if isinstance(sub, ast.Assign):
            targets = sub.targets
        elif isinstance(sub, ast.AnnAssign | ast.AugAssign):
            targets = [sub.target]
        assigned |= {
            target.attr
            for target in targets
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self"
        }
    return assigned


def test_uvicorns_protocol_still_has_every_attribute_and_hook_the_edge_uses() -> None:
    edge = _class_node(protocol, "EdgeProtocol")
    ours = _assigned_on_self(edge)
    borrowed = _attributes_on(edge, "self") - ours - {"__class__"}
    theirs = _assigned_on_self(_class_node(httptools_impl, "HttpToolsProtocol"))
    assert borrowed, "the guard reads nothing: has EdgeProtocol moved?"
    missing = sorted(borrowed - theirs)
    assert not missing, f"uvicorn's HttpToolsProtocol no longer has {missing}, which travel/edge/protocol.py uses"
    # The hooks EdgeProtocol overrides must still be uvicorn's (else they are never called),
    # and a new override must be added here, consciously.
    defined = {item.name for item in edge.body if isinstance(item, ast.FunctionDef)} - {"__init__"}
    gone = sorted(hook for hook in OVERRIDDEN_HOOKS if not callable(getattr(HttpToolsProtocol, hook, None)))
    assert not gone, f"uvicorn's HttpToolsProtocol no longer has {gone}, which EdgeProtocol overrides"
    unlisted = sorted(name for name in defined - OVERRIDDEN_HOOKS if callable(getattr(HttpToolsProtocol, name, None)))
    assert not unlisted, f"EdgeProtocol now overrides {unlisted} of uvicorn's: add them to OVERRIDDEN_HOOKS"
    assert OVERRIDDEN_HOOKS <= defined, f"EdgeProtocol no longer overrides {sorted(OVERRIDDEN_HOOKS - defined)}"


def test_the_cycle_and_flow_control_still_have_what_the_edge_reads_and_sets() -> None:
    """EdgeProtocol stalls a connection through uvicorn's FlowControl and abandons a request
    being read through its RequestResponseCycle (travel/edge/protocol.py: pause_writing, refuse)."""
    edge = _class_node(protocol, "EdgeProtocol")
    attributes = [sub for sub in ast.walk(edge) if isinstance(sub, ast.Attribute)]
    on_cycle = {sub.attr for sub in attributes if isinstance(sub.value, ast.Name) and sub.value.id == "cycle"} | {
        sub.attr for sub in attributes if isinstance(sub.value, ast.Attribute) and sub.value.attr == "cycle"
    }
    assert {"disconnected", "message_event", "keep_alive", "response_started"} <= on_cycle, on_cycle
    missing = sorted(on_cycle - _assigned_on_self(_class_node(httptools_impl, "RequestResponseCycle")))
    assert not missing, f"uvicorn's RequestResponseCycle no longer has {missing}, which travel/edge/protocol.py uses"
    on_flow = {sub.attr for sub in attributes if isinstance(sub.value, ast.Attribute) and sub.value.attr == "flow"}
    assert {"write_paused", "pause_reading", "resume_reading"} <= on_flow, on_flow
    missing = sorted(on_flow - _assigned_on_self(_class_node(flow_control, "FlowControl")))
    assert not missing, f"uvicorn's FlowControl no longer has {missing}, which travel/edge/protocol.py uses"
    # EdgeProtocol applies the connection cap itself and sets limit_concurrency to None so
    # that uvicorn's own check (a text/plain 503 to every request at the cap) stays off.
    assert "self.limit_concurrency is not None" in inspect.getsource(HttpToolsProtocol.on_headers_complete)


def test_uvicorns_protocol_constructor_takes_what_the_edge_passes_on() -> None:
    theirs = list(inspect.signature(HttpToolsProtocol.__init__).parameters)
    ours = list(inspect.signature(protocol.EdgeProtocol.__init__).parameters)
    # EdgeProtocol passes its positional parameters through, then adds keyword-only ones.
    parameters = inspect.signature(protocol.EdgeProtocol.__init__).parameters
    passed = [name for name in ours if parameters[name].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert theirs == passed, f"HttpToolsProtocol.__init__ takes {theirs}; EdgeProtocol passes {passed}"


def test_the_response_cycle_still_has_what_the_one_write_answer_replaces() -> None:
    cycle = _class_node(httptools_impl, "RequestResponseCycle")
    swapped = {"transport", "on_response", "response_complete"}
    missing = sorted(swapped - _assigned_on_self(cycle))
    assert not missing, f"uvicorn's RequestResponseCycle no longer has {missing} (travel/edge/protocol.py swaps them)"
    # What the cycle calls on its transport is what OneWrite must provide.
    called = {
        sub.func.attr
        for sub in ast.walk(cycle)
        if isinstance(sub, ast.Call)
        and isinstance(sub.func, ast.Attribute)
        and isinstance(sub.func.value, ast.Attribute)
        and sub.func.value.attr == "transport"
    }
    assert called, "the guard found no transport calls: has RequestResponseCycle moved?"
    unprovided = sorted(name for name in called if not callable(getattr(OneWrite, name, None)))
    assert not unprovided, f"uvicorn's response cycle now calls transport.{unprovided}, which OneWrite lacks"
    assert "on_response" in inspect.signature(RequestResponseCycle.__init__).parameters


def test_starlettes_router_still_takes_the_arguments_and_sets_the_scope_we_read() -> None:
    parameters = inspect.signature(starlette.routing.Router.__init__).parameters
    missing = sorted({"routes", "redirect_slashes", "lifespan"} - set(parameters))
    assert not missing, f"starlette's Router.__init__ no longer takes {missing} (ShapeRouter passes them)"
    app_source = inspect.getsource(starlette.routing.Router.app)
    assert 'scope["route"] = route' in app_source, (
        'starlette\'s Router.app no longer sets scope["route"]: the metrics middleware labels requests by it'
    )


async def test_a_swapped_router_serves_the_app_and_names_the_route() -> None:
    """Starlette builds its middleware stack over `app.router` when first called: the swap
    in server.create_app takes effect, and a remembered shape still sets scope["route"]."""
    seen: list[str] = []

    async def card(request: Request) -> Response:
        seen.append(request.scope["route"].path)
        return PlainTextResponse(request.path_params["card_id"])

    app = Starlette()
    app.router = ShapeRouter([Route("/cards/{card_id}", card)], None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        assert (await client.get("/cards/7")).text == "7"
        assert (await client.get("/cards/8")).text == "8"
    assert app.router.by_shape == {("GET", "/cards/#"): (app.router.routes[0], ((2, "card_id"),))}
    assert seen == ["/cards/{card_id}", "/cards/{card_id}"]
