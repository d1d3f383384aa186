"""Conformance with vllm-omni's `/v1/audio/speech/stream` as its own clients use it.

The client below behaves as vllm-omni's published example client does (session.config, text
all at once or word by word as an STT would send it, input.done, per-sentence audio files,
read to session.done), and as strictly as vllm-omni's e2e harness: it offers no subprotocol and
fails on any message type vllm-omni does not send. The field rules are docs/protocol.md's.
"""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass, field
from typing import Any

import av
import pytest
import websockets

from tests.harness import Client, Pipeline, start_pipeline

# What vllm-omni's handler sends; anything else breaks its strict clients.
VLLM_TYPES = {"audio.start", "audio.done", "session.done", "error"}
HINTS = {
    "instructions": "Speak warmly.",
    "max_new_tokens": 2048,
    "initial_codec_chunk_frames": 12,  # vllm-omni's own test config
    "seed": 1234,
    "non_streaming_mode": False,
    "x_vector_only_mode": False,
}
TEXT = "Hello world. How are you today? I am fine, thank you."


@dataclass
class Heard:
    sentences: list[tuple[dict[str, Any], bytes, dict[str, Any]]] = field(default_factory=list)
    done: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)


async def vllm_client(
    pipeline: Pipeline, config: dict[str, Any], text: str = TEXT, *, stt_delay: float | None = None
) -> Heard:
    """vllm-omni's client modes: full text at once, or word by word (`stt_delay`)."""
    heard = Heard()
    async with websockets.connect(pipeline.ws_url, max_size=None) as ws:
        assert ws.subprotocol is None
        await ws.send(json.dumps({"type": "session.config", **config}))

        async def send_text() -> None:
            if stt_delay is None:
                await ws.send(json.dumps({"type": "input.text", "text": text}))
            else:
                words = text.split(" ")
                for i, word in enumerate(words):
                    chunk = word + (" " if i < len(words) - 1 else "")
                    await ws.send(json.dumps({"type": "input.text", "text": chunk}))
                    await asyncio.sleep(stt_delay)
            await ws.send(json.dumps({"type": "input.done"}))

        sender = asyncio.create_task(send_text())
        start: dict[str, Any] | None = None
        chunks: list[bytes] = []
        try:
            while True:
                frame = await asyncio.wait_for(ws.recv(), 20)
                if isinstance(frame, bytes):
                    assert start is not None, "audio outside audio.start/audio.done"
                    chunks.append(frame)
                    continue
                msg = json.loads(frame)
                assert msg["type"] in VLLM_TYPES, f"vllm-omni never sends {msg}"
                if msg["type"] == "audio.start":
                    start, chunks = msg, []
                elif msg["type"] == "audio.done":
                    assert start is not None
                    heard.sentences.append((start, b"".join(chunks), msg))
                    start = None
                elif msg["type"] == "error":
                    heard.errors.append(msg)
                else:
                    heard.done = msg
                    break
        finally:
            sender.cancel()
    return heard


def _check_shapes(heard: Heard, fmt: str) -> None:
    """The fields vllm-omni's clients and tests read, with their types."""
    assert heard.errors == [] and heard.done is not None
    assert set(heard.done) >= {"type", "utterance_index", "total_sentences"}
    assert heard.done["total_sentences"] == len(heard.sentences) > 0
    for i, (start, audio, done) in enumerate(heard.sentences):
        assert start["sentence_index"] == done["sentence_index"] == i
        assert isinstance(start["sentence_text"], str) and start["sentence_text"]
        assert start["format"] == fmt and start["channels"] == 1
        assert isinstance(start["sample_rate"], int)
        assert done["total_bytes"] == len(audio) > 0 and done["error"] is False
        assert done["utterance_index"] == start["utterance_index"] == 0


def _seconds(data: bytes, fmt: str, rate: int) -> float:
    if fmt == "pcm":
        assert len(data) % 2 == 0
        return len(data) / 2 / rate
    with av.open(io.BytesIO(data)) as container:
        return sum(f.samples for f in container.decode(audio=0)) / rate


