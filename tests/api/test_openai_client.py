"""The official `openai` client against a real server and workers: OpenAI's voice names,
every format decoded, WAV sizes, vllm-omni's REST extras, the voice lists and CORS."""

from __future__ import annotations

import asyncio
import struct

import httpx
import pytest

from tests.audio import decode, dominant_hz
from tests.harness import Client, start_pipeline
from voxline.api.auth import hash_key

openai = pytest.importorskip("openai")

TEXT = "Hello there. This is a test."
SECONDS = len("Hello there.This is a test.") * 60.0 / 1000  # tone: 60 ms per character
# What an encoder may add: a padded frame at each of the two sentence ends, plus its delay.
PAD_S = 0.3
TONE_HZ = {"tone-low": 220.0, "tone-mid": 440.0, "tone-high": 880.0}
ORIGIN = "https://app.example.com"


def _client(http: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=http + "/v1", api_key="unused", max_retries=0)


def _riff_sizes(data: bytes) -> tuple[int, int, int]:
    """(RIFF size, data size, offset of the data) of a WAV, its chunks walked."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    at = 12
    while data[at : at + 4] != b"data":
        (size,) = struct.unpack_from("<I", data, at + 4)
        at += 8 + size + size % 2
    return struct.unpack_from("<I", data, 4)[0], struct.unpack_from("<I", data, at + 4)[0], at + 8


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
async def test_openai_voice_names_speak_in_every_format(
    redis_url: str, key_prefix: str, fmt: str
) -> None:
    async with start_pipeline(redis_url, key_prefix) as p:
        response = await _client(p.http).audio.speech.create(
            model="tts-1", voice="alloy", input=TEXT, response_format=fmt
        )
        data = response.read()
    samples, rate = decode(data, fmt, 24000)  # pcm: raw s16le at OpenAI's 24 kHz
    assert SECONDS - 0.01 <= samples.size / rate <= SECONDS + PAD_S, samples.size / rate
    # alloy is tone-mid on the tone engine.
    assert abs(dominant_hz(samples, rate) - TONE_HZ["tone-mid"]) < 5
    if fmt == "wav":
        assert data.count(b"RIFF") == 1 and data.count(b"WAVE") == 1
        riff, size, offset = _riff_sizes(data)
        assert riff == len(data) - 8 and size == len(data) - offset == samples.size * 2


async def test_aliases_pick_their_own_voice(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix) as p:
        client = _client(p.http)
        heard = {}
        for voice in ("ash", "nova", "Alloy"):
            response = await client.audio.speech.create(
                model="tts-1", voice=voice, input="Hi.", response_format="pcm"
            )
            heard[voice] = dominant_hz(*decode(response.read(), "pcm", 24000))
    assert abs(heard["ash"] - TONE_HZ["tone-low"]) < 5
    assert abs(heard["nova"] - TONE_HZ["tone-high"]) < 5
    assert abs(heard["Alloy"] - TONE_HZ["tone-mid"]) < 5  # aliases match in any case


async def test_streamed_wav_has_one_header_of_unknown_size(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix) as p:
        async with httpx.AsyncClient(base_url=p.http, timeout=30) as http:
            reply = await http.post(
                "/v1/audio/speech",
                json={
                    "input": TEXT,
                    "response_format": "wav",
                    "stream": True,
                    "stream_format": "audio",
                },
            )
    assert reply.status_code == 200, reply.text
    data = reply.content
    assert data.count(b"RIFF") == 1 and data.count(b"WAVE") == 1
    riff, size, offset = _riff_sizes(data)
    assert riff == size == 0xFFFFFFFF and offset == 44
    samples, rate = decode(data, "wav", 24000)
    assert SECONDS - 0.01 <= samples.size / rate <= SECONDS + 0.01


async def test_stream_true_alone_is_sse(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix) as p:
        async with httpx.AsyncClient(base_url=p.http, timeout=30) as http:
            reply = await http.post(
                "/v1/audio/speech",
                json={"input": TEXT, "response_format": "pcm", "stream": True},
            )
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert '"speech.audio.done"' in reply.text


async def test_nothing_to_speak_is_400(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix) as p:
        client = _client(p.http)
        for text in ("   ", "?!... --", "\n\n"):
            with pytest.raises(openai.BadRequestError) as refused:
                await client.audio.speech.create(model="tts-1", voice="alloy", input=text)
            error = refused.value.body
            assert error["code"] == "invalid_value" and error["param"] == "input", error


async def test_speaker_is_another_name_for_voice(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix) as p:
        async with httpx.AsyncClient(base_url=p.http, timeout=30) as http:
            speak = {"input": "Hi.", "response_format": "pcm", "task_type": "CustomVoice"}
            alone = await http.post("/v1/audio/speech", json={**speak, "speaker": "tone-high"})
            alias = await http.post("/v1/audio/speech", json={**speak, "speaker": "coral"})
            same = await http.post(
                "/v1/audio/speech", json={**speak, "speaker": "tone-low", "voice": "tone-low"}
            )
            both = await http.post(
                "/v1/audio/speech", json={**speak, "speaker": "tone-low", "voice": "alloy"}
            )
    assert abs(dominant_hz(*decode(alone.content, "pcm", 24000)) - 880) < 5
    assert abs(dominant_hz(*decode(alias.content, "pcm", 24000)) - 880) < 5
    assert abs(dominant_hz(*decode(same.content, "pcm", 24000)) - 220) < 5
    assert both.status_code == 400
    assert both.json()["error"]["code"] == "invalid_value"
    assert both.json()["error"]["param"] == "speaker"


async def test_voice_lists_carry_the_aliases(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix) as p:
        async with httpx.AsyncClient(base_url=p.http) as http:
            voices = (await http.get("/v1/voices")).json()
            omni = (await http.get("/v1/audio/voices")).json()
    assert voices["aliases"]["alloy"] == "tone-mid" and voices["aliases"]["onyx"] == "tone-low"
    assert len(voices["aliases"]) == 13
    by_id = {v["id"]: v for v in voices["voices"]}
    assert "alloy" in by_id["tone-mid"]["aliases"] and "nova" in by_id["tone-high"]["aliases"]
    assert sorted(a for v in by_id.values() for a in v["aliases"]) == sorted(voices["aliases"])
    # vllm-omni's shape: names (voices, then aliases) and no uploaded voice.
    assert omni["voices"][:3] == ["tone-low", "tone-mid", "tone-high"]
    assert set(omni["voices"]) == {*by_id, *voices["aliases"]}
    assert omni["uploaded_voices"] == []


async def test_the_setting_overrides_and_adds_aliases(redis_url: str, key_prefix: str) -> None:
    aliases = "alloy=tone-high, Vivian=tone-low,ghost=nobody"
    async with start_pipeline(redis_url, key_prefix, voice_aliases=aliases) as p:
        client = _client(p.http)
        heard = {}
        for voice in ("alloy", "Vivian"):
            response = await client.audio.speech.create(
                model="tts-1", voice=voice, input="Hi.", response_format="pcm"
            )
            heard[voice] = dominant_hz(*decode(response.read(), "pcm", 24000))
        with pytest.raises(openai.BadRequestError):
            await client.audio.speech.create(model="tts-1", voice="ghost", input="Hi.")
        async with httpx.AsyncClient(base_url=p.http) as http:
            listed = (await http.get("/v1/voices")).json()["aliases"]
    assert abs(heard["alloy"] - 880) < 5 and abs(heard["Vivian"] - 220) < 5
    assert listed["alloy"] == "tone-high" and listed["Vivian"] == "tone-low"
    assert "ghost" not in listed  # its voice does not exist: dropped


async def test_espeak_voices_list_their_own_languages(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, engine="espeak") as p:
        async with httpx.AsyncClient(base_url=p.http) as http:
            reply = await http.get("/v1/voices")
            response = await _client(p.http).audio.speech.create(
                model="tts-1", voice="alloy", input="Hello there.", response_format="flac"
            )
    voices = reply.json()
    by_id = {v["id"]: v for v in voices["voices"]}
    assert len(by_id) > 50 and len(reply.content) < 20_000  # was 150 KB: all 158 languages each
    assert all(0 < len(v["languages"]) <= 8 for v in by_id.values())
    assert by_id["en-us"]["languages"][0] == "en-us" and "English" in by_id["en-us"]["languages"]
    assert "German" in by_id["de"]["languages"] and "en" not in by_id["de"]["languages"]
    assert voices["aliases"]["alloy"] == "en-us" and "alloy" in by_id["en-us"]["aliases"]
    assert all(voice in by_id for voice in voices["aliases"].values())
    samples, rate = decode(response.read(), "flac", 24000)
    assert samples.size / rate > 0.3


async def test_cors_preflight_follows_allowed_origins(redis_url: str, key_prefix: str) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with start_pipeline(
        redis_url, key_prefix, allowed_origins=ORIGIN, api_keys=hash_key("secret")
    ) as p:
        async with httpx.AsyncClient(base_url=p.http, timeout=30) as http:
            allowed = await http.options(
                "/v1/audio/speech", headers={"Origin": ORIGIN, **preflight}
            )
            other = await http.options(
                "/v1/audio/speech", headers={"Origin": "https://evil.example", **preflight}
            )
            spoken = await http.post(
                "/v1/audio/speech",
                json={"input": "Hi.", "response_format": "pcm"},
                headers={"Origin": ORIGIN, "Authorization": "Bearer secret"},
            )
            refused = await http.post(
                "/v1/audio/speech",
                json={"input": "Hi."},
                headers={"Origin": "https://evil.example", "Authorization": "Bearer secret"},
            )
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    assert spoken.status_code == 200 and spoken.headers["access-control-allow-origin"] == ORIGIN
    assert "x-sample-rate" in spoken.headers["access-control-expose-headers"].lower()
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers


async def test_cors_allows_any_origin_when_none_is_configured(
    redis_url: str, key_prefix: str
) -> None:
    async with start_pipeline(redis_url, key_prefix) as p:
        async with httpx.AsyncClient(base_url=p.http) as http:
            reply = await http.options(
                "/v1/voices",
                headers={
                    "Origin": "https://anywhere.example",
                    "Access-Control-Request-Method": "GET",
                },
            )
    assert reply.status_code == 200
    assert reply.headers["access-control-allow-origin"] == "*"


async def test_the_websocket_takes_the_aliases_too(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix) as p:
        async with Client.connect(p, {"voice": "nova", "response_format": "pcm"}) as client:
            ready = client.received[-1]
            await client.send("input.text", text="Hi.")
            await client.send("input.done")
            sentences, _ = await client.utterance()
    assert ready["voice"] == "tone-high"  # the alias's voice, as the session speaks it
    samples, rate = decode(b"".join(s.audio for s in sentences), "pcm", 24000)
    assert abs(dominant_hz(samples, rate) - TONE_HZ["tone-high"]) < 5


async def test_a_client_that_leaves_a_whole_wav_stops_the_work(
    redis_url: str, key_prefix: str
) -> None:
    long = " ".join(f"This is sentence number {i}." for i in range(12))
    async with start_pipeline(redis_url, key_prefix, engine_options={"rtf": "1.0"}) as p:
        async with httpx.AsyncClient(base_url=p.http, timeout=30) as http:
            request = asyncio.create_task(
                http.post("/v1/audio/speech", json={"input": long, "response_format": "wav"})
            )
            for _ in range(100):  # until the first sentence is being spoken
                if p.total("completed") or len(p.workers[0].in_flight):
                    break
                await asyncio.sleep(0.05)
            request.cancel()  # the connection is dropped: the whole file is never sent
            await asyncio.gather(request, return_exceptions=True)
        for _ in range(100):
            if p.total("cancelled") >= 1 and not len(p.workers[0].in_flight):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert p.total("cancelled") >= 1
        assert p.total("completed") + p.total("cancelled") < 12


async def test_a_whole_wav_that_fails_is_an_error_status(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, engine_options={"fail_on": "boom"}) as p:
        async with httpx.AsyncClient(base_url=p.http, timeout=30) as http:
            reply = await http.post(
                "/v1/audio/speech",
                json={"input": "All fine here. Then it goes boom.", "response_format": "wav"},
            )
    # Nothing was sent before the last sentence: the failure is a status, not a cut transfer.
    assert reply.status_code == 500 and reply.json()["error"]["code"] == "generation_failed"
