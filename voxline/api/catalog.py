"""`GET /v1/models`, `GET /v1/voices` and vllm-omni's `GET /v1/audio/voices`: what the
running workers offer, read from the engine info they advertise in the registry (empty lists
while no worker is alive), with the voice aliases the front end adds (OpenAI's names)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel
from redis.exceptions import RedisError

from voxline.api.errors import documented, redis_unreachable
from voxline.api.speech import OPENAI_MODELS
from voxline.shared.capabilities import EngineInfo


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str
    engine: str  # the engine that serves it (an OpenAI name is an alias of the pool's engine)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class Voice(BaseModel):
    id: str
    name: str
    # What the voice speaks itself; empty: the engine picks the language (only "Auto").
    languages: list[str]
    aliases: list[str]  # other names a request may use for this voice (OpenAI's, ...)


class VoiceList(BaseModel):
    engine: str | None
    default: str | None
    voices: list[Voice]
    aliases: dict[str, str]  # alias -> the voice it names
    workers: int


class AudioVoiceList(BaseModel):
    """vllm-omni's shape: voice names (here with the aliases), and uploaded clones (none:
    voxline stores no uploaded voices, a clone comes with each request's ref_audio)."""

    voices: list[str]
    uploaded_voices: list[dict[str, object]]


def catalog_router() -> APIRouter:
    router = APIRouter(tags=["catalog"])

    @router.get("/v1/models", response_model=ModelList, responses=documented(401, 503))
    async def list_models(request: Request) -> ModelList:
        engine, _ = await _engine(request)
        if engine is None:
            return ModelList(data=[])
        models = [Model(id=engine.name, owned_by="voxline", engine=engine.name)]
        models += [
            Model(id=alias, owned_by="voxline", engine=engine.name) for alias in OPENAI_MODELS
        ]
        return ModelList(data=models)

    @router.get("/v1/voices", response_model=VoiceList, responses=documented(401, 503))
    async def list_voices(request: Request) -> VoiceList:
        engine, workers = await _engine(request)
        if engine is None:
            return VoiceList(engine=None, default=None, voices=[], aliases={}, workers=0)
        named: dict[str, list[str]] = {}
        for alias, voice in engine.aliases:
            named.setdefault(voice, []).append(alias)
        voices = [
            Voice(
                id=voice,
                name=voice,
                languages=list(engine.languages_of(voice)),
                aliases=named.get(voice, []),
            )
            for voice in engine.voices
        ]
        return VoiceList(
            engine=engine.name,
            default=engine.default_voice,
            voices=voices,
            aliases=dict(engine.aliases),
            workers=workers,
        )

    @router.get(
        "/v1/audio/voices",
        response_model=AudioVoiceList,
        summary="List voices (vllm-omni-compatible)",
        responses=documented(401, 503),
    )
    async def list_audio_voices(request: Request) -> AudioVoiceList:
        engine, _ = await _engine(request)
        if engine is None:
            return AudioVoiceList(voices=[], uploaded_voices=[])
        names = [*engine.voices, *(alias for alias, _ in engine.aliases)]
        return AudioVoiceList(voices=names, uploaded_voices=[])

    return router


async def _engine(request: Request) -> tuple[EngineInfo | None, int]:
    try:
        return await request.app.state.hub.pool.engine(max_age=0)  # as the workers are now
    except (RedisError, OSError):
        raise redis_unreachable() from None
