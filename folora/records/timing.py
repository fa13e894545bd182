"""Wall time per phase of a run, recorded in results.json (`timing.phases_s`)."""

from __future__ import annotations

import time
from contextlib import contextmanager


class Phases:
    """Wall time per phase of the run, for results.json."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        print(f"[folora] {name} ...", flush=True)
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)
