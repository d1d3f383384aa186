"""The `voxline` command: serve (embedded), api, worker, arq, say, batch."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from voxline.shared import runtime
from voxline.shared.defaults import DEFAULT_REDIS_URL
from voxline.shared.logs import FORMATS, configure_logging

if TYPE_CHECKING:
    # Imported where used: it needs pydantic-settings, of the `server` extra (`voxline say`
    # runs on the SDK alone).
    from voxline.shared.config import Settings
    from voxline.worker.engines.base import Engine

DEFAULT_PORT = 8000
REDIS_URL_HELP = f"Redis server (default: $VOXLINE_REDIS_URL, else {DEFAULT_REDIS_URL})"

DESCRIPTIONS = {
    "serve": "Run the WebSocket front end, one TTS worker and the batch process in one process,\n"
    "over an in-memory Redis by default: no server, no download.",
    "api": "Run the WebSocket front end (/v1/audio/speech/stream) alone; workers started with\n"
    "`voxline worker` on the same Redis serve it. Settings: VOXLINE_<NAME> (shared/config.py).",
    "worker": "Run a TTS worker: it takes sentence jobs from the Redis Streams, synthesizes them\n"
    "with its engine and streams the audio back. Run any number of them.",
    "arq": "Run the batch process: it takes batch jobs (POST /v1/audio/speech/jobs) from arq's\n"
    "queue, splits their text, feeds the sentences to the workers behind the real-time traffic,\n"
    "assembles and encodes each file and stores it; it also runs the housekeeping cron. Run one\n"
    "or more beside the front ends, on the same Redis (a Cluster needs VOXLINE_ARQ_REDIS_URL).",
    "say": "Stream text to a voxline server as an LLM would (stdin is sent piece by piece as it\n"
    "arrives) and write the audio to a WAV file or play it. Each sentence is logged on stderr;\n"
    "on a terminal a progress line shows sentences done/queued, seconds of audio and the\n"
    "first-audio latency, and a summary line ends the run.",
    "batch": "Synthesize a whole text file as a batch job and download the result: the text is\n"
    "posted to /v1/audio/speech/jobs, a progress bar on stderr follows the job (polled every\n"
    "0.25 s), the file is written to -o once done, and a summary line ends the run. Ctrl-C\n"
    "cancels the job. Exit status: 0 done, 1 the server refused or the job failed, 2 a usage\n"
    "error or an unreachable server, 130 interrupted.",
    "hash-key": "Print the VOXLINE_API_KEYS entry of an API key: its hash, never the key. The key\n"
    "comes from the argument, stdin, or a prompt; --new makes a random one.",
}

EXAMPLES = {
    "voxline": """examples:
  voxline serve                                      # everything in one process
  voxline say "Hello world. How are you?" -o hello.wav
  voxline batch story.txt -o story.mp3               # a whole text, as one file
  voxline api --redis-url redis://127.0.0.1:6379/0   # distributed: one front end ...
  voxline worker --redis-url redis://127.0.0.1:6379/0 --engine espeak   # ... any workers""",
    "serve": """examples:
  voxline serve                                      # espeak voice, port 8000
  voxline serve --engine pocket-tts --model DIR      # a neural engine
  voxline serve --engine tone --engine-opt rtf=0.5 --port 9000""",
    "api": """examples:
  voxline api --redis-url redis://127.0.0.1:6379/0 --port 8000
  VOXLINE_API_KEYS="web=sha256:..." voxline api      # require API keys""",
    "worker": """examples:
  voxline worker --redis-url redis://127.0.0.1:6379/0 --engine espeak
  voxline worker --engine pocket-tts --model DIR --engine-opt device=cuda
  voxline worker --engine tone --engine-opt rtf=0.5 --concurrency 4""",
    "say": """examples:
  voxline say "Hello world. How are you?" -o hello.wav
  echo "Tokens can arrive piece by piece. Like this." | voxline say - -o piped.wav
  VOXLINE_API_KEY=vx_... voxline say --url ws://tts.example.com:8000 < story.txt""",
    "arq": """examples:
  voxline arq --redis-url redis://127.0.0.1:6379/0
  VOXLINE_BATCH_DIR=/var/lib/voxline/batch voxline arq   # large files go to a shared volume""",
    "batch": """examples:
  voxline batch story.txt -o story.mp3
  voxline batch chapter.txt -o chapter.ogg --voice en --speed 1.1   # .ogg: Ogg Opus
  cat notes.md | voxline batch - -o notes.raw --format pcm --sample-rate 16000""",
    "hash-key": """examples:
  voxline hash-key --new --label web                 # a new key, then its entry
  voxline hash-key < key.txt                         # the entry of an existing key""",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxline",
        description="voxline: streaming text-to-speech for voice bots: a WebSocket front end, "
        "Redis Streams\nand a pool of TTS workers. `voxline COMMAND --help` describes a command.",
        epilog=EXAMPLES["voxline"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level", default="info", help="debug, info, warning or error (default: info)"
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default=os.environ.get("VOXLINE_LOG_FORMAT", "text"),
        help="text (default), or json: one object per line with session_id and sentence "
        "(default: $VOXLINE_LOG_FORMAT)",
    )
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")

    serve = _command(
        sub, "serve", "API and a worker in one process over in-memory Redis (no server needed)"
    )
    _add_http(serve, host="127.0.0.1")
    _add_engine(serve, default="espeak")
    serve.add_argument(
        "--redis-url", default="memory://", help="Redis to use (default: memory://, in-memory)"
    )

    api = _command(sub, "api", "the WebSocket front end (distributed mode)")
    _add_http(api, host="0.0.0.0")
    api.add_argument("--redis-url", default=None, help=REDIS_URL_HELP)

    worker = _command(sub, "worker", "a TTS worker (distributed mode)")
    worker.add_argument("--redis-url", default=None, help=REDIS_URL_HELP)
    _add_engine(worker, default="espeak")
    worker.add_argument(
        "--worker-id", default=None, help="unique consumer name (default: HOST-PID-RANDOM)"
    )
    worker.add_argument(
        "--heartbeat-file",
        default=None,
        help="touched on every heartbeat, for a container healthcheck (default: none)",
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port (default: $VOXLINE_METRICS_PORT, or off)",
    )

    arq = _command(sub, "arq", "the batch process: batch jobs and housekeeping (distributed mode)")
    arq.add_argument("--redis-url", default=None, help=REDIS_URL_HELP)
    arq.add_argument("--key-prefix", default=None, help="Redis key prefix (default: voxline)")

    say = _command(sub, "say", "stream text to a voxline server and write or play the audio")
    say.add_argument("text", nargs="?", help="the text; '-' or absent reads stdin piece by piece")
    say.add_argument(
        "-o",
        "--output",
        default=None,
        help="write a WAV file (default: play it with aplay, paplay or ffplay)",
    )
    say.add_argument(
        "--url",
        default=f"ws://127.0.0.1:{DEFAULT_PORT}",
        help=f"the server (default: ws://127.0.0.1:{DEFAULT_PORT})",
    )
    say.add_argument(
        "--voice",
        default=None,
        help="a voice of the server's engine (default: the engine's default voice)",
    )
    say.add_argument("--speed", type=float, default=None, help="0.25 to 4.0 (default: 1.0)")
    say.add_argument("--language", default=None, help="a language the engine lists (default: Auto)")
    say.add_argument(
        "--sample-rate",
        type=int,
        default=None,
        help="8000 to 48000 Hz, resampled by the server (default: the engine's rate)",
    )
    say.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print errors only (default: log each sentence, and show progress on a terminal)",
    )
    say.add_argument(
        "--api-key",
        default=os.environ.get("VOXLINE_API_KEY"),
        help="sent as a bearer token (default: $VOXLINE_API_KEY, which keeps it out of `ps`)",
    )

    batch = _command(sub, "batch", "synthesize a text file as a batch job and download the file")
    batch.add_argument("file", help="the text file; '-' reads stdin")
    batch.add_argument(
        "-o", "--output", required=True, help="the audio file to write (required; no default)"
    )
    batch.add_argument(
        "--url",
        default=f"http://127.0.0.1:{DEFAULT_PORT}",
        help=f"the server (default: http://127.0.0.1:{DEFAULT_PORT})",
    )
    batch.add_argument(
        "--format",
        default=None,
        help="wav, pcm, mulaw, alaw, mp3, opus, aac or flac (default: from the -o extension: "
        ".ogg is opus, .ulaw mulaw)",
    )
    batch.add_argument(
        "--voice",
        default=None,
        help="a voice of the server's engine (default: the engine's default voice)",
    )
    batch.add_argument(
        "--sample-rate",
        type=int,
        default=None,
        help="8000 to 48000 Hz, one the format can carry (default: the format's for the engine)",
    )
    batch.add_argument("--speed", type=float, default=None, help="0.25 to 4.0 (default: 1.0)")
    batch.add_argument(
        "--language", default=None, help="a language the engine lists (default: Auto)"
    )
    batch.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print errors only (default: the job's id, status changes, progress on a "
        "terminal, and a summary)",
    )
    batch.add_argument(
        "--api-key",
        default=os.environ.get("VOXLINE_API_KEY"),
        help="sent as a bearer token (default: $VOXLINE_API_KEY, which keeps it out of `ps`)",
    )

    hash_key = _command(
        sub, "hash-key", "print the VOXLINE_API_KEYS entry of an API key (or of a new one)"
    )
    hash_key.add_argument(
        "key", nargs="?", help="the key; absent: read from stdin (keeps it out of shell history)"
    )
    hash_key.add_argument(
        "--new", action="store_true", help="make a random key; print it, then its entry"
    )
    hash_key.add_argument(
        "--label",
        default=None,
        help="name the key in logs: LABEL=sha256:... (default: none; logs show the hash's "
        "first 8 hex digits)",
    )
    return parser


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str
) -> argparse.ArgumentParser:
    """A subcommand: `summary` in the command list, its description and examples in its help."""
    return sub.add_parser(
        name,
        help=summary,
        description=DESCRIPTIONS[name],
        epilog=EXAMPLES[name],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_http(parser: argparse.ArgumentParser, *, host: str) -> None:
    parser.add_argument("--host", default=host, help=f"interface to listen on (default: {host})")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})"
    )
    parser.add_argument("--key-prefix", default=None, help="Redis key prefix (default: voxline)")


