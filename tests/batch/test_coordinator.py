"""The batch coordinator with real workers, on the in-memory Redis and a real server: order and
length of the file, resuming after a dead coordinator, lost sentences, cancel, failures,
storage, callbacks, and the arq worker that runs it."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import voxline.batch.coordinator as coordinator_module
from tests.audio import numbered_text, tone_pcm
from tests.harness import Pipeline, start_pipeline
from voxline.batch.arq_worker import make_worker
from voxline.batch.callbacks import redact_url
from voxline.batch.connections import arq_job_id, arq_pool, enqueue_batch
from voxline.batch.coordinator import Coordinator
from voxline.batch.results import IN_REDIS
from voxline.shared.batches import Batches, BatchRequest, BatchStatus, new_batch_id, wake_in
from voxline.shared.config import Settings
from voxline.shared.connections import Client, connect
from voxline.shared.keys import JOBS_GROUP, Keys, batch_session
from voxline.shared.tasks import stop
from voxline.speech.queue import JobQueue

RATE = 24000


@contextlib.asynccontextmanager
async def _stack(
    redis_url: str, key_prefix: str, **overrides: object
) -> AsyncIterator[tuple[Pipeline, Client, Batches]]:
    async with start_pipeline(redis_url, key_prefix, concurrency=4, **overrides) as pipeline:
        redis = connect(redis_url)
        s = pipeline.settings
        batches = Batches(redis, Keys(key_prefix), result_ttl=s.batch_result_ttl, timeout=60)
        try:
            yield pipeline, redis, batches
        finally:
            await redis.aclose()


async def _new_job(batches: Batches, text: str, fmt: str = "pcm", callback: str = "") -> str:
    batch_id = new_batch_id()
    request = BatchRequest(text, "tone-mid", fmt, RATE, callback_url=callback)
    await batches.create(batch_id, request)
    return batch_id


def _coordinator(pipeline: Pipeline, redis: Client, batch_id: str) -> Coordinator:
    keys = Keys(pipeline.settings.key_prefix)
    return Coordinator(redis, keys, pipeline.settings, batch_id)


async def _result(redis: Client, keys: Keys, batch_id: str) -> bytes:
    return await redis.get(keys.batch_result(batch_id))


async def _until(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.02)):
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_a_job_completes_in_order_with_every_sentence(
    redis_url: str, key_prefix: str
) -> None:
    text = numbered_text(30)
    async with _stack(redis_url, key_prefix, batch_window=5) as (pipeline, redis, batches):
        batch_id = await _new_job(batches, text)
        assert await _coordinator(pipeline, redis, batch_id).run() == "done"
        keys = Keys(key_prefix)
        state = await batches.get(batch_id)
        assert state is not None and state.status is BatchStatus.DONE
        assert state.total == state.done == 30 and state.result == IN_REDIS
        audio = await _result(redis, keys, batch_id)
        assert audio == await tone_pcm(text)
        assert state.bytes == len(audio) and state.duration == pytest.approx(len(audio) / 2 / RATE)
        # Working keys are gone; the job's streams hold nothing of it.
        assert not await redis.exists(
            *Batches(redis, keys, result_ttl=1, timeout=1).working_keys(batch_id)
        )
        shard = keys.shard_of(batch_session(batch_id))
        assert await redis.xlen(shard.batch) == 0
        assert (await redis.xpending(shard.batch, JOBS_GROUP))["pending"] == 0
        assert 0 < await redis.ttl(keys.batch(batch_id)) <= pipeline.settings.batch_result_ttl
        assert pipeline.total("completed") == 30  # each sentence made once


async def test_the_window_bounds_what_is_queued(redis_url: str, key_prefix: str) -> None:
    async with _stack(redis_url, key_prefix, batch_window=3) as (pipeline, redis, batches):
        await pipeline.stop_workers()  # nothing is taken: the window alone decides
        batch_id = await _new_job(batches, numbered_text(10))
        task = asyncio.create_task(_coordinator(pipeline, redis, batch_id).run())
        keys = Keys(key_prefix)
        shard = keys.shard_of(batch_session(batch_id))

        async def queued() -> bool:
            return await redis.xlen(shard.batch) == 3

        await _until(queued)
        await asyncio.sleep(0.3)
        assert await redis.xlen(shard.batch) == 3
        assert await redis.hlen(keys.batch_queued(batch_id)) == 3
        await stop(task)


async def test_a_dead_coordinators_job_resumes_without_duplicates(
    redis_url: str, key_prefix: str
) -> None:
    text = numbered_text(24)
    slow = {"engine_options": {"rtf": "0.1"}}  # 2 of 4 slots take batch work: ~2.5 s in all
    async with _stack(redis_url, key_prefix, batch_window=4, **slow) as (pipeline, redis, batches):
        keys = Keys(key_prefix)
        batch_id = await _new_job(batches, text)
        first = asyncio.create_task(_coordinator(pipeline, redis, batch_id).run())

        async def halfway() -> bool:
            return await redis.hlen(keys.batch_audio(batch_id)) >= 8

        await _until(halfway)
        await stop(first)  # the arq process died: nothing of it runs any more
        assert await batches.status(batch_id) is BatchStatus.RUNNING
        assert await _coordinator(pipeline, redis, batch_id).run() == "done"
        assert await _result(redis, keys, batch_id) == await tone_pcm(text)


async def test_a_lost_sentence_is_queued_again(redis_url: str, key_prefix: str) -> None:
    text = numbered_text(6)
    async with _stack(redis_url, key_prefix, batch_window=6, claim_idle=0.5) as (
        pipeline,
        redis,
        batches,
    ):
        await pipeline.stop_workers()
        keys = Keys(key_prefix)
        batch_id = await _new_job(batches, text)
        task = asyncio.create_task(_coordinator(pipeline, redis, batch_id).run())
        shard = keys.shard_of(batch_session(batch_id))

        async def queued() -> bool:
            # The entries go in, then their ids are written down: wait for both.
            recorded = await redis.hlen(keys.batch_queued(batch_id))
            return await redis.xlen(shard.batch) == 6 and recorded == 6

        await _until(queued)
        lost = await redis.hget(keys.batch_queued(batch_id), "2")
        await redis.xdel(shard.batch, lost)  # dropped without audio (trimmed, say)
        async with start_pipeline(redis_url, key_prefix, concurrency=4):
            assert await asyncio.wait_for(task, 30) == "done"
        assert await _result(redis, keys, batch_id) == await tone_pcm(text)


async def test_cancel_stops_the_jobs_sentences(redis_url: str, key_prefix: str) -> None:
    settings_rtf = {"engine_options": {"rtf": "1.0"}}
    async with _stack(redis_url, key_prefix, batch_window=4, **settings_rtf) as (
        pipeline,
        redis,
        batches,
    ):
        keys = Keys(key_prefix)
        batch_id = await _new_job(batches, numbered_text(40))
        task = asyncio.create_task(_coordinator(pipeline, redis, batch_id).run())

        async def started() -> bool:
            return await redis.hlen(keys.batch_audio(batch_id)) >= 2

        await _until(started)
        # What DELETE /v1/audio/speech/jobs/{id} does.
        queue = JobQueue(redis, keys, maxlen=0, session_ttl=60)
        await queue.cancel(batch_session(batch_id))
        assert await batches.finish(batch_id, BatchStatus.CANCELLED, error="cancelled")
        async with redis.pipeline(transaction=False) as pipe:
            wake_in(pipe, keys, batch_id)
            await pipe.execute()
        assert await asyncio.wait_for(task, 10) == "cancelled"
        shard = keys.shard_of(batch_session(batch_id))
        completed = pipeline.total("completed")
        await asyncio.sleep(1.0)
        assert pipeline.total("completed") == completed  # nothing more of it is made
        assert await redis.xlen(shard.batch) == 0
        assert not await redis.exists(keys.batch_audio(batch_id))
        assert completed < 40
        state = await batches.get(batch_id)
        assert state is not None and state.status is BatchStatus.CANCELLED


async def test_a_failed_sentence_fails_the_job(redis_url: str, key_prefix: str) -> None:
    text = "This one is fine. This one says KABOOM and fails. This one is fine too."
    async with _stack(redis_url, key_prefix, engine_options={"fail_on": "KABOOM"}) as (
        pipeline,
        redis,
        batches,
    ):
        batch_id = await _new_job(batches, text)
        assert await _coordinator(pipeline, redis, batch_id).run() == "failed"
        state = await batches.get(batch_id)
        assert state is not None and state.status is BatchStatus.FAILED
        assert state.error.startswith("sentence 1:") and "KABOOM" in state.error


async def test_a_large_file_goes_to_the_directory(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    text = numbered_text(5)
    async with _stack(
        redis_url, key_prefix, batch_inline_max_bytes=1000, batch_dir=str(tmp_path)
    ) as (pipeline, redis, batches):
        batch_id = await _new_job(batches, text, fmt="wav")
        assert await _coordinator(pipeline, redis, batch_id).run() == "done"
        state = await batches.get(batch_id)
        assert state is not None and state.result == str(tmp_path / f"{batch_id}.wav")
        data = Path(state.result).read_bytes()
        assert data[:4] == b"RIFF" and len(data) == state.bytes
        assert data[44:] == await tone_pcm(text)
        assert not await redis.exists(Keys(key_prefix).batch_result(batch_id))


async def test_a_large_file_without_a_directory_fails_saying_so(
    redis_url: str, key_prefix: str
) -> None:
    async with _stack(redis_url, key_prefix, batch_inline_max_bytes=1000) as (
        pipeline,
        redis,
        batches,
    ):
        batch_id = await _new_job(batches, numbered_text(3))
        assert await _coordinator(pipeline, redis, batch_id).run() == "failed"
        state = await batches.get(batch_id)
        assert state is not None and "VOXLINE_BATCH_DIR" in state.error


Callback = tuple[str, list[dict], list[str]]


@pytest.fixture
def callback_server() -> Iterator[Callback]:
    """A receiver on 127.0.0.1: its URL, the bodies and the paths (with the query) it got; a
    path holding `fail=1` is answered 500."""
    received: list[dict] = []
    paths: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            paths.append(self.path)
            status = 500 if "fail=1" in self.path else 204
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received, paths
    server.shutdown()
    server.server_close()


LOCAL = "127.0.0.1/32"  # callbacks to loopback are refused unless allowed


async def test_the_callback_gets_the_final_state(
    redis_url: str, key_prefix: str, callback_server: Callback
) -> None:
    url, received, _ = callback_server
    async with _stack(redis_url, key_prefix, callback_allow=LOCAL) as (pipeline, redis, batches):
        batch_id = await _new_job(batches, numbered_text(3), fmt="mp3", callback=url)
        assert await _coordinator(pipeline, redis, batch_id).run() == "done"
        assert len(received) == 1
        body = received[0]
        assert body["id"] == batch_id and body["status"] == "done"
        assert body["progress"] == {"sentences_done": 3, "sentences_total": 3}
        assert body["audio_bytes"] > 0
        state = await batches.get(batch_id)
        assert state is not None and not state.callback_error


@contextlib.asynccontextmanager
async def _bare(
    redis_url: str, key_prefix: str, **overrides: object
) -> AsyncIterator[tuple[Settings, Client, Batches]]:
    """No workers: a job whose text has nothing to speak fails at once, and calls back."""
    settings = Settings(redis_url=redis_url, key_prefix=key_prefix).replace(**overrides)
    redis = connect(redis_url)
    batches = Batches(redis, Keys(key_prefix), result_ttl=60, timeout=60)
    try:
        yield settings, redis, batches
    finally:
        await redis.aclose()


async def _fail_calling_back(settings: Settings, redis: Client, batches: Batches, url: str) -> str:
    batch_id = await _new_job(batches, " ... ", callback=url)
    coordinator = Coordinator(redis, Keys(settings.key_prefix), settings, batch_id)
    assert await coordinator.run() == "failed"
    return batch_id


async def test_a_callback_to_loopback_is_refused_unless_allowed(
    redis_url: str, key_prefix: str, callback_server: Callback
) -> None:
    url, received, _ = callback_server
    async with _bare(redis_url, key_prefix) as (settings, redis, batches):
        batch_id = await _fail_calling_back(settings, redis, batches, url)
        state = await batches.get(batch_id)
        assert state is not None and state.callback_error == "delivery failed (address not allowed)"
        assert received == []
        allowed = settings.replace(callback_allow=LOCAL)
        batch_id = await _fail_calling_back(allowed, redis, batches, url)
        state = await batches.get(batch_id)
        assert state is not None and not state.callback_error
        assert [body["id"] for body in received] == [batch_id]


async def test_an_unreachable_callback_says_only_that(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coordinator_module, "_CALLBACK_BACKOFF", 0.0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # nothing listens there once closed
    async with _bare(redis_url, key_prefix, callback_allow=LOCAL) as (settings, redis, batches):
        url = f"http://127.0.0.1:{closed}/hook"
        batch_id = await _fail_calling_back(settings, redis, batches, url)
        state = await batches.get(batch_id)
        assert state is not None and state.callback_error == "delivery failed (unreachable)"
        assert state.public()["callback_error"] == "delivery failed (unreachable)"


async def test_callback_credentials_are_redacted_in_logs_and_status(
    redis_url: str,
    key_prefix: str,
    callback_server: Callback,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(coordinator_module, "_CALLBACK_BACKOFF", 0.0)
    url, received, paths = callback_server
    secret = url.replace("http://", "http://bob:hunter2@") + "?token=s3cret&fail=1"
    shown = redact_url(secret)
    assert "hunter2" not in shown and "s3cret" not in shown
    caplog.set_level(logging.INFO, logger="voxline.batch")
    async with _bare(redis_url, key_prefix, callback_allow=LOCAL) as (settings, redis, batches):
        batch_id = await _new_job(batches, " ... ", callback=secret)
        # As the front end stores it (api/batch.py).
        keys = Keys(key_prefix)
        await redis.hset(keys.batch(batch_id), "callback_redacted", shown)
        coordinator = Coordinator(redis, keys, settings, batch_id)
        assert await coordinator.run() == "failed"
        state = await batches.get(batch_id)
        assert state is not None
        status = state.public()
        assert status["callback_error"] == "delivery failed (status 500)"
        assert status["callback_url"] == shown
        # The receiver got the real URL (three tries of a 500), the job's JSON without it.
        assert paths == ["/hook?token=s3cret&fail=1"] * 3
        assert all(body["callback_url"] == shown for body in received)
        # Once the job ended, Redis no longer holds the real URL.
        stored = await redis.hgetall(keys.batch(batch_id))
        assert not any(b"hunter2" in v or b"s3cret" in v for v in stored.values())
    logged = [r.getMessage() for r in caplog.records if batch_id in r.getMessage()]
    assert any(shown in line and "status 500" in line for line in logged), logged
    assert not any("hunter2" in line or "s3cret" in line for line in caplog.messages)


async def test_the_arq_worker_runs_a_job_once_however_often_enqueued(
    redis_url: str, key_prefix: str
) -> None:
    text = numbered_text(8)
    async with _stack(redis_url, key_prefix) as (pipeline, redis, batches):
        keys = Keys(key_prefix)
        batch_id = await _new_job(batches, text, fmt="wav")
        pool = arq_pool(pipeline.settings)
        try:
            assert await enqueue_batch(pool, keys.arq_queue, batch_id) is not None
            assert await enqueue_batch(pool, keys.arq_queue, batch_id) is None  # one job per id
        finally:
            await pool.aclose()
        worker = make_worker(pipeline.settings, poll_delay=0.05)
        task = asyncio.create_task(worker.main())
        try:

            async def done() -> bool:
                # The status, and arq's end of the job (arq forgets a job's task once done).
                if await batches.status(batch_id) is not BatchStatus.DONE:
                    return False
                job = worker.tasks.get(arq_job_id(batch_id))
                return job is None or job.done()

            await _until(done, 30)
        finally:
            await stop(task)
            await worker.close()
        audio = await _result(redis, keys, batch_id)
        assert audio[44:] == await tone_pcm(text)
