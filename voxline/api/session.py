"""The WebSocket endpoint: a transport for the speech session (speech/session.py) — frames in,
size-checked and parsed; messages and audio out."""

from __future__ import annotations

from typing import Any

from starlette.websockets import WebSocket, WebSocketState

from voxline.shared import protocol
from voxline.shared.config import Settings
from voxline.shared.protocol import ClientMessage, ErrorCode, ProtocolError
from voxline.speech.backend import Backend
from voxline.speech.session import SpeechSession
from voxline.speech.transport import Disconnected


class WebSocketTransport:
    def __init__(self, ws: WebSocket, settings: Settings) -> None:
        self._ws = ws
        self._settings = settings

    @property
    def open(self) -> bool:
        return self._ws.application_state == WebSocketState.CONNECTED

    async def receive(self) -> ClientMessage:
        """One text frame; binary frames and oversize messages are client errors. A frame may
        be as large as a session.config may be (a base64 ref_audio); other messages are held
        to max_message_bytes once parsed."""
        settings = self._settings
        message = await self._ws.receive()
        if message["type"] == "websocket.disconnect":
            raise Disconnected
        raw = message.get("text")
        if raw is None:
            raise ProtocolError(
                ErrorCode.UNEXPECTED_BINARY, "binary frames are not accepted from the client"
            )
        limit = max(settings.max_message_bytes, settings.max_config_bytes)
        if _larger(raw, limit):
            raise ProtocolError(ErrorCode.TEXT_TOO_LARGE, f"message is larger than {limit} bytes")
        parsed = protocol.parse_client_message(raw)
        if parsed.type == "session.config":
            limit = settings.max_config_bytes
        else:
            limit = settings.max_message_bytes
        if _larger(raw, limit):
            raise ProtocolError(
                ErrorCode.TEXT_TOO_LARGE, f"{parsed.type} is larger than {limit} bytes"
            )
        return parsed

    async def send_message(self, message: dict[str, Any]) -> None:
        await self._ws.send_json(message)

    async def send_audio(self, data: bytes) -> None:
        await self._ws.send_bytes(data)

    async def close(self, code: int) -> None:
        await self._ws.close(code)


def _larger(raw: str, limit: int) -> bool:
    # Characters first: most frames are far below the limit, and encoding costs a copy.
    return len(raw) > limit // 4 and len(raw.encode()) > limit


async def serve(ws: WebSocket, hub: Backend) -> None:
    """One WebSocket connection, start to end."""
    # Extension messages only for clients that offered the subprotocol.
    extensions = protocol.EXTENSIONS in (ws.scope.get("subprotocols") or ())
    await ws.accept(subprotocol=protocol.EXTENSIONS if extensions else None)
    transport = WebSocketTransport(ws, hub.settings)
    await SpeechSession(hub, transport, extensions=extensions).run()
