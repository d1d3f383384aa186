"""How many streams a model may run: fitted from timed steps, never below the floor."""

from __future__ import annotations

import pytest

from voxline.worker.engines.pocket.capacity import CapacityModel


def test_fit_recovers_fixed_and_per_stream_cost() -> None:
    model = CapacityModel(0.08, headroom=1.0)
    for batch in (1, 2, 4, 8, 1, 16):
        model.observe(batch, 0.010 + 0.004 * batch)
    fixed, per = model.fit()
    assert fixed == pytest.approx(0.010, abs=1e-6) and per == pytest.approx(0.004, abs=1e-6)
    assert model.streams() == 17  # (80 - 10) / 4 = 17.5


def test_headroom_and_floor() -> None:
    model = CapacityModel(0.08, headroom=0.5)
    assert model.streams() == 1  # nothing measured yet: one at a time
    for batch in (1, 4):
        model.observe(batch, 0.010 + 0.004 * batch)
    assert model.streams() == 7  # (40 - 10) / 4 = 7.5
    slow = CapacityModel(0.08)
    slow.observe(1, 0.5)
    slow.observe(2, 1.0)
    assert slow.streams() == 1  # slower than real time even alone: still serve one


def test_recent_steps_weigh_more() -> None:
    model = CapacityModel(0.08, headroom=1.0, decay=0.5)
    for _ in range(20):
        model.observe(1, 0.020)
        model.observe(4, 0.050)
    for _ in range(20):  # the machine got twice as slow
        model.observe(1, 0.040)
        model.observe(4, 0.100)
    assert model.streams() == 3  # fixed 20 ms + 20 ms per stream: (80 - 20) / 20


def test_one_batch_size_is_all_per_stream_cost() -> None:
    model = CapacityModel(0.08, headroom=1.0)
    model.observe(4, 0.040)
    assert model.fit() == (0.0, 0.010)
    assert model.streams() == 8
