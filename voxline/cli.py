"""The `voxline` command: serve (embedded), api, worker, say."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence

from shared.config import DEFAULT_REDIS_URL, Settings
from shared.connections import redacted

DEFAULT_PORT = 8000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxline", description=__doc__)
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve", help="API and a worker in one process over in-memory Redis (no server needed)"
    )
    _add_http(serve, host="127.0.0.1")
    _add_engine(serve, default="espeak")
    serve.add_argument("--redis-url", default="memory://", help="default: in-memory (memory://)")

    api = sub.add_parser("api", help="the WebSocket front end (distributed mode)")
    _add_http(api, host="0.0.0.0")
    api.add_argument("--redis-url", default=None, help=f"default: {DEFAULT_REDIS_URL}")

    worker = sub.add_parser("worker", help="a TTS worker (distributed mode)")
    worker.add_argument("--redis-url", default=None, help=f"default: {DEFAULT_REDIS_URL}")
    _add_engine(worker, default="espeak")
    worker.add_argument("--worker-id", default=None, help="unique consumer name")
    worker.add_argument(
        "--heartbeat-file", default=None, help="touched on every heartbeat (container healthcheck)"
    )

    say = sub.add_parser("say", help="stream text to a voxline server and write the audio")
    say.add_argument("text", nargs="?", help="the text; '-' or absent reads stdin piece by piece")
    say.add_argument("-o", "--output", default=None, help="write a WAV file (default: play)")
    say.add_argument("--url", default=f"ws://127.0.0.1:{DEFAULT_PORT}")
    say.add_argument("--voice", default=None)
    say.add_argument("--speed", type=float, default=None)
    say.add_argument("--language", default=None)
    say.add_argument("--sample-rate", type=int, default=None)
    say.add_argument(
        "--api-key",
        default=os.environ.get("VOXLINE_API_KEY"),
        help="sent as a bearer token (default: $VOXLINE_API_KEY, which keeps it out of `ps`)",
    )

    hash_key = sub.add_parser(
        "hash-key", help="print the VOXLINE_API_KEYS entry of an API key (or of a new one)"
    )
    hash_key.add_argument(
        "key", nargs="?", help="the key; absent: read from stdin (keeps it out of shell history)"
    )
    hash_key.add_argument(
        "--new", action="store_true", help="make a random key; print it, then its entry"
    )
    hash_key.add_argument("--label", default=None, help="name the key in logs: LABEL=sha256:...")
    return parser


def _add_http(parser: argparse.ArgumentParser, *, host: str) -> None:
    parser.add_argument("--host", default=host)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--key-prefix", default=None, help="Redis key prefix (default voxline)")


def _add_engine(parser: argparse.ArgumentParser, *, default: str) -> None:
    parser.add_argument(
        "--engine", default=default, help="espeak (default), pocket-tts, vits or tone"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model of a neural engine: a local checkpoint directory or a hub id "
        "(same as --engine-opt model=...)",
    )
    parser.add_argument(
        "--engine-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="engine option, repeatable (e.g. --engine-opt rtf=0.5 for tone)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="most sentences this worker holds at once (default: what the engine measures "
        "it can keep real time with, or 1)",
    )
    if "--key-prefix" not in parser._option_string_actions:
        parser.add_argument("--key-prefix", default=None, help="Redis key prefix")


def _engine_options(pairs: Sequence[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--engine-opt wants KEY=VALUE, got {pair!r}")
        options[key.strip()] = value.strip()
    return options


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(redis_url=args.redis_url, key_prefix=args.key_prefix)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "say":
        from voxline.say import run_say

        return run_say(args)
    if args.command == "hash-key":
        return _run_hash_key(args)
    if args.command == "worker":
        return _run_worker(args)
    return _run_http(args)


def _run_hash_key(args: argparse.Namespace) -> int:
    from api.auth import AuthConfigError, check_label, hash_key, new_key

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


def _make_engine(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from worker.engines import load_engine

    try:
        options = _engine_options(args.engine_opt)
        if args.model is not None:
            options["model"] = args.model
        return load_engine(args.engine, options)
    except ValueError as exc:
        raise SystemExit(f"voxline: {exc}") from None


def _run_worker(args: argparse.Namespace) -> int:
    from worker.consumer import Worker

    worker = Worker(
        _settings(args),
        _make_engine(args),
        worker_id=args.worker_id,
        concurrency=args.concurrency,
        heartbeat_file=args.heartbeat_file,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_until_signal(worker.run()))
    return 0


async def _until_signal(coro) -> None:  # type: ignore[no-untyped-def]
    import signal

    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _run_http(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from api.server import Server

    settings = _settings(args)
    sidecar = None
    if args.command == "serve":
        from worker.consumer import Worker

        engine = _make_engine(args)

        @contextlib.asynccontextmanager
        async def sidecar() -> AsyncIterator[None]:
            worker = Worker(settings, engine, concurrency=args.concurrency)
            task = asyncio.create_task(worker.run())
            ready = asyncio.create_task(worker.ready.wait())
            await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()  # the worker failed to start: say why, loudly
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = create_app(settings, sidecar=sidecar)
    where = f"ws://{args.host}:{args.port}/v1/audio/speech/stream"
    print(f"voxline {args.command}: {where}  (redis: {redacted(settings.redis_url)})", flush=True)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level=args.log_level, ws="websockets-sansio"
    )
    Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
