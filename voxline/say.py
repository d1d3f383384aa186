"""`voxline say`: a client that streams text like an LLM would and writes or plays the audio."""

from __future__ import annotations

import argparse
import asyncio
import io
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import websockets

from voxline.client import (
    Audio,
    AudioDone,
    AudioStart,
    Client,
    SentenceError,
    ServerError,
    VoxlineError,
    connect,
)
from voxline.progress import StatusLine
from voxline.shared.audio.wav import wav_bytes
from voxline.speech.splitter import SentenceSplitter

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


@dataclass
class Tally:
    """What the progress line and the summary show."""

    rate: int
    started: float
    queued: int = 0  # sentences cut so far, as the server cuts them
    done: int = 0
    audio_bytes: int = 0
    first_audio_ms: float | None = None

    @property
    def seconds(self) -> float:
        return self.audio_bytes / 2 / self.rate

    def status(self) -> str:
        first = f"first audio {self.first_audio_ms:.0f} ms" if self.first_audio_ms else "waiting"
        return (
            f"{self.done}/{self.queued} sentences · {self.seconds:.1f} s of audio · {first} · "
            f"{time.perf_counter() - self.started:.1f} s"
        )

    def summary(self) -> str:
        elapsed = time.perf_counter() - self.started
        first = f", first audio after {self.first_audio_ms:.0f} ms" if self.first_audio_ms else ""
        return (
            f"{self.seconds:.2f} s of audio at {self.rate} Hz; {self.done} sentences in "
            f"{elapsed:.1f} s{first}"
        )


async def _pieces(text: str | None) -> AsyncIterator[str]:
    if text is not None and text != "-":
        yield text
        return
    loop = asyncio.get_running_loop()
    # A buffered reader (typeshed says BinaryIO, which has no read1).
    reader = cast(io.BufferedIOBase, sys.stdin.buffer)
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


async def _counted(pieces: AsyncIterator[str], tally: Tally) -> AsyncIterator[str]:
    """The pieces, counting the sentences they make as the server's splitter cuts them."""
    splitter = SentenceSplitter()
    async for piece in pieces:
        tally.queued += len(splitter.feed(piece))
        yield piece
    tally.queued += len(splitter.flush())


def _player(rate: int) -> subprocess.Popen[bytes] | None:
    for template in PLAYERS:
        if shutil.which(template[0]):
            cmd = [part.format(rate=rate) for part in template]
            return subprocess.Popen(cmd, stdin=subprocess.PIPE)
    return None


async def say(args: argparse.Namespace) -> int:
    out = StatusLine(quiet=getattr(args, "quiet", False))
    config = {
        field: getattr(args, field)
        for field in ("voice", "speed", "language", "sample_rate")
        if getattr(args, field) is not None
    }
    try:
        tts = await connect(args.url, api_key=getattr(args, "api_key", None), **config)
    except VoxlineError as exc:
        print(f"voxline say: {exc}", file=sys.stderr)
        return 2
    async with tts:
        player: subprocess.Popen[bytes] | None = None
        if args.output is None:
            player = _player(tts.sample_rate)
            if player is None:
                print(
                    "voxline say: no audio player (aplay, paplay, ffplay) found; use -o FILE",
                    file=sys.stderr,
                )
                return 2
        tally = Tally(tts.sample_rate, time.perf_counter())
        audio = bytearray()
        try:
            status = await _speak(tts, args.text, tally, audio, player, out)
        finally:
            out.clear()
            if player is not None and player.stdin is not None:
                player.stdin.close()
                player.wait()
    if args.output is not None:
        with open(args.output, "wb") as fh:
            fh.write(wav_bytes(bytes(audio), tally.rate))
        out.log(f"wrote {args.output}: {tally.summary()}")
    else:
        out.log(f"played {tally.summary()}")
    return status


async def _speak(
    tts: Client,
    text: str | None,
    tally: Tally,
    audio: bytearray,
    player: subprocess.Popen[bytes] | None,
    out: StatusLine,
) -> int:
    status = 0
    try:
        async for event in tts.speak(_counted(_pieces(text), tally)):
            if isinstance(event, Audio):
                if tally.first_audio_ms is None:
                    tally.first_audio_ms = (time.perf_counter() - tally.started) * 1000
                    out.log(f"first audio after {tally.first_audio_ms:.0f} ms")
                tally.audio_bytes += len(event.data)
                audio += event.data
                if player is not None and player.stdin is not None:
                    player.stdin.write(event.data)
                    player.stdin.flush()
            elif isinstance(event, AudioStart):
                out.log(f"[{event.sentence}] {event.text}")
            elif isinstance(event, AudioDone):
                tally.done += 1
                out.log(
                    f"    first byte {event.first_byte_ms} ms, finish {event.finish_ms} ms, "
                    f"{event.total_bytes} bytes"
                )
                out.update(tally.status(), force=True)
            elif isinstance(event, (SentenceError, ServerError)):
                out.log(f"voxline say: {event.code}: {event.message}", always=True)
                status = 1
            out.update(tally.status())
    except VoxlineError as exc:  # the connection was lost: keep what arrived
        out.log(f"voxline say: {exc}", always=True)
        status = 1
    return status


def run_say(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(say(args))
    except (OSError, websockets.WebSocketException) as exc:
        print(f"voxline say: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
