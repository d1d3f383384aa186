"""shared/logs.py: JSON lines, and the session/sentence context every line in it carries."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.harness import Client, start_pipeline
from voxline.shared import logs


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A private logger writing JSON lines, set up as configure_logging sets up the root."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter())
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("voxline.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_line(lines: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = lines
    logger.info("plain %s", "text\nwith a newline")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed on %r", {"a": 1})
    plain, failed = parsed(stream)
    assert plain["level"] == "INFO" and plain["logger"] == "voxline.test.logs"
    assert plain["message"] == "plain text\nwith a newline"
    assert datetime.fromisoformat(plain["ts"]).utcoffset() == UTC.utcoffset(None)
    assert not {"session_id", "utterance", "sentence", "exc_info"} & plain.keys()
    assert failed["level"] == "ERROR" and failed["message"] == "failed on {'a': 1}"
    assert "ValueError: boom" in failed["exc_info"]


async def test_each_task_carries_its_own_context(
    lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = lines

    async def session(session_id: str, sentence: int) -> None:
        logs.bind_session(session_id)

        async def relay() -> None:  # a task the session starts inherits the session id
            logs.bind_sentence(0, sentence)
            await asyncio.sleep(0)
            logger.info("relaying")

        await asyncio.create_task(relay())
        logger.info("session line")  # the relay's sentence stays in the relay

    await asyncio.gather(session("s1", 4), session("s2", 7))
    logger.info("outside")
    by_message: dict[str, list[dict[str, Any]]] = {}
    for line in parsed(stream):
        by_message.setdefault(line["message"], []).append(line)
    relayed = sorted(
        (d["session_id"], d["utterance"], d["sentence"]) for d in by_message["relaying"]
    )
    assert relayed == [("s1", 0, 4), ("s2", 0, 7)]
    assert sorted(d["session_id"] for d in by_message["session line"]) == ["s1", "s2"]
    assert all("sentence" not in d for d in by_message["session line"])
    assert "session_id" not in by_message["outside"][0]


def test_explicit_fields_win(lines: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = lines

    async def job() -> None:
        logs.bind_job("sid", 1, 2)
        logger.info("bound")
        logger.info("explicit", extra={"sentence": 9})

    asyncio.run(job())
    bound, explicit = parsed(stream)
    assert (bound["session_id"], bound["utterance"], bound["sentence"]) == ("sid", 1, 2)
    assert explicit["sentence"] == 9


def test_configure_logging_routes_the_root_logger(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    level = root.level
    try:
        logs.configure_logging("debug", "json")
        logs.configure_logging("info", "json")  # replaces its own handler, not pytest's
        assert sum(h in logs._installed for h in root.handlers) == 1
        logging.getLogger("uvicorn.error").info("from %s", "uvicorn")
        logging.getLogger("voxline.x").debug("filtered out at info")
        (line,) = capsys.readouterr().err.splitlines()
        assert json.loads(line)["logger"] == "uvicorn.error"
        assert json.loads(line)["message"] == "from uvicorn"
        with pytest.raises(ValueError, match="text, json"):
            logs.configure_logging("info", "xml")
    finally:
        while logs._installed:
            root.removeHandler(logs._installed.pop())
        root.setLevel(level)


async def test_a_session_s_log_lines_name_it(redis_url: str, key_prefix: str) -> None:
    """The relay's warning about a failed sentence carries the session and sentence."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.addFilter(logs.ContextFilter())
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("voxline.speech.session")
    logger.addHandler(handler)
    try:
        async with start_pipeline(redis_url, key_prefix, engine_options={"fail_on": "boom"}) as p:
            async with Client.connect(p) as c:
                await c.send("session.config", response_format="pcm")
                session_id = (await c.expect("session.ready"))["session_id"]
                await c.send("input.text", text="Fine. Then boom.")
                await c.send("input.done")
                await c.utterance()
    finally:
        logger.removeHandler(handler)
    (failed,) = [r for r in records if "failed" in r.getMessage()]
    assert failed.session_id == session_id  # type: ignore[attr-defined]
    assert (failed.utterance, failed.sentence) == (0, 1)  # type: ignore[attr-defined]
