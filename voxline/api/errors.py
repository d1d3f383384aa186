"""HTTP errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so
OpenAI client libraries raise them as what they are."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

# Seconds a client is asked to wait after a 429 or 503.
RETRY_AFTER = 1


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    409: "invalid_request_error",
    410: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


class ResponseAborted(Exception):
    """A streamed response failed after its status went out: the transfer is cut short (no
    final chunk), which every HTTP client reports as an error, never as a complete 200."""


class HTTPError(Exception):
    """Raised anywhere in a REST handler; becomes one JSON error response."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def response(self) -> JSONResponse:
        body = {
            "error": {
                "message": self.message,
                "type": _TYPES.get(self.status, "server_error"),
                "param": self.param,
                "code": self.code,
            }
        }
        headers = {"Retry-After": str(RETRY_AFTER)} if self.status in (429, 503) else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def redis_unreachable() -> HTTPError:
    return HTTPError(503, "Redis is unreachable; try again later", code="unavailable")


def documented(
    *statuses: int, described: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses (`described` words a route's own)."""
    descriptions = {
        400: "Invalid input, or a value the worker pool cannot honour",
        401: "API keys are on and none valid was given",
        404: "No such resource",
        413: "The input is over the limit",
        422: "The body does not match the schema",
        429: "The service is at capacity; retry after Retry-After seconds",
        500: "Synthesis failed",
        503: "No TTS worker is alive, or Redis is unreachable",
    } | (described or {})
    return {s: {"model": ErrorBody, "description": descriptions[s]} for s in statuses}
