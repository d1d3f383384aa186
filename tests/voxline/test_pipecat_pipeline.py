"""VoxlineTTSService in a real Pipecat pipeline (Pipeline, PipelineWorker, WorkerRunner)
against a live voxline: barge-in mid-audio, a server restart mid-session, Pipecat languages,
and the example bot."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pipecat")

import uvicorn  # noqa: E402
from pipecat.frames.frames import (  # noqa: E402
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.tests.utils import run_test  # noqa: E402
from pipecat.transcriptions.language import Language  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from tests.harness import Pipeline as Voxline  # noqa: E402
from tests.harness import bound_port, start_pipeline  # noqa: E402
from voxline.api.app import create_app  # noqa: E402
from voxline.api.server import WS_OPTIONS, Server  # noqa: E402
from voxline.pipecat import VoxlineTTSService, language_candidates  # noqa: E402

RATE = 16000
PARAMS = PipelineParams(audio_out_sample_rate=RATE)
# The tone engine at the pipeline's rate (no resampling: equal texts give equal bytes), paced
# at real time so that an utterance is still being spoken when the interruption comes.
PACED = {"rtf": "1.0", "chunk_ms": "20", "sample_rate": str(RATE)}
ROOT = Path(__file__).resolve().parents[2]
WAIT = 15.0


class Recorder(FrameProcessor):
    """Records the frames that pass it in one direction; waits for one to come."""

    def __init__(self, direction: FrameDirection) -> None:
        super().__init__()
        self.direction = direction
        self.frames: list[Frame] = []
        self._arrived = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == self.direction:
            self.frames.append(frame)
            self._arrived.set()
        await self.push_frame(frame, direction)

    async def wait_for(self, found: Callable[[list[Frame]], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not found(self.frames):
                self._arrived.clear()
                await self._arrived.wait()

    def of(self, kind: type) -> list[Any]:
        return [f for f in self.frames if isinstance(f, kind)]

    def audio(self, context_id: str) -> bytes:
        return b"".join(f.audio for f in self.of(TTSAudioRawFrame) if f.context_id == context_id)


class Bot:
    """A running pipeline: errors upstream of the TTS, audio downstream of it."""

    def __init__(self, tts: VoxlineTTSService) -> None:
        self.tts = tts
        self.up = Recorder(FrameDirection.UPSTREAM)
        self.down = Recorder(FrameDirection.DOWNSTREAM)
        self.worker = PipelineWorker(
            Pipeline([self.up, tts, self.down]), params=PARAMS, cancel_on_idle_timeout=False
        )

    async def say(self, *pieces: str) -> str:
        """Speak one LLM reply; returns its context once its first audio came."""
        before = len(self.down.of(TTSStartedFrame))
        await self.worker.queue_frames(
            [LLMFullResponseStartFrame(), *(LLMTextFrame(p) for p in pieces)]
            + [LLMFullResponseEndFrame()]
        )
        await self.down.wait_for(lambda _: len(self.down.of(TTSStartedFrame)) > before)
        context = self.down.of(TTSStartedFrame)[before].context_id
        await self.down.wait_for(lambda _: bool(self.down.audio(context)))
        return context

    async def spoken(self, context: str) -> bytes:
        """The context's audio, once it stopped."""
        await self.down.wait_for(
            lambda frames: any(
                isinstance(f, TTSStoppedFrame) and f.context_id == context for f in frames
            )
        )
        return self.down.audio(context)

    def errors(self) -> list[str]:
        return [f.error for f in self.up.of(ErrorFrame)]


@contextlib.asynccontextmanager
async def running(tts: VoxlineTTSService) -> AsyncIterator[Bot]:
    bot = Bot(tts)
    started = asyncio.Event()

    @bot.worker.event_handler("on_pipeline_started")
    async def _started(worker: PipelineWorker, frame: Frame) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(bot.worker)
    run = asyncio.create_task(runner.run())
    try:
        async with asyncio.timeout(WAIT):
            await started.wait()
        yield bot
        await bot.worker.queue_frame(EndFrame())
        async with asyncio.timeout(WAIT):
            await run
    finally:
        if not run.done():
            await bot.worker.cancel()
            await asyncio.gather(run, return_exceptions=True)


async def speak_alone(url: str, text: str) -> bytes:
    """What `text` sounds like as the only turn of a fresh connection."""
    async with running(VoxlineTTSService(url=url, word_timestamps=False)) as bot:
        return await bot.spoken(await bot.say(text))


