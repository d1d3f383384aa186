"""The WebSocket protocol: client message parsing, session.config validation, server messages,
error and close codes. docs/protocol.md is the prose form; tests/api/ the executable one."""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voxline.shared import messages
from voxline.shared.audio.formats import STREAMABLE, check_rate, default_rate
from voxline.shared.audio.formats import FormatName as AudioFormat

if TYPE_CHECKING:  # the SDK imports this module; capabilities needs msgpack
    from voxline.shared.capabilities import EngineInfo

PATH = "/v1/audio/speech/stream"
# The WebSocket subprotocol a client offers to get voxline's extension messages
# (session.ready, warning, audio.words); without it only vllm-omni's message types are sent.
EXTENSIONS = "voxline.v1"


class ErrorCode(enum.StrEnum):
    INVALID_JSON = "invalid_json"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_MESSAGE = "invalid_message"
    UNEXPECTED_BINARY = "unexpected_binary"
    TEXT_TOO_LARGE = "text_too_large"
    NOT_CONFIGURED = "not_configured"
    INVALID_CONFIG = "invalid_config"
    OVERLOADED = "overloaded"
    INTERNAL = "internal"
    GENERATION_FAILED = "generation_failed"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN_ORIGIN = "forbidden_origin"
    TOO_MANY_SESSIONS = "too_many_sessions"
    UTTERANCE_TOO_LONG = "utterance_too_long"
    SESSION_EXPIRED = "session_expired"


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    POLICY_VIOLATION = 1008
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013


class ProtocolError(Exception):
    """A client mistake: answered with an `error` message, and a close when `close` is set."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        close: CloseCode | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close = close
        self.field = field

    def to_message(self) -> dict[str, Any]:
        return error(self.code, self.message, field=self.field)


# --- client -> server -------------------------------------------------------------------

CLIENT_TYPES = frozenset(
    {"session.config", "input.text", "input.flush", "input.cancel", "input.done", "session.close"}
)

# vllm-omni's session.config fields beyond the core ones. Two kinds, by what the listener hears:
# a field that picks *whose voice* speaks is refused when the engine cannot honour it; a
# generation hint the engine cannot honour is accepted and answered with a `warning`.
VOICE_FIELDS = ("ref_audio", "speaker_embedding")
HINT_FIELDS = (
    "instructions",
    "max_new_tokens",
    "initial_codec_chunk_frames",
    "ref_text",
    "x_vector_only_mode",
    "seed",
    "non_streaming_mode",
)
COMPAT_FIELDS = ("model", "task_type", *VOICE_FIELDS, *HINT_FIELDS)
# Streamed PCM comes at vllm-omni's (and OpenAI's) 24 kHz unless the client names a rate.
PCM_RATE = 24000
INT64_MAX = 2**63 - 1
# JSON's \uXXXX escapes can spell lone UTF-16 surrogates: a Python str holds them, but they
# are no Unicode text, so they cannot be encoded (msgpack to the workers, UTF-8 to the client).
_SURROGATE = re.compile("[\ud800-\udfff]")


def _is_text(value: str) -> bool:
    return _SURROGATE.search(value) is None


def _shown(name: str) -> str:
    """A client-chosen name made safe to echo back (lone surrogates escaped)."""
    return name if _is_text(name) else name.encode("utf-8", "backslashreplace").decode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class SessionConfig(BaseModel):
    """`session.config` as the client sent it (engine-independent checks only)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    voice: str | None = None
    response_format: AudioFormat = "wav"
    stream_audio: bool = False
    sample_rate: Annotated[int, Field(ge=8000, le=48000)] | None = None
    speed: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0
    language: str = "Auto"
    split_granularity: Literal["none", "sentence", "clause"] = "sentence"
    word_timestamps: bool = False
    model: str | None = None
    task_type: Literal["CustomVoice", "VoiceDesign", "Base"] | None = None
    instructions: str | None = None
    # Bounded so that every accepted value fits the job's msgpack encoding (int64).
    max_new_tokens: Annotated[int, Field(ge=1, le=INT64_MAX)] | None = None
    initial_codec_chunk_frames: Annotated[int, Field(ge=0, le=INT64_MAX)] | None = None
    ref_audio: str | None = None
    ref_text: str | None = None
    x_vector_only_mode: bool | None = None
    seed: Annotated[int, Field(ge=0, le=INT64_MAX)] | None = None
    non_streaming_mode: bool | None = None
    speaker_embedding: Annotated[list[float], Field(min_length=1, max_length=8192)] | None = None

    def extra_fields(self, honoured: tuple[str, ...]) -> dict[str, Any]:
        """The compatibility fields the client set that the engine honours (passed through
        to it); the others were refused or warned about at configuration."""
        return {
            name: getattr(self, name)
            for name in COMPAT_FIELDS
            if name in honoured and getattr(self, name) is not None
        }

    def ignored_hints(self, honoured: tuple[str, ...]) -> list[str]:
        """Generation hints set that the engine cannot honour: accepted, but worth a warning."""
        return [n for n in HINT_FIELDS if getattr(self, n) is not None and n not in honoured]


