"""Compressed formats on the WebSocket: one continuous stream per connection, every sentence
complete at its audio.done, one file per sentence when not streaming; G.711 at 8 kHz."""

from __future__ import annotations

import pytest

from tests.audio import decode, dominant_hz
from tests.harness import Client, Pipeline

MS_PER_CHAR = 60.0
# What an encoder may add at each sentence end (frame padding + delay): 128 ms at most (AAC at
# 24 kHz), measured in tests/shared/test_codecs.py.
PAD_S = 0.15


def _seconds(*texts: str) -> float:
    return sum(len(t) for t in texts) * MS_PER_CHAR / 1000


@pytest.mark.parametrize("fmt", ["opus", "mp3", "aac", "flac"])
async def test_one_stream_per_connection_across_sentences_and_utterances(
    pipeline: Pipeline, fmt: str
) -> None:
    config = {"response_format": fmt, "stream_audio": True, "voice": "tone-high"}
    heard: list[bytes] = []
    spoken: list[str] = []
    async with Client.connect(pipeline, config) as c:
        ready = c.received[-1]
        rate = ready["sample_rate"]
        for turn in range(2):
            await c.send("input.text", text=f"Turn {turn} starts. And then it ends.")
            await c.send("input.done")
            sentences, _ = await c.utterance()
            for s in sentences:
                assert s.done["total_bytes"] == len(s.audio) and not s.done["error"]
                assert s.start["format"] == fmt and s.start["sample_rate"] == rate
                heard.append(s.audio)
                spoken.append(s.start["sentence_text"])
                # Everything of the sentences so far decodes from what came so far: the end
                # of a sentence is not held back until the next one.
                samples, out_rate = decode(b"".join(heard), fmt, rate)
                assert samples.size / out_rate >= _seconds(*spoken) - 0.005
    samples, out_rate = decode(b"".join(heard), fmt, rate)  # one stream, decoded whole
    total = _seconds(*spoken)
    assert total - 0.005 <= samples.size / out_rate <= total + PAD_S * len(spoken)
    assert abs(dominant_hz(samples, out_rate) - 880) < 5


@pytest.mark.parametrize("fmt", ["opus", "mp3", "flac"])
async def test_whole_files_per_sentence(pipeline: Pipeline, fmt: str) -> None:
    async with Client.connect(pipeline, {"response_format": fmt}) as c:
        rate = c.received[-1]["sample_rate"]
        await c.send("input.text", text="One sentence here. Another one.")
        await c.send("input.done")
        sentences, _ = await c.utterance()
    assert len(sentences) == 2
    for s in sentences:
        assert len(s.frames) == 1  # one complete file
        samples, out_rate = decode(s.frames[0], fmt, rate)
        seconds = _seconds(s.start["sentence_text"])
        assert seconds - 0.005 <= samples.size / out_rate <= seconds + PAD_S


async def test_barge_in_keeps_the_stream_valid(pipeline: Pipeline) -> None:
    config = {"response_format": "opus", "stream_audio": True}
    async with Client.connect(pipeline, config) as c:
        rate = c.received[-1]["sample_rate"]
        await c.send("input.text", text="A long first sentence that goes on for quite a while.")
        await c.send("input.flush")
        while not isinstance(await c.recv(), bytes):
            pass
        await c.send("input.cancel")
        await c.until("input.cancelled")
        await c.send("input.text", text="After the barge-in.")
        await c.send("input.done")
        await c.until("session.done")
    audio = b"".join(m for m in c.received if isinstance(m, bytes))
    samples, out_rate = decode(audio, "opus", rate)
    assert samples.size / out_rate >= _seconds("After the barge-in.")


@pytest.mark.parametrize("fmt", ["mulaw", "alaw"])
async def test_telephony_formats_default_to_8khz(pipeline: Pipeline, fmt: str) -> None:
    async with Client.connect(pipeline, {"response_format": fmt, "stream_audio": True}) as c:
        assert c.received[-1]["sample_rate"] == 8000
        await c.send("input.text", text="Call me back.")
        await c.send("input.done")
        (s,), _ = await c.utterance()
    samples, rate = decode(s.audio, fmt, 8000)
    assert s.start["sample_rate"] == 8000
    assert samples.size == pytest.approx(_seconds("Call me back.") * 8000, rel=0.01)
    assert abs(dominant_hz(samples, rate) - 440) < 5


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"response_format": "opus", "sample_rate": 44100}, "sample_rate"),
        ({"response_format": "mp3", "sample_rate": 9000}, "sample_rate"),
        ({"response_format": "wav", "stream_audio": True}, "stream_audio"),
        ({"response_format": "ogg"}, "response_format"),
    ],
)
async def test_formats_the_front_end_cannot_honour(
    pipeline: Pipeline, config: dict, field: str
) -> None:
    async with Client.connect(pipeline) as c:
        await c.send("session.config", **config)
        error = await c.expect("error")
        assert error["code"] == "invalid_config" and error["field"] == field
