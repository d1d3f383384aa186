"""Pipeline benchmarks: what the queue costs, how many real-time streams one front end relays,
how fast a cancel reaches the worker, and whether workers add up.

Everything runs as real processes: a `redis-server` of its own (or the one at --redis-url,
under a key prefix of the run's own), `voxline api`, `voxline worker --engine tone`, the
in-process baseline (bench/inproc_server.py) and the load client (bench/loadgen.py), so what
each costs is measured apart. The `tone` engine stands for the model, so only the pipeline is
measured:

1. overhead: time to first audio at N concurrent sessions, voxline against the baseline (the
   same engine inside the WebSocket handler, no queue), levels interleaved in one run.
2. relay: the most real-time streams (24 kHz PCM, 80 ms chunks) one API process relays with
   chunk relay latency p99 under 20 ms and no underrun of a 100 ms client jitter buffer.
3. cancel: from `input.cancel` and from a dropped connection to the worker's last generated
   chunk of that session, and the chunks generated after the cancel.
4. scaling: aggregate throughput of 1, 2 and 3 workers whose engine is a device with a fixed
   time per chunk (`device_ms`), as ratios to one worker.

The last line printed is one JSON object (the figures the issue asks for); tables go before it.

    python bench/pipeline.py --quick            # under 3 minutes
    python bench/pipeline.py --plot docs/pipeline_ttfa.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.procs import ROOT, Stack, free_port  # noqa: E402
from voxline.progress import note  # noqa: E402
from voxline.shared.protocol import PATH  # noqa: E402

CHUNK_MS = 80
# ttfa: sentences of ~1 s of audio (38 characters at 25 ms each), made at real time.
TTFA_ENGINE = ("rtf=1", f"chunk_ms={CHUNK_MS}", "ms_per_char=25")
RELAY_ENGINE = ("rtf=1", f"chunk_ms={CHUNK_MS}", "ms_per_char=40", "stamp=1")
DEVICE_MS = 10  # scaling: each 80 ms chunk holds the worker's device for 10 ms
SCALING_ENGINE = ("rtf=0", f"chunk_ms={CHUNK_MS}", "ms_per_char=25", f"device_ms={DEVICE_MS}")
RELAY_P99_MS = 20.0


@dataclass(frozen=True)
class Plan:
    levels: tuple[int, ...]
    ttfa_seconds: float
    think: float  # seconds between a sentence's audio.done and the next, drawn from [0, think]
    relay_start: int
    relay_step: int
    relay_max: int
    relay_chars: int  # one stream's sentence: chars * 40 ms of audio
    cancel_sessions: int
    scaling_seconds: float


QUICK = Plan((1, 10, 100, 300), 8, 1.0, 500, 100, 800, 150, 60, 6)
FULL = Plan((1, 10, 30, 100, 200, 300), 15, 1.0, 300, 100, 2000, 250, 200, 12)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def client(scenario: str, spec: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    """Run the load client in a process of its own and return its JSON."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "loadgen.py"), scenario, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen {scenario} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Baseline:
    """bench/inproc_server.py in a process of its own."""

    def __init__(self, log_dir: Path, engine_opts: tuple[str, ...]) -> None:
        self.port = free_port()
        opts = [arg for opt in engine_opts for arg in ("--engine-opt", opt)]
        self._log = (log_dir / "baseline.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "inproc_server.py"), "--port", str(self.port)]
            + opts,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).is_success:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the baseline server did not start; see {self._log.name}")
            time.sleep(0.1)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{PATH}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._log.close()


def start_stack(
    logs: Path,
    scenario: str,
    redis_url: str | None,
    engine_opts: tuple[str, ...],
    *,
    concurrency: int,
    workers: int,
) -> Stack:
    """A scenario's own Redis (or a key prefix of its own on --redis-url), API and workers."""
    (logs / scenario).mkdir()
    settings = {"max_sessions": "5000", "max_sessions_per_client": "0"}  # one host, many sessions
    if redis_url:
        settings["key_prefix"] = f"bench-{uuid.uuid4().hex[:8]}"
    stack = Stack(
        logs / scenario,
        settings,
        engine_opts=engine_opts,
        concurrency=concurrency,
        redis_url=redis_url,
    )
    stack.start(workers=workers)
    return stack


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 0.5),
        "p90": pct(values, 0.9),
        "p99": pct(values, 0.99),
        "max": max(values, default=float("nan")),
    }


