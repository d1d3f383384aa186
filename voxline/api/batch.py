"""Batch synthesis over REST: `/v1/audio/speech/jobs`.

A job is accepted here (validated against the live pool, stored, queued on arq) and then runs
without the client: the arq process (`voxline arq`) splits the text, feeds its sentences to the
workers behind the real-time traffic, assembles and encodes the file and stores it (Redis when
small, else `batch_dir`). The client polls the job and downloads the file once it is done.

A job is never refused because the pool is busy (no 429): batch work waits by design.
`DELETE` cancels a job that has not finished (it stays readable, `cancelled`, until it expires)
and deletes a finished one (its file and its record).

With API keys on, a job belongs to the key that created it: to any other key it does not exist
(404, the answer for a missing job), on every route. With keys off, any caller sees any job.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from redis.exceptions import RedisError

from voxline.api.errors import HTTPError, documented, redis_unreachable
from voxline.api.hub import Hub
from voxline.api.rest import parse_body, pool_engine, read_body, too_large
from voxline.batch.callbacks import check_url, parse_allow, redact_url
from voxline.batch.connections import enqueue_batch
from voxline.shared.audio.formats import FILE_EXTENSIONS, MEDIA_TYPES
from voxline.shared.batches import (
    FINAL,
    BatchRequest,
    BatchState,
    BatchStatus,
    new_batch_id,
    wake_in,
)
from voxline.shared.config import Settings
from voxline.shared.keys import batch_session
from voxline.shared.protocol import AudioFormat, ProtocolError, output_rate, parse_config

log = logging.getLogger("voxline.api.batch")

PATH = "/v1/audio/speech/jobs"
JOB_ID = "^[0-9a-f]{24}$"  # shared.batches.new_batch_id
CALLBACK_MAX_CHARS = 2048
# An http(s) URL of printable ASCII (no spaces) whose host part is not empty (and then
# batch.callbacks.check_url: a host and a valid port). Where it may point is checked when the
# callback is made (batch/callbacks.py); a callback that fails is recorded on the job as
# `callback_error`. Explicit ranges, not \s or \S: every regex engine reads them alike.
CALLBACK_URL = r'^https?://[!"$-.0->@-~][!-~]*$'  # the first character is none of # / ?
CANCELLED_BY_CLIENT = "cancelled by the client"
_JOB_ID = re.compile("[0-9a-f]{24}")  # fullmatch: `$` would let a trailing newline in


def _integral(value: Any) -> Any:
    """JSON Schema's integers include 24000.0; strict validation refuses every float."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Rate = Annotated[int, Field(ge=8000, le=48000), BeforeValidator(_integral)]


class BatchJobRequest(BaseModel):
    """A batch job: the text and how to speak it (as `POST /v1/audio/speech`)."""

    # python-re: the same regex engine as the schema's readers (hypothesis, jsonschema).
    model_config = ConfigDict(extra="forbid", strict=True, regex_engine="python-re")

    input: Annotated[str, Field(min_length=1, description="The text to speak")]
    voice: str | None = Field(
        None, description="A voice from GET /v1/voices; default: the engine's"
    )
    response_format: AudioFormat = "mp3"
    sample_rate: Rate | None = Field(
        None, description="Output rate; default: the format's for the pool's engine"
    )
    speed: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0
    language: str = Field("Auto", description="A language the engine lists, or Auto")
    callback_url: (
        Annotated[str, Field(max_length=CALLBACK_MAX_CHARS, pattern=CALLBACK_URL)] | None
    ) = Field(None, description="POSTed the job's JSON once it is done, failed or cancelled")


class JobProgress(BaseModel):
    sentences_done: int
    sentences_total: int  # 0 until the text is split


class Job(BaseModel):
    """A batch job as `GET /v1/audio/speech/jobs/{id}` shows it (shared.batches.BatchState)."""

    id: str
    object: Literal["speech.job"]
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: JobProgress
    created_at: float
    voice: str
    response_format: str
    sample_rate: int
    finished_at: float | None = Field(None, description="Once final")
    error: str | None = Field(None, description="Why it failed, or that it was cancelled")
    audio_bytes: int | None = Field(None, description="The file's size, once done")
    duration: float | None = Field(None, description="Seconds of audio, once done")
    callback_url: str | None = Field(None, description="The callback URL, credentials redacted")
    callback_error: str | None = Field(
        None,
        description="Why the callback could not be made: delivery failed (status N), "
        "(unreachable) or (address not allowed)",
    )


# The id in the path, documented by hand: a parameter FastAPI validated would be refused in
# its own 422 shape, where an id of another shape names no job (404) like an unknown one.
_JOB_ID_PARAMETER = {
    "parameters": [
        {
            "name": "job_id",
            "in": "path",
            "required": True,
            "description": "The id POST returned",
            "schema": {"type": "string", "pattern": JOB_ID},
        }
    ]
}


class Deleted(BaseModel):
    id: str
    deleted: Literal[True]


