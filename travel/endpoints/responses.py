"""Answers: one msgspec encoder, and a response of already-encoded JSON with pre-built headers."""

from __future__ import annotations

import msgspec
from starlette.responses import Response

JSON = b"application/json"

encode = msgspec.json.Encoder().encode  # one encoder, reused (msgspec's advice)


class JSONBytes(Response):
    """Already-encoded JSON with pre-built headers: a cache hit returns stored bytes as is."""

    def __init__(self, body: bytes, status_code: int = 200, cache: bytes | None = None) -> None:
        self.status_code = status_code
        self.body = body
        self.background = None
        self.raw_headers = [(b"content-type", JSON), (b"content-length", b"%d" % len(body))]
        if cache is not None:
            self.raw_headers.append((b"x-cache", cache))
