"""The protocol, end to end: a real server, a real worker, on fakeredis and on real Redis."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.harness import Client, Pipeline, start_pipeline
from voxline.shared.audio.wav import parse_wav
from voxline.shared.wire import Event, EventKind

TWO = "Hello there. How are you today?"


async def test_session_ready_reports_the_engine_defaults(pipeline: Pipeline) -> None:
    async with Client.connect(pipeline) as client:
        await client.send("session.config")
        ready = await client.expect("session.ready")
    assert ready["engine"] == "tone"
    assert ready["voice"] == "tone-mid"
    assert ready["format"] == "wav"
    assert ready["sample_rate"] == 24000
    assert len(ready["session_id"]) == 32


async def test_sentences_arrive_in_order_with_framing(pipeline: Pipeline) -> None:
    async with Client.connect(pipeline, {"response_format": "pcm", "stream_audio": True}) as c:
        # Token by token, as an LLM streams.
        for token in "One two. Three four five! Six?".split(" "):
            await c.send("input.text", text=token + " ")
        await c.send("input.done")
        sentences, done = await c.utterance()
    assert [s.start["sentence_text"] for s in sentences] == [
        "One two.",
        "Three four five!",
        "Six?",
    ]
    assert [s.start["sentence_index"] for s in sentences] == [0, 1, 2]
    assert done == {"type": "session.done", "utterance_index": 0, "total_sentences": 3}
    for s in sentences:
        assert s.start["utterance_index"] == 0 and s.done["utterance_index"] == 0
        assert s.start["format"] == "pcm" and s.start["sample_rate"] == 24000
        assert s.done["total_bytes"] == len(s.audio) > 0
        assert all(len(f) % 2 == 0 for f in s.frames), "PCM frames hold whole samples"
        assert len(s.frames) > 1, "stream_audio=true streams several frames"
        assert s.done["error"] is False and s.done["cancelled"] is False
        assert 0 <= s.done["first_byte_ms"] <= s.done["finish_ms"]
    # Tone audio lasts 60 ms per character at 24 kHz, 2 bytes a sample.
    assert len(sentences[0].audio) == pytest.approx(len("One two.") * 0.06 * 24000 * 2, rel=0.05)


async def test_wav_without_streaming_is_one_complete_file_per_sentence(
    pipeline: Pipeline,
) -> None:
    async with Client.connect(pipeline, {"response_format": "wav"}) as c:
        await c.send("input.text", text=TWO)
        await c.send("input.done")
        sentences, _ = await c.utterance()
    assert len(sentences) == 2
    for s in sentences:
        assert len(s.frames) == 1
        info = parse_wav(s.frames[0])
        assert info.sample_rate == 24000 and info.channels == 1 and info.sample_width == 2
        assert len(info.frames) > 24000 * 2 * 0.5


@pytest.mark.parametrize(("fmt", "bytes_per_sample"), [("pcm", 2), ("mulaw", 1), ("alaw", 1)])
async def test_formats_and_resampling(pipeline: Pipeline, fmt: str, bytes_per_sample: int) -> None:
    config = {"response_format": fmt, "stream_audio": True, "sample_rate": 8000}
    async with Client.connect(pipeline, config) as c:
        await c.send("input.text", text="Twelve chars.")
        await c.send("input.done")
        sentences, _ = await c.utterance()
    (s,) = sentences
    assert s.start["sample_rate"] == 8000 and s.start["format"] == fmt
    seconds = len("Twelve chars.") * 0.06
    assert len(s.audio) == pytest.approx(seconds * 8000 * bytes_per_sample, rel=0.05)


async def test_several_utterances_on_one_connection(pipeline: Pipeline) -> None:
    async with Client.connect(pipeline, {"response_format": "pcm"}) as c:
        for turn in range(3):
            await c.send("input.text", text=f"Turn {turn} first. Turn {turn} second.")
            await c.send("input.done")
            sentences, done = await c.utterance()
            assert done["utterance_index"] == turn
            assert [s.start["sentence_index"] for s in sentences] == [0, 1]
            assert {s.start["utterance_index"] for s in sentences} == {turn}


async def test_empty_utterance_still_completes(pipeline: Pipeline) -> None:
    async with Client.connect(pipeline, {}) as c:
        await c.send("input.done")
        done = await c.expect("session.done")
        assert done == {"type": "session.done", "utterance_index": 0, "total_sentences": 0}
        await c.send("input.text", text="Next one.")
        await c.send("input.done")
        _, done = await c.utterance()
        assert done["utterance_index"] == 1


async def test_flush_releases_the_partial_sentence_without_ending(pipeline: Pipeline) -> None:
    async with Client.connect(pipeline, {"response_format": "pcm"}) as c:
        await c.send("input.text", text="no terminator yet")
        await c.send("input.flush")
        start = await c.expect("audio.start")
        assert start["sentence_text"] == "no terminator yet"
        while not isinstance(message := await c.recv(), dict) or message["type"] != "audio.done":
            pass
        await c.send("input.text", text="And more.")
        await c.send("input.done")
        sentences, done = await c.utterance()
    assert [s.start["sentence_index"] for s in sentences] == [1]
    assert done["total_sentences"] == 2 and done["utterance_index"] == 0


async def test_word_timestamps_sit_between_start_and_done(pipeline: Pipeline) -> None:
    config = {"response_format": "pcm", "stream_audio": True, "word_timestamps": True}
    async with Client.connect(pipeline, config) as c:
        await c.send("input.text", text="Alpha beta gamma.")
        await c.send("input.done")
        sentences, _ = await c.utterance()
    words = sentences[0].words
    assert [w["word"].strip(".") for w in words] == ["Alpha", "beta", "gamma"]
    starts = [w["start_ms"] for w in words]
    assert starts == sorted(starts) and all(w["end_ms"] >= w["start_ms"] for w in words)


async def test_parallel_workers_still_deliver_in_order(redis_url: str, key_prefix: str) -> None:
    # Sentence 0 is long, sentence 1 short: with two paced workers, 1 finishes first.
    async with start_pipeline(
        redis_url, key_prefix, workers=2, engine_options={"rtf": "0.5", "chunk_ms": "40"}
    ) as pipeline:
        async with Client.connect(pipeline, {"response_format": "pcm", "stream_audio": True}) as c:
            await c.send("input.text", text="This first sentence is clearly much longer. Short.")
            await c.send("input.done")
            sentences, _ = await c.utterance(timeout=20)
    assert [s.start["sentence_text"] for s in sentences] == [
        "This first sentence is clearly much longer.",
        "Short.",
    ]
    assert pipeline.total("completed") == 2
    assert all(w.stats["completed"] == 1 for w in pipeline.workers), "both workers took one"


async def test_generation_failure_is_reported_and_the_utterance_goes_on(
    redis_url: str, key_prefix: str
) -> None:
    async with start_pipeline(redis_url, key_prefix, engine_options={"fail_on": "BOOM"}) as p:
        async with Client.connect(p, {"response_format": "pcm"}) as c:
            await c.send("input.text", text="Fine one. This goes BOOM now. Fine again.")
            await c.send("input.done")
            sentences, done = await c.utterance()
    assert done["total_sentences"] == 3
    ok, bad, ok2 = sentences
    assert not ok.errors and not ok2.errors and ok2.done["error"] is False
    assert bad.done["error"] is True
    (err,) = bad.errors
    assert err["code"] == "generation_failed" and err["sentence_index"] == 1


async def test_barge_in_cancels_queued_and_in_flight_work(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(
        redis_url, key_prefix, engine_options={"rtf": "1.0", "chunk_ms": "50"}
    ) as p:
        async with Client.connect(p, {"response_format": "pcm", "stream_audio": True}) as c:
            await c.send("input.text", text="One long first sentence here. Two. Three. Four.")
            await c.send("input.text", text=" buffered partial")
            await c.expect("audio.start")
            assert isinstance(await c.recv(), bytes)
            await c.send("input.cancel")
            # The open sentence is closed as cancelled, then the cancel is confirmed.
            message = await c.until("input.cancelled")
            done = next(m for m in c.received if isinstance(m, dict) and m["type"] == "audio.done")
            assert done["cancelled"] is True and done["sentence_index"] == 0
            assert message["utterance_index"] == 0
            assert message["cancelled_sentences"] == [0, 1, 2, 3]
            # Nothing of the cancelled utterance follows; the next one works.
            await c.send("input.text", text="After the barge-in.")
            await c.send("input.done")
            sentences, session_done = await c.utterance()
            assert session_done["utterance_index"] == 1
            assert [s.start["sentence_text"] for s in sentences] == ["After the barge-in."]
    # What the worker did: the in-flight sentence stopped, the queued ones never started.
    assert p.total("cancelled") == 1
    assert p.total("skipped_cancelled") == 3
    assert p.total("started") == 2  # sentence 0 of utterance 0, then the new utterance
    assert p.total("chunks_after_cancel") <= 1


async def test_disconnect_stops_the_worker_within_one_chunk(
    redis_url: str, key_prefix: str
) -> None:
    async with start_pipeline(
        redis_url, key_prefix, engine_options={"rtf": "1.0", "chunk_ms": "50"}
    ) as p:
        async with Client.connect(p, {"response_format": "pcm", "stream_audio": True}) as c:
            await c.send(
                "input.text", text="A rather long sentence to speak slowly. Bee. Sea. Dee. "
            )
            await c.expect("audio.start")
            await c.recv()
        # The connection is gone; wait for the worker to wind down.
        for _ in range(200):
            if p.total("cancelled") + p.total("skipped_cancelled") >= 4:
                break
            await asyncio.sleep(0.02)
        engine = p.workers[0].engine
    assert p.total("cancelled") == 1
    assert p.total("skipped_cancelled") == 3
    assert p.total("started") == 1
    assert p.total("chunks_after_cancel") <= 1
    # The long sentence is ~2.3 s of audio at 50 ms a chunk: it stopped far short of that.
    assert engine.stats["chunks"] < 20


async def test_session_close_delivers_everything_then_closes_1000(pipeline: Pipeline) -> None:
    async with Client.connect(pipeline, {"response_format": "pcm"}) as c:
        await c.send("input.text", text="Say this. And this")
        await c.send("session.close")
        code = await c.closed()
    assert code == 1000
    types = [m["type"] for m in c.received if isinstance(m, dict)]
    assert types.count("audio.done") == 2
    assert types[-1] == "session.done"


async def test_session_close_after_cancel_closes_at_once(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, engine_options={"rtf": "1.0"}) as p:
        async with Client.connect(p, {"response_format": "pcm"}) as c:
            await c.send("input.text", text="Something long enough to still be going. Two.")
            await c.send("input.cancel")
            await c.send("session.close")
            code = await c.closed(timeout=2)
    assert code == 1000
    assert any(isinstance(m, dict) and m["type"] == "input.cancelled" for m in c.received)


async def test_cancel_with_nothing_in_progress_ends_an_empty_utterance(
    pipeline: Pipeline,
) -> None:
    async with Client.connect(pipeline, {}) as c:
        await c.send("input.cancel")
        cancelled = await c.expect("input.cancelled")
        assert cancelled == {
            "type": "input.cancelled",
            "utterance_index": 0,
            "cancelled_sentences": [],
        }
        await c.send("input.done")
        assert (await c.expect("session.done"))["utterance_index"] == 1


async def test_second_config_between_utterances_replaces_it(pipeline: Pipeline) -> None:
    async with Client.connect(pipeline, {"response_format": "pcm"}) as c:
        await c.send("input.text", text="Hello.")
        await c.send("input.done")
        await c.utterance()
        await c.send("session.config", response_format="mulaw", voice="tone-high")
        ready = await c.expect("session.ready")
        assert ready["format"] == "mulaw" and ready["voice"] == "tone-high"
        await c.send("input.text", text="Again.")
        await c.send("input.done")
        sentences, _ = await c.utterance()
        assert sentences[0].start["format"] == "mulaw"


async def test_second_config_during_an_utterance_is_an_error(pipeline: Pipeline) -> None:
    async with Client.connect(pipeline, {"response_format": "pcm"}) as c:
        await c.send("input.text", text="Half a sentence")
        await c.send("session.config", response_format="wav")
        error = await c.expect("error")
        assert error["code"] == "invalid_message"
        await c.send("input.done")
        sentences, _ = await c.utterance()
        assert sentences[0].start["format"] == "pcm", "the config was not replaced"


async def test_a_lost_message_becomes_a_sentence_error(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, engine_options={"rtf": "1.0"}) as p:
        async with Client.connect(p, {"response_format": "pcm", "stream_audio": True}) as c:
            await c.send("input.text", text="A sentence long enough to be interrupted.")
            await c.send("input.done")
            await c.expect("audio.start")
            hub = p.server.config.app.state.hub
            session_id = next(iter(hub.sessions)).id
            # A message from far in the future: the ones in between were "lost".
            await hub.redis.publish(
                hub.keys.audio_channel(session_id), Event(EventKind.AUDIO, 0, 0, 99, b"xx").pack()
            )
            while not isinstance(done := await c.recv(), dict) or done["type"] != "session.done":
                pass
    errors = [m for m in c.received if isinstance(m, dict) and m["type"] == "error"]
    (audio_done,) = [m for m in c.received if isinstance(m, dict) and m["type"] == "audio.done"]
    assert done["total_sentences"] == 1
    assert audio_done["error"] is True
    assert errors[0]["code"] == "generation_failed" and "lost" in errors[0]["message"]
    assert errors[0]["sentence_index"] == 0
    assert audio_done["total_bytes"] == sum(len(m) for m in c.received if isinstance(m, bytes))


async def test_no_worker_taking_the_job_fails_the_sentence_on_its_deadline(
    redis_url: str, key_prefix: str
) -> None:
    async with start_pipeline(redis_url, key_prefix, queue_timeout=0.5) as p:
        async with Client.connect(p, {"response_format": "pcm"}) as c:
            await p.stop_workers()
            await c.send("input.text", text="Nobody will say this.")
            await c.send("input.done")
            sentences, _ = await c.utterance()
    (s,) = sentences
    assert s.done["error"] is True and s.done["total_bytes"] == 0
    assert "no worker" in s.errors[0]["message"]


async def test_health_and_readiness(pipeline: Pipeline) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=pipeline.http) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["workers"] == 1
        await pipeline.stop_workers()
        not_ready = await http.get("/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["workers"] == 0


async def test_messages_are_json_text_frames(pipeline: Pipeline) -> None:
    async with Client.connect(pipeline) as c:
        await c.send_raw(json.dumps({"type": "session.config", "voice": "tone-low"}))
        frame = await c.ws.recv()
        assert isinstance(frame, str) and json.loads(frame)["voice"] == "tone-low"


async def test_empty_text_deltas_open_no_utterance(pipeline: Pipeline) -> None:
    async with Client.connect(pipeline, {"response_format": "pcm"}) as c:
        await c.send("input.text", text="")
        await c.send("session.config", response_format="mulaw")
        assert (await c.expect("session.ready"))["format"] == "mulaw"
        await c.send("input.text", text="")
        await c.send("input.text", text="Real text.")
        await c.send("input.done")
        sentences, done = await c.utterance()
    assert done["utterance_index"] == 0 and len(sentences) == 1


async def test_session_close_with_nothing_to_say_closes_at_once(pipeline: Pipeline) -> None:
    async with Client.connect(pipeline, {}) as c:
        await c.send("input.text", text="   ")
        await c.send("session.close")
        assert await c.closed(timeout=3) == 1000


async def test_cancel_after_done_ends_exactly_that_utterance(
    redis_url: str, key_prefix: str
) -> None:
    async with start_pipeline(redis_url, key_prefix, engine_options={"rtf": "1.0"}) as p:
        async with Client.connect(p, {"response_format": "pcm", "stream_audio": True}) as c:
            await c.send("input.text", text="Being delivered right now. Then more.")
            await c.send("input.done")
            await c.expect("audio.start")
            await c.send("input.cancel")
            while not isinstance(m := await c.recv(), dict) or m["type"] != "input.cancelled":
                pass
            assert m["utterance_index"] == 0
            await c.send("input.text", text="Next.")
            await c.send("input.done")
            sentences, done = await c.utterance()
    cancelled = [x for x in c.received if isinstance(x, dict) and x["type"] == "input.cancelled"]
    assert len(cancelled) == 1, "one cancel ends one utterance"
    assert done["utterance_index"] == 1


async def test_a_sentence_ready_in_time_is_not_failed_by_its_queue_deadline(
    redis_url: str, key_prefix: str
) -> None:
    # Sentence 1 is synthesized at once by the second worker but reaches the relay only
    # after sentence 0 (~1.6 s of paced audio), past its 1 s queue deadline.
    async with start_pipeline(
        redis_url, key_prefix, workers=2, queue_timeout=1.0, engine_options={"rtf": "1.0"}
    ) as p:
        async with Client.connect(p, {"response_format": "pcm", "stream_audio": True}) as c:
            await c.send("input.text", text="This one takes a long while. Quick.")
            await c.send("input.done")
            sentences, _ = await c.utterance()
    assert [s.done["error"] for s in sentences] == [False, False]


async def test_a_worker_whose_registry_entry_vanished_publishes_it_again(
    redis_url: str, key_prefix: str
) -> None:
    async with start_pipeline(redis_url, key_prefix, heartbeat_interval=0.1) as p:
        hub = p.server.config.app.state.hub
        await hub.redis.delete(hub.keys.worker(p.workers[0].id))  # e.g. a Redis restart
        for _ in range(100):
            if await hub.redis.hget(hub.keys.worker(p.workers[0].id), "info"):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.1)  # past the pool cache
        async with Client.connect(p, {"response_format": "pcm"}) as c:
            await c.send("input.text", text="Back in business.")
            await c.send("input.done")
            sentences, _ = await c.utterance()
    assert len(sentences) == 1


async def test_speed_reaches_the_engine(pipeline: Pipeline) -> None:
    lengths = {}
    for speed in (1.0, 2.0):
        async with Client.connect(pipeline, {"response_format": "pcm", "speed": speed}) as c:
            await c.send("input.text", text="Exactly the same words.")
            await c.send("input.done")
            sentences, _ = await c.utterance()
            lengths[speed] = len(sentences[0].audio)
    assert lengths[2.0] == pytest.approx(lengths[1.0] / 2, rel=0.05)


async def test_clause_granularity_reaches_the_splitter(pipeline: Pipeline) -> None:
    config = {"response_format": "pcm", "split_granularity": "clause"}
    async with Client.connect(pipeline, config) as c:
        await c.send("input.text", text="First the long clause, then another clause. End.")
        await c.send("input.done")
        sentences, _ = await c.utterance()
    assert [s.start["sentence_text"] for s in sentences] == [
        "First the long clause,",
        "then another clause.",
        "End.",
    ]