async def test_an_interrupted_turn_leaves_nothing_in_the_next(
    redis_url: str, key_prefix: str
) -> None:
    long = " ".join(f"Sentence {i} takes about a second at real time." for i in range(10))
    after = "The next turn, on the same connection."
    async with start_pipeline(redis_url, key_prefix, engine_options=PACED) as p:
        tts = VoxlineTTSService(url=p.url, word_timestamps=False)
        async with running(tts) as bot:
            first = await bot.say(long)
            await asyncio.sleep(0.5)  # mid-audio: a second of some ten is out
            heard = len(bot.down.audio(first))
            await bot.worker.queue_frame(InterruptionFrame())
            await bot.down.wait_for(lambda _: bool(bot.down.of(InterruptionFrame)))
            second = await bot.say(after)
            audio = await bot.spoken(second)
            connection = tts.session
        cancelled = p.total("cancelled")
        alone = await speak_alone(p.url, after)
    assert 0 < heard < 3 * 2 * RATE  # it was cut a few seconds into some ten
    assert cancelled >= 1  # the sentence being synthesized was stopped at the worker
    cut = next(i for i, f in enumerate(bot.down.frames) if isinstance(f, InterruptionFrame))
    assert not [f for f in bot.down.frames[cut:] if getattr(f, "context_id", None) == first]
    assert len(bot.down.audio(first)) < 3 * 2 * RATE  # nothing of the rest came either
    # The second turn's audio is that text's, byte for byte: none of the first in it.
    assert audio == alone and len(audio) > 0.5 * 2 * RATE
    assert connection is not None and tts.session is connection  # one connection throughout
    assert not bot.errors()


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def serve_on(p: Voxline, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """The API again, on the port it had, before the same workers."""
    config = uvicorn.Config(
        create_app(p.settings), host="127.0.0.1", port=port, log_level="warning", **WS_OPTIONS
    )
    server = Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the server did not start"
        await asyncio.sleep(0.01)
    return server, task


async def test_the_service_reconnects_by_itself_after_a_server_restart(
    redis_url: str, key_prefix: str
) -> None:
    async with start_pipeline(redis_url, key_prefix, engine_options=PACED) as p:
        port = bound_port(p.server)
        tts = VoxlineTTSService(url=p.url, word_timestamps=False, reconnect_backoff_min_wait=1.0)
        connected: list[dict[str, Any] | None] = []
        disconnected = asyncio.Event()

        @tts.event_handler("on_connected")
        async def _connected(service: VoxlineTTSService) -> None:
            connected.append(service.session)

        @tts.event_handler("on_disconnected")
        async def _disconnected(service: VoxlineTTSService) -> None:
            disconnected.set()

        restarted: tuple[uvicorn.Server, asyncio.Task[None]] | None = None
        try:
            async with running(tts) as bot:
                before = await bot.spoken(await bot.say("Before the restart."))
                p.server.should_exit = True  # the server goes down, sessions closed with 1012
                async with asyncio.timeout(WAIT):
                    await disconnected.wait()  # the service saw it, with no turn in flight
                    while not _port_is_free(port):
                        await asyncio.sleep(0.05)
                restarted = await serve_on(p, port)
                async with asyncio.timeout(WAIT):
                    while len(connected) < 2:  # reconnected with no text to send
                        await asyncio.sleep(0.05)
                after = await bot.spoken(await bot.say("After the restart."))
        finally:
            if restarted is not None:
                restarted[0].should_exit = True
                await restarted[1]
    assert before and after
    first, second = connected
    assert first is not None and second is not None
    assert first["session_id"] != second["session_id"]
    assert len(connected) == 2  # the turn after went on the reconnected session
    # While the server was down, the reconnection attempts that failed were reported.
    errors = bot.errors()
    assert errors and all("reconnection attempt" in e for e in errors), errors


async def test_pipecat_languages_map_to_the_engines(redis_url: str, key_prefix: str) -> None:
    assert language_candidates("en-US") == ["en-US", "en-us", "en"]
    async with start_pipeline(redis_url, key_prefix, engine="espeak") as p:
        results = {}
        for language in (Language.EN_US, Language.DE_DE, "en-gb"):
            tts = VoxlineTTSService(
                url=p.url, settings=VoxlineTTSService.Settings(language=language)
            )
            down, up = await run_test(
                tts, frames_to_send=[TTSSpeakFrame("Hallo.")], pipeline_params=PARAMS
            )
            audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
            errors = [f.error for f in up if isinstance(f, ErrorFrame)]
            results[str(language)] = (tts.engine_language, bool(audio), errors)
    assert results == {
        str(Language.EN_US): ("en-us", True, []),  # espeak lists en-us
        str(Language.DE_DE): ("de", True, []),  # no de-de: its base language
        "en-gb": ("en-gb", True, []),
    }, results


async def test_the_example_bot_writes_what_it_heard(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    spec = importlib.util.spec_from_file_location("pipecat_bot", ROOT / "examples/pipecat_bot.py")
    assert spec is not None and spec.loader is not None
    bot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bot)
    out = tmp_path / "bot.wav"
    async with start_pipeline(redis_url, key_prefix, engine="espeak") as p:
        frames = await bot.main(p.url, "Hello from Pipecat. This is voxline speaking.", out)
    assert frames > 0
    with wave.open(str(out), "rb") as wav:
        assert wav.getframerate() == bot.SAMPLE_RATE and wav.getnchannels() == 1
        seconds = wav.getnframes() / wav.getframerate()
    assert 1.0 < seconds < 8, seconds


async def test_without_managed_reconnects_the_next_turn_connects(
    redis_url: str, key_prefix: str
) -> None:
    paced = {"rtf": "1.0", "chunk_ms": "20"}
    async with start_pipeline(
        redis_url, key_prefix, engine_options=paced, max_session_seconds=1.0
    ) as p:
        tts = VoxlineTTSService(url=p.url, word_timestamps=False, reconnect_on_error=False)
        async with running(tts) as bot:
            first = await bot.spoken(await bot.say("A short one."))
            await asyncio.sleep(1.5)  # the server expires the idle session: nobody reconnects
            assert tts.session is not None and not tts._is_connected()
            again = await bot.spoken(await bot.say("Spoken on a new connection."))
    assert first and again
    # The end of the session was reported (idle: the close; mid-turn: the server's error).
    assert any("closed by server" in e or "session_expired" in e for e in bot.errors())
