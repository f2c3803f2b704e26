"""Test helper: two Results hold the same draws and statistics, bit for bit."""

import numpy as np


def assert_same_draws(a, b) -> None:
    """``a`` and ``b`` have the same sites and stats, with identical arrays."""
    assert set(a.samples) == set(b.samples) and set(a.stats) == set(b.stats)
    for k in a.samples:
        np.testing.assert_array_equal(np.asarray(a.samples[k]), np.asarray(b.samples[k]))
    for k in a.stats:
        np.testing.assert_array_equal(np.asarray(a.stats[k]), np.asarray(b.stats[k]))
