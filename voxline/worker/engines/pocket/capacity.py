"""How many sentences one model can step together while each stays faster than real time.

Every step gives each active sentence one frame (80 ms of audio), so a batch of B keeps up
while one step takes less than a frame. Step time is close to linear in B (a fixed cost plus
a per-sentence cost), so the loop fits `t = a + b*B` to the steps it times, weighting recent
ones more, and allows the largest B whose predicted step fits in the frame with headroom.
"""

from __future__ import annotations

import math
import threading


class CapacityModel:
    def __init__(
        self, frame_seconds: float, *, headroom: float = 0.85, decay: float = 0.98, floor: int = 1
    ) -> None:
        self.frame_seconds = frame_seconds
        self.budget = frame_seconds * headroom
        self.decay = decay
        self.floor = floor
        # Weighted sums for least squares over (B, t).
        self._w = self._x = self._y = self._xx = self._xy = 0.0
        self._lock = threading.Lock()

    def observe(self, batch: int, seconds: float) -> None:
        if batch <= 0:
            return
        with self._lock:
            d = self.decay
            self._w = self._w * d + 1.0
            self._x = self._x * d + batch
            self._y = self._y * d + seconds
            self._xx = self._xx * d + batch * batch
            self._xy = self._xy * d + batch * seconds

    def fit(self) -> tuple[float, float] | None:
        """(fixed seconds per step, seconds per sentence), or None before two batch sizes."""
        with self._lock:
            w, x, y, xx, xy = self._w, self._x, self._y, self._xx, self._xy
        if w == 0:
            return None
        spread = xx * w - x * x
        if spread <= 1e-9 * max(1.0, xx * w):  # one batch size seen: all cost per sentence
            return 0.0, y / x if x else 0.0
        per = (xy * w - x * y) / spread
        fixed = (y - per * x) / w
        return max(fixed, 0.0), max(per, 1e-6)

    def streams(self) -> int:
        """The largest batch predicted to step within the frame budget (at least `floor`)."""
        fitted = self.fit()
        if fitted is None:
            return self.floor
        fixed, per = fitted
        if per <= 0:
            return 1 << 16
        return max(self.floor, math.floor((self.budget - fixed) / per))
