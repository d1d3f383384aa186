"""Pocket TTS engine benchmark: continuous batching vs sequential generate(), in one run.

Builds the real-size model with random weights (no download), then for each N submits N
sentences at once to (a) the pocket-tts engine's batching scheduler, streaming every frame,
and (b) the baseline: one `model.generate()` + `processor.decode()` after another. Per N it
reports aggregate x-real-time, the slowest stream's x-real-time (its audio over the time from
submission to its last sample), time to first audio p50/p99 from submission, and the ratios;
and for each side `realtime_streams`, the largest N whose slowest stream stays >= 1x.

The baseline is sequential, so its N-sentence run is the first N sentences of one run of
max(N) sentences: it is measured once and read per N.

    python bench/engine.py --quick        # ~2 minutes on 2 CPU cores; last line is JSON
    python bench/engine.py --device cuda --dtype bfloat16 --max-n 256
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voxline.progress import note  # noqa: E402
from voxline.worker.engines.base import Cancellation, SynthesisRequest  # noqa: E402
from voxline.worker.engines.pocket.checkpoint import build_checkpoint  # noqa: E402
from voxline.worker.engines.pocket.engine import PocketTTSEngine  # noqa: E402
from voxline.worker.engines.pocket.scheduler import Stats  # noqa: E402

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank today."
DEFAULT_NS = [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32]
QUICK_NS = [1, 2, 4, 6, 8, 16]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def run_scheduler(engine: PocketTTSEngine, n: int, frames: int) -> dict:
    rate = engine.info.sample_rate
    start = time.perf_counter()

    async def one(i: int) -> tuple[float, float, int]:
        request = SynthesisRequest(text=SENTENCE, voice="alba", extra={"max_new_tokens": frames})
        first = last = 0.0
        samples = 0
        async for chunk in engine.synthesize(request, Cancellation()):
            now = time.perf_counter() - start
            first = first or now
            last = now
            samples += len(chunk.pcm)
        return first, last, samples

    results = await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - start
    return summarize(results, wall, rate)


def run_baseline(engine: PocketTTSEngine, n: int, frames: int) -> list[tuple[float, float, int]]:
    """Sequential generate() + whole-utterance decode, as a plain transformers server would."""
    scheduler = engine.scheduler
    model = scheduler.backbone.model
    processor = scheduler.voices.processor
    voice = scheduler.voices.shipped["alba"]
    rendered = processor.apply_chat_template(
        [
            {
                "role": "user",
                "content": [{"type": "audio", "audio": "v"}, {"type": "text", "text": SENTENCE}],
            }
        ],
        tokenize=False,
    )
    results = []
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(n):
            inputs = processor(text=rendered, audio_prompt_latents=[voice], return_tensors="pt")
            inputs = inputs.to(model.device)
            out = model.generate(**inputs, max_new_tokens=frames, return_dict_in_generate=True)
            wave = processor.decode(out.audio_latents, out.audio_latents_mask)[0]
            done = time.perf_counter() - start
            results.append((done, done, int(wave.shape[-1])))
    return results


def summarize(results: list[tuple[float, float, int]], wall: float, rate: int) -> dict:
    audio = [samples / rate for _, _, samples in results]
    slowest = min(a / last for a, (_, last, _) in zip(audio, results, strict=True))
    ttfa = [first * 1000 for first, _, _ in results]
    return {
        "aggregate_rtx": sum(audio) / wall,
        "slowest_rtx": slowest,
        "ttfa_p50_ms": pct(ttfa, 50),
        "ttfa_p99_ms": pct(ttfa, 99),
    }


def realtime_streams(rows: dict[int, dict]) -> int:
    best = 0
    for n in sorted(rows):
        if rows[n]["slowest_rtx"] >= 1.0:
            best = n
    return best


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N in 1,2,4,6,8,16; short sentences")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--frames", type=int, default=None, help="frames per sentence (80 ms)")
    parser.add_argument("--ns", default=None, help="comma-separated N values")
    parser.add_argument("--max-n", type=int, default=None, help="add N up to this (GPU runs)")
    parser.add_argument("--model", default=None, help="an existing checkpoint directory")
    args = parser.parse_args()

    ns = QUICK_NS if args.quick else DEFAULT_NS
    if args.ns:
        ns = [int(x) for x in args.ns.split(",")]
    if args.max_n:
        extra = [n for n in (48, 64, 96, 128, 192, 256) if n <= args.max_n]
        ns = sorted(set(ns) | set(extra))
    frames = args.frames or (25 if args.quick else 38)  # 2.0 s / 3.0 s of audio

    directory = args.model
    if directory is None:
        directory = tempfile.mkdtemp(prefix="pocket-full-")
        note(f"building a real-size checkpoint with random weights in {directory}")
        # An end-of-speech bias that never fires: every sentence runs exactly `frames`.
        build_checkpoint(directory, size="full", eos_bias=-20.0)
    engine = PocketTTSEngine(
        model=directory, device=args.device, dtype=args.dtype, max_slots=max(ns), seed=1
    )
    note(f"loading pocket-tts from {directory}")
    began = time.perf_counter()
    await engine.start()
    note(f"loaded in {time.perf_counter() - began:.1f} s")
    device = engine.device
    hardware = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"# pocket-tts, real size, random weights; {hardware}; {engine.dtype}; "
        f"{frames} frames ({frames * 0.08:.2f} s) per sentence"
    )

    rate = engine.info.sample_rate
    # On the engine's own torch thread, between scheduler steps: the same footing for both.
    note(f"baseline: {max(ns)} sentences, one generate() after another")
    base_runs = await asyncio.wrap_future(
        engine.scheduler.call(lambda: run_baseline(engine, max(ns), frames))
    )
    batched: dict[int, dict] = {}
    baseline: dict[int, dict] = {}
    header = (
        f"{'N':>4} {'agg x':>7} {'slow x':>7} {'ttfa50':>8} {'ttfa99':>8} | "
        f"{'base agg':>8} {'base slow':>9} {'base ttfa99':>11} | {'speedup':>7} {'ttfa/':>6} | "
        f"{'bb ms':>6} {'dec ms':>6}"
    )
    print(header)
    for n in ns:
        note(f"batched: N={n} sentences at once ({ns.index(n) + 1}/{len(ns)})")
        engine.scheduler.stats = Stats()
        batched[n] = await run_scheduler(engine, n, frames)
        st = engine.scheduler.stats
        steps = max(st.steps, 1)
        # Per step, over this N's run: the backbone (prefill included) and the codec.
        batched[n]["backbone_ms"] = st.backbone_s * 1000 / steps
        batched[n]["decoder_ms"] = st.decoder_s * 1000 / steps
        baseline[n] = summarize(base_runs[:n], base_runs[n - 1][1], rate)
        b, s = baseline[n], batched[n]
        print(
            f"{n:>4} {s['aggregate_rtx']:>7.2f} {s['slowest_rtx']:>7.2f} "
            f"{s['ttfa_p50_ms']:>8.0f} {s['ttfa_p99_ms']:>8.0f} | {b['aggregate_rtx']:>8.2f} "
            f"{b['slowest_rtx']:>9.2f} {b['ttfa_p99_ms']:>11.0f} | "
            f"{s['aggregate_rtx'] / b['aggregate_rtx']:>7.2f} "
            f"{b['ttfa_p99_ms'] / s['ttfa_p99_ms']:>6.1f} | "
            f"{s['backbone_ms']:>6.1f} {s['decoder_ms']:>6.1f}"
        )
    await engine.close()

    at = 16 if 16 in batched else max(batched)
    s, b = batched[at], baseline[at]
    print(
        json.dumps(
            {
                "engine": "pocket-tts",
                "concurrency": at,
                "aggregate_rtx": round(s["aggregate_rtx"], 3),
                "baseline_rtx": round(b["aggregate_rtx"], 3),
                "speedup": round(s["aggregate_rtx"] / b["aggregate_rtx"], 3),
                "ttfa_p50_ms": round(s["ttfa_p50_ms"], 1),
                "ttfa_p99_ms": round(s["ttfa_p99_ms"], 1),
                "baseline_ttfa_p99_ms": round(b["ttfa_p99_ms"], 1),
                "realtime_streams": realtime_streams(batched),
                "baseline_realtime_streams": realtime_streams(baseline),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
