"""OpenAI-compatible `POST /v1/audio/speech`, through the same sessions, queue and workers as
the WebSocket.

The request runs as a speech session on an in-process transport (speech/local.py): the text
is split, queued sentence by sentence, synthesized in parallel and relayed in order. The
workers send PCM at the asked rate; this module encodes one stream for the whole response (one
Ogg, MP3, ADTS or FLAC stream) and sends it as chunked bytes or as server-sent events.

A WAV has exactly one header. Not streamed (vllm-omni's `stream` false or absent) it is a
complete file whose RIFF and data sizes are right, sent once the last sentence is done;
streamed (`stream: true`, or as SSE) its sizes are 0xFFFFFFFF, the usual convention for a
WAV of unknown length: readers take the data up to the end of the stream.

Statuses mean what they say: the response starts only once the first audio is there, so
anything that fails before it is a 4xx/5xx with an OpenAI-style body. A sentence that fails
after audio went out aborts the response (the client sees a broken transfer, never a 200
that ends normally).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from voxline.api.errors import HTTPError, ResponseAborted, documented
from voxline.api.hub import Hub
from voxline.api.rest import parse_body, pool_engine, read_body, too_large
from voxline.shared import messages
from voxline.shared.audio.codecs import StreamEncoder
from voxline.shared.audio.formats import MEDIA_TYPES, check_rate, default_rate
from voxline.shared.audio.wav import wav_bytes
from voxline.shared.config import Settings
from voxline.shared.protocol import AudioFormat, ErrorCode
from voxline.speech.local import Closed, Frame, LocalSpeech
from voxline.speech.splitter import speakable

log = logging.getLogger("voxline.api.speech")

PATH = "/v1/audio/speech"
# OpenAI's model names; each means "the pool's engine" (listed by GET /v1/models).
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
# OpenAI's `pcm` is 24 kHz; a client reading raw samples cannot learn another rate.
OPENAI_PCM_RATE = 24000
# The text goes to the session in pieces under its per-message limit.
PIECE_CHARS = 8192
SSE = "text/event-stream"


class SpeechRequest(BaseModel):
    """OpenAI's speech request, plus voxline's `sample_rate` and vllm-omni's `language`,
    `speaker`, `task_type` and `stream`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    input: Annotated[str, Field(min_length=1, description="The text to speak")]
    model: str | None = Field(
        None, description="An engine from GET /v1/models (OpenAI's names mean the pool's engine)"
    )
    voice: str | None = Field(
        None, description="A voice or alias from GET /v1/voices; default: the engine's"
    )
    speaker: str | None = Field(None, description="(vllm-omni) another name for `voice`")
    response_format: AudioFormat = "mp3"
    speed: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0
    instructions: str | None = Field(None, description="Only for engines that design voices")
    stream_format: Literal["audio", "sse"] | None = Field(
        None,
        description="audio: the file as chunked bytes; sse: speech.audio.delta events; "
        "default: sse when `stream` is true, else audio",
    )
    stream: bool = Field(
        False,
        description="(vllm-omni) stream the audio as it is made: as SSE unless stream_format "
        "is audio; a streamed wav has unknown sizes (0xFFFFFFFF), an unstreamed one is whole",
    )
    task_type: Literal["CustomVoice", "VoiceDesign", "Base"] | None = Field(
        None, description="(vllm-omni) one the engine lists; default: its first"
    )
    sample_rate: Annotated[int, Field(ge=8000, le=48000)] | None = Field(
        None, description="(voxline) output rate; default: the format's (pcm: 24000)"
    )
    language: str = Field("Auto", description="(voxline) a language the engine lists, or Auto")

    @field_validator("sample_rate", mode="before")
    @classmethod
    def _integral(cls, value: Any) -> Any:
        """24000.0 is the integer JSON Schema says it is (JSON has one number type)."""
        if type(value) is float and value.is_integer():
            return int(value)
        return value


