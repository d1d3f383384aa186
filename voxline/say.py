"""`voxline say`: a client that streams text like an LLM would and writes or plays the audio."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import websockets

from shared.audio.wav import wav_bytes
from shared.protocol import PATH

PLAYERS = (
    ["aplay", "-q", "-f", "S16_LE", "-c", "1", "-r", "{rate}"],
    ["paplay", "--raw", "--format=s16le", "--channels=1", "--rate={rate}"],
    [
        "ffplay",
        "-nodisp",
        "-autoexit",
        "-loglevel",
        "quiet",
        "-f",
        "s16le",
        "-ac",
        "1",
        "-ar",
        "{rate}",
        "-",
    ],
)


async def _pieces(text: str | None) -> AsyncIterator[str]:
    if text is not None and text != "-":
        yield text
        return
    loop = asyncio.get_running_loop()
    reader = sys.stdin.buffer
    pending = b""
    while True:
        # read1 returns whatever has arrived: piped LLM tokens go out as they come.
        chunk = await loop.run_in_executor(None, reader.read1, 1024)
        if not chunk:
            break
        pending += chunk
        try:
            piece, pending = pending.decode(), b""
        except UnicodeDecodeError:  # a multi-byte character split across reads
            continue
        yield piece


def _player(rate: int) -> subprocess.Popen[bytes] | None:
    for template in PLAYERS:
        if shutil.which(template[0]):
            cmd = [part.format(rate=rate) for part in template]
            return subprocess.Popen(cmd, stdin=subprocess.PIPE)
    return None


async def say(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/")
    if not url.endswith(PATH):
        url += PATH
    config: dict[str, object] = {
        "type": "session.config",
        "response_format": "pcm",
        "stream_audio": True,
    }
    for field in ("voice", "speed", "language", "sample_rate"):
        value = getattr(args, field)
        if value is not None:
            config[field] = value
    audio = bytearray()
    player: subprocess.Popen[bytes] | None = None
    key = getattr(args, "api_key", None)
    headers = {"Authorization": f"Bearer {key}"} if key else None
    async with websockets.connect(url, max_size=None, additional_headers=headers) as ws:
        with contextlib.suppress(websockets.ConnectionClosed):
            # A server refusing the connection (a bad key) may have closed it already; its
            # error message is still read below.
            await ws.send(json.dumps(config))
        try:
            ready = json.loads(await ws.recv())
        except websockets.ConnectionClosed as exc:
            close = exc.rcvd
            reason = f"{close.code} {close.reason}" if close is not None else "no close frame"
            print(f"voxline say: the server closed the connection: {reason}", file=sys.stderr)
            return 2
        if ready.get("type") != "session.ready":
            print(f"voxline say: {ready.get('code')}: {ready.get('message')}", file=sys.stderr)
            return 2
        rate = int(ready["sample_rate"])
        if args.output is None:
            player = _player(rate)
            if player is None:
                print(
                    "voxline say: no audio player (aplay, paplay, ffplay) found; use -o FILE",
                    file=sys.stderr,
                )
                return 2
        started = time.perf_counter()
        first_audio: float | None = None

        async def feed() -> None:
            async for piece in _pieces(args.text):
                await ws.send(json.dumps({"type": "input.text", "text": piece}))
            await ws.send(json.dumps({"type": "input.done"}))

        sender = asyncio.create_task(feed())
        status = 0
        async for frame in ws:
            if isinstance(frame, bytes):
                if first_audio is None:
                    first_audio = time.perf_counter()
                    print(
                        f"first audio after {(first_audio - started) * 1000:.0f} ms",
                        file=sys.stderr,
                    )
                audio += frame
                if player is not None and player.stdin is not None:
                    player.stdin.write(frame)
                    player.stdin.flush()
                continue
            message = json.loads(frame)
            kind = message.get("type")
            if kind == "audio.start":
                print(f"[{message['sentence_index']}] {message['sentence_text']}", file=sys.stderr)
            elif kind == "audio.done":
                print(
                    f"    first byte {message['first_byte_ms']} ms, "
                    f"finish {message['finish_ms']} ms, {message['total_bytes']} bytes",
                    file=sys.stderr,
                )
            elif kind == "error":
                print(f"voxline say: {message['code']}: {message['message']}", file=sys.stderr)
                status = 1
            elif kind == "session.done":
                break
        await sender
    if player is not None and player.stdin is not None:
        player.stdin.close()
        player.wait()
    if args.output is not None:
        with open(args.output, "wb") as fh:
            fh.write(wav_bytes(bytes(audio), rate))
        seconds = len(audio) / 2 / rate
        print(f"wrote {args.output}: {seconds:.2f} s of audio at {rate} Hz", file=sys.stderr)
    return status


def run_say(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(say(args))
    except (OSError, websockets.WebSocketException) as exc:
        print(f"voxline say: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
