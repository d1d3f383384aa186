"""`voxline batch`: its arguments, and a run against a stand-in server that takes the job
through queued, running and done (the runs through a real arq process are tests/batch/)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from voxline import batch_client
from voxline.batch_client import UsageError, output_format, run_batch
from voxline.cli import build_parser
from voxline.shared.audio.formats import ALL_FORMATS, FILE_EXTENSIONS

JOB_ID = "0123456789abcdef01234567"
AUDIO = bytes(range(256)) * 300  # 76.8 kB: several reads of the download
JOB = {
    "id": JOB_ID,
    "object": "speech.job",
    "status": "queued",
    "progress": {"sentences_done": 0, "sentences_total": 0},
    "created_at": 1.0,
    "voice": "tone-mid",
    "response_format": "mp3",
    "sample_rate": 24000,
}


def _run(argv: list[str]) -> int:
    """`voxline batch` as main() runs it, minus main()'s logging set-up (a root handler on
    this test's stderr would outlive it)."""
    return run_batch(build_parser().parse_args(["batch", *argv]))


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("output", "fmt"),
    [
        ("out.mp3", "mp3"),
        ("dir/Out.MP3", "mp3"),
        ("x.wav", "wav"),
        ("x.flac", "flac"),
        ("x.aac", "aac"),
        ("x.ogg", "opus"),
        ("x.opus", "opus"),
        ("x.ulaw", "mulaw"),
        ("x.mulaw", "mulaw"),
        ("x.alaw", "alaw"),
        ("x.pcm", "pcm"),
    ],
)
def test_the_format_comes_from_the_output_extension(output: str, fmt: str) -> None:
    assert output_format(output, None) == fmt


def test_every_format_has_an_extension_that_names_it() -> None:
    for fmt in ALL_FORMATS:
        assert output_format(f"x.{FILE_EXTENSIONS[fmt]}", None) == fmt


def test_format_beats_the_extension_and_must_be_known() -> None:
    assert output_format("speech.raw", "pcm") == "pcm"
    with pytest.raises(UsageError, match="unknown --format 'ogg'"):
        output_format("x.ogg", "ogg")


def test_an_unknown_extension_without_format_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "in.txt"
    text.write_text("Hello.")
    # Refused before anything is sent: no server listens on port 9.
    status = _run([str(text), "-o", str(tmp_path / "out.xyz"), "--url", "http://127.0.0.1:9"])
    assert status == 2
    err = capsys.readouterr().err
    assert "cannot tell the format from" in err and "--format" in err and ".mp3" in err


def test_arguments() -> None:
    args = build_parser().parse_args(
        ["batch", "-", "-o", "x.mp3", "--voice", "v", "--sample-rate", "16000", "--speed", "1.5"]
    )
    assert (args.file, args.output, args.url) == ("-", "x.mp3", "http://127.0.0.1:8000")
    assert (args.voice, args.sample_rate, args.speed, args.language) == ("v", 16000, 1.5, None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["batch", "in.txt"])  # -o is required


def test_arq_command() -> None:
    args = build_parser().parse_args(["arq", "--redis-url", "redis://r:6379/0"])
    assert (args.command, args.redis_url, args.key_prefix) == ("arq", "redis://r:6379/0", None)


@dataclass
class FakeServer:
    """The batch routes, scripted: each GET of the job moves it one step along `steps`."""

    steps: list[dict[str, Any]]
    post_status: int = 202
    requests: list[tuple[str, str, dict[str, Any] | None, str | None]] = field(default_factory=list)
    url: str = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes, kind: str, **headers: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, body: dict[str, Any], **headers: str) -> None:
                self._reply(status, json.dumps(body).encode(), "application/json", **headers)

            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                auth = self.headers.get("Authorization")
                server.requests.append((self.command, self.path, body, auth))

            def do_POST(self) -> None:
                self._record()
                if server.post_status != 202:
                    error = {"message": "voice: unknown voice 'x'", "code": "invalid_config"}
                    self._json(server.post_status, {"error": error})
                    return
                self._json(202, JOB, Location=f"/v1/audio/speech/jobs/{JOB_ID}")

            def do_GET(self) -> None:
                self._record()
                if self.path.endswith("/audio"):
                    self._reply(200, AUDIO, "audio/mpeg")
                    return
                step = server.steps.pop(0) if len(server.steps) > 1 else server.steps[0]
                self._json(200, JOB | step)

            def do_DELETE(self) -> None:
                self._record()
                self._json(200, JOB | {"status": "cancelled"})

        return Handler


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer(
        steps=[
            {"status": "queued"},
            {"status": "running", "progress": {"sentences_done": 0, "sentences_total": 3}},
            {"status": "running", "progress": {"sentences_done": 2, "sentences_total": 3}},
            {
                "status": "done",
                "progress": {"sentences_done": 3, "sentences_total": 3},
                "audio_bytes": len(AUDIO),
                "duration": 2.5,
            },
        ]
    )
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield fake
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_client, "POLL_INTERVAL", 0.01)


