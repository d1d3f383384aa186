"""GET /v1/models and /v1/voices list what the live workers advertise, and nothing else."""

from __future__ import annotations

import httpx

from tests.harness import start_pipeline
from voxline.api.speech import OPENAI_MODELS
from voxline.shared.voice_aliases import OPENAI_VOICES
from voxline.worker.engines.tone import DEFAULT_VOICE, VOICES


async def test_the_catalog_follows_the_workers(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, workers=2) as p:
        async with httpx.AsyncClient(base_url=p.http) as http:
            models = (await http.get("/v1/models")).json()
            voices = (await http.get("/v1/voices")).json()
            # Every listed voice and model is accepted by the speech endpoint.
            for model in models["data"]:
                reply = await http.post(
                    "/v1/audio/speech",
                    json={"model": model["id"], "input": "Hi.", "voice": voices["voices"][0]["id"]},
                )
                assert reply.status_code == 200, (model, reply.text)
            # Every alias too.
            for alias in voices["aliases"]:
                reply = await http.post("/v1/audio/speech", json={"input": "Hi.", "voice": alias})
                assert reply.status_code == 200, (alias, reply.text)
            await p.stop_workers()  # a clean stop deregisters them
            empty_models = (await http.get("/v1/models")).json()
            empty_voices = (await http.get("/v1/voices")).json()
            empty_omni = (await http.get("/v1/audio/voices")).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["tone", *OPENAI_MODELS]
    assert {m["engine"] for m in models["data"]} == {"tone"}
    assert [v["id"] for v in voices["voices"]] == list(VOICES)
    assert voices["engine"] == "tone" and voices["default"] == DEFAULT_VOICE
    assert voices["workers"] == 2
    assert set(voices["aliases"]) == set(OPENAI_VOICES)
    assert empty_omni == {"voices": [], "uploaded_voices": []}
    assert empty_models == {"object": "list", "data": []}
    assert empty_voices == {
        "engine": None,
        "default": None,
        "voices": [],
        "aliases": {},
        "workers": 0,
    }


async def test_voices_of_a_real_engine(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, engine="espeak") as p:
        async with httpx.AsyncClient(base_url=p.http) as http:
            voices = (await http.get("/v1/voices")).json()
    ids = [v["id"] for v in voices["voices"]]
    assert voices["engine"] == "espeak" and voices["default"] in ids and len(ids) > 50
    assert all(v["languages"] for v in voices["voices"])
    # Each voice lists what it speaks itself, not every language of the engine.
    assert all(len(v["languages"]) < 10 for v in voices["voices"])