# One server-sent event, as OpenAPI 3.1 describes an event stream's items.
_SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["type", "audio"],
                        "properties": {
                            "type": {"const": "speech.audio.delta"},
                            "audio": {"type": "string", "contentEncoding": "base64"},
                        },
                    },
                    {
                        "type": "object",
                        "required": ["type", "audio_bytes"],
                        "properties": {
                            "type": {"const": "speech.audio.done"},
                            "audio_bytes": {"type": "integer", "minimum": 0},
                        },
                    },
                ]
            },
        },
    },
}


def speech_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["speech"])
    schema = SpeechRequest.model_json_schema()
    schema["properties"]["input"]["maxLength"] = settings.max_buffer_chars
    binary = {"schema": {"type": "string", "format": "binary"}}
    content: dict[str, Any] = {media: binary for media in sorted(set(MEDIA_TYPES.values()))}
    content[SSE] = {"schema": _SSE_EVENT}

    @router.post(
        PATH,
        summary="Speak a text (OpenAI-compatible)",
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
        },
        response_class=Response,
        responses={
            200: {"description": "The audio, streamed as it is made", "content": content},
            **documented(400, 401, 413, 422, 429, 500, 503),
        },
    )
    async def create_speech(request: Request) -> Response:
        return await _speak(request, request.app.state.hub)

    return router


async def _speak(request: Request, hub: Hub) -> Response:
    settings = hub.settings
    req = _parse(await _body(request, settings), settings)
    if not speakable(req.input):
        raise HTTPError(
            400,
            "input has nothing to speak (only spaces, punctuation or symbols)",
            code="invalid_value",
            param="input",
        )
    if req.speaker is not None and req.voice is not None and req.speaker != req.voice:
        raise HTTPError(
            400,
            f"speaker {req.speaker!r} and voice {req.voice!r} name different voices; "
            "send one of them",
            code="invalid_value",
            param="speaker",
        )
    voice = req.voice if req.voice is not None else req.speaker
    sse = req.stream_format == "sse" or (req.stream_format is None and req.stream)
    engine = await _available(hub)
    fmt = req.response_format
    rate = req.sample_rate or (
        OPENAI_PCM_RATE if fmt == "pcm" else default_rate(fmt, engine.sample_rate)
    )
    if problem := check_rate(fmt, rate):
        raise HTTPError(400, problem, code="invalid_value", param="sample_rate")
    if req.model is not None and req.model not in OPENAI_MODELS and req.model != engine.name:
        raise HTTPError(
            400,
            f"model {req.model!r} is not served here; GET /v1/models lists "
            f"{[engine.name, *OPENAI_MODELS]}",
            code="model_not_found",
            param="model",
        )
    config: dict[str, Any] = {
        "response_format": "pcm",
        "stream_audio": True,
        "sample_rate": rate,
        "speed": req.speed,
        "language": req.language,
    }
    if voice is not None:
        config["voice"] = voice
    for name in ("instructions", "task_type"):
        if (value := getattr(req, name)) is not None:
            config[name] = value

    speech = LocalSpeech(hub)
    try:
        speech.configure(**config)
        ready = await speech.next()
        if not isinstance(ready, messages.SessionReady):
            raise _refusal(ready)
        for start in range(0, len(req.input), PIECE_CHARS):
            speech.feed(req.input[start : start + PIECE_CHARS])
        speech.close()  # deliver everything, then close
        head = await _until_audio(speech)
    except BaseException:
        await speech.aclose()
        raise
    headers = {"X-Sample-Rate": str(rate), "X-Voxline-Engine": engine.name}
    if fmt == "wav" and not sse and not req.stream:
        # One complete file, its sizes right: the response waits for the last sentence.
        data = await _whole(request, _stream(speech, StreamEncoder("pcm", rate), head))
        if data is None:
            return Response(status_code=499)  # the client left; its work was cancelled
        return Response(wav_bytes(data, rate), media_type=MEDIA_TYPES[fmt], headers=headers)
    # The encoder writes the one header a streamed WAV has (its sizes unknown).
    stream = _stream(speech, StreamEncoder(fmt, rate), head)
    if sse:
        return StreamingResponse(_sse(stream), media_type=SSE, headers=headers)
    return StreamingResponse(stream, media_type=MEDIA_TYPES[fmt], headers=headers)


