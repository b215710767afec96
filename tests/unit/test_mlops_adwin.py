"""ADWIN on a stream: it keeps a stationary stream whole and drops the old part soon after the mean moves."""

from __future__ import annotations

import numpy as np
import pytest

from shared.mlops.adwin import Adwin


@pytest.mark.parametrize("seed", range(5))
def test_a_stationary_stream_raises_no_change_and_a_shift_is_found_within_a_hundred_values(seed: int) -> None:
    rng = np.random.default_rng(seed)
    adwin = Adwin()
    assert [adwin.update(x) for x in rng.normal(0.1, 0.03, 5000)] == [None] * 5000
    assert adwin.width == 5000 and adwin.mean == pytest.approx(0.1, abs=0.003)
    assert len(adwin.buckets) <= adwin.max_buckets * 14  # O(log W) buckets, not W values
    found = [(i, c) for i, x in enumerate(rng.normal(0.2, 0.03, 300)) if (c := adwin.update(x)) is not None]
    assert found, "the mean doubled and ADWIN saw nothing"
    at, change = found[0]
    assert at < 100
    assert change.increase and change.before == pytest.approx(0.1, abs=0.005) and change.after > change.before
    assert change.dropped >= 4000 and adwin.width < 1000  # the old regime left the window


def test_a_decrease_is_a_change_too_and_the_window_then_holds_the_new_level() -> None:
    rng = np.random.default_rng(7)
    adwin = Adwin()
    for x in rng.normal(0.5, 0.05, 1000):
        adwin.update(x)
    changes = [c for x in rng.normal(0.2, 0.05, 1000) if (c := adwin.update(x)) is not None]
    assert changes and not changes[0].increase
    assert adwin.mean == pytest.approx(0.2, abs=0.02)


def test_nothing_but_finite_numbers_enter_the_window() -> None:
    adwin = Adwin()
    for x in (1.0, float("nan"), float("inf"), 2.0):
        adwin.update(x)
    assert adwin.width == 2 and adwin.mean == 1.5
    with pytest.raises(ValueError):
        Adwin(delta=0)
