from __future__ import annotations

import itertools
import math

import pytest

from voxline.shared.backoff import Backoff


def delays(backoff: Backoff, n: int) -> list[float]:
    return [backoff.next() for _ in range(n)]


def test_delays_double_from_the_first_up_to_the_cap() -> None:
    backoff = Backoff(0.05, cap=2.0)
    assert delays(backoff, 8) == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]


def test_the_cap_holds_however_long_it_fails() -> None:
    backoff = Backoff(0.05, cap=2.0)
    assert max(itertools.islice(iter(backoff.next, None), 1000)) == 2.0


def test_reset_starts_over_at_the_first_delay() -> None:
    backoff = Backoff(0.05, cap=2.0)
    delays(backoff, 5)
    backoff.reset()
    assert delays(backoff, 3) == [0.05, 0.1, 0.2]


def test_uncapped_by_default_and_other_factors() -> None:
    assert delays(Backoff(1.0), 4) == [1.0, 2.0, 4.0, 8.0]
    assert Backoff(1.0).cap == math.inf
    assert delays(Backoff(1.0, cap=5.0, factor=3.0), 3) == [1.0, 3.0, 5.0]
    assert delays(Backoff(0.0, cap=2.0), 3) == [0.0, 0.0, 0.0]  # no wait at all, e.g. in tests


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((-1.0,), {}), ((3.0, 2.0), {}), ((1.0,), {"factor": 0.5})],
)
def test_nonsense_is_refused(args: tuple[float, ...], kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(*args, **kwargs)
