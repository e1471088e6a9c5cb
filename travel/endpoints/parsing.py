"""What a request carries, checked before any I/O: path ids, JSON bodies, the Idempotency-Key.
Each refusal is the problem+json a client can act on (docs/design.md: errors)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TypeVar

import msgspec
from starlette.requests import Request

from travel import models
from travel.errors import Problem

BodyT = TypeVar("BodyT", bound=models.Body)

MAX_BODY = 64 * 1024
IDEMPOTENCY_KEY_MAX = 255
ANY_JSON = msgspec.json.Decoder()
# What decoding JSON raises for a body that is not JSON: invalid UTF-8 inside a string is a
# UnicodeDecodeError, and the untyped decoder gives up on absurd nesting with RecursionError.
MALFORMED = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def path_id(path_params: Mapping[str, str], name: str, maximum: int = models.BIGINT_MAX) -> int:
    """A positive integer path parameter within `maximum`, or 422 before any I/O."""
    raw = path_params[name]
    if raw.isascii() and raw.isdigit() and len(raw) <= 19:
        value = int(raw)
        if 1 <= value <= maximum:
            return value
    raise Problem(422, "VALIDATION_ERROR", f"{name} must be a positive integer up to {maximum}", field=name)


async def read_body(request: Request, body_type: type[BodyT]) -> BodyT:
    """Decode and validate a JSON body: 415 unless JSON, 413 past 64 KiB, 400 if not JSON,
    422 if the JSON does not fit `body_type`."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise Problem(415, "UNSUPPORTED_MEDIA_TYPE", "send the body as application/json")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise Problem(413, "BODY_TOO_LARGE", f"the body may hold at most {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise Problem(413, "BODY_TOO_LARGE", f"the body may hold at most {MAX_BODY} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        decoded: BodyT = decoder(body_type).decode(body)
        return decoded
    except msgspec.ValidationError as error:
        # The typed decoder stops at the first misfit; JSON broken further on is still 400.
        try:
            ANY_JSON.decode(body)
        except MALFORMED as malformed:
            raise Problem(400, "MALFORMED_JSON", f"the body is not valid JSON: {malformed}") from None
        raise Problem(422, "VALIDATION_ERROR", str(error)) from None
    except MALFORMED as error:
        raise Problem(400, "MALFORMED_JSON", f"the body is not valid JSON: {error}") from None


@functools.cache
def decoder(body_type: type[BodyT]) -> msgspec.json.Decoder[BodyT]:
    """The typed decoder of `body_type`, built once: decoding is validation."""
    return msgspec.json.Decoder(body_type)


def idempotency_key(request: Request) -> str | None:
    """The request's key, refused (422) when repeated or when spaces surround it: a proxy that
    drops one of two headers, or trims a space, between a request and its retry would
    otherwise turn the retry into a second recharge."""
    keys = request.headers.getlist("idempotency-key")
    if not keys:
        return None
    key = keys[0]
    if len(keys) > 1:
        raise Problem(422, "VALIDATION_ERROR", "send one Idempotency-Key header, not several", field="Idempotency-Key")
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX or not key.isascii() or not key.isprintable() or key != key.strip():
        raise Problem(
            422,
            "VALIDATION_ERROR",
            f"Idempotency-Key must be 1..{IDEMPOTENCY_KEY_MAX} printable ASCII characters,"
            " without leading or trailing spaces",
            field="Idempotency-Key",
        )
    return key
