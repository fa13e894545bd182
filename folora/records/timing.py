"""Wall time and peak resident memory per phase of a run, recorded in results.json (`timing.phases_s`,
`timing.phases_peak_rss_gib`)."""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


class Phases:
    """Wall time and peak resident memory per phase of the run, for results.json. Phases may nest (calibration's
    sub-phases inside `prepare method`): an enclosing phase's peak covers the phases inside it."""

    def __init__(self, after=None):
        self.seconds: dict[str, float] = {}
        self.peak_rss_gib: dict[str, float] = {}
        self.after = after   # called at the end of every phase (the runner hands freed memory back there)
        self._open: list[str] = []

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        print(f"[folora] {name} ...", flush=True)
        self._fold_peak()
        self._open.append(name)
        try:
            yield
        finally:
            self._fold_peak()
            self._open.pop()
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)
            if self.after is not None:
                self.after()

    def _fold_peak(self) -> None:
        """The peak since the last fold, into every open phase; then the kernel's high-water mark starts over."""
        peak = peak_rss_gib(reset=True)
        if peak is None:
            return
        for name in self._open:
            self.peak_rss_gib[name] = round(max(self.peak_rss_gib.get(name, 0.0), peak), 3)


def peak_rss_gib(reset: bool = False) -> float | None:
    """The process's peak resident memory in GiB since the last reset (Linux: VmHWM, reset through clear_refs);
    elsewhere the peak of the whole process, which cannot be reset; None where neither is readable."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 2 ** 20
                if reset:
                    CLEAR_REFS.write_text("5")
                return peak
    except OSError:
        pass
    if sys.platform == "darwin":   # bytes there, kilobytes on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 30
    return None