_NOT_FOUND = {404: "No job with this id (never made, expired, or deleted)"}
_UNAVAILABLE = {503: "Batch synthesis is off here (batch_unavailable), or Redis is unreachable"}
_NO_WORKER = {503: _UNAVAILABLE[503] + ", or no TTS worker is alive"}


def batch_router(settings: Settings) -> APIRouter:
    parse_allow(settings.callback_allow)  # a bad VOXLINE_CALLBACK_ALLOW fails at start-up
    router = APIRouter(tags=["batch"])
    schema = BatchJobRequest.model_json_schema()
    schema["properties"]["input"]["maxLength"] = settings.batch_max_chars
    job = {"model": Job}
    binary = {"schema": {"type": "string", "format": "binary"}}
    audio: dict[str, Any] = {media: binary for media in sorted(set(MEDIA_TYPES.values()))}

    @router.post(
        PATH,
        summary="Queue a text for batch synthesis",
        status_code=202,
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
        },
        response_class=JSONResponse,
        responses={
            202: {
                **job,
                "description": "Queued; poll the job at Location",
                "headers": {
                    "Location": {"description": "The job's URL", "schema": {"type": "string"}}
                },
            },
            **documented(400, 401, 413, 422, 503, described=_NO_WORKER),
        },
    )
    async def create_job(request: Request) -> Response:
        return await _create(request, _hub(request))

    @router.get(
        PATH + "/{job_id}",
        summary="A batch job's status and progress",
        openapi_extra=_JOB_ID_PARAMETER,
        response_class=JSONResponse,
        responses={
            200: {**job, "description": "The job"},
            **documented(401, 404, 503, described=_NOT_FOUND | _UNAVAILABLE),
        },
    )
    async def get_job(request: Request) -> Response:
        state = await _job(_hub(request), request.path_params["job_id"], _owner(request))
        return JSONResponse(state.public())

    @router.get(
        PATH + "/{job_id}/audio",
        summary="Download a finished batch job's file",
        openapi_extra=_JOB_ID_PARAMETER,
        response_class=Response,
        responses={
            200: {
                "description": "The file (Content-Disposition names it <id>.<extension>)",
                "content": audio,
            },
            **documented(
                401,
                404,
                409,
                410,
                503,
                described=_NOT_FOUND
                | {503: _UNAVAILABLE[503] + ", or the file cannot be read here"}
                | {
                    409: "The job is still queued or running",
                    410: "The job failed or was cancelled, or its file expired",
                },
            ),
        },
    )
    async def get_job_audio(request: Request) -> Response:
        return await _audio(_hub(request), request.path_params["job_id"], _owner(request))

    @router.delete(
        PATH + "/{job_id}",
        summary="Cancel an unfinished batch job, or delete a finished one",
        openapi_extra=_JOB_ID_PARAMETER,
        response_class=JSONResponse,
        responses={
            200: {
                "model": Job | Deleted,
                "description": "The job as it is now (cancelled), or that it was deleted",
            },
            **documented(401, 404, 503, described=_NOT_FOUND | _UNAVAILABLE),
        },
    )
    async def delete_job(request: Request) -> Response:
        return await _delete(_hub(request), request.path_params["job_id"], _owner(request))

    return router


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    if hub.arq is None:
        raise HTTPError(503, hub.batch_unavailable, code="batch_unavailable")
    return hub


def _owner(request: Request) -> str | None:
    """The label of the API key the request came with (api/auth.py); None with keys off."""
    return getattr(request.state, "api_key_label", None)


async def _create(request: Request, hub: Hub) -> Response:
    settings = hub.settings
    req = parse_body(await read_body(request, settings.batch_max_chars), BatchJobRequest)
    if len(req.input) > settings.batch_max_chars:
        raise too_large(settings.batch_max_chars)
    if req.callback_url is not None and (why := check_url(req.callback_url)) is not None:
        # Schema-valid, so 400 (as for a voice the pool lacks), not the schema's 422.
        raise HTTPError(400, f"callback_url: {why}", code="invalid_value", param="callback_url")
    engine = await pool_engine(hub, refuse_busy=False)  # batch jobs wait: never a 429
    asked = req.model_dump(
        include={"voice", "response_format", "sample_rate", "speed", "language"},
        exclude_none=True,
    )
    try:
        config = parse_config(asked, engine)
    except ProtocolError as exc:
        raise HTTPError(400, exc.message, code=str(exc.code), param=exc.field) from None
    batch_id = new_batch_id()
    wanted = BatchRequest(
        text=req.input,
        voice=config.voice or engine.default_voice,
        format=config.response_format,
        sample_rate=output_rate(config, engine),
        speed=config.speed,
        language=config.language,
        callback_url=req.callback_url or "",
        callback_redacted=redact_url(req.callback_url) if req.callback_url else "",
        owner=_owner(request) or "",
    )
    try:
        await hub.batches.create(batch_id, wanted)
    except (RedisError, OSError):
        raise redis_unreachable() from None
    assert hub.arq is not None  # _hub checked
    try:
        await enqueue_batch(hub.arq, hub.keys.arq_queue, batch_id)
    except (RedisError, OSError) as exc:
        # Not left queued for ever: a job no arq process will ever see fails now.
        log.warning("could not queue batch job %s on arq: %s", batch_id, exc)
        await _fail_unqueued(hub, batch_id, exc)
        raise HTTPError(
            503,
            "could not queue the job (arq's Redis is unreachable); try again later",
            code="unavailable",
        ) from None
    state = await _job(hub, batch_id, _owner(request))
    log.info(
        "batch job %s: %d characters, %s at %d Hz",
        batch_id,
        len(req.input),
        wanted.format,
        wanted.sample_rate,
    )
    return JSONResponse(state.public(), status_code=202, headers={"Location": _url(batch_id)})


