"""The Pipecat adapter (voxline.pipecat) driven as a pipeline drives it, against a live voxline."""

from __future__ import annotations

import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import (  # noqa: E402
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData  # noqa: E402
from pipecat.pipeline.worker import PipelineParams  # noqa: E402
from pipecat.tests.utils import SleepFrame, run_test  # noqa: E402

from tests.harness import start_pipeline  # noqa: E402
from voxline.pipecat import VoxlineTTSService  # noqa: E402

RATE = 16000
PARAMS = PipelineParams(audio_out_sample_rate=RATE, enable_metrics=True)


def turn(*pieces: str) -> list[Frame]:
    """An LLM reply as the LLM service pushes it."""
    return [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(p) for p in pieces),
        LLMFullResponseEndFrame(),
    ]


def of(kind: type, frames: list[Frame]) -> list:  # type: ignore[type-arg]
    return [f for f in frames if isinstance(f, kind)]


async def test_a_reply_is_spoken_with_words_and_ttfb(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, engine="espeak") as p:
        tts = VoxlineTTSService(url=p.url)
        down, _ = await run_test(
            tts, frames_to_send=turn("Hello ", "world. How ", "are you?"), pipeline_params=PARAMS
        )
    assert tts.session is not None and tts.session["sample_rate"] == RATE  # resampled there
    kinds = [type(f) for f in down if isinstance(f, (TTSStartedFrame, TTSStoppedFrame))]
    assert kinds == [TTSStartedFrame, TTSStoppedFrame]  # one context: one utterance
    audio = of(TTSAudioRawFrame, down)
    assert audio and all(f.sample_rate == RATE and f.num_channels == 1 for f in audio)
    seconds = sum(len(f.audio) for f in audio) / 2 / RATE
    assert 0.8 < seconds < 4, seconds
    words = [f.text.strip(" .?") for f in of(TTSTextFrame, down)]
    assert words == ["Hello", "world", "How", "are", "you"], words
    # Word frames are timed from the turn's first sample: increasing, within the audio.
    times = [f.pts for f in of(TTSTextFrame, down)]
    assert times == sorted(times) and (times[-1] - times[0]) / 1e9 < seconds
    ttfb = [d for m in of(MetricsFrame, down) for d in m.data if isinstance(d, TTFBMetricsData)]
    measured = [d.value for d in ttfb if d.processor == tts.name and d.value > 0]
    assert len(measured) == 1 and measured[0] < 5, ttfb  # (a 0 is reported at start)


async def test_an_interruption_cancels_and_later_text_speaks(
    redis_url: str, key_prefix: str
) -> None:
    long = " ".join(f"Sentence {i} takes about a second at real time." for i in range(10))
    paced = {"rtf": "1.0", "chunk_ms": "20"}
    async with start_pipeline(redis_url, key_prefix, engine_options=paced) as p:
        tts = VoxlineTTSService(url=p.url)
        frames = [
            *turn(long),
            SleepFrame(0.6),
            InterruptionFrame(),
            SleepFrame(0.3),
            TTSSpeakFrame("After the interruption."),
        ]
        down, _ = await run_test(tts, frames_to_send=frames, pipeline_params=PARAMS)
        cancelled = p.total("cancelled")
    assert cancelled >= 1  # the sentence being synthesized was stopped at the worker
    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    before, after = down[:cut], down[cut:]
    first = of(TTSStartedFrame, before)[0].context_id
    assert sum(len(f.audio) for f in of(TTSAudioRawFrame, before)) / 2 / RATE < 3
    assert not [f for f in after if getattr(f, "context_id", None) == first]
    spoken = of(TTSAudioRawFrame, after)
    assert spoken and {f.context_id for f in spoken} != {first}
    assert isinstance(of(TTSStoppedFrame, after)[-1], TTSStoppedFrame)


async def test_a_lost_connection_is_reported_and_the_next_turn_reconnects(
    redis_url: str, key_prefix: str
) -> None:
    long = " ".join(f"Sentence {i} takes about a second at real time." for i in range(6))
    paced = {"rtf": "1.0", "chunk_ms": "20"}
    async with start_pipeline(
        redis_url, key_prefix, engine_options=paced, max_session_seconds=1.5
    ) as p:
        tts = VoxlineTTSService(url=p.url)
        frames = [*turn(long), SleepFrame(2.0), TTSSpeakFrame("Again.")]
        down, up = await run_test(tts, frames_to_send=frames, pipeline_params=PARAMS)
    errors = [f.error for f in up if isinstance(f, ErrorFrame)]
    assert any("session_expired" in e for e in errors), errors
    starts = of(TTSStartedFrame, down)
    assert len(starts) == 2 and len(of(TTSStoppedFrame, down)) == 2
    again = [f for f in of(TTSAudioRawFrame, down) if f.context_id == starts[1].context_id]
    assert again  # spoken on a new connection
