"""`voxline batch`: hand a whole text to the server as a batch job, follow its progress, and
download the file (POST /v1/audio/speech/jobs, then GET it until done, then GET its audio).

A one-shot program, so plain blocking urllib (the base install has no HTTP client library):
Ctrl-C lands in the main thread as KeyboardInterrupt wherever it waits, and cancels the job.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from voxline.progress import StatusLine, bar

JOBS = "/v1/audio/speech/jobs"
POLL_INTERVAL = 0.25  # seconds between two looks at the job
TIMEOUT = 30.0  # seconds one request may take
CHUNK = 256 * 1024
RUNNING = ("queued", "running")
EXIT_INTERRUPTED = 130  # what a shell reports for a program ended by SIGINT


class UsageError(Exception):
    """Arguments that cannot work: exit 2, like argparse's own errors."""


class Unreachable(Exception):
    """No HTTP answer at all (connection refused, DNS, timeout)."""


class ApiError(Exception):
    """The server refused: its OpenAI-style error (message, code) and the HTTP status."""

    def __init__(self, status: int, message: str, code: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return f"{self.message} ({self.code or f'HTTP {self.status}'})"


def output_format(output: str, given: str | None) -> str:
    """The format asked for, or the one the output file's extension names."""
    from voxline.shared.audio.formats import ALL_FORMATS, FILE_EXTENSIONS

    if given is not None:
        if given not in ALL_FORMATS:
            raise UsageError(f"unknown --format {given!r}; one of {', '.join(ALL_FORMATS)}")
        return given
    extension = Path(output).suffix.lower().removeprefix(".")
    by_extension = {fmt: fmt for fmt in ALL_FORMATS} | {e: f for f, e in FILE_EXTENSIONS.items()}
    if extension not in by_extension:
        known = ", ".join(f".{e}" for e in sorted(by_extension))
        raise UsageError(
            f"cannot tell the format from {output!r} (extensions: {known}); give --format"
        )
    return by_extension[extension]


class Api:
    """The server's batch routes, over blocking urllib."""

    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def open(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The response (a file-like object with `.status` and `.headers`); ApiError for an
        error status, Unreachable when there was no answer."""
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            return urllib.request.urlopen(request, timeout=TIMEOUT)
        except urllib.error.HTTPError as exc:
            with exc:
                raise _api_error(exc.code, exc.read()) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"cannot reach {self.url}: {reason}") from None

    def json(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], Any]:
        with self.open(method, path, body) as response:
            return json.loads(response.read()), response.headers

    def download(self, path: str, output: Path) -> int:
        """The body into `output`, through a temporary file beside it: a run that fails or is
        interrupted leaves no partial file under the name."""
        with self.open("GET", path) as response:
            expected = response.headers.get("Content-Length")
            fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.")
            try:
                with os.fdopen(fd, "wb") as sink:
                    size = _copy(response, sink)
                os.chmod(tmp, 0o666 & ~_umask())  # as open() would have made it, not mkstemp
                if expected is not None and size != int(expected):
                    raise Unreachable(f"the download ended after {size} of {expected} bytes")
                os.replace(tmp, output)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return size


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _copy(source: BinaryIO, sink: BinaryIO) -> int:
    size = 0
    while piece := source.read(CHUNK):
        sink.write(piece)
        size += len(piece)
    return size


def _api_error(status: int, raw: bytes) -> ApiError:
    try:
        error = json.loads(raw)["error"]
        return ApiError(status, str(error["message"]), error.get("code"))
    except (ValueError, KeyError, TypeError):
        text = raw.decode(errors="replace").strip()[:200]
        return ApiError(status, text or f"HTTP {status}", None)


@dataclass
class Progress:
    """What the status line shows and the summary tells."""

    started: float
    status: str = "queued"
    done: int = 0
    total: int = 0

    def update(self, job: dict[str, Any]) -> None:
        self.status = job["status"]
        self.done = job["progress"]["sentences_done"]
        self.total = job["progress"]["sentences_total"]

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        if not self.total:  # not split yet
            return f"{self.status} · {elapsed:.1f} s"
        return f"{bar(self.done, self.total)} {self.status} · {elapsed:.1f} s"


def _read_text(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {source}: {exc}") from None


def batch(args: argparse.Namespace, out: StatusLine) -> int:
    fmt = output_format(args.output, args.format)
    output = Path(args.output)
    if not output.parent.is_dir():
        raise UsageError(f"no directory {str(output.parent)!r} to write {args.output} in")
    text = _read_text(args.file)
    body: dict[str, Any] = {"input": text, "response_format": fmt}
    for name in ("voice", "sample_rate", "speed", "language"):
        if (value := getattr(args, name)) is not None:
            body[name] = value
    api = Api(args.url, args.api_key)
    progress = Progress(time.perf_counter())
    job, _ = api.json("POST", JOBS, body)
    job_id = job["id"]
    try:
        out.log(f"job {job_id}: {len(text)} characters, {fmt} at {job['sample_rate']} Hz")
        job = _follow(api, job, progress, out)
        if job["status"] != "done":
            out.clear()
            reason = job.get("error") or "no reason given"
            out.log(f"voxline batch: job {job_id} {job['status']}: {reason}", always=True)
            return 1
        size = api.download(f"{JOBS}/{job_id}/audio", output)
    except KeyboardInterrupt:
        out.clear()
        _cancel(api, job_id, out)
        return EXIT_INTERRUPTED
    out.clear()
    elapsed = time.perf_counter() - progress.started
    out.log(
        f"wrote {args.output}: {size} bytes, {job['duration']:.2f} s of audio ({fmt}, "
        f"{job['sample_rate']} Hz), {progress.total} sentences in {elapsed:.1f} s"
    )
    return 0


def _follow(api: Api, job: dict[str, Any], progress: Progress, out: StatusLine) -> dict[str, Any]:
    """Poll the job until it is final, redrawing the status line; each change of status is
    also a log line (all a redirected stderr shows)."""
    path = f"{JOBS}/{job['id']}"
    progress.update(job)
    while job["status"] in RUNNING:
        out.update(progress.line())
        time.sleep(POLL_INTERVAL)
        job, _ = api.json("GET", path)
        changed = job["status"] != progress.status
        progress.update(job)
        if changed:
            out.log(f"{progress.status} ({progress.done}/{progress.total} sentences)")
    out.update(progress.line(), force=True)
    return job


def _cancel(api: Api, job_id: str, out: StatusLine) -> None:
    try:
        api.json("DELETE", f"{JOBS}/{job_id}")
    except (ApiError, Unreachable) as exc:
        out.log(f"voxline batch: interrupted; job {job_id} not cancelled: {exc}", always=True)
        return
    out.log(f"voxline batch: interrupted; job {job_id} cancelled", always=True)


def run_batch(args: argparse.Namespace) -> int:
    out = StatusLine(quiet=args.quiet)
    try:
        return batch(args, out)
    except KeyboardInterrupt:  # before the job existed
        out.clear()
        return EXIT_INTERRUPTED
    except UsageError as exc:
        print(f"voxline batch: {exc}", file=sys.stderr)
        return 2
    except Unreachable as exc:
        out.clear()
        print(f"voxline batch: {exc}", file=sys.stderr)
        return 2
    except ApiError as exc:
        out.clear()
        print(f"voxline batch: {exc}", file=sys.stderr)
        return 1
