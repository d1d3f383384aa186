"""`/v1/audio/speech/jobs`: the batch routes against a real front end and workers, on both
backends. No arq process runs here, so a job stays queued unless a test writes its state (the
runs through arq are tests/batch/)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from arq.constants import job_key_prefix

from tests.harness import Pipeline, start_pipeline
from voxline.api.auth import hash_key
from voxline.batch.connections import arq_job_id
from voxline.batch.results import IN_REDIS, Results
from voxline.shared.batches import Batches, BatchRequest, BatchStatus, new_batch_id
from voxline.shared.connections import Client, connect, is_memory
from voxline.shared.keys import SESSION_CANCELLED, Keys, batch_session

JOBS = "/v1/audio/speech/jobs"
TEXT = "Hello there. This is a batch."
LONG_URL = "https://example.com/" + "x" * 2030  # over 2048 characters
FILE = b"ID3 not really an mp3, but bytes to hand back exactly" * 40


@pytest.fixture
def arq_jobs(redis_url: str) -> Iterator[list[str]]:
    """Batch ids a test queued: arq names its job keys itself (`arq:job:<id>`, outside the
    test's prefix), so they are deleted here."""
    ids: list[str] = []
    yield ids
    if ids and not is_memory(redis_url):
        client = redis.Redis.from_url(redis_url)
        client.delete(*(job_key_prefix + arq_job_id(i) for i in ids))
        client.close()


@contextlib.asynccontextmanager
async def _stack(
    redis_url: str, key_prefix: str, **overrides: Any
) -> AsyncIterator[tuple[Pipeline, httpx.AsyncClient, Client, Keys]]:
    async with start_pipeline(redis_url, key_prefix, **overrides) as p:
        client = connect(redis_url)
        try:
            async with httpx.AsyncClient(base_url=p.http, timeout=30) as http:
                yield p, http, client, Keys(key_prefix)
        finally:
            await client.aclose()


async def _post(http: httpx.AsyncClient, ids: list[str], **body: Any) -> httpx.Response:
    reply = await http.post(JOBS, json=body)
    if reply.status_code == 202:
        ids.append(reply.json()["id"])
    return reply


def _error(reply: httpx.Response) -> dict[str, Any]:
    return reply.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"input": TEXT, "model": "tts-1"}, 422, "invalid_value", "model"),
        ({"input": ""}, 422, "invalid_value", "input"),
        ({"input": "x" * 51}, 413, "text_too_large", "input"),
        ({"input": TEXT, "response_format": "ogg"}, 422, "invalid_value", "response_format"),
        ({"input": TEXT, "speed": 9}, 422, "invalid_value", "speed"),
        (
            {"input": TEXT, "response_format": "opus", "sample_rate": 44100},
            400,
            "invalid_config",
            "sample_rate",
        ),
        ({"input": TEXT, "voice": "nobody"}, 400, "invalid_config", "voice"),
        ({"input": TEXT, "language": "Klingon"}, 400, "invalid_config", "language"),
        ({"input": TEXT, "callback_url": "ftp://example.com/x"}, 422, "invalid_value", None),
        ({"input": TEXT, "callback_url": "http://"}, 422, "invalid_value", None),
        ({"input": TEXT, "callback_url": "file:///etc/passwd"}, 422, "invalid_value", None),
        ({"input": TEXT, "callback_url": "gopher://127.0.0.1:6379/"}, 422, "invalid_value", None),
        ({"input": TEXT, "callback_url": "javascript:alert(1)"}, 422, "invalid_value", None),
        ({"input": TEXT, "callback_url": "http://example.com:99999/"}, 400, "invalid_value", None),
        ({"input": TEXT, "callback_url": "http://example.com:0/"}, 400, "invalid_value", None),
        ({"input": TEXT, "callback_url": "http://:80/x"}, 400, "invalid_value", None),
        ({"input": TEXT, "callback_url": "http://[::1/x"}, 400, "invalid_value", None),
        (
            {"input": TEXT, "callback_url": LONG_URL},
            422,
            "invalid_value",
            None,
        ),
        ({"input": TEXT, "input2": 1}, 422, "invalid_value", "input2"),
    ],
)
async def test_invalid_jobs_are_refused_naming_the_field(
    redis_url: str,
    key_prefix: str,
    arq_jobs: list[str],
    body: dict[str, Any],
    status: int,
    code: str,
    param: str | None,
) -> None:
    async with _stack(redis_url, key_prefix, batch_max_chars=50) as (_, http, client, keys):
        reply = await _post(http, arq_jobs, **body)
        assert reply.status_code == status, reply.text
        error = _error(reply)
        assert error["code"] == code
        assert error["param"] == (param or "callback_url"), error
        assert not await client.exists(keys.arq_queue), "nothing was queued"