def _add_engine(parser: argparse.ArgumentParser, *, default: str) -> None:
    parser.add_argument(
        "--engine",
        default=default,
        help="espeak, kokoro, pocket-tts, vits, upstream or tone, an engine another package "
        "installs (entry points `voxline.engines`), or module:Class; vits defaults to MMS-TTS "
        "(facebook/mms-tts-eng), whose weights are CC-BY-NC-4.0: non-commercial use only "
        f"(default: {default})",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model of a neural engine: a local checkpoint directory or a hub id "
        "(same as --engine-opt model=...; default: the engine's own)",
    )
    parser.add_argument(
        "--engine-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="engine option, repeatable (e.g. --engine-opt rtf=0.5 for tone); one not given is "
        "read from VOXLINE_ENGINE_<KEY> if set (default: the engine's own)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="most sentences this worker holds at once (default: what the engine measures "
        "it can keep real time with, or 1)",
    )
    if "--key-prefix" not in parser._option_string_actions:
        parser.add_argument(
            "--key-prefix", default=None, help="Redis key prefix (default: voxline)"
        )


def _engine_options(pairs: Sequence[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--engine-opt wants KEY=VALUE, got {pair!r}")
        options[key.strip()] = value.strip()
    return options


def _settings(args: argparse.Namespace) -> Settings:
    from voxline.shared.config import Settings

    try:
        return Settings.from_env(
            redis_url=args.redis_url,
            key_prefix=args.key_prefix,
            metrics_port=getattr(args, "metrics_port", None),
        )
    except ValueError as exc:  # a bad VOXLINE_* value, named with its variable
        raise SystemExit(f"voxline: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configure_logging(args.log_level, args.log_format)
    except ValueError as exc:  # a bad level, or a bad VOXLINE_LOG_FORMAT
        raise SystemExit(f"voxline: {exc}") from None
    if args.command == "say":
        from voxline.say import run_say

        return run_say(args)
    if args.command == "batch":
        from voxline.batch_client import run_batch

        return run_batch(args)
    _require_server(args.command)
    if args.command == "hash-key":
        return _run_hash_key(args)
    if args.command == "arq":
        return _run_arq(args)
    if args.command == "worker":
        return _run_worker(args)
    return _run_http(args)


# What the `server` extra brings, by import name: the SDK alone (say, batch) needs none of it.
SERVER_MODULES = ("fastapi", "uvicorn", "redis", "arq", "fakeredis", "msgpack", "numpy", "av")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def _require_server(command: str) -> None:
    missing = [name for name in SERVER_MODULES if not _importable(name)]
    if missing:
        raise SystemExit(
            f"voxline {command}: this install is the SDK alone (missing: {', '.join(missing)}); "
            "the server needs its extra: pip install 'voxline[server]'"
        )


def _run_hash_key(args: argparse.Namespace) -> int:
    from voxline.api.auth import AuthConfigError, check_label, hash_key, new_key

    if args.new and args.key is not None:
        raise SystemExit("voxline hash-key: give a KEY or --new, not both")
    if args.new:
        key = new_key()
    elif args.key is not None:
        key = args.key
    elif sys.stdin.isatty():
        import getpass

        key = getpass.getpass("API key: ")
    else:
        key = sys.stdin.read().strip()
    if not key:
        raise SystemExit("voxline hash-key: the key is empty")
    try:
        label = "" if args.label is None else check_label(args.label) + "="
    except AuthConfigError as exc:
        raise SystemExit(f"voxline hash-key: {exc}") from None
    if args.new:
        print(key)
        print(
            "above: the new key, for the client (it is stored nowhere else); below: its "
            "VOXLINE_API_KEYS entry",
            file=sys.stderr,
        )
    print(label + hash_key(key))
    return 0


def _make_engine(args: argparse.Namespace) -> Engine:
    from voxline.worker.engines import load_engine

    try:
        options = _engine_options(args.engine_opt)
        if args.model is not None:
            options["model"] = args.model
        engine = load_engine(args.engine, options)
    except ValueError as exc:
        raise SystemExit(f"voxline: {exc}") from None
    _log_loading(engine, args.engine, options.get("model") or getattr(engine, "model_id", None))
    return engine


# `engine` (an Engine) is left unannotated: its start() is replaced, which mypy refuses on a
# method.
def _log_loading(engine, name: str, model: str | None) -> None:
    """Log around the engine's `start()`, where the worker loads its model (seconds to minutes
    for a neural engine: without this, a worker looks hung)."""
    start = engine.start
    source = f" from {model}" if model else ""
    log = logging.getLogger("voxline")

    async def timed_start() -> None:
        log.info("loading the %s engine%s...", name, source)
        began = time.perf_counter()
        await start()
        log.info("%s engine loaded in %.1f s", name, time.perf_counter() - began)

    engine.start = timed_start


def _run_worker(args: argparse.Namespace) -> int:
    from voxline.worker.consumer import Worker

    settings = _settings(args)
    if settings.metrics_port:
        _serve_metrics(settings.metrics_port)
    worker = Worker(
        settings,
        _make_engine(args),
        worker_id=args.worker_id,
        concurrency=args.concurrency,
        heartbeat_file=args.heartbeat_file,
    )
    from voxline.worker.engines.base import EngineUnavailable

    try:
        with contextlib.suppress(KeyboardInterrupt):
            runtime.run(_until_signal(worker.run()))
    except EngineUnavailable as exc:
        raise SystemExit(f"voxline worker: {exc}") from None
    return 0


def _run_arq(args: argparse.Namespace) -> int:
    from voxline.batch.arq_worker import run_arq
    from voxline.batch.connections import ArqUnavailable

    settings = _settings(args)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            runtime.run(_until_signal(run_arq(settings)))
    except ArqUnavailable as exc:
        raise SystemExit(f"voxline arq: {exc}") from None
    return 0


def _serve_metrics(port: int) -> None:
    """Prometheus metrics of this process, from a thread of prometheus_client's; started before
    the engine loads, so a slow model load shows as a live target."""
    from prometheus_client import start_http_server

    try:
        start_http_server(port)
    except OSError as exc:
        raise SystemExit(f"voxline: cannot serve metrics on port {port}: {exc}") from None


async def _until_signal(coro: Coroutine[Any, Any, object]) -> None:
    import signal

    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _report_arq_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logging.getLogger("voxline").error(
            "the embedded arq process stopped; batch jobs wait: %s", exc, exc_info=exc
        )


def _run_http(args: argparse.Namespace) -> int:
    import uvicorn

    from voxline.api.app import create_app
    from voxline.api.server import WS_OPTIONS, Server

    settings = _settings(args)
    sidecar = None
    if args.command == "serve":
        from voxline.worker.consumer import Worker

        engine = _make_engine(args)

        @contextlib.asynccontextmanager
        async def sidecar() -> AsyncIterator[None]:
            from voxline.batch.arq_worker import run_arq

            worker = Worker(settings, engine, concurrency=args.concurrency)
            task = asyncio.create_task(worker.run())
            ready = asyncio.create_task(worker.ready.wait())
            await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                from voxline.worker.engines.base import EngineUnavailable

                try:
                    task.result()  # the worker failed to start: say why, loudly
                except EngineUnavailable as exc:
                    logging.getLogger("voxline").error("voxline serve: %s", exc)
                    raise
            # The batch process too, so the batch routes work in the embedded mode.
            arq = asyncio.create_task(run_arq(settings), name="arq")
            arq.add_done_callback(_report_arq_end)
            try:
                yield
            finally:
                # arq first: it puts its running jobs back while the worker still serves.
                for running in (arq, task):
                    running.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await running

    app = create_app(settings, sidecar=sidecar)
    where = f"ws://{args.host}:{args.port}/v1/audio/speech/stream"
    from voxline.shared.connections import redacted

    banner = f"voxline {args.command}: {where}  (redis: {redacted(settings.redis_url)})"
    if args.log_format == "json":
        logging.getLogger("voxline").info("%s", banner)  # every output line is JSON
    else:
        print(banner, flush=True)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        **WS_OPTIONS,  # type: ignore[arg-type]
        # json: uvicorn's loggers propagate to the root handler configure_logging installed.
        log_config=None if args.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
    )
    Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
