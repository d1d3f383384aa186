"""The upstream engine against a real second voxline: an `api` and a tone `worker` process
on Redis, whose REST stands for an OpenAI-compatible server and whose WebSocket for
vllm-omni's. The front voxline runs in the test, its worker on the upstream engine."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import redis

from tests.conftest import real_redis_or_fail
from tests.harness import REDIS_URL, Client, peak_held, start_pipeline
from tests.processes import voxline_stack
from tests.redis_servers import free_port
from voxline.api.auth import hash_key
from voxline.worker.engines import load_engine
from voxline.worker.engines.base import (
    Cancellation,
    EngineError,
    EngineUnavailable,
    SynthesisRequest,
)
from voxline.worker.engines.tone import ToneEngine
from voxline.worker.engines.upstream.engine import UpstreamEngine, parse_voices

pytestmark = pytest.mark.multiprocess

RTF = 0.25  # the upstream's pace: a second of audio takes a quarter second
TONE = ToneEngine()  # the upstream's engine with the same defaults: expected lengths
PROTOCOLS = ["openai", "vllm-omni"]


@dataclass
class Upstream:
    http: str
    prefix: str
    worker_id: str

    @property
    def base(self) -> str:
        return f"{self.http}/v1"

    def counters(self) -> dict[str, int]:
        """The upstream worker's job counters, from its registry entry in Redis."""
        client = redis.Redis.from_url(REDIS_URL)
        try:
            raw = client.hgetall(f"{self.prefix}:worker:{self.worker_id}")
        finally:
            client.close()
        return {k.decode(): int(v) for k, v in raw.items() if v.isdigit()}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    real_redis_or_fail()
    prefix = f"vxup-{uuid.uuid4().hex[:8]}"
    worker_id = f"tone-{prefix}"
    tone = ["--engine", "tone", "--engine-opt", f"rtf={RTF}", "--concurrency", "8"]
    with voxline_stack(prefix, [[*tone, "--worker-id", worker_id]]) as url:
        yield Upstream(url.replace("ws://", "http://"), prefix, worker_id)


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return request.param


def options(upstream: Upstream, protocol: str, **extra: str) -> dict[str, str]:
    return {"url": upstream.base, "protocol": protocol, "default_voice": "tone-mid", **extra}


@pytest.fixture
async def engine(upstream: Upstream, protocol: str) -> AsyncIterator[UpstreamEngine]:
    engine = load_engine("upstream", options(upstream, protocol))
    assert isinstance(engine, UpstreamEngine)
    await engine.start()
    yield engine
    await engine.close()


async def direct_pcm(upstream: Upstream, text: str, voice: str = "tone-mid") -> bytes:
    """The sentence from the upstream itself, over its REST, as pcm."""
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            f"{upstream.base}/audio/speech",
            json={"input": text, "voice": voice, "response_format": "pcm"},
        )
    assert response.status_code == 200, response.text
    return response.content


async def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_voice_maps_parse() -> None:
    assert parse_voices("alba, nova=af_nova") == {"alba": "alba", "nova": "af_nova"}
    with pytest.raises(ValueError, match="empty voice"):
        parse_voices("a,,b")
    with pytest.raises(ValueError, match="url must be"):
        load_engine("upstream", {"url": "file:///etc/passwd"})
    with pytest.raises(ValueError, match="protocol"):
        load_engine("upstream", {"url": "http://x", "protocol": "grpc"})


async def test_it_lists_the_upstreams_voices_and_capacity(engine: UpstreamEngine) -> None:
    info = engine.info
    assert {"tone-low", "tone-mid", "tone-high"} <= set(info.voices)
    assert info.default_voice == "tone-mid" and info.sample_rate == 24000
    assert engine.capacity() == 4  # the configured concurrency


async def test_a_sentence_is_the_upstreams_audio_sample_for_sample(
    engine: UpstreamEngine, upstream: Upstream
) -> None:
    text = "The upstream makes this sentence."
    request = SynthesisRequest(text, "tone-high")
    chunks = [c.pcm async for c in engine.synthesize(request, Cancellation())]
    assert len(chunks) > 1, "streamed in pieces, not as one"
    pcm = np.concatenate(chunks)
    assert len(pcm) == TONE.duration_samples(text)
    assert pcm.tobytes() == await direct_pcm(upstream, text, "tone-high")


async def test_sentences_through_the_pipeline_arrive_in_order(
    upstream: Upstream, protocol: str, redis_url: str, key_prefix: str
) -> None:
    texts = [f"Sentence number {i} goes upstream{'.' * (i % 2 + 1)}" for i in range(6)]
    async with start_pipeline(
        redis_url,
        key_prefix,
        engine="upstream",
        engine_options=options(upstream, protocol),
        concurrency=4,
    ) as p:
        peak = peak_held(p.workers[0])
        async with Client.connect(p, {"response_format": "pcm", "stream_audio": True}) as c:
            await c.send("input.text", text=" ".join(texts))
            await c.send("input.done")
            sentences, done = await c.utterance(timeout=30)
        assert done["total_sentences"] == len(texts)
        assert [s.start["sentence_text"] for s in sentences] == texts
        for s in sentences:
            assert not s.errors and s.done["error"] is False
            assert s.audio == await direct_pcm(upstream, s.start["sentence_text"])
        # Several sentences were upstream at once, not one after another.
        assert peak() > 1