# --- 1. overhead --------------------------------------------------------------------------


def overhead(plan: Plan, logs: Path, redis_url: str | None) -> list[dict[str, Any]]:
    stack = start_stack(logs, "overhead", redis_url, TTFA_ENGINE, concurrency=2000, workers=1)
    baseline = Baseline(logs / "overhead", TTFA_ENGINE)
    rows = []
    try:
        for n in plan.levels:
            row: dict[str, Any] = {"sessions": n}
            for name, url in (("baseline", baseline.ws_url), ("voxline", stack.ws_url)):
                note(f"overhead: {name}, {n} sessions, {plan.ttfa_seconds:g} s")
                spec = {"url": url, "sessions": n, "duration": plan.ttfa_seconds}
                result = client("ttfa", {**spec, "think": plan.think})
                if result["errors"]:
                    raise RuntimeError(f"{name} at {n} sessions: {result['errors'][:3]}")
                row[name] = summary(result["samples_ms"])
            row["added_p50"] = row["voxline"]["p50"] - row["baseline"]["p50"]
            row["added_p99"] = row["voxline"]["p99"] - row["baseline"]["p99"]
            rows.append(row)
    finally:
        baseline.close()
        stack.close()
    return rows


# --- 2. relay capacity --------------------------------------------------------------------


def relay(plan: Plan, logs: Path, redis_url: str | None) -> dict[str, Any]:
    stack = start_stack(logs, "relay", redis_url, RELAY_ENGINE, concurrency=5000, workers=2)
    assert stack.api is not None
    pids = {"api": stack.api.pid, **{w.name: w.pid for w in stack.workers}}
    if isinstance(getattr(stack.redis, "proc", None), subprocess.Popen):
        pids["redis"] = stack.redis.proc.pid  # type: ignore[union-attr]
    levels: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    n, direction = plan.relay_start, 0
    try:
        while plan.relay_step <= n <= plan.relay_max:
            note(f"relay: {n} streams")
            spec = {
                "url": stack.ws_url,
                "streams": n,
                "chars": plan.relay_chars,
                "spread": CHUNK_MS / 1000 * 10,
                "cpu_pids": list(pids.values()),
            }
            result = client("relay", spec)
            level = {
                **summary(result["latencies_ms"]),
                "streams": n,
                "chunks": result["chunks"],
                "underruns": len(result["late_ms"]),
                "errors": len(result["errors"]),
                "cpu": {name: result["cpu_pct"].pop(str(pid)) for name, pid in pids.items()},
            }
            level["cpu"]["client"] = next(iter(result["cpu_pct"].values()))
            level["ok"] = (
                level["p99"] < RELAY_P99_MS and not level["underruns"] and not level["errors"]
            )
            levels.append(level)
            note(
                f"  p50 {level['p50']:.2f} ms, p99 {level['p99']:.2f} ms, "
                f"underruns {level['underruns']}, api cpu {level['cpu']['api']}%"
            )
            if level["ok"]:
                best = level if best is None or n > best["streams"] else best
                if direction < 0:
                    break
                direction = 1
                n += plan.relay_step
            else:
                if direction > 0:
                    break
                direction = -1
                n -= plan.relay_step
    finally:
        stack.close()
    return {"levels": levels, "best": best}


# --- 3. cancellation ----------------------------------------------------------------------


