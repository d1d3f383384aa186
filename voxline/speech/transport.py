"""What carries a speech session's messages: client messages in, protocol messages and audio
out. The WebSocket endpoint (api/session.py) is one transport; the in-process one that REST
and tests use is another (local.py)."""

from __future__ import annotations

from typing import Any, Protocol

from voxline.shared.protocol import ClientMessage


class Disconnected(Exception):
    """The client went away."""


class Transport(Protocol):
    @property
    def open(self) -> bool:
        """Whether the client can still be written to."""

    async def receive(self) -> ClientMessage:
        """The client's next message. Raises Disconnected when it went away, ProtocolError
        for a frame the contract calls invalid (binary, too large, not JSON...)."""

    async def send_message(self, message: dict[str, Any]) -> None:
        """One protocol message. Raises (anything) when the peer is gone mid-write."""

    async def send_audio(self, data: bytes) -> None:
        """Audio bytes in the session's format."""

    async def close(self, code: int) -> None:
        """End the session with a WebSocket close code (the contract's table)."""
