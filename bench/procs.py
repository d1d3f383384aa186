"""What bench/chaos.py and bench/soak.py share: real processes (a `redis-server` of their own
on a free loopback port, `voxline api`, `voxline worker`) with their logs in one directory,
and a load client that streams utterances over many WebSocket sessions and classifies every
sentence it sent.

The `redis-server` launcher is the tests' own (tests/redis_servers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import websockets
from websockets.exceptions import ConnectionClosed

from voxline.shared.protocol import EXTENSIONS, PATH
from voxline.worker.engines.tone import ToneEngine

ROOT = Path(__file__).resolve().parent.parent
# The redis-server launcher is the tests' own; tests/ is not installed, the checkout is.
sys.path.insert(0, str(ROOT))
from tests.redis_servers import RedisBinaryMissing, RedisServer, free_port  # noqa: E402


def rss_mib(pid: int) -> float:
    """Resident set size of a process, from /proc (psutil is not a dependency)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --- processes ---------------------------------------------------------------------------


class RedisProc(RedisServer):
    """The tests' restartable `redis-server` (no persistence), its files in the run's logs."""

    def __init__(self, log_dir: Path) -> None:
        try:
            super().__init__(directory=log_dir / "redis")
        except RedisBinaryMissing as exc:
            raise SystemExit(str(exc)) from None
        self.dir.mkdir(parents=True, exist_ok=True)

    def stop(self, *, kill: bool = False) -> None:  # type: ignore[override]
        """SIGKILL (vanishes) or SIGTERM (closes its connections), and wait for the exit."""
        if kill:
            self.kill()
        else:
            super().stop()

    def dbsize(self) -> int:
        client = self.client()
        try:
            return int(client.dbsize())
        finally:
            client.close()


class ExternalRedis:
    """A Redis server that is already running (REDIS_URL): used as it is, never stopped; the
    caller gives the run a key prefix of its own."""

    def __init__(self, url: str) -> None:
        self.url = url

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def start(self) -> None:
        client = self.client()
        try:
            client.ping()
        except redis.RedisError as exc:
            raise SystemExit(f"Redis at {self.url} is unreachable: {exc}") from None
        finally:
            client.close()

    def stop(self, *, kill: bool = False) -> None:
        pass


