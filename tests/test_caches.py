"""Caches under concurrency: jobs that start together and miss the same cache entry compute it once (the others
wait for it and read it), and a reader never sees a half-written file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

# Each process loads the model, then waits until its twin has too, so both miss the cache at the same moment.
RACER = textwrap.dedent("""
    import hashlib, json, sys, time
    from pathlib import Path
    import torch
    from folora.calibration.proxy import sample_proxy
    from folora.models import load_model
    from tests.conftest import composed, proxy_config

    mine, twin, cache = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    loaded = load_model(composed("model=tiny-random").model)
    mine.touch()
    while not twin.exists():
        time.sleep(0.01)
    proxy = sample_proxy(loaded.model, loaded.tokenizer, proxy_config(num_sequences=32, length=24, seed=3),
                         model_fingerprint=loaded.fingerprint, cache_dir=cache, device=torch.device("cpu"))
    digest = hashlib.sha256(json.dumps(proxy.sequences).encode()).hexdigest()[:12]
    print("cached" if proxy.cached else "computed", digest)
""")


@pytest.mark.integration
def test_two_jobs_racing_for_the_proxy_cache_compute_it_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    a, b, cache = tmp_path / "a", tmp_path / "b", tmp_path / "cache"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(mine), str(twin), str(cache)], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for mine, twin in ((a, b), (b, a))]
    outputs = [r.communicate(timeout=600) for r in racers]
    assert all(r.returncode == 0 for r in racers), [err[-2000:] for _, err in outputs]
    lines = sorted(out.strip().splitlines()[-1] for out, _ in outputs)
    assert [line.split()[0] for line in lines] == ["cached", "computed"]   # one sampled, the other waited and read
    assert lines[0].split()[1] == lines[1].split()[1]                      # the very same sequences
    assert [p.name for p in (cache / "proxy").iterdir() if p.suffix == ".tmp"] == []
