"""Where a finished batch file lives: in Redis when small (one key, TTL), else as a file under
`batch_dir`, which the arq processes and the front ends share (a volume). Files outlive no
TTL by themselves: housekeeping removes those whose job has expired."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

from voxline.shared.batches import BatchState
from voxline.shared.config import Settings
from voxline.shared.connections import Client
from voxline.shared.keys import Keys

IN_REDIS = "redis"
READ_CHUNK = 256 * 1024


class ResultTooLarge(RuntimeError):
    pass


class Results:
    def __init__(self, redis: Client, keys: Keys, settings: Settings) -> None:
        self._redis = redis
        self._keys = keys
        self._inline_max = settings.batch_inline_max_bytes
        self._ttl = settings.batch_result_ttl
        self.directory = Path(settings.batch_dir) if settings.batch_dir else None

    def path(self, batch_id: str, fmt: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{batch_id}.{fmt}"

    async def store(self, batch_id: str, fmt: str, data: bytes) -> str:
        """Keep the file; returns where (IN_REDIS, or the path). Idempotent: a re-run of the
        same job overwrites its own result."""
        if len(data) <= self._inline_max:
            await self._redis.set(self._keys.batch_result(batch_id), data, ex=self._ttl)
            return IN_REDIS
        if self.directory is None:
            raise ResultTooLarge(
                f"the file is {len(data)} bytes, over VOXLINE_BATCH_INLINE_MAX_BYTES "
                f"({self._inline_max}), and VOXLINE_BATCH_DIR is not set"
            )
        path = self.path(batch_id, fmt)
        await asyncio.to_thread(_write_atomically, path, data)
        return str(path)

    async def read(self, state: BatchState) -> AsyncIterator[bytes] | None:
        """The finished file in pieces, or None when it is gone (expired, or removed)."""
        if state.result == IN_REDIS:
            data = await self._redis.get(self._keys.batch_result(state.id))
            # Replies are bytes (no decode_responses); redis-py types them bytes | str.
            return None if data is None else _once(cast(bytes, data))
        path = Path(state.result)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            return None
        return _file_pieces(handle)

    async def delete(self, state: BatchState) -> None:
        if state.result == IN_REDIS:
            await self._redis.delete(self._keys.batch_result(state.id))
        elif state.result:
            await asyncio.to_thread(Path(state.result).unlink, missing_ok=True)


def _write_atomically(path: Path, data: bytes) -> None:
    # A reader never sees a half-written file: write beside it, then rename over.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def _once(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), READ_CHUNK):
        yield data[start : start + READ_CHUNK]


async def _file_pieces(handle: object) -> AsyncIterator[bytes]:
    try:
        while piece := await asyncio.to_thread(handle.read, READ_CHUNK):  # type: ignore[attr-defined]
            yield piece
    finally:
        await asyncio.to_thread(handle.close)  # type: ignore[attr-defined]
