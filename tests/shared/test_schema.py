"""The protocol's JSON Schema (shared/schema.py, written to docs/protocol.schema.json): the file
is what the typed messages say, both directions list the contract's types, and every message
the server's builders make is valid against it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from voxline.shared import protocol
from voxline.shared.protocol import CLIENT_TYPES, ErrorCode
from voxline.shared.schema import document, message_types

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / "docs" / "protocol.schema.json"


def _validator(side: str) -> jsonschema.Draft202012Validator:
    doc = json.loads(FILE.read_text())
    return jsonschema.Draft202012Validator({"$defs": doc["$defs"], **doc["properties"][side]})


def test_the_committed_schema_is_the_generated_one() -> None:
    written = json.loads(FILE.read_text())
    assert written == document(), (
        "docs/protocol.schema.json is stale: "
        ".venv/bin/python -m voxline.shared.schema > docs/protocol.schema.json"
    )
    jsonschema.Draft202012Validator.check_schema(written)


def test_both_directions_list_the_contracts_types() -> None:
    assert message_types("client") == set(CLIENT_TYPES)
    assert message_types("server") == {
        "session.ready",
        "audio.start",
        "audio.words",
        "audio.done",
        "session.done",
        "input.cancelled",
        "warning",
        "error",
    }


SENT = [
    protocol.session_ready("abc", "pcm", 24000, "en-us", "espeak"),
    protocol.audio_start(0, 1, "Hello.", "mp3", 24000),
    protocol.audio_words(0, 1, [{"word": "Hello", "start_ms": 0, "end_ms": 300}]),
    protocol.audio_done(0, 1, 4800, first_byte_ms=81.5, finish_ms=420.0),
    protocol.audio_done(0, 2, 0, error=True),
    protocol.session_done(0, 2),
    protocol.input_cancelled(1, [0, 1]),
    protocol.warning("ignored_field", "seed: ignored", field="seed"),
    protocol.error(ErrorCode.GENERATION_FAILED, "boom", sentence_index=3),
    protocol.error(ErrorCode.TEXT_TOO_LARGE, "too big"),
]


@pytest.mark.parametrize("message", SENT, ids=lambda m: m["type"])
def test_what_the_server_sends_is_valid(message: dict[str, object]) -> None:
    assert list(_validator("server").iter_errors(message)) == []


def test_optional_error_fields_are_left_out_not_sent_as_null() -> None:
    assert protocol.error(ErrorCode.INTERNAL, "x") == {
        "type": "error",
        "code": "internal",
        "message": "x",
    }
    # audio.done's timings are part of its shape: null until known.
    assert protocol.audio_done(0, 0, 0)["first_byte_ms"] is None


@pytest.mark.parametrize(
    "message",
    [
        {"type": "audio.start", "utterance_index": 0},  # fields missing
        {"type": "audio.done", "utterance_index": 0, "sentence_index": 0, "total_bytes": "4"},
        {"type": "speech.audio.delta"},  # not a WebSocket message
    ],
)
def test_the_schema_refuses_what_the_contract_does_not_say(message: dict[str, object]) -> None:
    assert list(_validator("server").iter_errors(message))


def test_what_clients_send_is_checked_too() -> None:
    client = _validator("client")
    assert not list(client.iter_errors({"type": "session.config", "response_format": "opus"}))
    assert not list(client.iter_errors({"type": "input.text", "text": "Hi."}))
    assert list(client.iter_errors({"type": "session.config", "response_format": "ogg"}))
    assert list(client.iter_errors({"type": "input.text"}))


def test_the_demo_page_handles_every_message_it_can_get() -> None:
    # The page does not offer the extension for word timings, so it never gets audio.words.
    script = (ROOT / "voxline" / "api" / "demo" / "app.js").read_text()
    handled = set(re.findall(r'case "([a-z.]+)":', script))
    assert handled <= message_types("server"), handled - message_types("server")
    assert message_types("server") - handled <= {"audio.words", "warning"}
