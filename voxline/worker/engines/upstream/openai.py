"""OpenAI's speech API as an upstream: `POST {base}/audio/speech` with `response_format: pcm`,
read as it streams (OpenAI, Kokoro-FastAPI, vllm-omni's REST, another voxline).

Cancel closes the response: an unfinished HTTP/1.1 response cannot be handed back to the
pool, so its connection is dropped, which is how an HTTP server learns the client left (a
voxline upstream then cancels the sentence's work, as for any client that disconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np

from voxline.worker.engines.base import Cancellation, Cancelled, EngineError, unless_cancelled
from voxline.worker.engines.upstream.pcm import PcmAssembler
from voxline.worker.engines.upstream.target import Sentence, Target, error_message, optional_fields

ERROR_BODY_BYTES = 64 * 1024  # an error body longer than this is cut, not held
# Below the 5 s idle timeout of uvicorn and Node servers, so an idle connection is dropped
# here before the server drops it.
KEEPALIVE_S = 4.0
# What a pooled connection the server closed at the moment we reused it raises before any
# answer; a fresh connection is tried once. A refused connect is not among them: down is down.
STALE = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class OpenAISpeech:
    def __init__(self, target: Target) -> None:
        self.target = target
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(target.timeout),
            limits=httpx.Limits(
                max_connections=target.concurrency,
                max_keepalive_connections=target.concurrency,
                keepalive_expiry=KEEPALIVE_S,
            ),
            headers=target.headers(),
            follow_redirects=False,
            trust_env=False,  # the operator's URL, not a proxy the environment names
        )

    async def close(self) -> None:
        await self._client.aclose()

    def _body(self, sentence: Sentence) -> dict[str, Any]:
        body: dict[str, Any] = {
            # The schema requires a model; every compatible server accepts OpenAI's name.
            "model": self.target.model or "tts-1",
            "input": sentence.text,
            "voice": sentence.voice,
            "response_format": "pcm",
        }
        return body | optional_fields(sentence, self.target)

    async def speak(self, sentence: Sentence, cancel: Cancellation) -> AsyncIterator[np.ndarray]:
        try:
            response = await unless_cancelled(self._send(sentence), cancel)
        except Cancelled:
            return
        except httpx.TimeoutException:
            raise EngineError(f"upstream timed out after {self.target.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise EngineError(f"upstream unreachable: {type(exc).__name__}") from None
        watcher = asyncio.create_task(_close_on(cancel, response))
        try:
            if response.status_code != 200:
                raise EngineError(await _failure(response))
            rate = response.headers.get("x-sample-rate")
            if rate is not None and rate != str(self.target.sample_rate):
                raise EngineError(
                    f"upstream sent pcm at {rate} Hz, expected {self.target.sample_rate}"
                )
            pcm = PcmAssembler()
            try:
                # No chunk size: each network read is handed on as it arrives (a size makes
                # httpx hold bytes until that many came, delaying first audio).
                async for data in response.aiter_raw():
                    samples = pcm.feed(data)
                    if len(samples):
                        yield samples
            except httpx.TimeoutException:
                if cancel.is_set():
                    return
                raise EngineError(
                    f"upstream went silent for {self.target.timeout:g} s mid-sentence"
                ) from None
            except (httpx.HTTPError, httpx.StreamClosed):
                if cancel.is_set():
                    return  # our own close, on cancel
                raise EngineError("upstream cut the audio short") from None
            if pcm.partial:
                raise EngineError("upstream audio ended mid-sample")
            if not pcm.received and not cancel.is_set():
                raise EngineError("upstream sent no audio")
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await response.aclose()

    async def _send(self, sentence: Sentence) -> httpx.Response:
        body = self._body(sentence)
        for attempt in (1, 2):
            request = self._client.build_request(
                "POST", f"{self.target.base}/audio/speech", json=body
            )
            try:
                return await self._client.send(request, stream=True)
            except STALE:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


async def _close_on(cancel: Cancellation, response: httpx.Response) -> None:
    await cancel.wait()
    await response.aclose()


async def _failure(response: httpx.Response) -> str:
    body = b""
    with contextlib.suppress(httpx.HTTPError):
        async for data in response.aiter_raw():
            body += data
            if len(body) >= ERROR_BODY_BYTES:
                break
    try:
        detail = error_message(json.loads(body))
    except ValueError:
        detail = body[:200].decode("utf-8", "replace").strip()
    return f"upstream refused ({response.status_code}): {detail or response.reason_phrase}"