def test_a_job_is_followed_to_the_end_and_downloaded(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = tmp_path / "story.txt"
    text.write_text("One. Two. Three.", encoding="utf-8")
    out = tmp_path / "story.ogg"
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    status = _run(
        [str(text), "-o", str(out), "--url", server.url, "--speed", "1.2"]
        + ["--api-key", "vx_secret"]
    )
    assert status == 0, terminal.getvalue()
    assert out.read_bytes() == AUDIO
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"story.txt", "story.ogg"}, "no temporary file left behind"

    method, path, body, auth = server.requests[0]
    assert (method, path, auth) == ("POST", "/v1/audio/speech/jobs", "Bearer vx_secret")
    assert body == {"input": "One. Two. Three.", "response_format": "opus", "speed": 1.2}
    polls = [r for r in server.requests if r[0] == "GET" and r[1].endswith(JOB_ID)]
    assert len(polls) == 4
    assert server.requests[-1][:2] == ("GET", f"/v1/audio/speech/jobs/{JOB_ID}/audio")

    shown = terminal.getvalue()
    assert f"job {JOB_ID}" in shown
    assert "running (0/3 sentences)" in shown and "done (3/3 sentences)" in shown
    # The progress bar, drawn in place at the end at least.
    assert re.search(r"\r\x1b\[K\[#+\] 3/3 sentences 100%", shown)
    assert re.search(rf"wrote {re.escape(str(out))}: {len(AUDIO)} bytes, 2.50 s of audio", shown)


def test_stdin_and_quiet(
    server: FakeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("From a pipe."))
    out = tmp_path / "piped.raw"
    status = _run(["-", "-o", str(out), "--format", "pcm", "--url", server.url, "-q"])
    assert status == 0 and out.read_bytes() == AUDIO
    assert server.requests[0][2] == {"input": "From a pipe.", "response_format": "pcm"}
    assert capsys.readouterr().err == ""


def test_ctrl_c_cancels_the_job(
    server: FakeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    polls = 0

    def interrupted_sleep(seconds: float) -> None:
        nonlocal polls
        polls += 1
        if polls == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(batch_client.time, "sleep", interrupted_sleep)
    text = tmp_path / "in.txt"
    text.write_text("Hello.")
    out = tmp_path / "out.mp3"
    status = _run([str(text), "-o", str(out), "--url", server.url])
    assert status == 130
    assert server.requests[-1][:2] == ("DELETE", f"/v1/audio/speech/jobs/{JOB_ID}")
    assert not out.exists()
    assert f"job {JOB_ID} cancelled" in capsys.readouterr().err


def test_a_failed_job_exits_1_with_its_error(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.steps = [{"status": "failed", "error": "sentence 2: engine exploded"}]
    text = tmp_path / "in.txt"
    text.write_text("Hello.")
    out = tmp_path / "out.mp3"
    assert _run([str(text), "-o", str(out), "--url", server.url]) == 1
    assert not out.exists()
    assert f"job {JOB_ID} failed: sentence 2: engine exploded" in capsys.readouterr().err


def test_a_refusal_shows_the_servers_message_and_code(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.post_status = 400
    text = tmp_path / "in.txt"
    text.write_text("Hello.")
    status = _run([str(text), "-o", str(tmp_path / "o.mp3"), "--url", server.url])
    assert status == 1
    assert "voxline batch: voice: unknown voice 'x' (invalid_config)" in capsys.readouterr().err


def test_an_unreachable_server_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "in.txt"
    text.write_text("Hello.")
    status = _run([str(text), "-o", str(tmp_path / "o.mp3"), "--url", "http://127.0.0.1:9"])
    assert status == 2 and "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


def test_arq_refuses_a_cluster_without_its_own_redis() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXLINE_")}
    result = subprocess.run(
        [sys.executable, "-m", "voxline", "arq", "--redis-url", "redis+cluster://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 1
    assert "voxline arq:" in result.stderr and "VOXLINE_ARQ_REDIS_URL" in result.stderr
