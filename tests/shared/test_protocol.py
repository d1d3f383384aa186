from __future__ import annotations

from dataclasses import replace

import pytest

from voxline.shared.capabilities import EngineInfo
from voxline.shared.protocol import (
    CloseCode,
    ErrorCode,
    ProtocolError,
    parse_client_message,
    parse_config,
)

ENGINE = EngineInfo(
    name="demo",
    sample_rate=22050,
    voices=("en", "de"),
    default_voice="en",
    languages=("en", "de"),
    word_timestamps=False,
    speed_range=(0.5, 2.0),
    task_types=("CustomVoice", "VoiceDesign"),
    extra_fields=("instructions",),
)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ('{"type": "input.text", "text": "hi"}', "input.text"),
        ('{"type": "input.text", "text": ""}', "input.text"),
        ('{"type": "input.flush"}', "input.flush"),
        ('{"type": "input.cancel"}', "input.cancel"),
        ('{"type": "input.done"}', "input.done"),
        ('{"type": "session.close"}', "session.close"),
        ('{"type": "session.config", "voice": "en"}', "session.config"),
    ],
)
def test_client_messages_parse(raw: str, kind: str) -> None:
    assert parse_client_message(raw).type == kind


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("", ErrorCode.INVALID_JSON),
        ("{'single': 'quotes'}", ErrorCode.INVALID_JSON),
        ("null", ErrorCode.INVALID_MESSAGE),
        ('"text"', ErrorCode.INVALID_MESSAGE),
        ('{"type": 5}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "audio.start"}', ErrorCode.UNKNOWN_TYPE),
        ('{"type": "input.text", "text": null}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "input.text", "text": ["a"]}', ErrorCode.INVALID_MESSAGE),
    ],
)
def test_bad_client_messages(raw: str, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(raw)
    assert caught.value.code is code and caught.value.close is None


def test_config_defaults() -> None:
    config = parse_config({"type": "session.config"}, ENGINE)
    assert config.response_format == "wav" and config.stream_audio is False
    assert config.speed == 1.0 and config.language == "Auto" and config.voice is None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"voice": "fr"}, "voice"),
        ({"speed": 0.4}, "speed"),  # inside the contract's range, outside the engine's
        ({"speed": 3.0}, "speed"),
        ({"language": "fr"}, "language"),
        ({"word_timestamps": True}, "word_timestamps"),
        ({"task_type": "Base"}, "task_type"),
        ({"ref_audio": "UklG"}, "ref_audio"),  # whose voice: refused, never ignored
        ({"speaker_embedding": [0.5] * 4}, "speaker_embedding"),
        ({"model": "other"}, "model"),
        ({"response_format": "pcm", "stream_audio": True, "extra": 1}, "extra"),
        ({"sample_rate": 16000.5}, "sample_rate"),
        ({"voice": 3}, "voice"),
    ],
)
def test_config_the_engine_cannot_honour(fields: dict, field: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_config({"type": "session.config", **fields}, ENGINE)
    error = caught.value
    assert error.code is ErrorCode.INVALID_CONFIG and error.field == field
    assert error.close is CloseCode.POLICY_VIOLATION
    assert error.to_message()["field"] == field


def test_config_the_engine_honours() -> None:
    config = parse_config(
        {
            "type": "session.config",
            "voice": "de",
            "language": "de",
            "speed": 2,
            "task_type": "VoiceDesign",
            "instructions": "calm",
            "model": "demo",
        },
        ENGINE,
    )
    assert config.speed == 2.0
    assert config.extra_fields(ENGINE.extra_fields) == {"instructions": "calm"}
    assert config.ignored_hints(ENGINE.extra_fields) == []


def test_hints_the_engine_cannot_honour_are_accepted_and_named() -> None:
    """vllm-omni's generation hints pass (a warning names each); none reaches the engine."""
    hints = {"seed": 7, "max_new_tokens": 10, "initial_codec_chunk_frames": 0, "ref_text": "hi"}
    config = parse_config({"type": "session.config", **hints}, ENGINE)
    assert set(config.ignored_hints(ENGINE.extra_fields)) == set(hints)
    assert config.extra_fields(ENGINE.extra_fields) == {}


def test_null_is_the_default_and_speaker_is_voice() -> None:
    config = parse_config(
        {"type": "session.config", "speed": None, "response_format": None, "speaker": "de"},
        ENGINE,
    )
    assert (config.speed, config.response_format, config.voice) == (1.0, "wav", "de")
    with pytest.raises(ProtocolError) as caught:
        parse_config({"type": "session.config", "voice": "de", "speaker": "en"}, ENGINE)
    assert caught.value.field == "speaker"


def test_cloning_needs_its_reference_clip() -> None:
    cloner = replace(ENGINE, task_types=("CustomVoice", "Base"), extra_fields=("ref_audio",))
    with pytest.raises(ProtocolError) as caught:
        parse_config({"type": "session.config", "task_type": "Base"}, cloner)
    assert caught.value.field == "ref_audio"
    config = parse_config(
        {"type": "session.config", "task_type": "Base", "ref_audio": "UklG"}, cloner
    )
    assert config.extra_fields(cloner.extra_fields) == {"ref_audio": "UklG"}