async def test_bodies_that_are_no_json_object(redis_url: str, key_prefix: str) -> None:
    async with _stack(redis_url, key_prefix, batch_max_chars=50) as (_, http, _c, _k):
        for raw in (b"{not json", b'["input"]'):
            reply = await http.post(JOBS, content=raw)
            assert reply.status_code == 400 and _error(reply)["code"] == "invalid_json"
        # JSON can spell a lone surrogate, which is no text (Redis could not store it).
        reply = await http.post(JOBS, content=b'{"input": "Hi \\ud800."}')
        assert reply.status_code == 422 and _error(reply)["param"] == "input"
        # Over the body limit for 50 characters: refused before it is read whole.
        reply = await http.post(JOBS, content=b" " * 400_000)
        assert reply.status_code == 413 and _error(reply)["code"] == "text_too_large"


async def test_no_worker_is_503(redis_url: str, key_prefix: str, arq_jobs: list[str]) -> None:
    async with _stack(redis_url, key_prefix, workers=0) as (_, http, _c, _k):
        reply = await _post(http, arq_jobs, input=TEXT)
    assert reply.status_code == 503 and _error(reply)["code"] == "no_worker"
    assert reply.headers["retry-after"]


async def test_a_busy_pool_still_takes_batch_jobs(
    redis_url: str, key_prefix: str, arq_jobs: list[str]
) -> None:
    # As tests/api/test_speech.py makes the pool busy: any backlog is over 0 per slot.
    async with _stack(
        redis_url, key_prefix, engine_options={"rtf": "1.0"}, max_backlog_per_slot=0
    ) as (_, http, _c, _k):
        long = " ".join(f"Sentence number {i}." for i in range(10))
        async with http.stream("POST", "/v1/audio/speech", json={"input": long}) as first:
            assert first.status_code == 200
            chunks = first.aiter_bytes()  # kept: a dropped iterator closes the response
            await anext(chunks)  # the backlog is queued now
            await asyncio.sleep(0.3)  # past the front end's cache of the load
            spoken = await http.post("/v1/audio/speech", json={"input": TEXT})
            queued = await _post(http, arq_jobs, input=TEXT)
    assert spoken.status_code == 429
    assert queued.status_code == 202, queued.text


async def test_a_job_is_stored_queued_on_arq_and_readable(
    redis_url: str, key_prefix: str, arq_jobs: list[str]
) -> None:
    async with _stack(redis_url, key_prefix) as (_, http, client, keys):
        reply = await _post(
            http,
            arq_jobs,
            input=TEXT,
            response_format="opus",
            speed=1.5,
            callback_url="https://example.com/done?x=1",
        )
        assert reply.status_code == 202, reply.text
        job = reply.json()
        batch_id = job["id"]
        assert reply.headers["location"] == f"{JOBS}/{batch_id}"
        assert job["status"] == "queued" and job["object"] == "speech.job"
        assert job["progress"] == {"sentences_done": 0, "sentences_total": 0}
        # Resolved against the pool: the engine's default voice, Opus' rate for 24 kHz.
        assert (job["voice"], job["response_format"], job["sample_rate"]) == (
            "tone-mid",
            "opus",
            24000,
        )
        stored = await client.hgetall(keys.batch(batch_id))
        assert stored[b"status"] == b"queued" and stored[b"text"] == TEXT.encode()
        assert stored[b"speed"] == b"1.5"
        assert stored[b"callback_url"] == b"https://example.com/done?x=1"
        assert job["callback_url"] == "https://example.com/done?x=1"
        assert 0 < await client.ttl(keys.batch(batch_id))
        assert await client.zscore(keys.arq_queue, arq_job_id(batch_id)) is not None

        got = await http.get(reply.headers["location"])
        assert got.status_code == 200 and got.json() == job


@pytest.mark.parametrize("batch_id", ["0" * 24, "nonesuch", "A" * 24, "0" * 25, "0" * 24 + "%0A"])
async def test_unknown_jobs_are_404(redis_url: str, key_prefix: str, batch_id: str) -> None:
    async with _stack(redis_url, key_prefix) as (_, http, _c, _k):
        for reply in (
            await http.get(f"{JOBS}/{batch_id}"),
            await http.get(f"{JOBS}/{batch_id}/audio"),
            await http.delete(f"{JOBS}/{batch_id}"),
        ):
            assert reply.status_code == 404
            assert _error(reply)["code"] == "job_not_found"


