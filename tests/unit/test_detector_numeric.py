"""The scoring path's numeric helpers give numpy's results."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from services.detector.numeric import nan_to_num

floats = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
replacement = st.none() | st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(0, 6), st.integers(1, 4)), elements=floats),
    st.floats(allow_nan=False, allow_infinity=False),
    replacement,
    replacement,
)
def test_nan_to_num_is_numpys(x, nan, posinf, neginf):
    expected = np.nan_to_num(x, nan=nan, posinf=posinf, neginf=neginf)
    got = nan_to_num(x, nan=nan, posinf=posinf, neginf=neginf)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert not np.shares_memory(got, x)  # a copy, as numpy's: callers may hold the input


def test_nan_to_num_replaces_each_kind_as_numpy_does():
    x = np.array([1.0, np.nan, np.inf, -np.inf, -0.0])
    np.testing.assert_array_equal(nan_to_num(x), [1.0, 0.0, np.finfo(float).max, np.finfo(float).min, -0.0])
    np.testing.assert_array_equal(nan_to_num(x, nan=5.0, posinf=5.0), [1.0, 5.0, 5.0, np.finfo(float).min, -0.0])
    assert np.isnan(x[1])  # the input is left alone