def _invalid_config(field: str, message: str) -> ProtocolError:
    return ProtocolError(
        ErrorCode.INVALID_CONFIG,
        f"{field}: {message}",
        close=CloseCode.POLICY_VIOLATION,
        field=field,
    )


def parse_config(data: dict[str, Any], engine: EngineInfo) -> SessionConfig:
    """Validate a `session.config` message against the contract and the engine pool.

    As vllm-omni does, `null` means "the default" for every field and `speaker` is another
    name for `voice`; unlike it, a field neither knows is refused (a typo must not pass)."""
    body = {k: v for k, v in data.items() if k != "type"}
    for name, value in body.items():
        if not _is_text(name):
            raise _invalid_config(_shown(name), "unknown field")
        if isinstance(value, str) and not _is_text(value):
            raise _invalid_config(name, "not valid Unicode (a lone surrogate)")
    body = {k: v for k, v in body.items() if v is not None}
    if "speaker" in body:
        speaker = body.pop("speaker")
        if "voice" in body and body["voice"] != speaker:
            raise _invalid_config("speaker", "names another voice than voice; send one of them")
        body["voice"] = speaker
    try:
        config = SessionConfig.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "session.config"
        if first["type"] == "extra_forbidden":
            raise _invalid_config(field, "unknown field") from None
        raise _invalid_config(field, first["msg"]) from None
    if config.sample_rate is not None and (
        problem := check_rate(config.response_format, config.sample_rate)
    ):
        raise _invalid_config("sample_rate", problem)
    check_engine(config, engine)
    if config.voice is not None and (voice := engine.resolve_voice(config.voice)) is not None:
        config = config.model_copy(update={"voice": voice})
    return config


def output_rate(config: SessionConfig, engine: EngineInfo) -> int:
    """The rate the client gets: as asked, else the format's default for this engine
    (24 kHz for PCM, 8 kHz for G.711, an Opus rate for opus, the engine's own otherwise)."""
    if config.sample_rate:
        return config.sample_rate
    if config.response_format == "pcm":
        return PCM_RATE
    return default_rate(config.response_format, engine.sample_rate)


def check_engine(config: SessionConfig, engine: EngineInfo) -> None:
    """Refuse what the engine cannot honour, naming the field: never ignore it silently."""
    if config.voice is not None and engine.resolve_voice(config.voice) is None:
        shown = ", ".join(engine.voices[:20]) + (", ..." if len(engine.voices) > 20 else "")
        raise _invalid_config(
            "voice", f"unknown voice {config.voice!r} for engine {engine.name} ({shown})"
        )
    if config.stream_audio and config.response_format not in STREAMABLE:
        raise _invalid_config(
            "stream_audio",
            f"{config.response_format} cannot be streamed; use one of {sorted(STREAMABLE)}",
        )
    low, high = engine.speed_range
    if not low <= config.speed <= high:
        raise _invalid_config("speed", f"engine {engine.name} honours speed {low:.2f}..{high:.2f}")
    if config.language != "Auto" and config.language not in engine.languages:
        raise _invalid_config(
            "language", f"engine {engine.name} does not speak {config.language!r}"
        )
    if config.word_timestamps and not engine.word_timestamps:
        raise _invalid_config("word_timestamps", f"engine {engine.name} cannot time words")
    if config.model is not None and config.model != engine.name:
        raise _invalid_config(
            "model", f"this pool runs engine {engine.name!r}, not {config.model!r}"
        )
    if config.task_type is not None and config.task_type not in engine.task_types:
        raise _invalid_config(
            "task_type", f"engine {engine.name} supports {list(engine.task_types)}"
        )
    for name in VOICE_FIELDS:
        if getattr(config, name) is not None and name not in engine.extra_fields:
            raise _invalid_config(
                name, f"engine {engine.name} cannot honour this field (it would change the voice)"
            )
    if config.task_type == "Base" and config.ref_audio is None:
        raise _invalid_config("ref_audio", "task_type Base clones a voice: ref_audio is required")


