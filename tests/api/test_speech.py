"""POST /v1/audio/speech: OpenAI's request and errors, through the real queue and workers."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest

from tests.audio import decode, dominant_hz
from tests.harness import start_pipeline

TEXT = "Hello there. This is a test."
SENTENCES = ("Hello there.", "This is a test.")
MS_PER_CHAR = 60.0  # the tone engine's default: each sentence lasts 60 ms per character
SECONDS = sum(len(s) for s in SENTENCES) * MS_PER_CHAR / 1000
TONE_HZ = {"tone-mid": 440.0, "tone-high": 880.0}
# What an encoder may add: silence padding a frame at each sentence end, plus its delay.
PAD_PER_SENTENCE_S = 0.15
MEDIA = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


def _client(http: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=http, timeout=30)


@pytest.mark.parametrize(
    ("fmt", "rate"),
    [
        ("mp3", 24000),
        ("opus", 24000),
        ("aac", 24000),
        ("flac", 24000),
        ("wav", 24000),
        ("pcm", 24000),
        ("mulaw", 8000),
        ("alaw", 8000),
    ],
)
async def test_every_format_decodes_to_the_spoken_audio(
    redis_url: str, key_prefix: str, fmt: str, rate: int
) -> None:
    async with start_pipeline(redis_url, key_prefix, workers=2, concurrency=2) as p:
        async with _client(p.http) as http:
            reply = await http.post(
                "/v1/audio/speech",
                json={
                    "model": "tts-1",
                    "input": TEXT,
                    "voice": "tone-high",
                    "response_format": fmt,
                },
            )
    assert reply.status_code == 200, reply.text
    if fmt in MEDIA:
        assert reply.headers["content-type"].startswith(MEDIA[fmt])
    assert reply.headers["x-sample-rate"] == str(rate)
    samples, got_rate = decode(reply.content, fmt, rate)
    assert got_rate in (rate, 48000)  # Opus decoders always give 48 kHz
    seconds = samples.size / got_rate
    assert SECONDS - 0.01 <= seconds <= SECONDS + PAD_PER_SENTENCE_S * len(SENTENCES), seconds
    assert abs(dominant_hz(samples, got_rate) - TONE_HZ["tone-high"]) < 5


async def test_sample_rate_is_honoured(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix) as p:
        async with _client(p.http) as http:
            reply = await http.post(
                "/v1/audio/speech",
                json={"input": TEXT, "response_format": "flac", "sample_rate": 16000},
            )
    assert reply.status_code == 200
    samples, rate = decode(reply.content, "flac", 16000)
    assert rate == 16000 and abs(samples.size / rate - SECONDS) < 0.2
    assert abs(dominant_hz(samples, rate) - TONE_HZ["tone-mid"]) < 5


async def test_an_integral_float_rate_is_an_integer(redis_url: str, key_prefix: str) -> None:
    # JSON has one number type: 16000.0 is the integer the schema asks for (16000.5 is not).
    async with start_pipeline(redis_url, key_prefix) as p:
        async with _client(p.http) as http:
            body = {"input": "Hi.", "response_format": "pcm"}
            whole = await http.post("/v1/audio/speech", json={**body, "sample_rate": 16000.0})
            half = await http.post("/v1/audio/speech", json={**body, "sample_rate": 16000.5})
    assert whole.status_code == 200 and whole.headers["x-sample-rate"] == "16000"
    assert half.status_code == 422 and half.json()["error"]["param"] == "sample_rate"


async def test_sse_events_carry_one_stream(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, workers=2, concurrency=2) as p:
        async with _client(p.http) as http:
            reply = await http.post(
                "/v1/audio/speech",
                json={"input": TEXT, "response_format": "mp3", "stream_format": "sse"},
            )
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = [
        json.loads(block.removeprefix("data: "))
        for block in reply.text.split("\n\n")
        if block.strip()
    ]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) >= 2 and events[-1]["type"] == "speech.audio.done"
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert events[-1]["audio_bytes"] == len(audio)
    samples, rate = decode(audio, "mp3", 24000)
    assert SECONDS - 0.01 <= samples.size / rate <= SECONDS + 2 * PAD_PER_SENTENCE_S


async def test_the_openai_client_library_gets_the_audio(redis_url: str, key_prefix: str) -> None:
    openai = pytest.importorskip("openai")  # installed with the pipecat extra
    async with start_pipeline(redis_url, key_prefix) as p:
        client = openai.AsyncOpenAI(base_url=p.http + "/v1", api_key="unused")
        async with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="tone-mid", input=TEXT, response_format="wav"
        ) as response:
            data = await response.read()
        with pytest.raises(openai.BadRequestError) as refused:
            await client.audio.speech.create(model="tts-1", voice="nobody", input=TEXT)
    samples, rate = decode(data, "wav", 24000)
    assert abs(samples.size / rate - SECONDS) < 0.01
    assert "voice" in str(refused.value)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": TEXT, "voice": "nobody"}, 400, "voice"),
        ({"input": TEXT, "model": "tts-9"}, 400, "model"),
        ({"input": TEXT, "response_format": "opus", "sample_rate": 44100}, 400, "sample_rate"),
        ({"input": TEXT, "task_type": "VoiceDesign"}, 400, "task_type"),
        ({"input": TEXT, "voice": "tone-mid", "speaker": "tone-low"}, 400, "speaker"),
        ({"input": " \n\t "}, 400, "input"),
        ({"input": "... -- !? ***"}, 400, "input"),
        ({"input": TEXT, "stream": "yes"}, 422, "stream"),
        ({"input": TEXT, "language": "xx"}, 400, "language"),
        ({"voice": "tone-mid"}, 422, "input"),
        ({"input": ""}, 422, "input"),
        ({"input": TEXT, "speed": 9}, 422, "speed"),
        ({"input": TEXT, "response_format": "ogg"}, 422, "response_format"),
        ({"input": TEXT, "stream_format": "chunks"}, 422, "stream_format"),
        ({"input": TEXT, "sample_rate": "24000"}, 422, "sample_rate"),
        ({"input": TEXT, "extra": 1}, 422, "extra"),
        ({"input": "x" * 51}, 413, "input"),
    ],
)
async def test_bad_input_gets_an_openai_error(
    redis_url: str, key_prefix: str, body: dict, status: int, param: str
) -> None:
    async with start_pipeline(redis_url, key_prefix, max_buffer_chars=50) as p:
        async with _client(p.http) as http:
            reply = await http.post("/v1/audio/speech", json=body)
            # Nothing was lost: the next request is served.
            good = await http.post("/v1/audio/speech", json={"input": "Fine."})
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["message"] and error["type"] and error["code"]
    assert good.status_code == 200 and good.content


async def test_malformed_and_oversized_bodies(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, max_buffer_chars=50) as p:
        async with _client(p.http) as http:
            broken = await http.post("/v1/audio/speech", content=b"{not json")
            listed = await http.post("/v1/audio/speech", json=["input"])
            # Refused on its declared length, before the body is read.
            huge = await http.post("/v1/audio/speech", content=b" " * 10_000_000)
    assert broken.status_code == listed.status_code == 400
    assert broken.json()["error"]["code"] == "invalid_json"
    assert huge.status_code == 413


async def test_no_worker_is_503(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, workers=0) as p:
        async with _client(p.http) as http:
            reply = await http.post("/v1/audio/speech", json={"input": TEXT})
    assert reply.status_code == 503
    assert reply.headers["retry-after"] and reply.json()["error"]["code"] == "no_worker"


async def test_overload_is_429_with_retry_after(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(
        redis_url, key_prefix, engine_options={"rtf": "1.0"}, max_backlog_per_slot=0
    ) as p:
        async with _client(p.http) as http:
            long = " ".join(f"Sentence number {i}." for i in range(10))
            async with http.stream("POST", "/v1/audio/speech", json={"input": long}) as first:
                assert first.status_code == 200
                chunks = first.aiter_bytes()  # kept: a dropped iterator closes the response
                await anext(chunks)  # the backlog is queued now
                await asyncio.sleep(0.3)  # past the front end's cache of the load
                reply = await http.post("/v1/audio/speech", json={"input": TEXT})
    assert reply.status_code == 429
    assert reply.headers["retry-after"] == "1" and reply.json()["error"]["code"] == "overloaded"


async def test_failure_before_audio_is_an_error_status(redis_url: str, key_prefix: str) -> None:
    # A worker that starts the sentence and then says nothing for longer than stall_timeout.
    async with start_pipeline(
        redis_url, key_prefix, engine_options={"rtf": "100"}, stall_timeout=0.5
    ) as p:
        async with _client(p.http) as http:
            reply = await http.post("/v1/audio/speech", json={"input": TEXT})
    assert reply.status_code == 500
    error = reply.json()["error"]
    assert error["code"] == "generation_failed" and "silent for 0.5 s" in error["message"]


async def test_failure_after_audio_cuts_the_transfer(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, engine_options={"fail_on": "boom"}) as p:
        async with _client(p.http) as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.post(
                    "/v1/audio/speech", json={"input": "All fine here. Then it goes boom."}
                )


async def test_a_client_that_leaves_stops_the_work(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, engine_options={"rtf": "1.0"}) as p:
        long = " ".join(f"This is sentence number {i}." for i in range(12))
        async with _client(p.http) as http:
            async with http.stream("POST", "/v1/audio/speech", json={"input": long}) as reply:
                assert reply.status_code == 200
                await anext(reply.aiter_bytes())
        # Work stops: the started sentence is cancelled and the rest are never started.
        for _ in range(100):
            if p.total("cancelled") >= 1 and not len(p.workers[0].in_flight):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert p.total("cancelled") >= 1
        assert p.total("completed") + p.total("cancelled") < 12
