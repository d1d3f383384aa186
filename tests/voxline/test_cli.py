from __future__ import annotations

import subprocess
import sys

import pytest

from voxline.cli import _engine_options, build_parser


def test_serve_defaults_to_the_embedded_mode() -> None:
    args = build_parser().parse_args(["serve"])
    assert args.redis_url == "memory://" and args.engine == "espeak"
    assert args.host == "127.0.0.1" and args.port == 8000


def test_distributed_commands() -> None:
    parser = build_parser()
    api = parser.parse_args(["api", "--redis-url", "redis://r:6379/0", "--port", "9000"])
    assert (api.command, api.redis_url, api.port) == ("api", "redis://r:6379/0", 9000)
    worker = parser.parse_args(
        ["worker", "--engine", "tone", "--engine-opt", "rtf=0.5", "--concurrency", "4"]
    )
    assert worker.engine == "tone" and worker.concurrency == 4
    assert _engine_options(worker.engine_opt) == {"rtf": "0.5"}


def test_bad_engine_option_syntax() -> None:
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        _engine_options(["rtf"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["worker", "--engine", "nonesuch"], "nonesuch"),
        (["worker", "--engine", "tone", "--engine-opt", "volume=11"], "volume"),
    ],
)
def test_unknown_engine_or_option_fails_loudly(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "voxline", *argv], capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_say_reports_an_unreachable_server() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "voxline",
            "say",
            "Hi.",
            "-o",
            "/dev/null",
            "--url",
            "ws://127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "cannot reach" in result.stderr
