"""How fast this machine runs Kokoro, learnt as it runs: the cost of one span is a fixed part
(the model also makes the silence it pads each span with, which is trimmed) plus a part per
second of audio. The first sentence's cut uses it to start as early as the next span can be
ready in time."""

from __future__ import annotations

from dataclasses import dataclass

# English at speed 1 on the shipped tables: 79 characters made 4.63 s, 44 made 2.43 s.
SECONDS_PER_CHAR = 0.057
_SMOOTHING = 0.2  # weight of each new span in the running estimates


@dataclass(slots=True)
class Pace:
    overhead_s: float = 0.3  # per span, whatever its length
    rtf: float = 0.6  # compute seconds per second of audio, beyond the overhead
    seconds_per_char: float = SECONDS_PER_CHAR

    @classmethod
    def fitted(cls, short: tuple[float, float], long: tuple[float, float]) -> Pace:
        """From two timed spans, (compute seconds, audio seconds) each: the line through them."""
        (c1, a1), (c2, a2) = short, long
        rtf = (c2 - c1) / (a2 - a1) if a2 - a1 > 0.1 else c2 / max(a2, 1e-3)
        rtf = max(rtf, 0.01)
        return cls(overhead_s=max(c1 - rtf * a1, 0.0), rtf=rtf)

    def observe(self, chars: int, compute_s: float, audio_s: float, speed: float) -> None:
        """A span just made: follow the machine's speed as load changes."""
        if audio_s <= 0.05 or chars <= 0:
            return
        rtf = max(compute_s - self.overhead_s, 0.0) / audio_s
        self.rtf += _SMOOTHING * (max(rtf, 0.01) - self.rtf)
        self.seconds_per_char += _SMOOTHING * (audio_s * speed / chars - self.seconds_per_char)

    def shared(self, by: float) -> Pace:
        """The pace one of `by` sentences sees while they take turns on one stream."""
        if by <= 1:
            return self
        return Pace(self.overhead_s * by, self.rtf * by, self.seconds_per_char)

    def audio_s(self, chars: int, speed: float = 1.0) -> float:
        return chars * self.seconds_per_char / speed

    def compute_s(self, chars: int, speed: float = 1.0) -> float:
        return self.overhead_s + self.rtf * self.audio_s(chars, speed)
