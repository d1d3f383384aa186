"""What the front end knows of the worker pool: which engine it runs, whether anyone is alive."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import cast

from voxline.shared.capabilities import EngineInfo
from voxline.shared.connections import Client
from voxline.shared.keys import Keys
from voxline.shared.voice_aliases import aliases_for, parse_overrides

log = logging.getLogger("voxline.api.pool")


class WorkerPool:
    """Reads the workers' registry; cached briefly, since every new session asks."""

    def __init__(
        self, redis: Client, keys: Keys, *, worker_ttl: float, voice_aliases: str = ""
    ) -> None:
        self._redis = redis
        # The setting's aliases, merged over OpenAI's names (a bad one stops the start here).
        self._alias_overrides = parse_overrides(voice_aliases)
        self._dropped_aliases: set[str] = set()  # each logged once
        self._keys = keys
        self._ttl = worker_ttl
        self._cached: tuple[float, EngineInfo | None, int] = (0.0, None, 0)
        self.slots = 0  # jobs the live workers can hold at once, as they last reported
        # Workers that read fewer jobs shards than this front end writes (set when found).
        self.shard_mismatch: str | None = None

    async def live_workers(self) -> list[str]:
        now = time.time()
        # Without withscores, the members alone (redis-py's type also names (member, score)).
        ids = cast(
            list[bytes | str],
            await self._redis.zrangebyscore(self._keys.workers, now - self._ttl, "+inf"),
        )
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    async def engine(self, max_age: float = 1.0) -> tuple[EngineInfo | None, int]:
        """The pool's engine info (None: no live worker) and the number of live workers."""
        at, info, count = self._cached
        if time.monotonic() - at < max_age:
            return info, count
        ids = await self.live_workers()
        async with self._redis.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.hmget(self._keys.worker(worker_id), "info", "slots", "shards")
            rows = [row for row in await pipe.execute() if row[0] is not None]
        infos = [EngineInfo.unpack(raw) for raw, _, _ in rows]
        self.slots = sum(int(slots or 1) for _, slots, _ in rows)
        self._check_shards([int(shards or 1) for _, _, shards in rows])
        names = {i.name for i in infos}
        if len(names) > 1:
            log.warning("workers on one jobs stream run different engines: %s", sorted(names))
        info = self._with_aliases(infos[0]) if infos else None
        # Only workers that published their info can serve a session.
        self._cached = (time.monotonic(), info, len(infos))
        return info, len(infos)

    def _with_aliases(self, info: EngineInfo) -> EngineInfo:
        """The info with the voice aliases its engine can serve; the others are logged once."""
        aliases, dropped = aliases_for(info, self._alias_overrides)
        for line in dropped:
            if line not in self._dropped_aliases:
                self._dropped_aliases.add(line)
                # The operator's own alias is worth a warning; the table's is expected.
                mine = line.partition("=")[0] in self._alias_overrides
                log.log(logging.WARNING if mine else logging.INFO, "voice alias dropped: %s", line)
        return dataclasses.replace(info, aliases=aliases)

    def _check_shards(self, read: list[int]) -> None:
        """Jobs on a shard no worker reads would wait until their deadline: say so loudly."""
        short = sorted({n for n in read if n < self._keys.shards})
        mismatch = None
        if short:
            mismatch = (
                f"this front end writes {self._keys.shards} jobs shards but some workers read "
                f"only {short}: set the same VOXLINE_JOB_SHARDS everywhere"
            )
        if mismatch and mismatch != self.shard_mismatch:
            log.error("%s", mismatch)
        self.shard_mismatch = mismatch