async def test_default_mode_as_the_example_client_sends_it(pipeline: Pipeline) -> None:
    config = {
        "voice": "tone-mid",
        "task_type": "CustomVoice",
        "language": "Auto",
        "response_format": "wav",
        "speed": 1.0,
    }
    heard = await vllm_client(pipeline, config)
    _check_shapes(heard, "wav")
    texts = [start["sentence_text"] for start, _, _ in heard.sentences]
    assert texts == ["Hello world.", "How are you today?", "I am fine, thank you."]
    for start, audio, _ in heard.sentences:
        assert audio[:4] == b"RIFF" and audio.count(b"RIFF") == 1  # one file per sentence
        assert _seconds(audio, "wav", start["sample_rate"]) > 0.2


async def test_speaker_is_another_name_for_voice(pipeline: Pipeline) -> None:
    heard = await vllm_client(pipeline, {"speaker": "tone-low", "response_format": "pcm"})
    _check_shapes(heard, "pcm")
    async with Client.connect(pipeline, {"speaker": "tone-low", "voice": "tone-low"}) as c:
        assert c.received[-1]["voice"] == "tone-low"


async def test_simulated_stt_word_by_word(pipeline: Pipeline) -> None:
    heard = await vllm_client(pipeline, {"voice": "tone-mid"}, stt_delay=0.01)
    _check_shapes(heard, "wav")
    assert [s["sentence_text"] for s, _, _ in heard.sentences] == [
        "Hello world.",
        "How are you today?",
        "I am fine, thank you.",
    ]


async def test_streamed_pcm_is_24_khz_mono_as_vllm_omni_sends_it(pipeline: Pipeline) -> None:
    heard = await vllm_client(pipeline, {"response_format": "pcm", "stream_audio": True})
    _check_shapes(heard, "pcm")
    for start, audio, _ in heard.sentences:
        assert start["sample_rate"] == 24000
        assert 0.2 < _seconds(audio, "pcm", 24000) < 10
    # sample_rate still overrides it.
    heard = await vllm_client(
        pipeline, {"response_format": "pcm", "stream_audio": True, "sample_rate": 16000}
    )
    assert {start["sample_rate"] for start, _, _ in heard.sentences} == {16000}


@pytest.mark.parametrize("fmt", ["wav", "pcm", "flac", "mp3", "aac", "opus"])
async def test_every_format_of_the_example_client_decodes(pipeline: Pipeline, fmt: str) -> None:
    heard = await vllm_client(pipeline, {"voice": "tone-mid", "response_format": fmt})
    _check_shapes(heard, fmt)
    for start, audio, _ in heard.sentences:
        assert _seconds(audio, fmt, start["sample_rate"]) > 0.2, start


async def test_every_vllm_omni_field_with_nulls_and_hints_is_accepted(pipeline: Pipeline) -> None:
    """null means the default; hints the engine cannot honour pass, with no message a
    vllm-omni client would not know."""
    config = {
        "model": None,
        "voice": None,
        "speaker": "tone-mid",
        "task_type": "CustomVoice",
        "language": None,
        "response_format": "pcm",
        "speed": None,
        "sample_rate": None,
        "stream_audio": True,
        "split_granularity": "sentence",
        "word_timestamps": None,
        "ref_audio": None,
        "ref_text": None,
        "speaker_embedding": None,
        **HINTS,
    }
    heard = await vllm_client(pipeline, config)
    _check_shapes(heard, "pcm")
    assert len(heard.sentences) == 3


async def test_ignored_hints_get_one_warning_each_with_extensions(pipeline: Pipeline) -> None:
    async with Client.connect(pipeline, {"response_format": "pcm", **HINTS}) as c:
        warnings = [await c.expect("warning") for _ in HINTS]
        assert {w["field"] for w in warnings} == set(HINTS)
        for w in warnings:
            assert w["code"] == "ignored_field" and w["field"] in w["message"]
        await c.send("input.text", text="Still speaking.")
        await c.send("input.done")
        sentences, _ = await c.utterance()
        assert len(sentences) == 1 and sentences[0].audio


