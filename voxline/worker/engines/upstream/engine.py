"""The `upstream` engine: each sentence forwarded to a TTS server that already runs (vllm-omni
with Qwen3-TTS, Kokoro-FastAPI, OpenAI, another voxline), its audio streamed back through
voxline, which adds what such a server lacks: a queue before several replicas, in-order
pipelining, barge-in that stops the work, admission control, telephony formats.

Options (`--engine-opt`):
- `url`: the upstream's base URL as OpenAI's SDK takes it, e.g. `http://tts:8000/v1`.
- `protocol`: `openai` (POST `{url}/audio/speech`, streamed pcm) or `vllm-omni` (WebSocket
  `{url}/audio/speech/stream`, connections kept per slot). Default: `vllm-omni` for a ws://
  or wss:// URL, else `openai`.
- `voices`: `name,name=upstream_name,...`; without it the upstream's `GET {url}/audio/voices`
  (vllm-omni's and Kokoro-FastAPI's list) names them. `default_voice`: else the first.
- `model`, `languages` (comma list; without it only "Auto"), `sample_rate` (24000, the pcm
  rate OpenAI and vllm-omni send), `concurrency` (4: the sentences sent at once, which is the
  capacity), `timeout` (10 s: to connect, and the longest silence within one answer).
- `api_key_env`: the environment variable holding the upstream's key
  (`VOXLINE_UPSTREAM_API_KEY`); the key itself is never an option, since options are logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Literal, Protocol
from urllib.parse import urlsplit

import httpx
import numpy as np
from pydantic import Field, field_validator

from voxline.shared.capabilities import EngineInfo
from voxline.worker.engines.base import (
    AudioChunk,
    Cancellation,
    Engine,
    EngineError,
    EngineUnavailable,
    SynthesisRequest,
)
from voxline.worker.engines.options import EngineOptions
from voxline.worker.engines.upstream.openai import OpenAISpeech
from voxline.worker.engines.upstream.target import Sentence, Target, error_message
from voxline.worker.engines.upstream.vllm_omni import VllmOmniStream

log = logging.getLogger("voxline.worker.upstream")

SPEED_RANGE = (0.25, 4.0)  # OpenAI's; an upstream with a narrower one refuses the sentence


class _Client(Protocol):
    def speak(self, sentence: Sentence, cancel: Cancellation) -> AsyncIterator[np.ndarray]: ...

    async def close(self) -> None: ...


def parse_voices(raw: str) -> dict[str, str]:
    """`a,b=upstream_b` -> {"a": "a", "b": "upstream_b"} (voxline's name -> the upstream's)."""
    voices: dict[str, str] = {}
    for entry in raw.split(","):
        name, _, upstream = (part.strip() for part in entry.partition("="))
        if not name:
            raise ValueError(f"empty voice name in {raw!r}")
        voices[name] = upstream or name
    return voices


def _names(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


class UpstreamOptions(EngineOptions):
    url: str | None = None
    """The upstream's base URL as OpenAI's SDK takes it, e.g. http://tts:8000/v1."""
    protocol: Literal["openai", "vllm-omni"] | None = None
    """How to speak to it (default: vllm-omni for a ws:// or wss:// URL, else openai)."""
    model: str | None = None
    """The `model` field sent with each sentence (default: none sent)."""
    voices: dict[str, str] | None = None
    """`name,name=upstream_name,...` (default: the upstream's GET {url}/audio/voices)."""
    default_voice: str | None = None
    """The voice a request without one gets (default: the first voice)."""
    languages: tuple[str, ...] = ()
    """Comma-separated languages the upstream speaks (default: only "Auto")."""
    sample_rate: int = Field(24000, ge=8000, le=48000)
    """The rate of the pcm the upstream sends, Hz."""
    concurrency: int = Field(4, ge=1)
    """Sentences sent at once: the engine's capacity."""
    timeout: float = Field(10.0, gt=0)
    """Seconds to connect, and the longest silence within one answer."""
    api_key_env: str = "VOXLINE_UPSTREAM_API_KEY"
    """The environment variable holding the upstream's key (never the key itself)."""

    @field_validator("url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
                raise ValueError(f"must be an http(s):// or ws(s):// URL, got {url!r}")
        return url

    @field_validator("voices", mode="before")
    @classmethod
    def _voices(cls, raw: object) -> object:
        return parse_voices(raw) if isinstance(raw, str) else raw

    @field_validator("languages", mode="before")
    @classmethod
    def _languages(cls, raw: object) -> object:
        return _names(raw) if isinstance(raw, str) else raw


class UpstreamEngine(Engine):
    Options = UpstreamOptions

    def __init__(
        self,
        url: str | None = None,
        protocol: str | None = None,
        model: str | None = None,
        voices: dict[str, str] | None = None,
        default_voice: str | None = None,
        languages: tuple[str, ...] = (),
        sample_rate: int = 24000,
        concurrency: int = 4,
        timeout: float = 10.0,
        api_key_env: str = "VOXLINE_UPSTREAM_API_KEY",
    ) -> None:
        self.url = url.rstrip("/") if url else None
        self.protocol = protocol or (
            "vllm-omni" if url and urlsplit(url).scheme in ("ws", "wss") else "openai"
        )
        self.model = model
        self.voice_map = voices
        self.default_voice = default_voice
        self.languages = languages
        self.sample_rate = sample_rate
        self.concurrency = concurrency
        self.timeout = timeout
        self.api_key_env = api_key_env
        self._client: _Client | None = None
        self._slots = asyncio.Semaphore(concurrency)
        self._info: EngineInfo | None = None

    @property
    def info(self) -> EngineInfo:  # type: ignore[override]
        if self._info is None:
            raise RuntimeError("upstream: start() has not run")
        return self._info

    async def start(self) -> None:
        if self.url is None:
            raise EngineUnavailable(
                "upstream: no url; give the TTS server's base URL, e.g. "
                "--engine-opt url=http://tts:8000/v1"
            )
        target = Target(
            base=self.url,
            model=self.model,
            concurrency=self.concurrency,
            timeout=self.timeout,
            sample_rate=self.sample_rate,
            api_key_env=self.api_key_env,
        )
        voices = self.voice_map or await self._listed_voices(target)
        default = self.default_voice or next(iter(voices))
        if default not in voices:
            raise EngineUnavailable(
                f"upstream: default_voice {default!r} is not among {list(voices)}"
            )
        self.voice_map = voices
        self._client = OpenAISpeech(target) if self.protocol == "openai" else VllmOmniStream(target)
        self._info = EngineInfo(
            name="upstream",
            sample_rate=self.sample_rate,
            voices=tuple(voices),
            default_voice=default,
            languages=self.languages,
            speed_range=SPEED_RANGE,
        )
        log.info(
            "upstream: %s at %s, %d voices (default %s), %d at once",
            self.protocol,
            self.url,
            len(voices),
            default,
            self.concurrency,
        )

    async def _listed_voices(self, target: Target) -> dict[str, str]:
        """The upstream's `GET /audio/voices` ({"voices": [name, ...]}, vllm-omni's shape)."""
        url = f"{target.http_base}/audio/voices"
        try:
            async with httpx.AsyncClient(timeout=target.timeout, trust_env=False) as client:
                response = await client.get(url, headers=target.headers())
        except httpx.HTTPError as exc:
            raise EngineUnavailable(
                f"upstream: cannot list voices at {url} ({type(exc).__name__}); is it up? "
                "Or name them: --engine-opt voices=a,b"
            ) from None
        if response.status_code != 200:
            detail = ""
            try:
                detail = error_message(response.json())
            except ValueError:
                pass
            raise EngineUnavailable(
                f"upstream: {url} answered {response.status_code} {detail}".rstrip()
                + "; name the voices: --engine-opt voices=a,b"
            )
        try:
            listed = response.json()["voices"]
            names = [v if isinstance(v, str) else v["id"] for v in listed]
        except (ValueError, KeyError, TypeError):
            raise EngineUnavailable(f"upstream: {url} is not a voice list") from None
        if not names:
            raise EngineUnavailable(f"upstream: {url} lists no voices")
        return {str(name): str(name) for name in names}

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def capacity(self) -> int | None:
        return self.concurrency

    async def synthesize(
        self, request: SynthesisRequest, cancel: Cancellation
    ) -> AsyncGenerator[AudioChunk, None]:
        info, client = self.info, self._client
        assert client is not None and self.voice_map is not None
        upstream_voice = self.voice_map.get(request.voice)
        if upstream_voice is None:
            raise EngineError(f"upstream has no voice {request.voice!r}")
        if request.word_timestamps:
            raise EngineError("upstream: word timestamps are not forwarded")
        if request.language != "Auto" and request.language not in info.languages:
            raise EngineError(f"upstream: language {request.language!r} is not configured")
        sentence = Sentence(request.text, upstream_voice, request.speed, request.language)
        async with self._slots:
            if cancel.is_set():
                return
            audio = client.speak(sentence, cancel)
            try:
                async for samples in audio:
                    if cancel.is_set():
                        return
                    yield AudioChunk(samples)
            finally:
                await audio.aclose()  # type: ignore[attr-defined]
