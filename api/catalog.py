"""`GET /v1/models` and `GET /v1/voices`: what the running workers offer, read from the
engine info they advertise in the registry (empty lists while no worker is alive)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel
from redis.exceptions import RedisError

from api.errors import documented, redis_unreachable
from api.speech import OPENAI_MODELS
from shared.capabilities import EngineInfo


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
    languages: list[str]  # empty: the engine picks the language (only "Auto")


class VoiceList(BaseModel):
    engine: str | None
    default: str | None
    voices: list[Voice]
    workers: int


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
            return VoiceList(engine=None, default=None, voices=[], workers=0)
        voices = [
            Voice(id=voice, name=voice, languages=list(engine.languages)) for voice in engine.voices
        ]
        return VoiceList(
            engine=engine.name, default=engine.default_voice, voices=voices, workers=workers
        )

    return router


async def _engine(request: Request) -> tuple[EngineInfo | None, int]:
    try:
        return await request.app.state.hub.pool.engine(max_age=0)  # as the workers are now
    except (RedisError, OSError):
        raise redis_unreachable() from None
