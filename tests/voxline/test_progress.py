"""Progress output: a status line on a terminal only, `voxline say --quiet` prints errors only."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tests.harness import start_pipeline
from voxline.cli import build_parser
from voxline.progress import CLEAR_LINE, StatusLine
from voxline.say import say
from voxline.shared.audio.wav import parse_wav


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_status_line_is_redrawn_under_the_log_lines_on_a_terminal() -> None:
    tty = Terminal()
    line = StatusLine(tty, interval=0)
    line.update("1/3 sentences")
    line.log("[0] Hello.")
    line.update("2/3 sentences")
    line.clear()
    assert tty.getvalue() == (
        f"{CLEAR_LINE}1/3 sentences{CLEAR_LINE}[0] Hello.\n1/3 sentences"
        f"{CLEAR_LINE}2/3 sentences{CLEAR_LINE}"
    )


def test_no_status_line_when_piped_and_nothing_but_errors_when_quiet() -> None:
    piped = io.StringIO()
    line = StatusLine(piped)
    line.update("1/3 sentences", force=True)
    line.log("[0] Hello.")
    assert piped.getvalue() == "[0] Hello.\n"
    quiet = Terminal()
    line = StatusLine(quiet, quiet=True)
    line.update("1/3 sentences", force=True)
    line.log("[0] Hello.")
    line.log("voxline say: generation_failed: boom", always=True)
    assert quiet.getvalue() == "voxline say: generation_failed: boom\n"


async def test_say_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "quiet.wav"
    async with start_pipeline("memory://say-quiet", "vxsay") as p:
        args = build_parser().parse_args(["say", "One. Two.", "-q", "-o", str(out), "--url", p.url])
        assert await say(args) == 0
    assert capsys.readouterr().err == ""
    assert len(parse_wav(out.read_bytes()).frames) > 0


async def test_say_ends_with_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "summary.wav"
    async with start_pipeline("memory://say-summary", "vxsay") as p:
        args = build_parser().parse_args(["say", "One. Two.", "-o", str(out), "--url", p.url])
        assert await say(args) == 0
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"wrote {out}: ") and "2 sentences in" in last, last
    assert "first audio after" in last