def cancellation(plan: Plan, logs: Path, redis_url: str | None) -> dict[str, Any]:
    stack = start_stack(logs, "cancel", redis_url, RELAY_ENGINE, concurrency=2000, workers=1)
    out: dict[str, Any] = {}
    try:
        for how in ("cancel", "disconnect"):
            note(f"cancel: {plan.cancel_sessions} sessions, by {how}")
            result = client(
                "cancel",
                {
                    "url": stack.ws_url,
                    "redis_url": stack.redis.url,
                    "key_prefix": stack.settings.get("key_prefix", "voxline"),
                    "sessions": plan.cancel_sessions,
                    "chars": 200,
                    "how": how,
                    "spread": 2.0,
                },
            )
            if result["errors"]:
                raise RuntimeError(f"cancel by {how}: {result['errors'][:3]}")
            after = result["chunks_after"]
            out[how] = {
                **summary(result["latencies_ms"]),
                "chunks_after": sum(after),
                "with_chunks_after": sum(1 for a in after if a),
                "notify_p50": pct(result["notify_ms"], 0.5),
                "notify_p99": pct(result["notify_ms"], 0.99),
                # Each chunk after the cancel cost its compute: CHUNK_MS at rtf 1.
                "compute_after_ms_per_cancel": sum(after) * CHUNK_MS / max(len(after), 1),
            }
    finally:
        stack.close()
    return out


# --- 4. scaling ---------------------------------------------------------------------------


def scaling(plan: Plan, logs: Path, redis_url: str | None) -> dict[str, Any]:
    stack = start_stack(logs, "scaling", redis_url, SCALING_ENGINE, concurrency=4, workers=1)
    rates: dict[int, float] = {}
    try:
        for workers in (1, 2, 3):
            if workers > 1:
                stack.start_worker()
                stack.wait_ready(workers, 60)
            note(f"scaling: {workers} workers, {plan.scaling_seconds:g} s")
            result = client(
                "throughput",
                {
                    "url": stack.ws_url,
                    "sessions": 24,
                    "sentences": 4,
                    "warmup": 2.0,
                    "duration": plan.scaling_seconds,
                },
            )
            if result["errors"]:
                raise RuntimeError(f"scaling, {workers} workers: {result['errors'][:3]}")
            rates[workers] = result["audio_seconds_per_s"]
    finally:
        stack.close()
    ideal = CHUNK_MS / DEVICE_MS  # audio seconds per second one device can make
    return {
        "audio_x": rates,
        "ideal_x_per_worker": ideal,
        "scaling_2w": rates[2] / rates[1],
        "scaling_3w": rates[3] / rates[1],
    }


# --- report -------------------------------------------------------------------------------


def tables(over: list[dict[str, Any]], rel: dict[str, Any], can: dict[str, Any], sc: dict) -> str:
    return "\n\n".join(
        part
        for part in (
            overhead_table(over) if over else "",
            relay_table(rel) if rel["levels"] else "",
            cancel_table(can) if can else "",
            scaling_table(sc) if sc else "",
        )
        if part
    )


