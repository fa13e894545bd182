"""Per-phase wall time and peak memory (folora/records/timing.py)."""

import sys

import numpy as np
import pytest

from folora.records.timing import Phases


@pytest.mark.skipif(sys.platform != "linux", reason="the per-phase peak needs /proc (Linux)")
def test_each_phase_has_its_own_peak_and_an_enclosing_phase_covers_the_ones_inside():
    phases, released = Phases(after=lambda: released.append(True)), []
    with phases("outer"):
        with phases("inner"):
            block = np.ones(2 ** 27 // 8 * 3)   # 384 MiB, touched
            del block
    with phases("small"):
        pass
    peaks = phases.peak_rss_gib
    assert peaks["inner"] > peaks["small"] + 0.3   # the 384 MiB block, in the phase that held it only
    assert peaks["outer"] >= peaks["inner"]
    assert set(phases.seconds) == {"outer", "inner", "small"} and len(released) == 3
