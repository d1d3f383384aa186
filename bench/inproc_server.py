"""The in-process baseline of bench/pipeline.py: the engine called inside the WebSocket handler,
no queue, no Redis, no workers, as vllm-omni's `/v1/audio/speech/stream` runs it.

It speaks the subset of voxline's protocol the benchmark client uses (session.config,
input.text, input.flush, input.cancel; session.ready, audio.start, binary audio, audio.done)
with voxline's own splitter and message builders, and runs under the same uvicorn settings as
`voxline api`, so the only difference left is the queue path.

    python bench/inproc_server.py --port 8100 --engine-opt rtf=1 --engine-opt chunk_ms=80
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import uuid
from pathlib import Path

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from voxline.api.server import WS_OPTIONS  # noqa: E402
from voxline.shared import protocol  # noqa: E402
from voxline.shared.runtime import freeze_startup_objects  # noqa: E402
from voxline.speech.splitter import SentenceSplitter  # noqa: E402
from voxline.worker.engines import load_engine  # noqa: E402
from voxline.worker.engines.base import Cancellation, Engine, SynthesisRequest  # noqa: E402


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.websocket(protocol.PATH)
    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        config = json.loads(await ws.receive_text())
        voice = config.get("voice") or engine.info.default_voice
        rate = engine.info.sample_rate
        await ws.send_json(
            protocol.session_ready(uuid.uuid4().hex, "pcm", rate, voice, engine.info.name)
        )
        splitter = SentenceSplitter()
        sentences: asyncio.Queue[str] = asyncio.Queue()
        cancel = Cancellation()

        async def speak() -> None:
            index = 0
            while True:
                text = await sentences.get()
                request = SynthesisRequest(text=text, voice=voice)
                total = 0
                async for chunk in engine.synthesize(request, cancel):
                    if total == 0:
                        await ws.send_json(protocol.audio_start(0, index, text, "pcm", rate))
                    data = chunk.pcm.tobytes()
                    total += len(data)
                    await ws.send_bytes(data)
                await ws.send_json(protocol.audio_done(0, index, total))
                index += 1

        speaker = asyncio.create_task(speak())
        try:
            while True:
                message = json.loads(await ws.receive_text())
                kind = message.get("type")
                if kind == "input.text":
                    pieces = splitter.feed(message["text"])
                elif kind == "input.flush":
                    pieces = splitter.flush()
                elif kind == "input.cancel":
                    cancel.set()
                    pieces = []
                else:
                    pieces = []
                for piece in pieces:
                    sentences.put_nowait(piece)
        except WebSocketDisconnect:
            pass
        finally:
            cancel.set()
            speaker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await speaker

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--engine-opt", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    options = dict(opt.split("=", 1) for opt in args.engine_opt)
    app = create_app(load_engine("tone", options))
    freeze_startup_objects()  # as `voxline api` and `voxline worker` do
    # The same WebSocket settings as `voxline api`.
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", **WS_OPTIONS)


if __name__ == "__main__":
    main()