async def test_cancelling_a_queued_job(
    redis_url: str, key_prefix: str, arq_jobs: list[str]
) -> None:
    async with _stack(redis_url, key_prefix) as (_, http, client, keys):
        batch_id = (await _post(http, arq_jobs, input=TEXT)).json()["id"]
        early = await http.get(f"{JOBS}/{batch_id}/audio")
        assert early.status_code == 409
        assert _error(early)["code"] == "job_not_finished" and "queued" in _error(early)["message"]

        reply = await http.delete(f"{JOBS}/{batch_id}")
        assert reply.status_code == 200, reply.text
        job = reply.json()
        assert job["status"] == "cancelled" and job["error"] == "cancelled by the client"
        assert job["finished_at"] >= job["created_at"]
        assert await client.hget(keys.batch(batch_id), "status") == b"cancelled"
        # Workers skip the job's sentences and stop its in-flight ones ...
        cancelled = keys.cancelled(batch_session(batch_id))
        assert await client.smembers(cancelled) == {SESSION_CANCELLED.encode()}
        # ... and its coordinator, if any, is woken (the stream expires if none is left).
        events = keys.batch_events(batch_id)
        assert await client.xlen(events) == 1 and await client.ttl(events) > 0

        again = await http.delete(f"{JOBS}/{batch_id}")
        assert again.status_code == 200 and again.json() == job, "idempotent"
        gone = await http.get(f"{JOBS}/{batch_id}/audio")
        assert gone.status_code == 410 and _error(gone)["code"] == "job_cancelled"


async def test_a_failed_job_tells_why(redis_url: str, key_prefix: str) -> None:
    async with _stack(redis_url, key_prefix) as (p, http, client, keys):
        batches = _batches(client, keys, p)
        batch_id = await _made(batches)
        await batches.finish(batch_id, BatchStatus.FAILED, error="sentence 3: engine exploded")
        reply = await http.get(f"{JOBS}/{batch_id}/audio")
        assert reply.status_code == 410 and _error(reply)["code"] == "job_failed"
        assert "engine exploded" in _error(reply)["message"]
        kept = await http.delete(f"{JOBS}/{batch_id}")
        assert kept.status_code == 200 and kept.json()["status"] == "failed"


def _batches(client: Client, keys: Keys, p: Pipeline) -> Batches:
    s = p.settings
    return Batches(client, keys, result_ttl=s.batch_result_ttl, timeout=s.batch_timeout)


async def _made(batches: Batches, fmt: str = "mp3", rate: int = 24000) -> str:
    """A job as the front end stores it (no arq job: nobody runs it)."""
    batch_id = new_batch_id()
    await batches.create(batch_id, BatchRequest(TEXT, "tone-mid", fmt, rate))
    return batch_id


async def _done(p: Pipeline, client: Client, keys: Keys, fmt: str, rate: int) -> tuple[str, str]:
    """A finished job whose file is FILE, stored as the coordinator stores it."""
    batches = _batches(client, keys, p)
    batch_id = await _made(batches, fmt, rate)
    where = await Results(client, keys, p.settings).store(batch_id, fmt, FILE)
    await batches.finish(
        batch_id, BatchStatus.DONE, result=where, bytes=len(FILE), duration=1.25, total=2, done=2
    )
    return batch_id, where


@pytest.mark.parametrize(
    ("fmt", "rate", "media", "extension"),
    [
        ("mp3", 24000, "audio/mpeg", "mp3"),
        ("opus", 48000, "audio/ogg", "ogg"),
        ("mulaw", 8000, "audio/basic", "ulaw"),
    ],
)
@pytest.mark.parametrize("stored", ["redis", "file"])
async def test_a_finished_file_is_streamed_as_stored(
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
    stored: str,
    fmt: str,
    rate: int,
    media: str,
    extension: str,
) -> None:
    inline = len(FILE) if stored == "redis" else 100
    async with _stack(
        redis_url, key_prefix, batch_dir=str(tmp_path), batch_inline_max_bytes=inline
    ) as (p, http, client, keys):
        batch_id, where = await _done(p, client, keys, fmt, rate)
        assert (where == IN_REDIS) == (stored == "redis")
        job = (await http.get(f"{JOBS}/{batch_id}")).json()
        assert job["status"] == "done" and job["audio_bytes"] == len(FILE)
        assert job["duration"] == 1.25 and job["progress"]["sentences_done"] == 2
        reply = await http.get(f"{JOBS}/{batch_id}/audio")
    assert reply.status_code == 200, reply.text
    assert reply.content == FILE
    assert reply.headers["content-type"].startswith(media)
    assert reply.headers["content-length"] == str(len(FILE))
    assert reply.headers["x-sample-rate"] == str(rate)
    disposition = f'attachment; filename="{batch_id}.{extension}"'
    assert reply.headers["content-disposition"] == disposition


