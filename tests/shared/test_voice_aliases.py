"""Voice aliases: the table, the setting's overrides, and EngineInfo's resolution and packing."""

from __future__ import annotations

import logging
import uuid

import msgpack
import pytest

from voxline.api.pool import WorkerPool
from voxline.shared.capabilities import EngineInfo
from voxline.shared.connections import connect
from voxline.shared.embedded_redis import drop_server as drop_memory_server
from voxline.shared.keys import Keys
from voxline.shared.voice_aliases import (
    DEFAULTS,
    OPENAI_VOICES,
    TABLE,
    aliases_for,
    parse_overrides,
    table_for,
)
from voxline.worker.engines.espeak import EspeakEngine
from voxline.worker.engines.tone import VOICES as TONE_VOICES

TONE = EngineInfo(
    name="tone", sample_rate=24000, voices=tuple(TONE_VOICES), default_voice="tone-mid"
)


def test_every_engine_maps_every_openai_voice() -> None:
    for engine in ("espeak", "tone", "vits", "pocket-tts", "other"):
        table = table_for(engine, "its-own")
        assert tuple(table) == OPENAI_VOICES
    assert set(table_for("vits", "speaker-0").values()) == {"speaker-0"}
    assert table_for("espeak", "en")["alloy"] == DEFAULTS["espeak"] == "en-us"
    for engine, own in TABLE.items():
        assert set(own) <= set(OPENAI_VOICES), engine


def test_the_tone_table_names_tone_voices() -> None:
    aliases, dropped = aliases_for(TONE, {})
    assert dropped == [] and len(aliases) == len(OPENAI_VOICES)
    assert dict(aliases)["alloy"] == "tone-mid" and dict(aliases)["onyx"] == "tone-low"


async def test_the_espeak_table_names_espeak_voices() -> None:
    engine = EspeakEngine()
    await engine.start()
    aliases, dropped = aliases_for(engine.info, {})
    assert dropped == [] and len(aliases) == len(OPENAI_VOICES)
    # Per voice: its own languages, not all of the engine's.
    assert engine.info.languages_of("en-us")[:2] == ("en-us", "en")
    assert len(engine.info.languages_of("de")) < 5 and len(engine.info.languages) > 100


def test_overrides_merge_over_the_table_and_drop_what_cannot_be() -> None:
    overrides = parse_overrides("alloy=tone-high, Vivian=tone-low,ghost=nobody,tone-low=tone-mid")
    aliases, dropped = aliases_for(TONE, overrides)
    mapping = dict(aliases)
    assert mapping["alloy"] == "tone-high" and mapping["Vivian"] == "tone-low"
    assert mapping["ash"] == "tone-low"  # the table's, untouched
    assert "ghost" not in mapping and "tone-low" not in mapping
    assert len(dropped) == 2
    assert any("no voice 'nobody'" in line for line in dropped)
    assert any("is a voice of engine tone" in line for line in dropped)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("alloy", "is not name=voice"),
        ("alloy=", "is not name=voice"),
        ("=en-us", "is not name=voice"),
        ("my voice=en", "is not name=voice"),
        ("alloy=en-us,alloy=en", "given twice"),
    ],
)
def test_a_bad_setting_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match="VOXLINE_VOICE_ALIASES") as refused:
        parse_overrides(text)
    assert problem in str(refused.value)


def test_an_empty_setting_is_no_override() -> None:
    assert parse_overrides("") == parse_overrides(" , ") == {}
    assert parse_overrides("alloy=en-us,alloy=en-us") == {"alloy": "en-us"}


def test_resolve_voice() -> None:
    info = EngineInfo(
        name="x",
        sample_rate=24000,
        voices=("a", "b"),
        default_voice="a",
        aliases=(("alloy", "b"), ("Vivian", "a"), ("vivian", "b")),
    )
    assert info.resolve_voice("a") == "a" and info.resolve_voice("alloy") == "b"
    assert info.resolve_voice("Vivian") == "a" and info.resolve_voice("vivian") == "b"
    assert info.resolve_voice("ALLOY") == "b"  # case-insensitive after the exact names
    assert info.resolve_voice("A") is None and info.resolve_voice("nobody") is None


def test_pack_keeps_aliases_and_languages_and_reads_old_infos() -> None:
    info = EngineInfo(
        name="x",
        sample_rate=24000,
        voices=("a", "b"),
        default_voice="a",
        languages=("en", "de"),
        aliases=(("alloy", "b"),),
        voice_languages=(("a", ("en",)), ("b", ("de", "German"))),
    )
    again = EngineInfo.unpack(info.pack())
    assert again == info and again.languages_of("b") == ("de", "German")
    assert again.languages_of("zz") == ("en", "de")
    # A worker of before these fields, and one of a later version with a field unknown here.
    old = msgpack.unpackb(info.pack())
    del old["aliases"], old["voice_languages"]
    assert EngineInfo.unpack(msgpack.packb(old)) == EngineInfo(
        name="x", sample_rate=24000, voices=("a", "b"), default_voice="a", languages=("en", "de")
    )
    assert EngineInfo.unpack(msgpack.packb({**old, "future": 1})).name == "x"


async def test_the_pool_adds_aliases_and_logs_each_dropped_one_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = uuid.uuid4().hex
    redis = connect(f"memory://{name}")
    keys = Keys("vxtest", 1)
    info = EngineInfo(
        name="tone", sample_rate=24000, voices=("tone-mid",), default_voice="tone-mid"
    )
    await redis.zadd(keys.workers, {"w1": 1e12})
    await redis.hset(keys.worker("w1"), mapping={"info": info.pack(), "slots": 1, "shards": 1})
    pool = WorkerPool(redis, keys, worker_ttl=10, voice_aliases="Vivian=tone-mid,ghost=tone-x")
    with caplog.at_level(logging.INFO, logger="voxline.api.pool"):
        first, _ = await pool.engine(max_age=0)
        second, _ = await pool.engine(max_age=0)
    assert first == second and first is not None
    assert (
        first.resolve_voice("alloy") == "tone-mid" and first.resolve_voice("Vivian") == "tone-mid"
    )
    assert first.resolve_voice("ash") is None  # tone-low is not on this worker
    ghost = [r for r in caplog.records if "ghost" in r.getMessage()]
    assert len(ghost) == 1 and ghost[0].levelno == logging.WARNING
    ash = [r for r in caplog.records if "ash=" in r.getMessage()]
    assert len(ash) == 1 and ash[0].levelno == logging.INFO
    await redis.aclose()
    drop_memory_server(name)


def test_a_bad_setting_stops_the_pool() -> None:
    with pytest.raises(ValueError, match="VOXLINE_VOICE_ALIASES"):
        WorkerPool(
            connect(f"memory://{uuid.uuid4().hex}"),
            Keys("vxtest", 1),
            worker_ttl=10,
            voice_aliases="oops",
        )
