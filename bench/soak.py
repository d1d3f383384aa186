"""Soak: hold N sessions for T minutes; report API and worker RSS growth and whether the Redis
key count returns to its baseline.

Starts a `redis-server` of its own on a free loopback port, one `voxline api` and two
`voxline worker` processes (the `tone` engine paced at real time), and keeps N WebSocket
sessions streaming utterances (LLM-sized pieces, 2-4 sentences each, every sentence checked
whole as in bench/chaos.py). A session is closed and reopened every 2-5 utterances, so
session setup and teardown are soaked too. RSS (VmRSS from /proc) of every process is taken
after a warm-up and at the end of the load; the Redis key count (DBSIZE) before the load, at
its end (sessions still open) and after every session closed and its keys' TTLs ran out.
VOXLINE_SESSION_TTL is set to 5 s (default 60) so that the wait is short.

    python bench/soak.py --quick                  # 75 s of load; last line: one JSON object
    python bench/soak.py --sessions 16 --minutes 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from procs import LoadConfig, Stack, Tally, rss_mib, session_slot

from voxline.progress import note
from voxline.shared.keys import Keys

SETTINGS = {"session_ttl": "5"}
WORKERS = 2


def sample(stack: Stack) -> dict[str, float]:
    assert stack.api is not None
    return {proc.name: rss_mib(proc.pid) for proc in [stack.api, *stack.workers]}


async def run(args: argparse.Namespace) -> dict:
    t0 = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="voxline-soak-"))
    stack = Stack(log_dir, SETTINGS, concurrency=args.concurrency)
    print(f"logs: {log_dir}", flush=True)
    print(
        f"soak: {args.sessions} sessions, {args.minutes:g} min of load, {WORKERS} workers x "
        f"{args.concurrency} slots (tone, rtf 1.0); VOXLINE_SESSION_TTL=5",
        flush=True,
    )
    stack.start(WORKERS)
    print(f"stack ready in {time.monotonic() - t0:.1f} s", flush=True)
    keys_before = stack.redis.dbsize()
    client = stack.redis.client()
    print(f"redis keys before the load: {keys_before} {sorted(k.decode() for k in client.keys())}")
    tally = Tally()
    stop = asyncio.Event()
    rng = random.Random(args.seed)
    duration = args.minutes * 60
    warmup = min(args.warmup, duration / 4)
    samples: list[tuple[float, dict[str, float]]] = []
    try:
        slots = [
            asyncio.create_task(
                session_slot(stack.ws_url, random.Random(rng.random()), stop, tally, LoadConfig())
            )
            for _ in range(args.sessions)
        ]
        began = time.monotonic()
        note(f"warm-up: {warmup:.0f} s of load before the first RSS sample")
        await asyncio.sleep(warmup)
        note(f"load: {duration:.0f} s, sampling RSS every {args.sample_every:g} s")
        samples.append((time.monotonic() - began, sample(stack)))
        while (left := duration - (time.monotonic() - began)) > 0:
            await asyncio.sleep(min(args.sample_every, left))
            samples.append((time.monotonic() - began, sample(stack)))
            at, rss = samples[-1]
            shown = "  ".join(f"{name} {mib:.1f}" for name, mib in rss.items())
            print(f"  t={at:6.1f} s  RSS MiB: {shown}  sentences {len(tally.records)}", flush=True)
        keys_end_of_load = stack.redis.dbsize()
        stop.set()
        note("load ended; closing every session, then waiting for the Redis key count")
        _, late = await asyncio.wait(slots, timeout=LoadConfig().hung_after + 30)
        for task in late:
            task.cancel()
        closed_at = time.monotonic()
        # Every session is closed: its lease is deleted, its cancel set expires session_ttl
        # later. Wait for the count to come back (or give up after session_ttl + 20 s).
        keys_after = stack.redis.dbsize()
        while keys_after != keys_before and time.monotonic() - closed_at < 5 + 20:
            await asyncio.sleep(0.5)
            keys_after = stack.redis.dbsize()
        returned_after = time.monotonic() - closed_at
        leftover = sorted(k.decode() for k in client.keys())
        streams = {
            name: (client.xlen(name), client.xpending(name, "workers")["pending"])
            for name in Keys().job_streams
            if client.exists(name)
        }
    finally:
        client.close()
        stack.close()
    (_, first), (_, last) = samples[0], samples[-1]
    growth = {name: last[name] - first[name] for name in first}
    workers = [w.name for w in stack.workers]
    print(f"load ended; redis keys at the end of the load: {keys_end_of_load}")
    for name in first:
        pct = 100 * growth[name] / first[name]
        print(
            f"  {name:<4} RSS {first[name]:.1f} -> {last[name]:.1f} MiB "
            f"({growth[name]:+.1f} MiB, {pct:+.1f}%) from t={samples[0][0]:.0f} s to "
            f"t={samples[-1][0]:.0f} s"
        )
    print(
        f"redis keys after every session closed: {keys_after} after {returned_after:.1f} s "
        f"(baseline {keys_before}): {leftover}; streams (length, pending): {streams}"
    )
    for r in [r for r in tally.records if r.outcome not in ("delivered",)][:20]:
        print(f"  {r.outcome.upper()}: {r.name} ({r.text!r}): {r.detail}")
    return {
        "sessions": args.sessions,
        "minutes": args.minutes,
        "sentences": len(tally.records),
        "api_rss_growth_mib": round(growth["api"], 1),
        "worker_rss_growth_mib": round(max(growth[w] for w in workers), 1),
        "redis_keys_before": keys_before,
        "redis_keys_after": keys_after,
        "keys_returned_to_baseline": keys_after == keys_before,
        "redis_keys_end_of_load": keys_end_of_load,
        "keys_returned_after_s": round(returned_after, 1),
        "api_rss_mib": [round(first["api"], 1), round(last["api"], 1)],
        "worker_rss_mib": {w: [round(first[w], 1), round(last[w], 1)] for w in workers},
        "rss_window_s": [round(samples[0][0]), round(samples[-1][0])],
        "delivered": tally.count("delivered"),
        "errored": tally.count("errored"),
        "lost": tally.count("lost"),
        "hung": tally.count("hung"),
        "sessions_opened": tally.sessions,
        "refused_connects": tally.refused_connects,
        "logs": str(log_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1.25 min of load")
    parser.add_argument("--sessions", type=int, default=8, help="concurrent sessions")
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of load")
    parser.add_argument("--concurrency", type=int, default=4, help="slots per worker")
    parser.add_argument("--warmup", type=float, default=15.0, help="s before the first RSS")
    parser.add_argument("--sample-every", type=float, default=15.0, help="s between RSS samples")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.quick:
        args.minutes = 1.25
    started = time.monotonic()
    result = asyncio.run(run(args))
    result["runtime_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))
    ok = result["keys_returned_to_baseline"] and result["lost"] == 0 and result["hung"] == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
