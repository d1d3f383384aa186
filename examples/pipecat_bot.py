"""A tiny Pipecat bot that speaks through voxline: a Pipeline of VoxlineTTSService and a
processor that writes the audio it hears to a WAV file, run by Pipecat's PipelineWorker and
WorkerRunner. In a real bot the text comes from an LLM and the audio goes to a transport:
`Pipeline([transport.input(), stt, user_aggregator, llm, tts, transport.output(), ...])`.

    .venv/bin/voxline serve                      # a voxline server (espeak) on :8000
    .venv/bin/python examples/pipecat_bot.py "Hello from Pipecat." -o bot.wav
    .venv/bin/python examples/pipecat_bot.py --url ws://tts.internal:8000 --language de-DE \\
        "Hallo aus Pipecat." -o hallo.wav
"""

from __future__ import annotations

import argparse
import asyncio
import wave
from pathlib import Path

from pipecat.frames.frames import EndFrame, Frame, TTSAudioRawFrame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transcriptions.language import Language
from pipecat.workers.runner import WorkerRunner

from voxline.pipecat import VoxlineTTSService

SAMPLE_RATE = 16000  # the pipeline's output rate: voxline resamples to it


class WavWriter(FrameProcessor):
    """Writes the TTS audio that reaches it to a mono 16-bit WAV file (where a transport's
    output would play it)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.frames = 0
        self._wav: wave.Wave_write | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            if self._wav is None:
                self._wav = wave.open(str(self.path), "wb")
                self._wav.setnchannels(frame.num_channels)
                self._wav.setsampwidth(2)
                self._wav.setframerate(frame.sample_rate)
            self._wav.writeframes(frame.audio)
            self.frames += 1
        elif isinstance(frame, EndFrame) and self._wav is not None:
            self._wav.close()
            self._wav = None
        await self.push_frame(frame, direction)


async def main(
    url: str = "ws://127.0.0.1:8000",
    text: str = "Hello from Pipecat. This is voxline speaking.",
    out: Path | str = "bot.wav",
    *,
    voice: str | None = None,
    language: Language | str | None = Language.EN_US,
    api_key: str | None = None,
) -> int:
    """Speak `text` through the voxline server at `url` into the WAV file `out`; returns the
    number of audio frames written."""
    tts = VoxlineTTSService(
        url=url,
        api_key=api_key,
        voice=voice,
        settings=VoxlineTTSService.Settings(language=language),
    )
    writer = WavWriter(Path(out))
    worker = PipelineWorker(
        Pipeline([tts, writer]), params=PipelineParams(audio_out_sample_rate=SAMPLE_RATE)
    )

    @worker.event_handler("on_pipeline_started")
    async def speak(worker: PipelineWorker, frame: Frame) -> None:
        # EndFrame lets the speech finish, then stops the pipeline (and the runner).
        await worker.queue_frames([TTSSpeakFrame(text), EndFrame()])

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()
    return writer.frames


def _cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("text", nargs="?", default="Hello from Pipecat. This is voxline speaking.")
    parser.add_argument("-o", "--out", default="bot.wav", help="the WAV file (default: bot.wav)")
    parser.add_argument("--url", default="ws://127.0.0.1:8000", help="the voxline server")
    parser.add_argument("--voice", default=None, help="a voice of the server's engine")
    parser.add_argument(
        "--language", default="en-US", help="a Pipecat language (en-US) or 'auto' for the engine's"
    )
    parser.add_argument("--api-key", default=None, help="for servers with VOXLINE_API_KEYS set")
    args = parser.parse_args()
    language = None if args.language.lower() == "auto" else args.language
    frames = asyncio.run(
        main(
            args.url, args.text, args.out, voice=args.voice, language=language, api_key=args.api_key
        )
    )
    print(f"{args.out}: {frames} audio frames")


if __name__ == "__main__":
    _cli()
