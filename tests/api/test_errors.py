"""Every row of the contract's error table, on both backends."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.harness import Client, Pipeline, start_pipeline


async def _still_works(c: Client) -> None:
    await c.send("input.text", text="Still here.")
    await c.send("input.done")
    sentences, _ = await c.utterance()
    assert [s.start["sentence_text"] for s in sentences] == ["Still here."]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "invalid_json"),
        ('{"type": "input.shout", "text": "x"}', "unknown_type"),
        ('{"type": "input.text", "text": 42}', "invalid_message"),
        ('{"type": "input.text"}', "invalid_message"),
        ('["input.text"]', "invalid_message"),
        ('{"text": "no type"}', "invalid_message"),
    ],
)
async def test_bad_messages_get_an_error_and_the_session_goes_on(
    pipeline: Pipeline, raw: str, code: str
) -> None:
    async with Client.connect(pipeline, {"response_format": "pcm"}) as c:
        await c.send("input.text", text="Kept before")
        await c.send_raw(raw)
        error = await c.expect("error")
        assert error["code"] == code and error["message"]
        # Nothing else was lost: the text sent before the bad message is still spoken.
        await c.send("input.done")
        sentences, _ = await c.utterance()
        assert [s.start["sentence_text"] for s in sentences] == ["Kept before"]
        await _still_works(c)


async def test_binary_frame_from_the_client(pipeline: Pipeline) -> None:
    async with Client.connect(pipeline, {"response_format": "pcm"}) as c:
        await c.send_raw(b"\x00\x01")
        assert (await c.expect("error"))["code"] == "unexpected_binary"
        await _still_works(c)


async def test_message_over_max_message_bytes(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, max_message_bytes=1000) as p:
        async with Client.connect(p, {"response_format": "pcm"}) as c:
            await c.send("input.text", text="é" * 600)  # 1200 bytes, 600 characters
            assert (await c.expect("error"))["code"] == "text_too_large"
            await _still_works(c)


async def test_buffered_text_over_max_buffer_chars_is_refused(
    redis_url: str, key_prefix: str
) -> None:
    async with start_pipeline(
        redis_url, key_prefix, max_buffer_chars=50, max_sentence_chars=1000
    ) as p:
        async with Client.connect(p, {"response_format": "pcm"}) as c:
            await c.send("input.text", text="a" * 40)
            await c.send("input.text", text=" b" * 10)  # 40 + 20 > 50
            error = await c.expect("error")
            assert error["code"] == "text_too_large"
            await c.send("input.done")
            sentences, _ = await c.utterance()
            assert [s.start["sentence_text"] for s in sentences] == ["a" * 40], "refused text"


@pytest.mark.parametrize(
    "first",
    [
        '{"type": "input.text", "text": "hi"}',
        "{broken",
        b"\x00binary",
    ],
)
async def test_first_message_must_be_config(pipeline: Pipeline, first: str | bytes) -> None:
    async with Client.connect(pipeline) as c:
        await c.send_raw(first)
        error = await c.expect("error")
        assert error["code"] == "not_configured"
        assert await c.closed() == 1008


async def test_no_config_within_config_timeout(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, config_timeout=0.3) as p:
        async with Client.connect(p) as c:
            error = await c.expect("error", timeout=5)
            assert error["code"] == "not_configured"
            assert await c.closed() == 1008


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"voice": "nobody"}, "voice"),
        ({"response_format": "ogg"}, "response_format"),
        ({"response_format": "opus", "sample_rate": 44100}, "sample_rate"),
        ({"stream_audio": "yes"}, "stream_audio"),
        ({"response_format": "wav", "stream_audio": True}, "stream_audio"),
        ({"sample_rate": 7999}, "sample_rate"),
        ({"sample_rate": 48001}, "sample_rate"),
        ({"speed": 0.2}, "speed"),
        ({"speed": 4.5}, "speed"),
        ({"speed": "fast"}, "speed"),
        ({"language": "tlh"}, "language"),
        ({"split_granularity": "word"}, "split_granularity"),
        ({"word_timestamps": 1}, "word_timestamps"),
        ({"model": "Qwen/Qwen3-TTS"}, "model"),
        ({"task_type": "Base", "ref_audio": "data:..."}, "task_type"),
        ({"task_type": "Dream"}, "task_type"),
        # vllm-omni's fields: those that would change whose voice speaks are refused...
        ({"ref_audio": "data:audio/wav;base64,AAAA"}, "ref_audio"),
        ({"speaker_embedding": [0.1, 0.2]}, "speaker_embedding"),
        ({"speaker": "nobody"}, "voice"),
        ({"voice": "tone-mid", "speaker": "tone-low"}, "speaker"),
        # ...and hints are held to vllm-omni's own bounds (accepted otherwise: test_vllm_omni).
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"initial_codec_chunk_frames": -1}, "initial_codec_chunk_frames"),
        ({"seed": "7"}, "seed"),
        ({"x_vector_only_mode": "yes"}, "x_vector_only_mode"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_invalid_config_names_the_field_and_closes_1008(
    pipeline: Pipeline, config: dict, field: str
) -> None:
    async with Client.connect(pipeline) as c:
        await c.send("session.config", **config)
        error = await c.expect("error")
        assert error["code"] == "invalid_config"
        assert error["field"] == field and field in error["message"]
        assert await c.closed() == 1008


@pytest.mark.parametrize(
    "config",
    [
        {"language": "Auto", "task_type": "CustomVoice", "model": "tone"},
        {"speed": 1, "sample_rate": 16000, "split_granularity": "clause"},
        {"response_format": "alaw", "stream_audio": True, "word_timestamps": True},
    ],
)
async def test_valid_configs_are_accepted(pipeline: Pipeline, config: dict) -> None:
    async with Client.connect(pipeline, config) as c:
        await _still_works(c)


async def test_idle_timeout_closes_1000(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, idle_timeout=0.4) as p:
        async with Client.connect(p, {}) as c:
            assert await c.closed(timeout=5) == 1000


async def test_idle_timeout_waits_while_audio_is_being_delivered(
    redis_url: str, key_prefix: str
) -> None:
    async with start_pipeline(
        redis_url, key_prefix, idle_timeout=0.3, engine_options={"rtf": "1.0"}
    ) as p:
        async with Client.connect(p, {"response_format": "pcm", "stream_audio": True}) as c:
            # ~1.3 s of paced audio: longer than the idle timeout.
            await c.send("input.text", text="This takes a while to say.")
            await c.send("input.done")
            sentences, _ = await c.utterance()
            assert sentences[0].done["error"] is False
            assert await c.closed(timeout=5) == 1000


async def test_over_max_sessions_is_overloaded_1013(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, max_sessions=1) as p:
        async with Client.connect(p, {}) as first:
            async with Client.connect(p) as second:
                error = await second.expect("error")
                assert error["code"] == "overloaded"
                assert await second.closed() == 1013
            await _still_works(first)


async def test_no_live_worker_is_overloaded_1013(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix) as p:
        await p.stop_workers()
        async with Client.connect(p) as c:
            await c.send("session.config")
            error = await c.expect("error")
            assert error["code"] == "overloaded" and "worker" in error["message"]
            assert await c.closed() == 1013


async def test_server_shutdown_closes_1012(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix) as p:
        async with Client.connect(p, {}) as c:
            p.server.should_exit = True
            assert await c.closed() == 1012


async def test_internal_fault_is_error_internal_1011(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = pipeline.server.config.app.state.hub

    async def broken(job: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(hub.queue, "enqueue", broken)
    async with Client.connect(pipeline, {}) as c:
        await c.send("input.text", text="Trigger. ")
        error = await c.expect("error")
        assert error["code"] == "internal"
        assert "disk on fire" not in error["message"], "internals stay in the server log"
        assert await c.closed() == 1011


async def test_error_messages_are_well_formed_json(pipeline: Pipeline) -> None:
    async with Client.connect(pipeline, {}) as c:
        await c.send_raw("{")
        frame = await asyncio.wait_for(c.ws.recv(), 5)
        message = json.loads(frame)
        assert set(message) >= {"type", "code", "message"}
