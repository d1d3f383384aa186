"""The WebSocket protocol as JSON Schema, generated from the typed messages: what a client may
send (`session.config` and the input messages) and what the server sends. Written to
docs/protocol.schema.json (`python -m voxline.shared.schema > docs/protocol.schema.json`); a test
holds the file to this output, the fuzz tests check every frame the server sent against it,
and the demo page's handlers against its message types."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from voxline.shared.messages import SERVER_MESSAGES
from voxline.shared.protocol import PATH, SessionConfig


class SessionConfigMessage(SessionConfig):
    """The first message of every session; later ones between utterances."""

    type: Literal["session.config"] = "session.config"


class _Input(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputText(_Input):
    """Text to speak, in any pieces (LLM tokens): split into sentences as it arrives."""

    type: Literal["input.text"]
    text: str


class InputFlush(_Input):
    """Speak what is buffered now, without ending the utterance."""

    type: Literal["input.flush"]


class InputDone(_Input):
    """The utterance's text is complete."""

    type: Literal["input.done"]


class InputCancel(_Input):
    """Barge-in: stop every queued and playing sentence."""

    type: Literal["input.cancel"]


class SessionClose(_Input):
    """Deliver what is pending, then close."""

    type: Literal["session.close"]


ClientMessage = Annotated[
    SessionConfigMessage | InputText | InputFlush | InputDone | InputCancel | SessionClose,
    Field(discriminator="type"),
]


def document() -> dict[str, Any]:
    """One schema with both directions: `client` and `server` are each a oneOf of messages."""
    defs: dict[str, Any] = {}
    sides: dict[str, Any] = {}
    # What the server accepts, and what it sends (every field it always writes is required).
    adapters: list[tuple[str, TypeAdapter[Any], JsonSchemaMode]] = [
        ("client", TypeAdapter(ClientMessage), "validation"),
        ("server", SERVER_MESSAGES, "serialization"),
    ]
    for side, adapter, mode in adapters:
        schema = adapter.json_schema(ref_template="#/$defs/{model}", mode=mode)
        defs.update(schema.pop("$defs", {}))
        sides[side] = schema
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"voxline WebSocket protocol ({PATH})",
        "description": "JSON text frames; audio is sent as binary frames between audio.start "
        "and audio.done. Readers ignore fields they do not know.",
        "$defs": defs,
        "properties": sides,
    }


def message_types(side: Literal["client", "server"]) -> set[str]:
    """The `type` values of one side's messages, as the schema lists them."""
    doc = document()
    return {
        doc["$defs"][ref["$ref"].rsplit("/", 1)[1]]["properties"]["type"]["const"]
        for ref in doc["properties"][side]["oneOf"]
    }


if __name__ == "__main__":
    json.dump(document(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
