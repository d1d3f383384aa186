"""Engine options: one pydantic model per engine, validated once (engines/options.py), with
VOXLINE_ENGINE_<OPTION> as the fallback for an option the command line does not give."""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from voxline.shared.capabilities import EngineInfo
from voxline.worker.engines import ENGINES, engine_class, load_engine
from voxline.worker.engines.base import AudioChunk, Cancellation, Engine, SynthesisRequest
from voxline.worker.engines.options import EngineOptions, env_name, parse_options
from voxline.worker.engines.tone import ToneEngine
from voxline.worker.engines.upstream.engine import UpstreamEngine


class EchoOptions(BaseModel):
    """A third party's options: any pydantic model will do."""

    gain: float = Field(1.0, gt=0, le=10)
    """Loudness, as a factor."""
    mode: Literal["calm", "loud"] = "calm"
    """How it speaks."""


class EchoEngine(Engine):
    """An engine voxline does not ship, taking its options whole."""

    Options = EchoOptions

    def __init__(self, options: EchoOptions) -> None:
        self.options = options
        self.info = EngineInfo(
            name="echo", sample_rate=16000, voices=("echo",), default_voice="echo"
        )

    @classmethod
    def from_options(cls, options: BaseModel) -> EchoEngine:
        assert isinstance(options, EchoOptions)
        return cls(options)

    async def synthesize(
        self, request: SynthesisRequest, cancel: Cancellation
    ) -> AsyncGenerator[AudioChunk, None]:
        return
        yield


class LegacyEngine(ToneEngine):
    OPTIONS = {"rtf": float}  # the declaration voxline read before Options models


def test_strings_become_typed_values() -> None:
    tone = load_engine("tone", {"sample_rate": "16000", "rtf": "0.5", "stamp": "yes"})
    assert isinstance(tone, ToneEngine)
    assert (tone.info.sample_rate, tone.rtf, tone.stamp) == (16000, 0.5, True)
    upstream = load_engine(
        "upstream",
        {"url": "http://tts:8000/v1/", "voices": "a, b=up_b", "languages": "en, de,"},
    )
    assert isinstance(upstream, UpstreamEngine)
    assert upstream.voice_map == {"a": "a", "b": "up_b"}
    assert upstream.languages == ("en", "de") and upstream.url == "http://tts:8000/v1"
    # Typed values (from Python) are taken as they are.
    assert load_engine("tone", {"chunk_ms": 20, "stamp": False}).chunk_samples == 480


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"chunk_ms": "0"}, "engine 'tone' option chunk_ms='0': chunk_ms must be positive"),
        ({"sample_rate": "100"}, "sample_rate='100': sample_rate must be 8000..192000"),
        ({"rtf": "inf"}, "rtf='inf': rtf must be >= 0 (a finite number)"),
        ({"stamp": "maybe"}, "stamp must be one of 1/0, true/false, yes/no, on/off"),
    ],
)
def test_a_bad_value_says_what_is_allowed(options: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as refused:
        load_engine("tone", options)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)  # one line, as the CLI prints it


def test_every_bad_value_is_in_the_one_error() -> None:
    with pytest.raises(ValueError) as refused:
        load_engine("tone", {"chunk_ms": "0", "rtf": "-1"})
    assert "chunk_ms must be positive" in str(refused.value)
    assert "rtf must be >= 0" in str(refused.value)


def test_an_unknown_option_names_the_known_ones() -> None:
    with pytest.raises(ValueError) as refused:
        load_engine("upstream", {"urls": "http://x"})
    assert str(refused.value) == (
        "engine 'upstream' has no option 'urls'; valid options: api_key_env, concurrency, "
        "default_voice, languages, model, protocol, sample_rate, timeout, url, voices"
    )


def test_the_variable_is_named_from_the_option() -> None:
    assert env_name("max_slots") == "VOXLINE_ENGINE_MAX_SLOTS"
    assert env_name("first-chunk-frames") == "VOXLINE_ENGINE_FIRST_CHUNK_FRAMES"


def test_an_option_not_given_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VOXLINE_ENGINE_RTF", "0.25")
    monkeypatch.setenv("VOXLINE_ENGINE_MAX_SLOTS", "7")  # not tone's: not read, no error
    tone = load_engine("tone")
    assert isinstance(tone, ToneEngine) and tone.rtf == 0.25


def test_the_command_line_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXLINE_ENGINE_RTF", "0.25")
    monkeypatch.setenv("VOXLINE_ENGINE_CHUNK_MS", "0")  # bad, but given on the command line
    tone = load_engine("tone", {"rtf": "2", "chunk_ms": "20"})
    assert isinstance(tone, ToneEngine) and (tone.rtf, tone.chunk_ms) == (2.0, 20)


def test_a_bad_value_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VOXLINE_ENGINE_CHUNK_MS", "soon")
    with pytest.raises(ValueError) as refused:
        load_engine("tone")
    assert str(refused.value) == (
        "engine 'tone' option chunk_ms='soon' (from VOXLINE_ENGINE_CHUNK_MS): "
        "chunk_ms must be positive (an integer)"
    )


def test_a_validators_own_words_are_kept() -> None:
    with pytest.raises(ValueError) as refused:
        load_engine("upstream", {"url": "ftp://tts"})
    assert str(refused.value) == (
        "engine 'upstream' option url='ftp://tts': url must be an http(s):// or ws(s):// URL, "
        "got 'ftp://tts'"
    )


def test_a_third_party_engine_declares_its_own_options(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"{__name__}:EchoEngine"
    monkeypatch.setenv("VOXLINE_ENGINE_MODE", "loud")
    echo = load_engine(name, {"gain": "2.5"})
    assert isinstance(echo, EchoEngine)
    assert echo.options == EchoOptions(gain=2.5, mode="loud")
    with pytest.raises(ValueError) as refused:
        load_engine(name, {"gain": "11"})
    assert f"engine {name!r} option gain='11': gain must be in (0, 10] (a finite number)" == str(
        refused.value
    )
    with pytest.raises(ValueError, match=r"no option 'volume'; valid options: gain, mode$"):
        load_engine(name, {"volume": "3"})


def test_an_engine_that_still_declares_option_parsers_is_refused() -> None:
    with pytest.raises(ValueError, match="declares OPTIONS parsers.*`Options`"):
        load_engine(f"{__name__}:LegacyEngine")


def test_parse_options_on_its_own() -> None:
    class Options(EngineOptions):
        count: int | None = Field(None, ge=1)
        """How many."""

    assert parse_options("x", Options, {}, environ={}) == Options()
    from_env = parse_options("x", Options, {}, environ={"VOXLINE_ENGINE_COUNT": "3"})
    assert from_env == Options(count=3)
    with pytest.raises(ValueError, match=r"count must be at least 1 \(an integer\)"):
        parse_options("x", Options, {"count": "0"}, environ={})


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_a_built_in_engines_options_match_its_constructor(name: str) -> None:
    """The constructor's keyword defaults (for Python callers) are the model's (for the
    command line and the environment), and every option is documented."""
    cls = engine_class(name)
    parameters = inspect.signature(cls.__init__).parameters
    for field, info in cls.Options.model_fields.items():
        assert parameters[field].default == info.default, (name, field)
        assert info.description, f"{name} option {field} has no docstring"
    assert set(parameters) - {"self"} == set(cls.Options.model_fields)
