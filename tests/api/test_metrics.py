"""GET /metrics through a real pipeline: what sessions, sentences and cancels add up to.

The metrics are process-wide (other tests add to them too): every check is a delta between two
scrapes.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Client, Pipeline, start_pipeline
from voxline.api.auth import hash_key
from voxline.api.metrics import refresh_backlog
from voxline.shared import metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(p: Pipeline) -> Samples:
    async with httpx.AsyncClient() as http:
        response = await http.get(p.http + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape_until(p: Pipeline, ready: Callable[[Samples], bool]) -> Samples:
    """The worker settles a job (and the server ends a session) a moment after the client has
    seen the last of it."""
    for _ in range(100):
        samples = await scrape(p)
        if ready(samples):
            return samples
        await asyncio.sleep(0.05)
    return samples


def worker_jobs(samples: Samples) -> float:
    return sum(v for (name, _), v in samples.items() if name == "voxline_worker_sentences_total")


async def test_a_session_and_a_barge_in_add_up(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(
        redis_url, key_prefix, engine_options={"rtf": "1.0", "chunk_ms": "50"}
    ) as p:
        before = await scrape(p)
        dones = []
        async with Client.connect(p, {"response_format": "pcm"}) as c:
            await c.send("input.text", text="First one. Second one.")
            await c.send("input.done")
            sentences, _ = await c.utterance()
            assert len(sentences) == 2
            dones += [s.done for s in sentences]
            during = await scrape(p)
        async with Client.connect(p, {"response_format": "pcm", "stream_audio": True}) as c:
            await c.send("input.text", text="A long first sentence here. Two. Three.")
            await c.expect("audio.start")
            assert isinstance(await c.recv(), bytes)
            await c.send("input.cancel")
            cancelled = (await c.until("input.cancelled"))["cancelled_sentences"]
            dones += [m for m in c.received if isinstance(m, dict) and m["type"] == "audio.done"]

        def settled(samples: Samples) -> bool:
            # Both sessions ended, and every job of theirs settled: 2 + the barge-in's 2.
            jobs = worker_jobs(samples) - worker_jobs(before)
            active = get(samples, "voxline_active_sessions")
            return active == get(before, "voxline_active_sessions") and jobs >= 4

        after = await scrape_until(p, settled)

    def delta(name: str, **labels: str) -> float:
        return get(after, name, **labels) - get(before, name, **labels)

    assert cancelled == [0, 1]  # "Three." waits in the splitter: no sentence yet
    heard = [d for d in dones if d.get("first_byte_ms") is not None]
    assert len(heard) == 3  # two delivered, and the cancelled sentence the client heard begin
    assert delta("voxline_first_byte_seconds_count", engine="tone") == 3
    heard_s = sum(d["first_byte_ms"] for d in heard) / 1000
    assert delta("voxline_first_byte_seconds_sum", engine="tone") == pytest.approx(
        heard_s, abs=1e-3
    )
    assert delta("voxline_finish_seconds_count", engine="tone") == 2
    assert delta("voxline_sentences_total", outcome="delivered") == 2
    assert delta("voxline_sentences_total", outcome="failed") == 0
    assert delta("voxline_sentences_total", outcome="cancelled") == 2
    assert delta("voxline_cancellations_total", trigger="barge_in") == 1
    # The second session ended with nothing left to cancel.
    assert delta("voxline_cancellations_total", trigger="disconnect") == 0
    assert get(during, "voxline_active_sessions") == get(before, "voxline_active_sessions") + 1
    assert delta("voxline_active_sessions") == 0
    # Worker side: every job was read and waited in the queue; two were synthesized whole.
    assert delta("voxline_worker_queue_wait_seconds_count", stream="first") == 2
    assert delta("voxline_worker_queue_wait_seconds_count", stream="rest") == 2
    assert delta("voxline_worker_batch_size_count", at="job_start") == 4
    assert delta("voxline_worker_rtf_count", engine="tone") == 2
    assert 0.5 < delta("voxline_worker_rtf_sum", engine="tone") / 2 < 2  # rtf=1.0 engine
    assert delta("voxline_worker_sentences_total", outcome="completed") == 2
    assert delta("voxline_worker_sentences_total", outcome="cancelled") == 1
    assert delta("voxline_worker_sentences_total", outcome="skipped") == 1
    # Acknowledged jobs are deleted: nothing is left in the streams.
    assert get(after, "voxline_queue_backlog") == 0


async def test_metrics_are_public_with_api_keys(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, api_keys=hash_key("secret")) as p:
        async with httpx.AsyncClient() as http:
            assert (await http.get(p.http + "/nonesuch")).status_code == 401  # keys are on
        samples = await scrape(p)
    assert ("voxline_active_sessions", frozenset()) in samples


async def test_backlog_is_nan_when_redis_does_not_answer() -> None:
    async def backlog() -> int:
        raise ConnectionError("Redis is gone")

    hub = SimpleNamespace(queue=SimpleNamespace(backlog=backlog))
    errors = metrics.REDIS_ERRORS.labels("metrics")._value.get()
    await refresh_backlog(hub)  # type: ignore[arg-type]
    assert math.isnan(metrics.QUEUE_BACKLOG._value.get())
    assert metrics.REDIS_ERRORS.labels("metrics")._value.get() == errors + 1