class VoxProc:
    """One `python -m voxline ...` process with stdout and stderr in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self._log_file = self.log.open("ab")
        command = [sys.executable, "-m", "voxline", "--log-level", "info", *args]
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT
        )
        self.pid = self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._log_file.close()

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


class Stack:
    """Redis, one API and workers (the `tone` engine), started from `voxline` commands."""

    def __init__(
        self,
        log_dir: Path,
        settings: dict[str, str],
        *,
        engine_opts: tuple[str, ...] = ("rtf=1.0",),
        concurrency: int = 4,
        redis_url: str | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.settings = settings
        self.engine_opts = engine_opts
        self.concurrency = concurrency
        self.redis: RedisProc | ExternalRedis = (
            ExternalRedis(redis_url) if redis_url else RedisProc(log_dir)
        )
        self.api_port = free_port()
        self.api: VoxProc | None = None
        self.workers: list[VoxProc] = []
        self._next_worker = 0
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            **{f"VOXLINE_{name.upper()}": value for name, value in settings.items()},
        }

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.api_port}{PATH}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self, workers: int, timeout: float = 60.0) -> None:
        self.redis.start()
        self.api = VoxProc(
            "api",
            ["api", "--host", "127.0.0.1", "--port", str(self.api_port)]
            + ["--redis-url", self.redis.url],
            self.env,
            self.log_dir,
        )
        for _ in range(workers):
            self.start_worker()
        self.wait_ready(workers, timeout)

    def start_worker(self) -> VoxProc:
        """A new worker process with a new consumer name (never a dead one's: its pending
        jobs belong to the dead consumer until another worker claims them)."""
        worker_id = f"w{self._next_worker}"
        self._next_worker += 1
        opts = [arg for opt in self.engine_opts for arg in ("--engine-opt", opt)]
        worker = VoxProc(
            worker_id,
            ["worker", "--engine", "tone", *opts, "--concurrency", str(self.concurrency)]
            + ["--worker-id", worker_id, "--redis-url", self.redis.url],
            self.env,
            self.log_dir,
        )
        self.workers.append(worker)
        return worker

    def live_workers(self) -> list[VoxProc]:
        return [w for w in self.workers if w.alive]

    def readyz(self) -> tuple[int, dict[str, Any]]:
        try:
            reply = httpx.get(self.http_url + "/readyz", timeout=2)
            return reply.status_code, reply.json()
        except (httpx.HTTPError, ValueError):
            return 0, {}

    def wait_ready(self, workers: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for proc in [self.api, *self.workers]:
                if proc is not None and not proc.alive:
                    raise RuntimeError(f"{proc.name} exited; see {proc.log}")
            status, body = self.readyz()
            if status == 200 and body.get("workers", 0) >= workers:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the stack was not ready within {timeout} s: {body}")
            time.sleep(0.1)

    def worker_counters(self) -> dict[str, int]:
        """The registry counters of the live workers, summed (a Redis restart without
        persistence resets them: they count since the last one)."""
        totals: dict[str, int] = {}
        client = self.redis.client()
        try:
            for key in client.scan_iter(match="voxline:worker:*"):
                for name, value in client.hgetall(key).items():
                    if name not in (b"info", b"pid") and value.isdigit():
                        totals[name.decode()] = totals.get(name.decode(), 0) + int(value)
        except redis.RedisError:
            pass
        finally:
            client.close()
        return totals

    def close(self) -> None:
        for proc in [*self.workers, self.api]:
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.stop()
        self.redis.stop(kill=True)


# --- load client ---------------------------------------------------------------------------

# Plain words only: no abbreviation, initial or number the splitter could hold or split on.
WORDS = (
    "river window garden morning yellow basket silver thunder pocket candle meadow orange "
    "letter bridge forest marble violet engine harbor ladder summer winter autumn kettle "
    "mirror paper rocket saddle tunnel valley wonder anchor blanket copper dragon feather "
    "glacier hammer island jacket lantern magnet needle oyster pepper quartz ribbon shadow "
    "timber umbrella velvet walnut zephyr the quiet little bright every over under again"
).split()

_TONE = ToneEngine()


def expected_bytes(text: str) -> int:
    """PCM bytes the tone engine makes for `text` at speed 1 (s16le at its native rate)."""
    return _TONE.duration_samples(text, 1.0) * 2


def make_sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 7))]
    return " ".join(words).capitalize() + rng.choice(".!?")


def make_pieces(text: str, rng: random.Random) -> list[str]:
    """Cut text into LLM-token-sized pieces (2 to 12 characters)."""
    pieces, at = [], 0
    while at < len(text):
        step = rng.randint(2, 12)
        pieces.append(text[at : at + step])
        at += step
    return pieces


@dataclass(eq=False)
class SentenceRecord:
    text: str
    expected: int
    session_id: str
    utterance: int
    index: int
    sent_at: float = 0.0  # monotonic: the piece holding its last character was sent
    starts: int = 0
    start_text: str | None = None
    bytes: int = 0
    first_byte_at: float | None = None
    dones: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    concluded_at: float | None = None  # audio.done, or an explicit error without one
    outcome: str = ""  # delivered / errored / lost / hung
    detail: str = ""

    @property
    def name(self) -> str:
        return f"session {self.session_id} utterance {self.utterance} sentence {self.index}"


@dataclass(eq=False)
class _Utterance:
    index: int
    sentences: list[SentenceRecord]
    done: dict[str, Any] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Tally:
    """Every sentence sent, and what happened to the sessions that carried them."""

    records: list[SentenceRecord] = field(default_factory=list)
    sessions: int = 0  # sessions that got session.ready
    refused_connects: int = 0  # error overloaded / close 1013 before session.ready
    connect_failures: int = 0  # no WebSocket at all (the API unreachable)
    other_refusals: list[str] = field(default_factory=list)
    closed_midway: list[str] = field(default_factory=list)  # server closed mid-utterance
    framing_errors: list[str] = field(default_factory=list)  # protocol order violations
    utterances_without_done: int = 0

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.records if r.outcome == outcome)


class _Connection:
    """One WebSocket session: a reader task fills the records of the utterance in flight."""

    def __init__(self, ws: websockets.ClientConnection, session_id: str, tally: Tally) -> None:
        self.ws = ws
        self.session_id = session_id
        self.tally = tally
        self.utterances: dict[int, _Utterance] = {}
        self.current: _Utterance | None = None
        self.open: SentenceRecord | None = None  # between audio.start and audio.done
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.reader = asyncio.create_task(self._read())

    def _framing(self, what: str) -> None:
        self.tally.framing_errors.append(f"session {self.session_id}: {what}")

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.ws.recv()
                self._handle(frame, time.monotonic())
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd is not None else 1006
        finally:
            self.closed.set()
            for utt in self.utterances.values():
                utt.finished.set()

    def _record(self, message: dict[str, Any]) -> SentenceRecord | None:
        utt = self.utterances.get(message.get("utterance_index", -1))
        index = message.get("sentence_index", -1)
        if utt is None or not 0 <= index < len(utt.sentences):
            self._framing(f"message for an unknown sentence: {message}")
            return None
        return utt.sentences[index]

    def _handle(self, frame: str | bytes, now: float) -> None:
        if isinstance(frame, bytes):
            if self.open is None:
                self._framing(f"{len(frame)} binary bytes outside audio.start/audio.done")
                return
            self.open.bytes += len(frame)
            if self.open.first_byte_at is None:
                self.open.first_byte_at = now
            return
        message = json.loads(frame)
        kind = message.get("type")
        if kind == "audio.start":
            record = self._record(message)
            if self.open is not None:
                self._framing(f"audio.start inside {self.open.name}")
            if record is not None:
                record.starts += 1
                record.start_text = message.get("sentence_text")
            self.open = record
        elif kind == "audio.done":
            record = self._record(message)
            if record is not None and record is not self.open:
                self._framing(f"audio.done of {record.name} outside its audio.start")
            if record is not None:
                record.dones.append(message)
                record.concluded_at = record.concluded_at or now
            self.open = None
        elif kind == "error":
            # A sentence's error carries its sentence_index (and no utterance index): it
            # belongs to the utterance in flight (this client sends one at a time).
            index = message.get("sentence_index")
            if index is not None and self.current is not None:
                if 0 <= index < len(self.current.sentences):
                    record = self.current.sentences[index]
                    record.errors.append(message)
                    record.concluded_at = record.concluded_at or now
                    return
            self._framing(f"error outside a sentence: {message}")
        elif kind == "session.done":
            utt = self.utterances.get(message.get("utterance_index", -1))
            if utt is None:
                self._framing(f"session.done of an unknown utterance: {message}")
                return
            utt.done = message
            utt.finished.set()
        elif kind == "audio.words":
            return
        else:
            self._framing(f"unexpected message {message}")

    async def utterance(
        self,
        index: int,
        rng: random.Random,
        *,
        sentences: tuple[int, int],
        piece_delay: tuple[float, float],
        hung_after: float,
    ) -> bool:
        """Stream one utterance and wait for it; return False when the session is unusable
        (closed, or the utterance did not end within `hung_after` after input.done)."""
        texts = [make_sentence(rng) for _ in range(rng.randint(*sentences))]
        records = [
            SentenceRecord(t, expected_bytes(t), self.session_id, index, i)
            for i, t in enumerate(texts)
        ]
        utt = self.current = self.utterances[index] = _Utterance(index, records)
        self.tally.records.extend(records)
        text = " ".join(texts)
        ends = []  # offset just past each sentence's last character
        at = 0
        for t in texts:
            at += len(t)
            ends.append(at)
            at += 1
        sent, next_end = 0, 0
        try:
            for piece in make_pieces(text, rng):
                await self.ws.send(json.dumps({"type": "input.text", "text": piece}))
                sent += len(piece)
                now = time.monotonic()
                while next_end < len(ends) and ends[next_end] <= sent:
                    records[next_end].sent_at = now
                    next_end += 1
                await asyncio.sleep(rng.uniform(*piece_delay))
            await self.ws.send(json.dumps({"type": "input.done"}))
        except ConnectionClosed:
            pass
        for record in records:
            record.sent_at = record.sent_at or time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(utt.finished.wait(), hung_after)
        self._classify(utt)
        return utt.done is not None and not self.closed.is_set()

    def _classify(self, utt: _Utterance) -> None:
        if utt.done is None:
            self.tally.utterances_without_done += 1
            if self.closed.is_set():
                self.tally.closed_midway.append(
                    f"session {self.session_id} utterance {utt.index}: closed "
                    f"{self.close_code} before session.done"
                )
        elif utt.done.get("total_sentences") != len(utt.sentences):
            self._framing(f"session.done {utt.done} for {len(utt.sentences)} sentences")
        for r in utt.sentences:
            r.outcome, r.detail = _outcome(r, utt.done is not None, self.closed.is_set())


def _outcome(r: SentenceRecord, session_done: bool, closed: bool) -> tuple[str, str]:
    if len(r.dones) > 1:
        return "lost", f"{len(r.dones)} audio.done messages (duplicated)"
    if r.dones:
        done = r.dones[0]
        if done.get("error") or r.errors:
            return "errored", "; ".join(e.get("message", "") for e in r.errors) or "error: true"
        if done.get("cancelled"):
            return "lost", "cancelled, though the client never cancelled"
        if r.starts != 1 or r.start_text != r.text:
            return "lost", f"{r.starts} audio.start, sentence_text {r.start_text!r}"
        if done.get("total_bytes") == r.bytes == r.expected:
            return "delivered", ""
        return "lost", (
            f"bytes: expected {r.expected}, audio.done total_bytes {done.get('total_bytes')}, "
            f"received {r.bytes}"
        )
    if r.errors:
        return "errored", "; ".join(e.get("message", "") for e in r.errors) + " (no audio.done)"
    if session_done:
        return "lost", "session.done came without this sentence's audio.done"
    if closed:
        return "hung", "the connection closed with the sentence outstanding, no error"
    return "hung", "no audio.done and no session.done within the deadline"


@dataclass
class LoadConfig:
    utterances_per_session: tuple[int, int] = (2, 5)  # then the connection is closed, reopened
    sentences: tuple[int, int] = (2, 4)
    piece_delay: tuple[float, float] = (0.01, 0.06)  # between input.text pieces
    think: tuple[float, float] = (0.2, 1.0)  # between utterances
    hung_after: float = 60.0  # an utterance not ended this long after input.done is hung
    connect_backoff: tuple[float, float] = (0.5, 2.0)


async def session_slot(
    url: str, rng: random.Random, stop: asyncio.Event, tally: Tally, load: LoadConfig
) -> None:
    """Keep one session open (reopening it every few utterances, or after a refusal) until
    `stop`; the utterance in flight at `stop` is finished, not abandoned."""
    backoff = load.connect_backoff[0]
    while not stop.is_set():
        try:
            ws = await websockets.connect(
                url,
                max_size=None,
                open_timeout=10,
                close_timeout=5,
                subprotocols=[EXTENSIONS],
            )
        except (OSError, TimeoutError, websockets.InvalidHandshake):
            tally.connect_failures += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, load.connect_backoff[1])
            continue
        try:
            config = {"type": "session.config", "response_format": "pcm", "stream_audio": True}
            try:
                # A refusal may come (and the close with it) before the config is sent.
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(json.dumps(config))
                first = json.loads(await asyncio.wait_for(ws.recv(), 10))
            except (ConnectionClosed, TimeoutError) as exc:
                refused = isinstance(exc, ConnectionClosed) and exc.rcvd and exc.rcvd.code == 1013
                first = {"code": "overloaded"} if refused else {}
                if not refused:
                    tally.other_refusals.append(f"no session.ready: {exc!r}")
            if first.get("type") != "session.ready":
                if first.get("code") == "overloaded":
                    tally.refused_connects += 1
                elif first:
                    tally.other_refusals.append(str(first))
                await asyncio.sleep(backoff * rng.uniform(0.5, 1.0))
                backoff = min(backoff * 2, load.connect_backoff[1])
                continue
            backoff = load.connect_backoff[0]
            tally.sessions += 1
            conn = _Connection(ws, first["session_id"], tally)
            for index in range(rng.randint(*load.utterances_per_session)):
                if stop.is_set():
                    break
                ok = await conn.utterance(
                    index,
                    rng,
                    sentences=load.sentences,
                    piece_delay=load.piece_delay,
                    hung_after=load.hung_after,
                )
                if not ok:
                    break
                await asyncio.sleep(rng.uniform(*load.think))
            conn.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await conn.reader
        finally:
            with contextlib.suppress(Exception):
                await ws.close()
