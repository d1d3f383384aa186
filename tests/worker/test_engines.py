from __future__ import annotations

import pytest

from voxline.worker.engines import ENGINES, load_engine
from voxline.worker.engines.base import Cancellation, Engine, SynthesisRequest, split_words
from voxline.worker.engines.espeak import EspeakEngine
from voxline.worker.engines.tone import ToneEngine


def test_the_registry_names_the_engines() -> None:
    assert set(ENGINES) == {"espeak", "kokoro", "pocket-tts", "tone", "upstream", "vits"}
    assert isinstance(load_engine("tone"), ToneEngine)
    assert isinstance(load_engine("espeak"), EspeakEngine)
    assert all(isinstance(load_engine(name), Engine) for name in ENGINES)


def test_unknown_engine_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown engine 'pocket'.*espeak.*tone"):
        load_engine("pocket")


def test_options_are_parsed_from_strings() -> None:
    engine = load_engine(
        "tone",
        {
            "sample_rate": "16000",
            "chunk_ms": "20",
            "rtf": "0.5",
            "ms_per_char": "10",
            "fail_on": "BOOM",
            "device_ms": "2.5",
            "stamp": "on",
        },
    )
    assert isinstance(engine, ToneEngine)
    assert engine.device_ms == 2.5 and engine.stamp is True
    assert engine.info.sample_rate == 16000
    assert engine.chunk_samples == 320
    assert engine.rtf == 0.5 and engine.ms_per_char == 10.0 and engine.fail_on == "BOOM"


def test_unknown_option_lists_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match=r"no option 'speed'.*chunk_ms, device_ms, fail_on, ms_per_char"
    ):
        load_engine("tone", {"speed": "2"})
    with pytest.raises(ValueError, match=r"espeak.*no option 'voice'.*none"):
        load_engine("espeak", {"voice": "de"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rtf": "fast"}, "rtf='fast'"),
        ({"chunk_ms": "0"}, "chunk_ms must be positive"),
        ({"rtf": "-1"}, "rtf must be >= 0"),
        ({"rtf": "nan"}, "finite"),
        ({"sample_rate": "100"}, "sample_rate"),
        ({"fail_on": ""}, "fail_on"),
        ({"device_ms": "-1"}, "device_ms must be >= 0"),
        ({"stamp": "maybe"}, "stamp='maybe'.*one of"),
    ],
)
def test_bad_option_values_are_clear_errors(options: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_engine("tone", options)


def test_cancellation_is_a_flag() -> None:
    cancel = Cancellation()
    assert not cancel.is_set()
    cancel.set()
    assert cancel.is_set()


def test_split_words_trims_punctuation_and_keeps_offsets() -> None:
    text = '"Hello,  world!" ... don\'t stop — 3.5 नमस्ते।'
    words = split_words(text)
    assert [w for w, _, _ in words] == ["Hello", "world", "don't", "stop", "3.5", "नमस्ते"]
    assert all(text[a:b] == w for w, a, b in words)
    assert split_words(text, 9, 15) == [("world", 9, 14)]


THIRD_PARTY = '''
from voxline.worker.engines.tone import ToneEngine


class LouderTone(ToneEngine):
    """An engine voxline does not ship, from a package of its own."""


class NotAnEngine:
    pass
'''


@pytest.fixture
def third_party(tmp_path, monkeypatch: pytest.MonkeyPatch) -> str:  # type: ignore[no-untyped-def]
    """A package on the path that declares an engine in the `voxline.engines` group, as an
    installed distribution does (its dist-info's entry_points.txt)."""
    module = f"vx_third_party_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(THIRD_PARTY)
    info = tmp_path / "vx_third_party-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vx-third-party\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[voxline.engines]\nlouder = {module}:LouderTone\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return module


async def test_an_engine_of_another_package_is_found_by_entry_point_or_module(
    third_party: str,
) -> None:
    by_entry_point = load_engine("louder", {"rtf": "0"})
    assert type(by_entry_point).__name__ == "LouderTone"
    assert isinstance(by_entry_point, ToneEngine) and by_entry_point.rtf == 0
    by_path = load_engine(f"{third_party}:LouderTone")
    assert type(by_path) is type(by_entry_point)
    await by_path.start()
    request = SynthesisRequest("Hello there.", by_path.info.default_voice)
    assert [c async for c in by_path.synthesize(request, Cancellation())]
    with pytest.raises(ValueError, match="unknown engine 'nope'.*louder.*module:Class"):
        load_engine("nope")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("{m}:NotAnEngine", "is not an Engine"),
        ("{m}:Missing", "has no 'Missing'"),
        ("vx_no_such_module:Engine", "cannot import 'vx_no_such_module'"),
    ],
)
def test_a_named_class_that_is_no_engine_is_a_clear_error(
    third_party: str, name: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        load_engine(name.format(m=third_party))
