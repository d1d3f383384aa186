"""What the upstream engine knows of the server it forwards to, and of one sentence."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Target:
    base: str  # e.g. http://tts:8000/v1, as OpenAI's SDK takes its base_url
    model: str | None
    concurrency: int
    timeout: float  # seconds: to connect, and between two pieces of one answer
    sample_rate: int
    api_key_env: str

    def api_key(self) -> str | None:
        # Read from the environment, never an option: options are logged and listed.
        return os.environ.get(self.api_key_env) or None

    def headers(self) -> dict[str, str]:
        key = self.api_key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def ws_base(self) -> str:
        scheme, sep, rest = self.base.partition("://")
        return {"http": "ws", "https": "wss"}.get(scheme, scheme) + sep + rest

    @property
    def http_base(self) -> str:
        scheme, sep, rest = self.base.partition("://")
        return {"ws": "http", "wss": "https"}.get(scheme, scheme) + sep + rest


@dataclass(frozen=True, slots=True)
class Sentence:
    text: str
    voice: str  # the upstream's own name for it
    speed: float = 1.0
    language: str = "Auto"


def optional_fields(sentence: Sentence, target: Target) -> dict[str, Any]:
    """What both protocols send only when it differs from the servers' defaults (a server
    that does not know a field may refuse it, so a default is left out)."""
    fields: dict[str, Any] = {}
    if sentence.speed != 1.0:
        fields["speed"] = sentence.speed
    if sentence.language != "Auto":
        fields["language"] = sentence.language
    if target.sample_rate != 24000:
        fields["sample_rate"] = target.sample_rate
    return fields


def error_message(payload: Any) -> str:
    """The message of an OpenAI-style error body ({"error": {"message"}}) or a vllm-omni /
    voxline `error` frame ({"message"}); FastAPI's {"detail"} too."""
    if isinstance(payload, dict):
        inner = payload.get("error", payload)
        if isinstance(inner, dict):
            for key in ("message", "detail"):
                if isinstance(inner.get(key), str):
                    return inner[key][:300]
        if isinstance(inner, str):
            return inner[:300]
        if isinstance(payload.get("detail"), str):
            return payload["detail"][:300]
    return ""
