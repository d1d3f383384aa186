"""Chaos: SIGKILL workers and restart Redis under load; no sentence may be lost or hang.

Starts a `redis-server` of its own on a free loopback port, one `voxline api` and three
`voxline worker` processes (the `tone` engine paced at real time), drives concurrent
WebSocket sessions that stream utterances in LLM-sized pieces, and meanwhile, at random
moments (seeded), SIGKILLs a worker (a new worker process with a new id replaces it after a
short delay) or restarts Redis (SIGKILL or SIGTERM, down 1-2 s, back on the same port, no
persistence). Every sentence sent is classified:

- delivered: exactly one audio.start and audio.done, `error: false`, and total_bytes equal to
  the bytes received and to what the tone engine makes for that text;
- errored: an explicit `error` with its sentence_index and/or `audio.done` with `error: true`;
- lost: session.done came without its audio.done, or it was "delivered" with a wrong,
  duplicated or cancelled byte count;
- hung: neither audio.done nor session.done within --hung-after seconds after input.done, or
  the connection closed with the sentence outstanding and no explicit error.

Sessions refused at connect while Redis is down (error `overloaded`, close 1013) are retried
after a backoff and counted as refused_connects (they carry no sentence).

Recovery time of a fault (the same rule for both kinds): from the fault until both (a) every
sentence the fault hit has its final outcome at the client, and (b) a sentence whose text
was sent after the fault has been delivered whole. Hit by a worker kill: the jobs pending on
the victim's consumer when it was killed; by a Redis restart: every sentence sent and not yet
concluded when Redis was stopped.

    python bench/chaos.py --quick            # under 3 minutes; last line: one JSON object
    python bench/chaos.py --duration 600 --worker-kills 20 --redis-restarts 6 --seed 7
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from procs import LoadConfig, SentenceRecord, Stack, Tally, session_slot

from voxline.progress import note
from voxline.shared.keys import JOBS_GROUP, Keys
from voxline.shared.wire import Job

# Recovery timings, set through VOXLINE_* in every process (defaults: 3 / 2 / 10).
SETTINGS = {"claim_idle": "1.0", "heartbeat_interval": "0.5", "worker_ttl": "3"}
WORKERS = 3


@dataclass
class Fault:
    kind: str  # "worker_kill" or "redis_restart"
    at: float  # monotonic
    detail: str = ""
    hit: list[tuple[str, int, int]] = field(default_factory=list)  # (session, utterance, index)
    hit_all_outstanding: bool = False  # a Redis restart hits everything outstanding
    ready_again_s: float | None = None  # Redis restarts: until /readyz was 200 again
    recovery_s: float | None = None
    hit_outcomes: dict[str, int] = field(default_factory=dict)


def plan_faults(rng: random.Random, kills: int, restarts: int, start: float, end: float):
    """Fault kinds at random times in [start, end], at least ~40% of a slot apart."""
    kinds = ["worker_kill"] * kills + ["redis_restart"] * restarts
    rng.shuffle(kinds)
    slot = (end - start) / max(len(kinds), 1)
    return [(start + (i + rng.uniform(0.2, 0.8)) * slot, kind) for i, kind in enumerate(kinds)]


def pending_jobs(stack: Stack, consumer: str) -> list[tuple[str, int, int]]:
    """(session, utterance, sentence) of every job pending on `consumer`."""
    keys = Keys()
    client = stack.redis.client()
    hit = []
    try:
        for stream in keys.job_streams:
            pending = client.xpending_range(
                stream, JOBS_GROUP, "-", "+", 100, consumername=consumer
            )
            for entry in pending:
                for _, fields in client.xrange(stream, entry["message_id"], entry["message_id"]):
                    job = Job.unpack(fields[b"j"])
                    hit.append((job.session_id, job.utterance, job.sentence))
        return hit
    finally:
        client.close()


async def kill_worker(stack: Stack, rng: random.Random, fault: Fault) -> None:
    victim = rng.choice(stack.live_workers())
    try:
        fault.hit = await asyncio.to_thread(pending_jobs, stack, victim.name)
    except Exception as exc:  # the victim dies regardless; its hit list stays unknown
        fault.detail = f"(pending jobs unknown: {exc}) "
    victim.kill()
    fault.at = time.monotonic()
    fault.detail += f"SIGKILL {victim.name} (pid {victim.pid}) holding {len(fault.hit)} jobs"
    await asyncio.sleep(rng.uniform(0.5, 1.5))
    fresh = stack.start_worker()
    fault.detail += f"; {fresh.name} started"


async def restart_redis(stack: Stack, rng: random.Random, fault: Fault) -> None:
    kill = rng.random() < 0.5
    down = rng.uniform(1.0, 2.0)
    fault.hit_all_outstanding = True
    fault.at = time.monotonic()
    await asyncio.to_thread(stack.redis.stop, kill=kill)
    await asyncio.sleep(down)
    await asyncio.to_thread(stack.redis.start)
    fault.detail = f"{'SIGKILL' if kill else 'SIGTERM'}, down {down:.1f} s"
    while (await asyncio.to_thread(stack.readyz))[0] != 200:
        if time.monotonic() - fault.at > 60:
            break
        await asyncio.sleep(0.05)
    else:
        fault.ready_again_s = round(time.monotonic() - fault.at, 2)


async def chaos(stack: Stack, rng: random.Random, plan, began: float, faults: list[Fault]) -> None:
    for when, kind in plan:
        await asyncio.sleep(max(0.0, began + when - time.monotonic()))
        fault = Fault(kind, time.monotonic())
        faults.append(fault)
        if kind == "worker_kill":
            await kill_worker(stack, rng, fault)
        else:
            await restart_redis(stack, rng, fault)
        print(f"  t={fault.at - began:6.1f} s  {kind:<13} {fault.detail}", flush=True)


def recovery(fault: Fault, records: list[SentenceRecord]) -> None:
    by_key = {(r.session_id, r.utterance, r.index): r for r in records}
    if fault.hit_all_outstanding:
        hit = [
            r
            for r in records
            if r.sent_at and r.sent_at < fault.at and (r.concluded_at or 1e18) > fault.at
        ]
    else:
        hit = [by_key[k] for k in fault.hit if k in by_key]
    fault.hit_outcomes = {}
    for r in hit:
        fault.hit_outcomes[r.outcome] = fault.hit_outcomes.get(r.outcome, 0) + 1
    if any(r.outcome in ("hung", "lost") or r.concluded_at is None for r in hit):
        return  # never recovered
    resolved = max([fault.at, *(r.concluded_at or fault.at for r in hit)])
    fresh = [
        r.concluded_at
        for r in records
        if r.outcome == "delivered" and r.sent_at > fault.at and r.concluded_at
    ]
    if fresh:
        fault.recovery_s = round(max(resolved, min(fresh)) - fault.at, 2)


async def run(args: argparse.Namespace) -> dict:
    t0 = time.monotonic()
    rng = random.Random(args.seed)
    log_dir = Path(tempfile.mkdtemp(prefix="voxline-chaos-"))
    stack = Stack(log_dir, SETTINGS, concurrency=args.concurrency)
    print(f"logs: {log_dir}", flush=True)
    settings = " ".join(f"VOXLINE_{k.upper()}={v}" for k, v in SETTINGS.items())
    print(
        f"chaos: {args.sessions} sessions, {args.duration:g} s of load, {WORKERS} workers x "
        f"{args.concurrency} slots (tone, rtf 1.0), seed {args.seed}; {settings}",
        flush=True,
    )
    stack.start(WORKERS)
    print(f"stack ready in {time.monotonic() - t0:.1f} s", flush=True)
    tally = Tally()
    faults: list[Fault] = []
    load = LoadConfig(hung_after=args.hung_after)
    stop = asyncio.Event()
    began = time.monotonic()
    try:
        slots = [
            asyncio.create_task(
                session_slot(stack.ws_url, random.Random(rng.random()), stop, tally, load)
            )
            for _ in range(args.sessions)
        ]
        plan = plan_faults(
            rng, args.worker_kills, args.redis_restarts, args.warmup, args.duration - args.tail
        )
        chaos_task = asyncio.create_task(chaos(stack, rng, plan, began, faults))
        while (left := began + args.duration - time.monotonic()) > 0:
            await asyncio.sleep(min(10.0, left))
            note(
                f"load {time.monotonic() - began:.0f}/{args.duration:g} s: "
                f"{len(tally.records)} sentences, {tally.count('delivered')} delivered, "
                f"{tally.count('errored')} errored, {len(faults)}/{len(plan)} faults"
            )
        await chaos_task
        stop.set()
        note("load ended; letting every session finish its utterance")
        # Every slot finishes its utterance in flight; one that hangs is cut at hung_after.
        _, late = await asyncio.wait(slots, timeout=args.hung_after + 30)
        for task in late:
            task.cancel()
        drained = time.monotonic() - began - args.duration
        counters = stack.worker_counters()
        print(f"worker counters since the last Redis restart: {counters}")
    finally:
        stack.close()
    for fault in faults:
        recovery(fault, tally.records)
    return report(args, tally, faults, drained, log_dir)


def report(args, tally: Tally, faults: list[Fault], drained: float, log_dir: Path) -> dict:
    print(f"load ended; sessions drained in {drained:.1f} s")
    for fault in faults:
        extra = f", /readyz 200 after {fault.ready_again_s:.2f} s" if fault.ready_again_s else ""
        print(f"  {fault.kind:<13} recovery {fault.recovery_s} s; hit {fault.hit_outcomes}{extra}")
    reasons: dict[str, int] = {}
    for r in tally.records:
        if r.outcome == "errored":
            reasons[r.detail] = reasons.get(r.detail, 0) + 1
    for reason, n in sorted(reasons.items(), key=lambda item: -item[1]):
        print(f"  errored x{n}: {reason}")
    bad = [r for r in tally.records if r.outcome in ("lost", "hung")]
    for r in bad[:20]:
        print(f"  {r.outcome.upper()}: {r.name} ({r.text!r}): {r.detail}")
    for line in (tally.closed_midway + tally.framing_errors + tally.other_refusals)[:20]:
        print(f"  note: {line}")
    recoveries = [f.recovery_s for f in faults]
    by_kind = {
        kind: max((f.recovery_s or 0 for f in faults if f.kind == kind), default=None)
        for kind in ("worker_kill", "redis_restart")
    }
    return {
        "sessions": tally.sessions,
        "sentences": len(tally.records),
        "delivered": tally.count("delivered"),
        "errored": tally.count("errored"),
        "lost": tally.count("lost"),
        "hung": tally.count("hung"),
        "worker_kills": sum(f.kind == "worker_kill" for f in faults),
        "redis_restarts": sum(f.kind == "redis_restart" for f in faults),
        # null when a fault never recovered (a hit sentence lost or hung, or nothing whole after)
        "max_recovery_s": None if None in recoveries else max(recoveries, default=0.0),
        "max_recovery_s_by_kind": by_kind,
        "max_redis_ready_again_s": max(
            (f.ready_again_s or 0 for f in faults if f.kind == "redis_restart"), default=None
        ),
        "refused_connects": tally.refused_connects,
        "connect_failures": tally.connect_failures,
        "framing_errors": len(tally.framing_errors),
        "concurrent_sessions": args.sessions,
        "duration_s": args.duration,
        "seed": args.seed,
        "logs": str(log_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 s of load, 4 kills, 2 restarts")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load")
    parser.add_argument("--sessions", type=int, default=10, help="concurrent sessions")
    parser.add_argument("--concurrency", type=int, default=4, help="slots per worker")
    parser.add_argument("--worker-kills", type=int, default=10)
    parser.add_argument("--redis-restarts", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=8.0, help="no fault before this")
    parser.add_argument("--tail", type=float, default=20.0, help="no fault in the last s")
    parser.add_argument(
        "--hung-after",
        type=float,
        default=60.0,
        help="an utterance not ended this long after input.done is hung (> queue_timeout)",
    )
    args = parser.parse_args()
    if args.quick:
        args.duration, args.worker_kills, args.redis_restarts = 100.0, 4, 2
    if args.worker_kills < 0 or args.redis_restarts < 0 or args.duration <= args.warmup + args.tail:
        parser.error("need duration > warmup + tail and non-negative fault counts")
    started = time.monotonic()
    result = asyncio.run(run(args))
    result["runtime_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))
    sys.exit(0 if result["lost"] == 0 and result["hung"] == 0 else 1)


if __name__ == "__main__":
    main()
