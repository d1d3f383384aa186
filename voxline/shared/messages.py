"""The server's messages, typed: one model per message type, shared by the server (which builds
its JSON from them, shared/protocol.py) and the SDK (which reads with them, voxline/events.py).
`ServerMessage` is their discriminated union; shared/schema.py exports it as JSON Schema.

A reader ignores fields it does not know (a newer server may add some) and takes the defaults
for descriptive ones a peer left out; the schema, made from what the server sends
(`mode="serialization"`), lists every field it always sends as required.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


@dataclass(frozen=True, slots=True)
class Word:
    """One word's timing, as engines make it and `audio.words` carries it."""

    word: str
    start_ms: int  # from the sentence's first sample
    end_ms: int


def _required_as_sent(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """A message that leaves unset fields out (`_OMIT_UNSET`) does not always send those whose
    default is None: the schema must not require them."""
    if getattr(model, "_OMIT_UNSET", False):
        optional = {n for n, f in model.model_fields.items() if f.default is None}
        schema["required"] = [n for n in schema.get("required", []) if n not in optional]


class _Message(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        json_schema_serialization_defaults_required=True,
        json_schema_extra=_required_as_sent,
    )
    # Optional fields left out of the JSON when unset (others are sent as null).
    _OMIT_UNSET: ClassVar[bool] = False

    def wire(self) -> dict[str, Any]:
        """The message as the server sends it (a JSON object)."""
        return self.model_dump(exclude_none=self._OMIT_UNSET)


class SessionReady(_Message):
    """The session is configured (an extension: clients that offered `voxline.v1`)."""

    type: Literal["session.ready"] = "session.ready"
    session_id: str = ""
    format: str = ""
    sample_rate: int = 0
    voice: str = ""
    engine: str = ""


class AudioStart(_Message):
    """A sentence's audio begins; its binary frames follow."""

    type: Literal["audio.start"] = "audio.start"
    utterance_index: int
    sentence_index: int
    sentence_text: str = ""  # what is spoken (markdown removed)
    format: str = ""
    sample_rate: int = 0
    channels: Literal[1] = 1


class AudioWords(_Message):
    """Word timings of a sentence being heard (an extension, when `word_timestamps` is on)."""

    type: Literal["audio.words"] = "audio.words"
    utterance_index: int
    sentence_index: int
    words: list[Word]


class AudioDone(_Message):
    """A sentence is over: complete, failed (`error`) or cut short by a cancel."""

    type: Literal["audio.done"] = "audio.done"
    utterance_index: int
    sentence_index: int
    total_bytes: int = 0
    error: bool = False
    cancelled: bool = False
    first_byte_ms: float | None = None  # from the sentence's enqueueing to its first byte
    finish_ms: float | None = None


class SessionDone(_Message):
    """Every sentence of an utterance was delivered."""

    type: Literal["session.done"] = "session.done"
    utterance_index: int
    total_sentences: int = 0


class InputCancelled(_Message):
    """The end of a cancelled utterance: these sentences were not (fully) heard."""

    type: Literal["input.cancelled"] = "input.cancelled"
    utterance_index: int
    cancelled_sentences: list[int] = Field(default_factory=list)


class WarningMessage(_Message):
    """Something accepted but not done as asked (an extension)."""

    _OMIT_UNSET: ClassVar[bool] = True
    type: Literal["warning"] = "warning"
    code: str = "warning"
    message: str = ""
    field: str | None = None


class ErrorMessage(_Message):
    """The contract's error table: a client mistake, a refusal, or a sentence that failed
    (`sentence_index` set: its audio.done follows and the session goes on)."""

    _OMIT_UNSET: ClassVar[bool] = True
    type: Literal["error"] = "error"
    code: str = "error"
    message: str = ""
    sentence_index: int | None = None
    field: str | None = None


ServerMessage = Annotated[
    SessionReady
    | AudioStart
    | AudioWords
    | AudioDone
    | SessionDone
    | InputCancelled
    | WarningMessage
    | ErrorMessage,
    Field(discriminator="type"),
]
SERVER_MESSAGES: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)


def read(message: dict[str, Any]) -> ServerMessage:
    """A server message as its model; pydantic's ValidationError when it is none of them."""
    return SERVER_MESSAGES.validate_python(message)