async def _fail_unqueued(hub: Hub, batch_id: str, exc: BaseException) -> None:
    try:
        await hub.batches.finish(
            batch_id, BatchStatus.FAILED, error=f"could not queue the job: {exc}"
        )
    except (RedisError, OSError):
        pass  # the same Redis is down: the job's keys expire by themselves


def _url(batch_id: str) -> str:
    return f"{PATH}/{batch_id}"


async def _job(hub: Hub, batch_id: str, owner: str | None) -> BatchState:
    """The job, if `owner` may see it: with keys on (`owner` is a key label) only the key that
    created it may; another key is told what a missing job tells."""
    state = None
    if _JOB_ID.fullmatch(batch_id):
        try:
            state = await hub.batches.get(batch_id)
        except (RedisError, OSError):
            raise redis_unreachable() from None
    if state is not None and owner is not None and state.request.owner != owner:
        state = None
    if state is None:
        raise HTTPError(404, f"no job {batch_id!r} (or it expired)", code="job_not_found")
    return state


async def _audio(hub: Hub, batch_id: str, owner: str | None) -> Response:
    state = await _job(hub, batch_id, owner)
    if state.status in (BatchStatus.QUEUED, BatchStatus.RUNNING):
        raise HTTPError(
            409,
            f"the job is {state.status} ({state.done} of {state.total or '?'} sentences made); "
            f"GET {_url(batch_id)} until its status is done",
            code="job_not_finished",
        )
    if state.status is not BatchStatus.DONE:
        code = "job_failed" if state.status is BatchStatus.FAILED else "job_cancelled"
        reason = state.error or "no reason given"
        raise HTTPError(410, f"the job is {state.status}: {reason}", code=code)
    try:
        pieces = await hub.results.read(state) if state.result else None
    except RedisError:
        raise redis_unreachable() from None
    except OSError as exc:  # the file is there but this process cannot read it
        log.error("batch job %s: cannot read %s: %s", batch_id, state.result, exc)
        raise HTTPError(503, "the job's file cannot be read here", code="unavailable") from None
    if pieces is None:
        raise HTTPError(410, "the job's file expired or was deleted", code="result_expired")
    fmt = state.request.format
    headers = {
        "Content-Length": str(state.bytes),
        "Content-Disposition": f'attachment; filename="{batch_id}.{FILE_EXTENSIONS[fmt]}"',
        "X-Sample-Rate": str(state.request.sample_rate),
    }
    return StreamingResponse(pieces, media_type=MEDIA_TYPES[fmt], headers=headers)


async def _delete(hub: Hub, batch_id: str, owner: str | None) -> Response:
    state = await _job(hub, batch_id, owner)
    try:
        if state.status not in FINAL:
            await _cancel(hub, batch_id)
            state = await _job(hub, batch_id, owner)  # cancelled, or it finished meanwhile
        elif state.status is BatchStatus.DONE:
            await hub.results.delete(state)
            await hub.redis.delete(hub.keys.batch(batch_id))
            log.info("batch job %s deleted", batch_id)
            return JSONResponse(Deleted(id=batch_id, deleted=True).model_dump())
    except (RedisError, OSError):
        raise redis_unreachable() from None
    return JSONResponse(state.public())


async def _cancel(hub: Hub, batch_id: str) -> None:
    """Stop a job wherever it is: queued sentences are skipped and in-flight ones stopped (the
    cancel set and notice of its pseudo-session), the job is final, its coordinator wakes."""
    await hub.queue.cancel(batch_session(batch_id))
    if not await hub.batches.finish(batch_id, BatchStatus.CANCELLED, error=CANCELLED_BY_CLIENT):
        return  # it finished first: there is nothing left to stop
    events = hub.keys.batch_events(batch_id)
    async with hub.redis.pipeline(transaction=False) as pipe:
        wake_in(pipe, hub.keys, batch_id)
        # finish() dropped the stream; the wake-up makes it anew, and no coordinator may be
        # left to delete it (the job was still queued).
        pipe.expire(events, hub.settings.batch_result_ttl)
        await pipe.execute()
    log.info("batch job %s cancelled by the client", batch_id)
