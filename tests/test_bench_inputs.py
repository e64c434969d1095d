"""`make bench` measures CVSS on descriptions no server has seen: a repeat of the same 64 texts measured the
engine's prefix cache (vLLM's server ran 4.3 texts/s on its first c=16 pass, 6.0 on the cached repeats)."""

from __future__ import annotations

import pytest

from bench.inputs import FreshSlices
from bench.run import _fresh


def test_each_measurement_gets_its_own_slice_and_each_side_the_same_one():
    pool = [f"CVE description {i}" for i in range(4 + 2 * (16 + 8 * 2))]
    slices = FreshSlices(len(pool))
    ours = {(c, k): _fresh(pool, slices, c, 8)(k) for c in (1, 16, 32) for k in (0, 1)}
    theirs = {(c, k): _fresh(pool, slices, c, 8)(k) for c in (1, 16) for k in (0, 1)}  # the baseline runs later
    sent = [t for texts in ours.values() for t in texts]
    assert len(sent) == len(set(sent)) == 2 * 16 + 4 * 8  # no text twice to one server
    assert [len(ours[1, k]) for k in (0, 1)] == [16, 16]
    assert all(theirs[key] == ours[key] for key in theirs)  # the same inputs for the same measurement
    with pytest.raises(ValueError, match="exhausted"):
        slices(("cvss", 8, 0), len(pool))
