"""What the REST routes share: the body read under a size limit, JSON bodies validated into a
pydantic model with OpenAI-style errors, and the worker pool's engine checked before any work
is accepted."""

from __future__ import annotations

import json
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError

from voxline.api.errors import HTTPError, redis_unreachable
from voxline.api.hub import Hub
from voxline.shared.capabilities import EngineInfo
from voxline.speech.admission import Refusal, refusal

Model = TypeVar("Model", bound=BaseModel)


def body_limit(max_chars: int) -> int:
    """Bytes a body with `max_chars` characters of text may take: UTF-8 takes at most 4 bytes
    a character, JSON escapes 6 (\\uXXXX); plus the other fields."""
    return max_chars * 6 + 64 * 1024


async def read_body(request: Request, max_chars: int) -> bytes:
    """The body, refused with 413 before it is read whole when it cannot fit the limit."""
    limit = body_limit(max_chars)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(max_chars)
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise too_large(max_chars)
    return bytes(body)


def parse_body(body: bytes, model: type[Model]) -> Model:
    """A JSON object validated into `model`: 400 when it is no JSON object, 422 naming the
    first field that does not match the schema."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise HTTPError(400, "the body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "the body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        raise HTTPError(
            422, f"{param}: {message}" if param else message, code="invalid_value", param=param
        ) from None


def too_large(max_chars: int) -> HTTPError:
    return HTTPError(
        413,
        f"input is over the limit of {max_chars} characters",
        code="text_too_large",
        param="input",
    )


async def pool_engine(hub: Hub, *, refuse_busy: bool = True) -> EngineInfo:
    """The pool's engine, once the request is admitted (speech/admission.py: the same rules as
    a WebSocket session's, as HTTP statuses); 503 when no worker can serve. `refuse_busy`:
    429 when everything is busy (batch jobs wait instead, and hold no session here)."""
    refused = await refusal(hub, busy=refuse_busy, session=refuse_busy)
    if refused is not None:
        if refused.reason is Refusal.DRAINING:
            raise HTTPError(503, refused.message, code="unavailable")
        if refused.reason is Refusal.UNAVAILABLE:
            raise redis_unreachable()
        if refused.reason is Refusal.BUSY:
            raise HTTPError(429, refused.message, code="overloaded")
        raise HTTPError(503, refused.message, code="overloaded")
    try:
        engine, _ = await hub.pool.engine()
    except (RedisError, OSError):
        raise redis_unreachable() from None
    if engine is None:
        raise HTTPError(503, "no TTS worker is alive; try again later", code="no_worker")
    return engine
