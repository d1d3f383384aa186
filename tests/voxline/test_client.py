"""The Python client SDK (voxline.client) against a live in-process voxline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys

import pytest

from tests.harness import start_pipeline
from voxline.api.auth import hash_key
from voxline.client import (
    Audio,
    AudioDone,
    AudioStart,
    Cancelled,
    Client,
    Event,
    UtteranceDone,
    VoxlineError,
    Words,
    connect,
)

# Paced at real time: an utterance of several sentences is still playing when it is cancelled.
PACED = {"rtf": "1.0", "chunk_ms": "20"}
LONG = " ".join(f"Sentence number {i} is long enough to take a while." for i in range(8))


async def collect(events) -> list[Event]:  # type: ignore[no-untyped-def]
    return [event async for event in events]


def audio_of(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Audio))


async def test_pieces_stream_and_events_come_in_order(redis_url: str, key_prefix: str) -> None:
    async with (
        start_pipeline(redis_url, key_prefix) as p,
        connect(p.url, word_timestamps=True, sample_rate=16000) as tts,
    ):
        assert tts.sample_rate == 16000 and tts.ready["type"] == "session.ready"
        assert tts.session_id
        first = await tts.send("Hello wor")
        assert first is not None and await tts.send("ld. How are you?") is first
        await tts.flush()
        assert await tts.done() is first
        events = await collect(tts.events())
    kinds = [type(e).__name__ for e in events if not isinstance(e, (Audio, Words))]
    assert kinds == ["AudioStart", "AudioDone"] * 2 + ["UtteranceDone"]
    starts = [e for e in events if isinstance(e, AudioStart)]
    assert [s.text for s in starts] == ["Hello world.", "How are you?"]
    assert all(e.utterance == 0 for e in events) and first.index == 0 and first.finished
    for sentence in (0, 1):
        audio = b"".join(e.data for e in events if isinstance(e, Audio) and e.sentence == sentence)
        done = next(e for e in events if isinstance(e, AudioDone) and e.sentence == sentence)
        assert len(audio) == done.total_bytes > 0 and not done.error
        assert done.first_byte_ms is not None
    words = [w.word for e in events if isinstance(e, Words) for w in e.words]
    assert words == ["Hello", "world", "How", "are", "you"]
    assert events[-1] == UtteranceDone(0, 2)


async def test_two_utterances_on_one_connection(redis_url: str, key_prefix: str) -> None:
    async def pieces():  # type: ignore[no-untyped-def]
        for piece in ("Streamed ", "in ", "pieces. ", "", "Done."):
            yield piece

    async with start_pipeline(redis_url, key_prefix) as p, connect(p.url) as tts:
        first = await collect(tts.speak("One sentence."))
        second = await collect(tts.speak(pieces()))
        # A consumer waiting before the utterance exists gets it once text opens it.
        consumer = asyncio.create_task(collect(tts.events()))
        await asyncio.sleep(0.05)
        await tts.send("Third one.")
        await tts.done()
        third = await asyncio.wait_for(consumer, 10)
    assert first[-1] == UtteranceDone(0, 1) and second[-1] == UtteranceDone(1, 2)
    assert third[-1] == UtteranceDone(2, 1)
    assert all(audio_of(events) for events in (first, second, third))


async def test_cancel_drops_the_rest_and_the_next_utterance_plays(
    redis_url: str, key_prefix: str
) -> None:
    async with (
        start_pipeline(redis_url, key_prefix, engine_options=PACED) as p,
        connect(p.url) as tts,
    ):
        await tts.send(LONG)
        await tts.done()
        seen: list[Event] = []
        async for event in tts.events():
            seen.append(event)
            if isinstance(event, Audio):
                await tts.cancel()
                break_at = len(seen)
        # Nothing of the cancelled utterance came after cancel() but its Cancelled.
        assert len(seen) == break_at + 1, seen[break_at:]
        cancelled = seen[-1]
        assert isinstance(cancelled, Cancelled) and cancelled.utterance == 0
        assert 0 in cancelled.cancelled_sentences
        await asyncio.sleep(0.3)  # audio of utterance 0 that was on the wire is dropped
        after = await collect(tts.speak("After the barge-in."))
    assert after[0] == AudioStart(1, 0, "After the barge-in.", "pcm", tts.sample_rate)
    assert after[-1] == UtteranceDone(1, 1) and audio_of(after)
    assert p.total("cancelled") >= 1


async def test_cancel_of_an_unconsumed_utterance_and_twice(redis_url: str, key_prefix: str) -> None:
    async with (
        start_pipeline(redis_url, key_prefix, engine_options=PACED) as p,
        connect(p.url) as tts,
    ):
        await tts.cancel()  # nothing in flight: a no-op
        utt = await tts.send(LONG)
        await tts.cancel()
        await tts.cancel()
        assert utt is not None and utt.cancelled
        # Nobody consumed it: events() goes to the next utterance.
        after = await collect(tts.speak("Next."))
        assert after[-1] == UtteranceDone(1, 1) and audio_of(after)
        # Leaving speak() early cancels its utterance; the connection goes on.
        async with contextlib.aclosing(tts.speak(LONG)) as events:
            async for event in events:
                if isinstance(event, Audio):
                    break
        last = await collect(tts.speak("Last."))
    assert last[-1] == UtteranceDone(3, 1) and audio_of(last)


async def test_a_refused_config_or_key_raises_on_connect(redis_url: str, key_prefix: str) -> None:
    key = "vx_client-test-key-0123456789"
    async with start_pipeline(redis_url, key_prefix, api_keys=f"sdk={hash_key(key)}") as p:
        with pytest.raises(VoxlineError) as refused:
            await connect(p.url, api_key=key, voice="nobody")
        assert refused.value.code == "invalid_config" and refused.value.field == "voice"
        with pytest.raises(VoxlineError) as unauthorized:
            await connect(p.url)
        assert unauthorized.value.code == "unauthorized"
        tts = await connect(p.url + "/v1/audio/speech/stream", api_key=key)
        try:
            events = await collect(tts.speak("Keyed."))
        finally:
            await tts.aclose()
    assert events[-1] == UtteranceDone(0, 1)
    assert tts.closed
    with pytest.raises(VoxlineError, match="closed"):
        await tts.send("After close.")


async def test_a_lost_connection_raises_from_events(redis_url: str, key_prefix: str) -> None:
    async with (
        start_pipeline(redis_url, key_prefix, engine_options=PACED, max_session_seconds=0.5) as p,
        connect(p.url) as tts,
    ):
        with pytest.raises(VoxlineError) as expired:
            await collect(tts.speak(LONG))
    assert expired.value.code == "session_expired" and expired.value.close_code == 1008


def test_everything_but_the_adapter_imports_without_pipecat() -> None:
    code = (
        "import sys\n"
        "sys.modules['pipecat'] = None  # as if the extra were not installed\n"
        "import voxline.cli, voxline.client, voxline.say\n"
        "try:\n"
        "    import voxline.pipecat\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'voxline[pipecat]'" in result.stdout


class ScriptedSocket:
    """A server side played by the test: what the client sends is recorded, `reply` feeds it."""

    def __init__(self) -> None:
        self.sent: list[dict] = []  # type: ignore[type-arg]
        self.frames: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.close_code: int | None = None
        self.close_reason = ""

    async def send(self, data: str) -> None:
        self.sent.append(json.loads(data))

    def reply(self, *messages: dict | bytes) -> None:  # type: ignore[type-arg]
        for m in messages:
            self.frames.put_nowait(m if isinstance(m, bytes) else json.dumps(m))

    async def close(self) -> None:
        self.close_code = 1000
        self.frames.put_nowait(None)

    def __aiter__(self):  # type: ignore[no-untyped-def]
        return self

    async def __anext__(self) -> str | bytes:
        frame = await self.frames.get()
        if frame is None:
            raise StopAsyncIteration
        return frame


async def test_a_cancel_that_races_the_end_of_its_utterance() -> None:
    # The server sent session.done before it read input.cancel: it then cancels an empty
    # utterance of its own (index 1), and the next utterance of the client is index 2.
    ws = ScriptedSocket()
    tts = Client(ws, {"type": "session.ready", "session_id": "s", "sample_rate": 8000})  # type: ignore[arg-type]
    first = tts.events()
    await tts.send("Hi.")
    await tts.done()
    ws.reply({"type": "audio.start", "utterance_index": 0, "sentence_index": 0}, b"\0\0")
    assert isinstance(await anext(first), AudioStart)
    await tts.cancel()
    second = await tts.send("Next.")
    ws.reply(
        b"\1\1",  # audio of utterance 0 already on the wire: dropped
        {"type": "audio.done", "utterance_index": 0, "sentence_index": 0, "total_bytes": 4},
        {"type": "session.done", "utterance_index": 0, "total_sentences": 1},
        {"type": "input.cancelled", "utterance_index": 1, "cancelled_sentences": []},
        {"type": "audio.start", "utterance_index": 2, "sentence_index": 0},
        b"\2\2",
    )
    assert [ws_msg["type"] for ws_msg in ws.sent] == [
        "input.text", "input.done", "input.cancel", "input.text"
    ]  # fmt: skip
    assert await anext(first) == Cancelled(0, ())
    events = tts.events()
    assert await anext(events) == AudioStart(2, 0, "", "", 0)
    assert await anext(events) == Audio(b"\2\2", 2, 0)
    assert second is not None and second.index == 2
    await tts.aclose()
    with pytest.raises(VoxlineError, match="closed"):
        await anext(events)


async def test_warnings_of_ignored_hints_are_kept_and_logged(
    redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        start_pipeline(redis_url, key_prefix) as p,
        connect(p.url, seed=7, instructions="calm") as tts,
    ):
        await tts.send("Hello there.")
        await tts.done()
        events = await collect(tts.events())
        assert audio_of(events)
        assert {w["field"] for w in tts.warnings} == {"seed", "instructions"}
    logged = [r.getMessage() for r in caplog.records if r.name == "voxline.client"]
    assert any("seed" in m for m in logged) and any("instructions" in m for m in logged)