@pytest.mark.parametrize("stored", ["redis", "file"])
async def test_an_expired_file_is_410(
    redis_url: str, key_prefix: str, tmp_path: Path, stored: str
) -> None:
    inline = len(FILE) if stored == "redis" else 0
    async with _stack(
        redis_url, key_prefix, batch_dir=str(tmp_path), batch_inline_max_bytes=inline
    ) as (p, http, client, keys):
        batch_id, where = await _done(p, client, keys, "mp3", 24000)
        if where == IN_REDIS:
            await client.delete(keys.batch_result(batch_id))
        else:
            Path(where).unlink()
        reply = await http.get(f"{JOBS}/{batch_id}/audio")
    assert reply.status_code == 410 and _error(reply)["code"] == "result_expired"


@pytest.mark.parametrize("stored", ["redis", "file"])
async def test_deleting_a_finished_job_deletes_its_file_and_record(
    redis_url: str, key_prefix: str, tmp_path: Path, stored: str
) -> None:
    inline = len(FILE) if stored == "redis" else 0
    async with _stack(
        redis_url, key_prefix, batch_dir=str(tmp_path), batch_inline_max_bytes=inline
    ) as (p, http, client, keys):
        batch_id, where = await _done(p, client, keys, "mp3", 24000)
        reply = await http.delete(f"{JOBS}/{batch_id}")
        assert reply.status_code == 200 and reply.json() == {"id": batch_id, "deleted": True}
        assert not await client.exists(keys.batch(batch_id), keys.batch_result(batch_id))
        assert where == IN_REDIS or not Path(where).exists()
        assert (await http.get(f"{JOBS}/{batch_id}")).status_code == 404
        assert (await http.delete(f"{JOBS}/{batch_id}")).status_code == 404


async def test_the_routes_need_a_key_when_keys_are_on(
    redis_url: str, key_prefix: str, arq_jobs: list[str]
) -> None:
    key = "vx_batch-test-key"
    async with _stack(redis_url, key_prefix, api_keys=hash_key(key)) as (_, http, _c, _k):
        for reply in (
            await http.post(JOBS, json={"input": TEXT}),
            await http.get(f"{JOBS}/{'0' * 24}"),
            await http.get(f"{JOBS}/{'0' * 24}/audio"),
            await http.delete(f"{JOBS}/{'0' * 24}"),
        ):
            assert reply.status_code == 401, reply.request.url
        auth = {"Authorization": f"Bearer {key}"}
        reply = await http.post(JOBS, json={"input": TEXT}, headers=auth)
        assert reply.status_code == 202, reply.text
        arq_jobs.append(reply.json()["id"])
        assert (await http.get(reply.headers["location"], headers=auth)).status_code == 200


async def test_callback_credentials_are_redacted_in_the_jobs_status(
    redis_url: str, key_prefix: str, arq_jobs: list[str]
) -> None:
    url = "https://bob:hunter2@hooks.example.com/done?token=s3cret&api_key=k3y&x=1"
    shown = "https://redacted@hooks.example.com/done?token=redacted&api_key=redacted&x=1"
    async with _stack(redis_url, key_prefix) as (_, http, client, keys):
        reply = await _post(http, arq_jobs, input=TEXT, callback_url=url)
        assert reply.status_code == 202, reply.text
        got = await http.get(reply.headers["location"])
        for answer in (reply, got):
            assert answer.json()["callback_url"] == shown
            assert not any(s in answer.text for s in ("hunter2", "s3cret", "k3y"))
        # The real one is kept for the delivery only, until the job ends.
        batch_id = reply.json()["id"]
        assert await client.hget(keys.batch(batch_id), "callback_url") == url.encode()
        cancelled = await http.delete(f"{JOBS}/{batch_id}")
        assert cancelled.json()["callback_url"] == shown
        assert not await client.hexists(keys.batch(batch_id), "callback_url")


ALICE, BOB = "vx_alice-batch-key", "vx_bob-batch-key"
TWO_KEYS = f"alice={hash_key(ALICE)},bob={hash_key(BOB)}"


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _routes(http: httpx.AsyncClient, batch_id: str, key: str) -> list[httpx.Response]:
    """Every route of one job, in an order that changes nothing before the last."""
    return [
        await http.get(f"{JOBS}/{batch_id}", headers=_as(key)),
        await http.get(f"{JOBS}/{batch_id}/audio", headers=_as(key)),
        await http.delete(f"{JOBS}/{batch_id}", headers=_as(key)),
    ]