@dataclass(frozen=True, slots=True)
class ClientMessage:
    type: str
    data: dict[str, Any]

    @property
    def text(self) -> str:
        return self.data["text"]


def parse_client_message(raw: str) -> ClientMessage:
    """Parse one text frame; raise ProtocolError for anything the contract calls invalid."""
    try:
        # NaN and Infinity are no JSON, though Python's parser takes them by default.
        data = json.loads(raw, parse_constant=_reject_constant)
    except ValueError:
        raise ProtocolError(ErrorCode.INVALID_JSON, "message is not valid JSON") from None
    except RecursionError:
        raise ProtocolError(ErrorCode.INVALID_JSON, "message is nested too deeply") from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "message must be a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "message has no string 'type'")
    if kind not in CLIENT_TYPES:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r}")
    if kind == "input.text":
        text = data.get("text")
        if not isinstance(text, str):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "input.text needs a string 'text'")
        if not _is_text(text):
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                "input.text 'text' is not valid Unicode (a lone surrogate)",
            )
    return ClientMessage(kind, data)


# --- server -> client -------------------------------------------------------------------
# Built from the typed messages (shared/messages.py), so that what is sent is what the schema
# and the SDK say.


def session_ready(
    session_id: str, fmt: str, sample_rate: int, voice: str, engine: str
) -> dict[str, Any]:
    return messages.SessionReady(
        session_id=session_id, format=fmt, sample_rate=sample_rate, voice=voice, engine=engine
    ).wire()


def audio_start(
    utterance: int, sentence: int, text: str, fmt: str, sample_rate: int
) -> dict[str, Any]:
    return messages.AudioStart(
        utterance_index=utterance,
        sentence_index=sentence,
        sentence_text=text,
        format=fmt,
        sample_rate=sample_rate,
    ).wire()


def warning(code: str, message: str, *, field: str | None = None) -> dict[str, Any]:
    """Something accepted but not done as asked (an extension: opted-in clients only)."""
    return messages.WarningMessage(code=code, message=message, field=field).wire()


def audio_done(
    utterance: int,
    sentence: int,
    total_bytes: int,
    *,
    error: bool = False,
    cancelled: bool = False,
    first_byte_ms: float | None = None,
    finish_ms: float | None = None,
) -> dict[str, Any]:
    return messages.AudioDone(
        utterance_index=utterance,
        sentence_index=sentence,
        total_bytes=total_bytes,
        error=error,
        cancelled=cancelled,
        first_byte_ms=first_byte_ms,
        finish_ms=finish_ms,
    ).wire()


def audio_words(utterance: int, sentence: int, words: list[dict[str, Any]]) -> dict[str, Any]:
    return messages.AudioWords.model_validate(
        {"utterance_index": utterance, "sentence_index": sentence, "words": words}
    ).wire()


def session_done(utterance: int, total_sentences: int) -> dict[str, Any]:
    return messages.SessionDone(utterance_index=utterance, total_sentences=total_sentences).wire()


def input_cancelled(utterance: int, cancelled_sentences: list[int]) -> dict[str, Any]:
    return messages.InputCancelled(
        utterance_index=utterance, cancelled_sentences=cancelled_sentences
    ).wire()


def error(
    code: ErrorCode,
    message: str,
    *,
    sentence_index: int | None = None,
    field: str | None = None,
) -> dict[str, Any]:
    return messages.ErrorMessage(
        code=str(code), message=message, sentence_index=sentence_index, field=field
    ).wire()
