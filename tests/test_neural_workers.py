"""`voxline worker --engine pocket-tts --model DIR` and `--engine vits --model DIR` as real
processes beside `voxline api` on Redis, serving a session end to end from local checkpoints."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import real_redis_or_fail
from tests.harness import Client
from tests.processes import voxline_stack
from tests.worker.vits_checkpoint import build_checkpoint as build_vits
from voxline.worker.engines.pocket.checkpoint import build_checkpoint as build_pocket

pytestmark = pytest.mark.multiprocess


class Stack:
    def __init__(self, url: str) -> None:
        self.url = url
        self.ws_url = url + "/v1/audio/speech/stream"


@pytest.fixture(params=["pocket-tts", "vits"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    real_redis_or_fail()
    engine = request.param
    model = tmp_path / "model"
    if engine == "pocket-tts":
        build_pocket(model, size="tiny", eos_bias=-3.0)
    else:
        build_vits(model)
    prefix = f"vxnn-{uuid.uuid4().hex[:8]}"
    with voxline_stack(
        prefix, [["--engine", engine, "--model", str(model)]], ready_within=60
    ) as url:
        yield Stack(url)


async def test_a_session_is_served_from_a_local_checkpoint(stack: Stack) -> None:
    texts = ["Hello there.", "This is a neural voice.", "Goodbye now."]
    async with Client.connect(stack, {"response_format": "wav"}) as c:
        ready = c.received[0]
        for text in texts:
            await c.send("input.text", text=text + " ")
        await c.send("input.done")
        sentences, done = await c.utterance(timeout=60)
    assert ready["engine"] in ("pocket-tts", "vits")
    assert done["total_sentences"] == 3
    assert [s.start["sentence_text"] for s in sentences] == texts
    for s in sentences:
        assert not s.errors and s.done["error"] is False
        assert s.audio[:4] == b"RIFF" and s.done["total_bytes"] == len(s.audio) > 44