async def test_a_job_is_another_keys_missing_job(
    redis_url: str, key_prefix: str, arq_jobs: list[str], tmp_path: Path
) -> None:
    async with _stack(redis_url, key_prefix, api_keys=TWO_KEYS) as (p, http, client, keys):
        queued = await http.post(JOBS, json={"input": TEXT}, headers=_as(ALICE))
        assert queued.status_code == 202, queued.text
        queued_id = queued.json()["id"]
        arq_jobs.append(queued_id)
        assert await client.hget(keys.batch(queued_id), "owner") == b"alice"
        # A finished one too (its file is there), as the coordinator leaves it.
        batches = _batches(client, keys, p)
        done_id = new_batch_id()
        await batches.create(done_id, BatchRequest(TEXT, "tone-mid", "mp3", 24000, owner="alice"))
        where = await Results(client, keys, p.settings).store(done_id, "mp3", FILE)
        await batches.finish(done_id, BatchStatus.DONE, result=where, bytes=len(FILE), done=1)

        missing = "0" * 24
        for batch_id in (queued_id, done_id):
            theirs = await _routes(http, batch_id, BOB)
            nowhere = await _routes(http, missing, BOB)
            for reply, unknown in zip(theirs, nowhere, strict=True):
                assert reply.status_code == 404, (reply.request.method, reply.request.url)
                # The very answer a missing job gets (but for the id it names).
                assert reply.json() == json_with(unknown.json(), missing, batch_id)
        # Bob's DELETE neither cancelled nor deleted anything: Alice's jobs are as they were.
        assert (await http.get(f"{JOBS}/{queued_id}", headers=_as(ALICE))).json()[
            "status"
        ] == "queued"
        audio = await http.get(f"{JOBS}/{done_id}/audio", headers=_as(ALICE))
        assert audio.status_code == 200 and audio.content == FILE
        assert [r.status_code for r in await _routes(http, queued_id, ALICE)] == [200, 409, 200]


def json_with(body: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    error = dict(body["error"])
    error["message"] = error["message"].replace(old, new)
    return {"error": error}


async def test_with_keys_off_any_caller_sees_any_job(
    redis_url: str, key_prefix: str, arq_jobs: list[str]
) -> None:
    async with _stack(redis_url, key_prefix) as (p, http, client, keys):
        # A job stored by a front end that had keys on: with them off, it is anyone's.
        batch_id = new_batch_id()
        await _batches(client, keys, p).create(
            batch_id, BatchRequest(TEXT, "tone-mid", "mp3", 24000, owner="alice")
        )
        assert (await http.get(f"{JOBS}/{batch_id}")).status_code == 200
        reply = await _post(http, arq_jobs, input=TEXT)
        assert await client.hget(keys.batch(reply.json()["id"]), "owner") == b""
        assert (await http.get(reply.headers["location"])).status_code == 200


async def test_without_arq_the_batch_routes_are_503_and_speech_works(
    redis_url: str, key_prefix: str
) -> None:
    # arq cannot use a Cluster; the real-time path is not affected.
    cluster = "redis+cluster://127.0.0.1:7000"
    async with _stack(redis_url, key_prefix, arq_redis_url=cluster) as (_, http, _c, _k):
        for reply in (
            await http.post(JOBS, json={"input": TEXT}),
            await http.get(f"{JOBS}/{'0' * 24}"),
        ):
            assert reply.status_code == 503
            assert _error(reply)["code"] == "batch_unavailable"
            assert "VOXLINE_ARQ_REDIS_URL" in _error(reply)["message"]
        spoken = await http.post("/v1/audio/speech", json={"input": TEXT, "response_format": "pcm"})
    assert spoken.status_code == 200 and spoken.content


async def test_a_job_arq_cannot_take_fails_at_once(redis_url: str, key_prefix: str) -> None:
    # arq's own Redis is down (nothing listens on port 1): the job is not left queued.
    async with _stack(redis_url, key_prefix, arq_redis_url="redis://127.0.0.1:1/0") as (
        _,
        http,
        client,
        keys,
    ):
        reply = await http.post(JOBS, json={"input": TEXT})
        assert reply.status_code == 503 and _error(reply)["code"] == "unavailable"
        (key,) = [k async for k in client.scan_iter(match=keys.batch("*"))]
        assert await client.hget(key, "status") == b"failed"
        assert (await client.hget(key, "error")).startswith(b"could not queue the job")