def overhead_table(over: list[dict[str, Any]]) -> str:
    lines = [
        "### Time to first audio (ms) against concurrent sessions",
        "",
        "| sessions | n (base / vox) | baseline p50 | baseline p99 | voxline p50 | voxline p99 "
        "| added p50 | added p99 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in over:
        b, v = row["baseline"], row["voxline"]
        lines.append(
            f"| {row['sessions']} | {b['n']} / {v['n']} | {b['p50']:.2f} | {b['p99']:.2f} "
            f"| {v['p50']:.2f} | {v['p99']:.2f} | {row['added_p50']:+.2f} "
            f"| {row['added_p99']:+.2f} |"
        )
    return "\n".join(lines)


def relay_table(rel: dict[str, Any]) -> str:
    lines = [
        "### Relay: real-time streams through one API process",
        "",
        "| streams | chunks | relay p50 ms | relay p99 ms | max ms | underruns | API CPU % "
        "| worker CPU % | Redis CPU % | client CPU % | ok |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for level in sorted(rel["levels"], key=lambda lv: lv["streams"]):
        cpu = level["cpu"]
        workers = "+".join(str(v) for k, v in cpu.items() if k.startswith("w"))
        lines.append(
            f"| {level['streams']} | {level['chunks']} | {level['p50']:.2f} | {level['p99']:.2f} "
            f"| {level['max']:.1f} | {level['underruns']} | {cpu['api']} | {workers} "
            f"| {cpu.get('redis', '-')} | {cpu['client']} | {'yes' if level['ok'] else 'no'} |"
        )
    return "\n".join(lines)


def cancel_table(can: dict[str, Any]) -> str:
    lines = [
        "### Cancellation: to the worker's last generated chunk",
        "",
        "| trigger | cancels | p50 ms | p99 ms | max ms | chunks after | compute after, ms "
        "per cancel | cancel on the workers' channel p50 / p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for how, c in can.items():
        lines.append(
            f"| {how} | {c['n']} | {c['p50']:.2f} | {c['p99']:.2f} | {c['max']:.2f} "
            f"| {c['chunks_after']} | {c['compute_after_ms_per_cancel']:.2f} "
            f"| {c['notify_p50']:.2f} / {c['notify_p99']:.2f} |"
        )
    return "\n".join(lines)


def scaling_table(sc: dict[str, Any]) -> str:
    x = sc["audio_x"]
    lines = [
        f"### Scaling: device-bound workers ({DEVICE_MS} ms per {CHUNK_MS} ms chunk, "
        f"ideal {sc['ideal_x_per_worker']:g}x real time each)",
        "",
        "| workers | audio s per s | ratio to 1 worker |",
        "|---:|---:|---:|",
    ]
    for workers, rate in sorted(x.items()):
        lines.append(f"| {workers} | {rate:.2f} | {rate / x[1]:.2f} |")
    return "\n".join(lines)


def plot(over: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [row["sessions"] for row in over]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, color in (("voxline", "tab:blue"), ("baseline", "tab:gray")):
        label = "voxline (API + Redis + worker)" if name == "voxline" else "in-process baseline"
        ax.plot(n, [r[name]["p50"] for r in over], "o-", color=color, label=f"{label} p50")
        ax.plot(n, [r[name]["p99"] for r in over], "s--", color=color, label=f"{label} p99")
    ax.set_xscale("log")
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("time to first audio (ms)")
    ax.set_title(f"TTFA with the tone engine ({CHUNK_MS} ms first chunk at real time)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="voxline pipeline benchmarks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--quick", action="store_true", help="the short run (under 3 minutes)")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="use this Redis (a key prefix of the run's own) instead of starting a "
        "redis-server (default: $REDIS_URL, else a redis-server of the run's own)",
    )
    parser.add_argument("--plot", type=Path, help="write the TTFA plot here (PNG)")
    parser.add_argument(
        "--only",
        choices=("overhead", "relay", "cancel", "scaling"),
        action="append",
        help="run only these scenarios (default: all)",
    )
    parser.add_argument(
        "--levels", type=lambda v: tuple(int(x) for x in v.split(",")), help="overhead levels"
    )
    parser.add_argument("--results", type=Path, help="write every figure here (JSON)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.levels:
        plan = dataclasses.replace(plan, levels=args.levels)
    only = set(args.only or ("overhead", "relay", "cancel", "scaling"))
    logs = Path(tempfile.mkdtemp(prefix="voxline-pipeline-"))
    began = time.monotonic()
    try:
        over = overhead(plan, logs, args.redis_url) if "overhead" in only else []
        rel = relay(plan, logs, args.redis_url) if "relay" in only else {"levels": []}
        can = cancellation(plan, logs, args.redis_url) if "cancel" in only else {}
        sc = scaling(plan, logs, args.redis_url) if "scaling" in only else None
    finally:
        if args.keep_logs:
            note(f"logs kept in {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)
    print(tables(over, rel, can, sc))
    if args.results:
        args.results.write_text(
            json.dumps({"overhead": over, "relay": rel, "cancel": can, "scaling": sc}, indent=1)
        )
    if args.plot and over:
        plot(over, args.plot)
        note(f"plot written to {args.plot}")
    at100 = next((row for row in over if row["sessions"] == 100), None)
    best = rel.get("best")
    figures = {
        "overhead_p50_ms": round(at100["added_p50"], 2) if at100 else None,
        "overhead_p99_ms": round(at100["added_p99"], 2) if at100 else None,
        "relay_streams": best["streams"] if best else 0,
        "relay_cpu_pct": best["cpu"]["api"] if best else None,
        "cancel_p99_ms": round(max(c["p99"] for c in can.values()), 2) if can else None,
        "scaling_2w": round(sc["scaling_2w"], 3) if sc else None,
        "scaling_3w": round(sc["scaling_3w"], 3) if sc else None,
        "seconds": round(time.monotonic() - began, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