async def _body(request: Request, settings: Settings) -> bytes:
    return await read_body(request, settings.max_buffer_chars)


def _parse(body: bytes, settings: Settings) -> SpeechRequest:
    req = parse_body(body, SpeechRequest)
    if len(req.input) > settings.max_buffer_chars:
        raise too_large(settings.max_buffer_chars)
    return req


async def _available(hub: Hub) -> Any:
    """The pool's engine; 503 when nothing can serve, 429 when everything is busy."""
    return await pool_engine(hub)


_STATUS = {
    str(ErrorCode.INVALID_CONFIG): 400,
    str(ErrorCode.TEXT_TOO_LARGE): 413,
    str(ErrorCode.OVERLOADED): 503,
    str(ErrorCode.GENERATION_FAILED): 500,
}


def _refusal(frame: Frame) -> HTTPError:
    """The session's error message (or its close) as an HTTP error."""
    if isinstance(frame, messages.ErrorMessage):
        code = frame.code
        return HTTPError(_STATUS.get(code, 500), frame.message, code=code, param=frame.field)
    return HTTPError(500, "the session ended before any audio", code="internal")


async def _until_audio(speech: LocalSpeech) -> list[Frame]:
    """Frames up to the first audio or the end; raises when something failed first."""
    head: list[Frame] = []
    while True:
        frame = await speech.next()
        if isinstance(frame, messages.ErrorMessage):
            raise _refusal(frame)
        head.append(frame)
        if isinstance(frame, bytes | Closed):
            if isinstance(frame, Closed) and frame.code != 1000:
                raise _refusal(frame)
            return head


async def _stream(
    speech: LocalSpeech,
    encoder: StreamEncoder,
    head: list[Frame],
) -> AsyncGenerator[bytes, None]:
    try:
        pending = list(head)
        while True:
            frame = pending.pop(0) if pending else await speech.next()
            if isinstance(frame, bytes):
                out = encoder.encode(frame)
            elif isinstance(frame, Closed):
                if frame.code != 1000:
                    raise ResponseAborted(f"the session closed with {frame.code}")
                if out := encoder.close():
                    yield out
                return
            elif isinstance(frame, messages.AudioDone):
                # The sentence is complete: drain the encoder so it is all heard now.
                out = encoder.end_sentence()
            elif isinstance(frame, messages.ErrorMessage):
                raise ResponseAborted(frame.message)
            else:
                continue
            if out:
                yield out
    finally:
        await speech.aclose()


async def _whole(request: Request, stream: AsyncGenerator[bytes, None]) -> bytes | None:
    """All of `stream`, or None when the client left first (its work is then cancelled, as
    a streamed response's is when the client leaves)."""

    async def collect() -> bytes:
        async with contextlib.aclosing(stream) as chunks:
            return b"".join([chunk async for chunk in chunks])

    collecting = asyncio.ensure_future(collect())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({collecting, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not collecting.done():
            collecting.cancel()
        await asyncio.gather(collecting, gone, return_exceptions=True)
    if collecting.cancelled():
        return None
    try:
        return collecting.result()
    except ResponseAborted as exc:
        raise HTTPError(500, str(exc), code="generation_failed") from None


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body was read: only http.disconnect is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _sse(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        delta = {"type": "speech.audio.delta", "audio": base64.b64encode(chunk).decode()}
        yield b"data: " + json.dumps(delta).encode() + b"\n\n"
    done = {"type": "speech.audio.done", "audio_bytes": total}
    yield b"data: " + json.dumps(done).encode() + b"\n\n"