async def test_a_barge_in_stops_the_work_upstream(
    upstream: Upstream, protocol: str, redis_url: str, key_prefix: str
) -> None:
    # One sentence (no full stop before the end) of 15 s of audio, 3.8 s of upstream work.
    long = "this sentence takes the upstream a while, " * 6 + "and it ends here."
    async with start_pipeline(
        redis_url, key_prefix, engine="upstream", engine_options=options(upstream, protocol)
    ) as p:
        async with Client.connect(p, {"response_format": "pcm", "stream_audio": True}) as c:
            before = upstream.counters()
            await c.send("input.text", text=long)
            await c.send("input.flush")
            await c.expect("audio.start")
            assert isinstance(await c.recv(), bytes)  # it speaks
            await c.send("input.cancel")
            cancelled = await c.until("input.cancelled", timeout=5)
            assert cancelled["cancelled_sentences"] == [0]

            def stopped() -> bool:
                now = upstream.counters()
                return now.get("cancelled", 0) + now.get("skipped_cancelled", 0) > before.get(
                    "cancelled", 0
                ) + before.get("skipped_cancelled", 0)

            await wait_for(stopped, timeout=5)
            after = upstream.counters()
            assert after.get("completed", 0) == before.get("completed", 0)
            # The upstream made a fraction of the sentence, not all of it.
            full = TONE.duration_samples(long) // (TONE.chunk_samples)
            assert after["chunks"] - before.get("chunks", 0) < full / 2
            # The same front session, and the engine's upstream connection, go on.
            await c.send("input.text", text="And then a short one.")
            await c.send("input.done")
            sentences, _ = await c.utterance(timeout=20)
            assert [s.start["sentence_text"] for s in sentences] == ["And then a short one."]
            assert not sentences[0].errors
            assert sentences[0].audio == await direct_pcm(upstream, "And then a short one.")


async def test_cancel_mid_sentence_leaves_the_connection_reusable(
    engine: UpstreamEngine, upstream: Upstream
) -> None:
    cancel = Cancellation()
    long = "Cancelled before the end of it, this sentence is. " * 3
    got = 0
    loop = asyncio.get_running_loop()
    async for chunk in engine.synthesize(SynthesisRequest(long, "tone-mid"), cancel):
        if not got:
            loop.call_soon(cancel.set)  # from outside, as the worker's cancel listener does
        got += len(chunk.pcm)
    assert 0 < got < TONE.duration_samples(long) / 2
    text = "Next sentence after the cancel."
    request = SynthesisRequest(text, "tone-mid")
    pcm = [c.pcm async for c in engine.synthesize(request, Cancellation())]
    assert np.concatenate(pcm).tobytes() == await direct_pcm(upstream, text)


async def test_a_connection_the_upstream_closed_while_idle_is_replaced(
    upstream: Upstream,
) -> None:
    engine = load_engine("upstream", options(upstream, "vllm-omni"))
    await engine.start()
    try:
        text = "One sentence to open a connection."
        request = SynthesisRequest(text, "tone-mid")
        [c async for c in engine.synthesize(request, Cancellation())]
        idle = engine._client._idle  # type: ignore[union-attr]
        assert len(idle) == 1
        await idle[0].ws.close()  # as the upstream's idle timeout would
        pcm = [c.pcm async for c in engine.synthesize(request, Cancellation())]
        assert np.concatenate(pcm).tobytes() == await direct_pcm(upstream, text)
    finally:
        await engine.close()


@dataclass
class DroppingServer:
    """Answers its first connection's first request with keep-alive, then closes that
    connection when the next request arrives on it, without a word: the server that dropped
    an idle connection just as the client reused it. Later connections are answered."""

    url: str
    connections: int = 0


PCM = np.arange(2400, dtype=np.int16).tobytes()


async def _read_request(reader: asyncio.StreamReader) -> bool:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return False
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return True


@pytest.fixture
async def dropping_server() -> AsyncIterator[DroppingServer]:
    state = DroppingServer("")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        number, answered = state.connections, 0
        while await _read_request(reader):
            if number == 1 and answered == 1:
                break  # the reused connection's second request: dropped unanswered
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: audio/pcm\r\n"
                + f"content-length: {len(PCM)}\r\n\r\n".encode()
                + PCM
            )
            await writer.drain()
            answered += 1
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    yield state
    server.close()


