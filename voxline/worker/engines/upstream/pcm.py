"""Raw s16le bytes as they arrive from an upstream, cut into whole samples."""

from __future__ import annotations

import numpy as np


class PcmAssembler:
    """Turns byte pieces of any length into int16 arrays: a network read may end mid-sample,
    and its odd byte belongs to the next piece."""

    __slots__ = ("_carry", "received")

    def __init__(self) -> None:
        self._carry = b""
        self.received = 0

    def feed(self, data: bytes) -> np.ndarray:
        self.received += len(data)
        if self._carry:
            data = self._carry + data
        whole = len(data) - len(data) % 2
        self._carry = data[whole:]
        return np.frombuffer(data[:whole], dtype="<i2").astype(np.int16)

    @property
    def partial(self) -> bool:
        """A half sample is left over: the upstream's stream did not end on a sample."""
        return bool(self._carry)