async def test_without_the_subprotocol_there_is_no_session_ready(pipeline: Pipeline) -> None:
    async with Client.connect(
        pipeline, {"response_format": "pcm"}, ready=False, extensions=False
    ) as c:
        assert c.ws.subprotocol is None
        await c.send("input.text", text="Hi there.")
        await c.send("input.done")
        first = await c.recv_json()
        assert first["type"] == "audio.start", first  # nothing came before it
    async with Client.connect(pipeline, {"response_format": "pcm"}) as c:
        assert c.ws.subprotocol == "voxline.v1"
        assert c.received[0]["type"] == "session.ready"


async def test_split_granularity_none_is_one_request_per_input_done(pipeline: Pipeline) -> None:
    heard = await vllm_client(pipeline, {"split_granularity": "none", "response_format": "pcm"})
    _check_shapes(heard, "pcm")
    assert [s["sentence_text"] for s, _, _ in heard.sentences] == [TEXT]


async def test_a_config_carrying_a_large_clip_is_accepted_up_to_max_config_bytes(
    redis_url: str, key_prefix: str
) -> None:
    async with start_pipeline(
        redis_url, key_prefix, max_message_bytes=4096, max_config_bytes=64 * 1024
    ) as p:
        big = {"response_format": "pcm", "ref_text": "a" * 50_000}  # a hint: accepted
        heard = await vllm_client(p, big)
        _check_shapes(heard, "pcm")
        async with Client.connect(p, {"ref_text": "a" * 70_000}, ready=False) as c:
            error = await c.expect("error")
            assert error["code"] == "text_too_large", error
            assert await c.closed() == 1008
        async with Client.connect(p, {"response_format": "pcm"}) as c:
            # Other messages keep max_message_bytes.
            await c.send("input.text", text="b" * 5000)
            assert (await c.expect("error"))["code"] == "text_too_large"
            await c.send("input.text", text="Still here.")
            await c.send("input.done")
            sentences, _ = await c.utterance()
            assert [s.start["sentence_text"] for s in sentences] == ["Still here."]


async def test_the_default_config_limit_is_four_mib(pipeline: Pipeline) -> None:
    assert pipeline.settings.max_config_bytes == 4 * 1024 * 1024
    async with Client.connect(pipeline, {"ref_text": "x" * (3 * 1024 * 1024)}) as c:
        assert c.received[0]["type"] == "session.ready"


async def test_control_characters_are_removed_on_arrival(pipeline: Pipeline) -> None:
    async with Client.connect(pipeline, {"response_format": "pcm"}) as c:
        await c.send("input.text", text="Hel\x00lo\x1b wor\x07ld.\x7f Next\x9b one.")
        await c.send("input.done")
        sentences, _ = await c.utterance()
        assert [s.start["sentence_text"] for s in sentences] == ["Hello world.", "Next one."]
        assert all(s.audio and not s.errors for s in sentences)


async def test_pending_text_is_capped_and_nothing_else_is_lost(
    redis_url: str, key_prefix: str
) -> None:
    """Sentences held back by max_sentences_in_flight count against max_pending_chars."""
    async with start_pipeline(
        redis_url,
        key_prefix,
        max_pending_chars=200,
        max_sentences_in_flight=1,
        engine_options={"rtf": "1.0"},  # slow: the sentences wait
    ) as p:
        async with Client.connect(p, {"response_format": "pcm", "stream_audio": True}) as c:
            for i in range(6):
                await c.send("input.text", text=f"Sentence number {i} is here. ")  # 28 chars
            await c.send("input.text", text="x" * 100 + ". ")
            error = await c.until("error")
            assert error["code"] == "text_too_large" and "200" in error["message"]
            await c.send("input.cancel")
            await c.until("input.cancelled")
            # The barge-in freed the room.
            await c.send("input.text", text="y" * 150 + ".")
            await c.send("input.done")
            while True:
                message = await c.recv()
                if isinstance(message, dict) and message["type"] == "session.done":
                    break
                assert not (isinstance(message, dict) and message["type"] == "error"), message
            starts = [
                m["sentence_text"]
                for m in c.received
                if isinstance(m, dict) and m["type"] == "audio.start"
            ]
            assert starts[-1] == "y" * 150 + "."