async def test_a_pooled_connection_dropped_as_it_is_reused_is_retried_once(
    dropping_server: DroppingServer,
) -> None:
    opts = {"url": dropping_server.url, "protocol": "openai", "voices": "v"}
    engine = load_engine("upstream", opts)
    await engine.start()
    try:
        for _ in range(2):
            request = SynthesisRequest("Hello.", "v")
            pcm = [c.pcm async for c in engine.synthesize(request, Cancellation())]
            assert np.concatenate(pcm).tobytes() == PCM
    finally:
        await engine.close()
    # The second sentence went out on the pooled connection, was dropped, and went again on
    # a new one: not "upstream unreachable".
    assert dropping_server.connections == 2


async def test_an_upstream_that_is_down_fails_each_sentence_quickly(
    protocol: str, redis_url: str, key_prefix: str
) -> None:
    down = f"http://127.0.0.1:{free_port()}/v1"
    opts = {"url": down, "protocol": protocol, "voices": "tone-mid"}
    async with start_pipeline(redis_url, key_prefix, engine="upstream", engine_options=opts) as p:
        async with Client.connect(p, {"response_format": "pcm"}) as c:
            began = time.monotonic()
            await c.send("input.text", text="First one. Second one.")
            await c.send("input.done")
            sentences, done = await c.utterance(timeout=10)
    assert time.monotonic() - began < 5
    assert done["total_sentences"] == 2
    for s in sentences:
        assert s.done["error"] is True and s.audio == b""
        assert [e["code"] for e in s.errors] == ["generation_failed"]
        assert "upstream unreachable" in s.errors[0]["message"]


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """Accepts connections and never answers: a hung upstream."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1"
    for writer in held:
        writer.close()
    server.close()


async def test_a_hung_upstream_times_out_the_sentence(silent_server: str, protocol: str) -> None:
    engine = load_engine(
        "upstream",
        {"url": silent_server, "protocol": protocol, "voices": "v", "timeout": "0.5"},
    )
    await engine.start()
    try:
        with pytest.raises(EngineError, match="timed out"):
            request = SynthesisRequest("Hello.", "v")
            await asyncio.wait_for(_drain(engine.synthesize(request, Cancellation())), 5)
    finally:
        await engine.close()


async def test_a_cancel_while_the_upstream_is_silent_ends_the_sentence_at_once(
    silent_server: str, protocol: str
) -> None:
    opts = {"url": silent_server, "protocol": protocol, "voices": "v", "timeout": "60"}
    engine = load_engine("upstream", opts)
    await engine.start()
    try:
        cancel = Cancellation()
        asyncio.get_running_loop().call_later(0.2, cancel.set)
        # Nothing came, nothing is yielded, no error: the sentence just ends, long before the
        # 60 s timeout would have ended it.
        request = SynthesisRequest("Hello.", "v")
        assert await asyncio.wait_for(_drain(engine.synthesize(request, cancel)), 5) == []
    finally:
        await engine.close()


async def _drain(chunks: AsyncIterator[object]) -> list[object]:
    return [c async for c in chunks]


async def test_without_a_url_or_a_reachable_voice_list_it_will_not_start() -> None:
    with pytest.raises(EngineUnavailable, match="no url"):
        await load_engine("upstream").start()
    down = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EngineUnavailable, match="cannot list voices"):
        await load_engine("upstream", {"url": down}).start()


async def test_an_unknown_voice_or_word_timestamps_fail_the_sentence(
    engine: UpstreamEngine,
) -> None:
    with pytest.raises(EngineError, match="no voice"):
        [c async for c in engine.synthesize(SynthesisRequest("Hi.", "nope"), Cancellation())]
    request = SynthesisRequest("Hi.", "tone-mid", word_timestamps=True)
    with pytest.raises(EngineError, match="word timestamps"):
        [c async for c in engine.synthesize(request, Cancellation())]


async def test_the_upstreams_key_comes_from_the_environment(
    protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "vx_upstream-key-0123456789"
    async with start_pipeline("memory://", "vxkey", api_keys=f"up={hash_key(key)}") as keyed:
        opts = {"url": f"{keyed.http}/v1", "protocol": protocol, "voices": "tone-mid"}
        opts["api_key_env"] = "MY_TTS_KEY"
        request = SynthesisRequest("With a key.", "tone-mid")
        monkeypatch.delenv("MY_TTS_KEY", raising=False)
        engine = load_engine("upstream", opts)
        await engine.start()
        try:
            # REST answers 401; the WebSocket an `error` and a close.
            with pytest.raises(EngineError, match=r"401|\(1008\): .*key"):
                [c async for c in engine.synthesize(request, Cancellation())]
        finally:
            await engine.close()
        monkeypatch.setenv("MY_TTS_KEY", key)
        engine = load_engine("upstream", opts)
        await engine.start()
        try:
            pcm = [c.pcm async for c in engine.synthesize(request, Cancellation())]
            assert len(np.concatenate(pcm)) == TONE.duration_samples("With a key.")
        finally:
            await engine.close()
