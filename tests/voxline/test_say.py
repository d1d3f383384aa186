"""`voxline say` against a running pipeline with the embedded voice: the speech is intelligible."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import soxr
from pocketsphinx import Decoder

from tests.harness import start_pipeline
from voxline.cli import build_parser
from voxline.say import say
from voxline.shared.audio.wav import parse_wav

WORDS = {"hello", "world", "how", "are", "you"}


def recognize(wav: bytes) -> set[str]:
    """Words an offline recognizer (pocketsphinx, bundled US-English model) hears."""
    info = parse_wav(wav)
    pcm = np.frombuffer(info.frames, dtype="<i2")
    pcm16k = soxr.resample(pcm, info.sample_rate, 16000).astype(np.int16)
    decoder = Decoder(samprate=16000)
    decoder.start_utt()
    decoder.process_raw(pcm16k.tobytes(), full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return set(hypothesis.hypstr.split()) if hypothesis else set()


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["say", *argv])


async def test_say_writes_intelligible_speech(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "hello.wav"
    async with start_pipeline("memory://say", "vxsay", engine="espeak") as p:
        status = await say(_args("Hello world. How are you?", "-o", str(out), "--url", p.url))
    assert status == 0
    wav = out.read_bytes()
    info = parse_wav(wav)
    assert info.sample_rate == 24000 and 0.8 < len(info.frames) / 2 / 24000 < 4
    heard = recognize(wav)
    assert len(heard & WORDS) >= 2, heard
    err = capsys.readouterr().err
    assert "first audio after" in err and "[1] How are you?" in err


async def test_the_recognizer_does_not_hear_words_in_tones(tmp_path: Path) -> None:
    # The baseline for the test above: synthetic tones of the same text are not speech.
    out = tmp_path / "tone.wav"
    async with start_pipeline("memory://say-tone", "vxsay") as p:
        status = await say(_args("Hello world. How are you?", "-o", str(out), "--url", p.url))
    assert status == 0
    assert not recognize(out.read_bytes()) & WORDS


async def test_say_streams_stdin_piece_by_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Stdin:
        buffer = io.BufferedReader(io.BytesIO(b"Piped in. In pieces."), buffer_size=4)

    monkeypatch.setattr(sys, "stdin", Stdin)
    out = tmp_path / "piped.wav"
    async with start_pipeline("memory://say-stdin", "vxsay") as p:
        status = await say(_args("-", "-o", str(out), "--url", p.url))
    assert status == 0
    assert len(parse_wav(out.read_bytes()).frames) > 0


async def test_say_reports_a_refused_config(capsys: pytest.CaptureFixture) -> None:
    async with start_pipeline("memory://say-bad", "vxsay") as p:
        status = await say(_args("Hi.", "-o", "/dev/null", "--url", p.url, "--voice", "nobody"))
    assert status == 2
    assert "invalid_config" in capsys.readouterr().err
