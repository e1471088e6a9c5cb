"""Property-based fuzzing of every operation of server.ENDPOINTS (issue 5), with hypothesis.

One server; the examples run in a worker thread (hypothesis is synchronous) and send their
requests on the test's event loop, where the server runs. For each operation: arbitrary path
ids, bodies (schema-driven from the operation's Struct, its field names with arbitrary JSON
values, any JSON, any bytes), Content-Type and Idempotency-Key headers, with a valid token of
a role the operation admits. Every answer: never a 5xx; a 4xx is problem+json whose `status` is
the HTTP status; a 2xx is the operation's status and decodes as its answer Struct. Afterwards
the books balance. derandomize=True: the same examples on every run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import urllib.parse
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import server
from tests.support.api import execute, json_body, make_user_with_card
from tests.support.db import assert_balances_reconcile, assert_counters_exact
from tests.support.hostile import is_problem, op_label
from tests.support.stack import Api
from travel.endpoints.declaration import Endpoint

pytestmark = pytest.mark.slow

EXAMPLES_PER_WRITE = 450
EXAMPLES_PER_READ = 60

# ---------------------------------------------------------------- strategies
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
EDGE_IDS = [
    "0",
    "-1",
    "1.5",
    "1e3",
    "0x10",
    "+1",
    "01",
    " 1",
    "١٢٣",
    "１２３",
    str(2**63),
    str(2**63 - 1),
    str(2**64),
    "9" * 50,
    "NaN",
    "null",
    "'; DROP TABLE cards; --",
    "%00",
    "..",
    "",
]
PATH_IDS = st.one_of(
    st.integers(1, 8).map(str),  # ids that exist
    st.integers().map(str),
    st.sampled_from(EDGE_IDS),
    st.text(max_size=25),
)
# Header values h11 will send: visible latin-1, inner spaces.
HEADER_TEXT = st.text(st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=60).map(str.strip)
CONTENT_TYPES = st.one_of(
    st.just("application/json"),
    st.just("application/json"),
    st.just("application/json"),
    st.sampled_from(
        [
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
            "application/json;charset=latin-1",
            "application/problem+json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "application/jsonx",
            "json",
            "",
            "application/json, text/plain",
            "*/*",
        ]
    ),
    HEADER_TEXT,
    st.none(),
)
IDEMPOTENCY_KEYS = st.one_of(
    st.none(),
    st.none(),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=0, max_size=300).map(str.strip),
    st.sampled_from(["k", "'; DROP TABLE recharges; --", "$1", "%s", "k" * 255, "k" * 256]),
    HEADER_TEXT,
)


def _regex(pattern: str) -> str:
    """models.text() wraps its pattern as ^(?:...)$(?!\\n): the inner pattern, to generate from."""
    found = re.fullmatch(r"\^\(\?:(.*)\)\$\(\?!\n\)", pattern, re.DOTALL)
    return found.group(1) if found else pattern


def from_type(info: Any, name: str, valid: bool = False) -> st.SearchStrategy[Any]:
    """Values of a msgspec type (msgspec.inspect): only valid ones, or mostly valid and often
    just past the edges."""
    if isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    if isinstance(info, msgspec.inspect.UnionType):
        return st.one_of(*(from_type(member, name, valid) for member in info.types))
    if isinstance(info, msgspec.inspect.NoneType):
        return st.none()
    if isinstance(info, msgspec.inspect.IntType):
        low, high = info.ge if info.ge is not None else -(2**70), info.le if info.le is not None else 2**70
        small = st.integers(1, 8) if name.endswith("_id") else st.integers(low, min(high, 50_000))
        if valid:
            return small
        return st.one_of(small, st.integers(low, high), st.sampled_from([low, high, low - 1, high + 1]))
    if isinstance(info, msgspec.inspect.StrType):
        low, high = info.min_length or 0, info.max_length or 50
        matching = st.from_regex(_regex(info.pattern), fullmatch=True) if info.pattern else st.text()
        fitting = matching.filter(lambda text: low <= len(text) <= high)
        return fitting if valid else st.one_of(fitting, matching, st.text(max_size=high + 2))
    if isinstance(info, msgspec.inspect.LiteralType):
        return st.sampled_from(info.values) if valid else st.sampled_from(info.values) | st.text(max_size=8)
    if isinstance(info, msgspec.inspect.DateType):
        if valid:
            return st.dates(dt.date(1900, 1, 2), dt.date.today()).map(dt.date.isoformat)
        return st.dates(dt.date(1800, 1, 1), dt.date(2200, 1, 1)).map(dt.date.isoformat) | st.text(max_size=12)
    raise AssertionError(f"teach from_type {info!r}")


def bodies(struct: type) -> st.SearchStrategy[bytes]:
    fields = msgspec.inspect.type_info(struct).fields  # type: ignore[attr-defined]

    def typed(valid: bool) -> st.SearchStrategy[dict[str, Any]]:
        return st.fixed_dictionaries(
            {f.name: from_type(f.type, f.name, valid) for f in fields if f.required},
            optional={f.name: from_type(f.type, f.name, valid) for f in fields if not f.required},
        )

    named = st.fixed_dictionaries(
        {}, optional={f.name: st.one_of(from_type(f.type, f.name), JSON_VALUES) for f in fields}
    )
    extra = st.tuples(typed(True), st.text(max_size=10), JSON_VALUES).map(lambda t: {**t[0], t[1]: t[2]})
    as_json = st.one_of(typed(True), typed(True), typed(False), named, extra, JSON_VALUES).map(
        lambda value: json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    )
    # JSON with bytes spliced in anywhere, or broken UTF-8 just inside a string; JSON nested deep.
    spliced = st.tuples(as_json, st.binary(min_size=1, max_size=6), st.integers(0, 300)).map(
        lambda t: t[0][: t[2]] + t[1] + t[0][t[2] :]
    )
    broken_utf8 = st.tuples(
        as_json,
        st.sampled_from([b"\x80", b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"]),
        st.integers(0, 30),
    ).map(lambda t: _after_quote(*t))
    nested = st.tuples(
        st.sampled_from([f.name for f in fields] + ["x"]),
        st.sampled_from([1000, 1001, 5000, 20_000]),  # shallow nesting: JSON_VALUES
        st.sampled_from(["[]", "{}"]),
    ).map(_nested)
    return st.one_of(as_json, as_json, as_json, spliced, broken_utf8, nested, st.binary(max_size=200))


def _after_quote(body: bytes, insert: bytes, which: int) -> bytes:
    """`insert` right after the `which`-th double quote (mod their count) of `body`."""
    quotes = [at for at, byte in enumerate(body) if byte == ord('"')]
    at = quotes[which % len(quotes)] + 1 if quotes else 0
    return body[:at] + insert + body[at:]


def _nested(spec: tuple[str, int, str]) -> bytes:
    """{"<name>": [[[...]]]} or {"<name>": {"a":{"a":...1}}}, `depth` deep."""
    name, depth, shape = spec
    inner = "[" * depth + "]" * depth if shape == "[]" else '{"a":' * depth + "1" + "}" * depth
    return b'{"%s": ' % name.encode() + inner.encode() + b"}"


def requests(op: Endpoint) -> st.SearchStrategy[dict[str, Any]]:
    roles = ("admin", *op.roles) if op.guarded else (None,)
    return st.fixed_dictionaries(
        {
            "ids": st.fixed_dictionaries({name: PATH_IDS for name in op.path_ids()}),
            "body": bodies(op.body) if op.body is not None else st.none(),
            "content_type": CONTENT_TYPES if op.body is not None else st.none(),
            "key": IDEMPOTENCY_KEYS if op.body is not None else st.none(),
            "role": st.sampled_from(roles),
        }
    )


# ---------------------------------------------------------------- the run
def build(api: Api, op: Endpoint, request: dict[str, Any]) -> httpx.Request:
    path = op.path.removeprefix(server.API)
    for name, raw in request["ids"].items():
        path = path.replace("{" + name + "}", urllib.parse.quote(raw, safe=""))
    headers: dict[str, Any] = dict(api.auth(request["role"])) if request["role"] else {}
    for header, value in (("content-type", request["content_type"]), ("idempotency-key", request["key"])):
        if value is not None:
            headers[header] = value.encode("latin-1")
    return api.http.build_request(op.method, path, headers=headers, content=request["body"])


def check(op: Endpoint, response: httpx.Response) -> None:
    status = response.status_code
    assert b"Traceback" not in response.content
    assert status < 500, (status, response.content[:500])
    if status >= 400:  # a redirect (which would echo Host) falls to the last branch and fails
        is_problem(response)
    else:
        assert status == op.status, status
        if op.answer is None:  # 204
            assert response.content == b""
            return
        assert response.headers["content-type"].split(";")[0] == "application/json"
        msgspec.json.decode(response.content, type=op.answer)


async def test_fuzz_every_operation(api: Api) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(3):  # ids 1..8 mostly exist: users, funded cards, open trips
        _, card = await make_user_with_card(api, 50_000)
        json_body(
            await api.http.post(
                "/trips",
                headers=api.auth("validator"),
                json={"card_id": card["card_id"], "route_id": 1, "boarding_station_id": 1},
            ),
            201,
        )

    async def send(request: httpx.Request) -> httpx.Response:
        return await api.http.send(request)

    def fuzzer(op: Endpoint, seen: set[int]) -> Any:
        @settings(
            max_examples=EXAMPLES_PER_WRITE if op.body is not None else EXAMPLES_PER_READ,
            deadline=None,
            derandomize=True,
            database=None,
            print_blob=False,
            phases=(Phase.explicit, Phase.generate, Phase.shrink),
            suppress_health_check=list(HealthCheck),
        )
        @given(request=requests(op))
        def fuzz(request: dict[str, Any]) -> None:
            response = asyncio.run_coroutine_threadsafe(send(build(api, op, request)), loop).result(timeout=30)
            seen.add(response.status_code)
            check(op, response)

        return fuzz

    failures: dict[str, str] = {}
    answered: dict[str, set[int]] = {}
    for op in server.ENDPOINTS:
        await execute(api, "UPDATE cards SET status = 'active'")  # what an earlier PATCH blocked
        await execute(api, "UPDATE write_tokens SET revoked_at = NULL")  # ...or a DELETE /tokens revoked
        api.state["tokens"].forget_all()
        answered[op_label(op)] = set()
        try:
            await asyncio.to_thread(fuzzer(op, answered[op_label(op)]))
        except Exception as error:  # every operation gets its run; all failures are reported
            notes = "\n".join(getattr(error, "__notes__", []))
            failures[op_label(op)] = f"{error!r}\n{notes}"[:1500]

    report = "\n\n".join(f"{label}: {text}" for label, text in failures.items())
    # The fuzzing reached past validation: every write succeeded some of the time.
    assert all(
        any(200 <= status < 300 for status in answered[op_label(op)]) for op in server.ENDPOINTS if op.body is not None
    ), (answered, report)
    conn = await asyncpg.connect(api.database_url)
    try:
        await assert_balances_reconcile(conn)  # no money made from nothing
        assert await conn.fetchval("SELECT count(*) FROM cards WHERE balance < 0") == 0
        await assert_counters_exact(conn)
    finally:
        await conn.close()
    assert failures == {}, report
