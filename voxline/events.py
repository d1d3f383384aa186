"""What a voxline connection yields: the typed events of an utterance, and `VoxlineError`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from voxline.shared import messages
from voxline.shared.messages import Word


class VoxlineError(Exception):
    """The server refused something or the connection ended: `code` is the protocol's error
    code (`invalid_config`, `unauthorized`, `overloaded`, ...) or `connection_closed`."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        field: str | None = None,
        close_code: int | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field
        self.close_code = close_code

    @classmethod
    def from_message(cls, message: dict[str, Any], close_code: int | None = None) -> VoxlineError:
        return cls(
            str(message.get("code", "error")),
            str(message.get("message", "")),
            field=message.get("field"),
            close_code=close_code,
        )


@dataclass(frozen=True, slots=True)
class AudioStart:
    utterance: int
    sentence: int
    text: str  # what is spoken (markdown removed)
    format: str
    sample_rate: int


@dataclass(frozen=True, slots=True)
class Audio:
    data: bytes = field(repr=False)
    utterance: int
    sentence: int


@dataclass(frozen=True, slots=True)
class Words:
    utterance: int
    sentence: int
    words: tuple[Word, ...]


@dataclass(frozen=True, slots=True)
class AudioDone:
    utterance: int
    sentence: int
    total_bytes: int
    error: bool
    cancelled: bool
    first_byte_ms: float | None  # from the sentence's enqueueing to its first byte
    finish_ms: float | None


@dataclass(frozen=True, slots=True)
class SentenceError:
    """A sentence failed (`generation_failed`); its `AudioDone` follows, the utterance goes on."""

    utterance: int
    sentence: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ServerError:
    """An error that leaves the connection open (`text_too_large`, `utterance_too_long`, ...)."""

    utterance: int | None
    code: str
    message: str
    field: str | None = None


@dataclass(frozen=True, slots=True)
class UtteranceDone:
    utterance: int
    total_sentences: int


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The end of an utterance cancelled by `cancel()`. `cancelled_sentences` is empty when the
    server had already finished it (its audio after `cancel()` was dropped here)."""

    utterance: int
    cancelled_sentences: tuple[int, ...]


Event = (
    AudioStart | Audio | Words | AudioDone | SentenceError | ServerError | UtteranceDone | Cancelled
)
TERMINAL = (UtteranceDone, Cancelled)


def event_of(parsed: messages.ServerMessage, utterance: int) -> Event:
    """The event of a sentence's message: `audio.start`, `audio.words`, `audio.done`, or an
    `error` with a `sentence_index`."""
    if isinstance(parsed, messages.AudioStart):
        return AudioStart(
            utterance,
            parsed.sentence_index,
            parsed.sentence_text,
            parsed.format,
            parsed.sample_rate,
        )
    if isinstance(parsed, messages.AudioWords):
        return Words(utterance, parsed.sentence_index, tuple(parsed.words))
    if isinstance(parsed, messages.AudioDone):
        return AudioDone(
            utterance,
            parsed.sentence_index,
            parsed.total_bytes,
            parsed.error,
            parsed.cancelled,
            parsed.first_byte_ms,
            parsed.finish_ms,
        )
    if isinstance(parsed, messages.ErrorMessage):
        return SentenceError(utterance, parsed.sentence_index or 0, parsed.code, parsed.message)
    raise ValueError(f"{parsed.type} is not a sentence's message")
