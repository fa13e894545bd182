"""Files written atomically, and the lock that lets parallel jobs fill one cache entry once."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, write) -> None:
    """`write(handle)` into a temporary file in the same folder, then rename it over the target: readers never see
    half a file, and a write that fails (a full disk, no permission) leaves the previous file as it was and no
    temporary behind. The OSError propagates for the caller to explain."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())   # the rename must not publish a file whose bytes are still in flight
        os.chmod(tmp, 0o644)   # mkstemp creates the file private; results are for every reader
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def cache_lock(path: Path):
    """An exclusive lock on the cache entry `path` (a file `<path>.lock` beside it) while it is checked and filled:
    when parallel jobs (a joblib or Slurm sweep) miss the same entry together, one computes it, the others wait
    and then read it. Inside the lock, check again whether the entry exists before computing it."""
    from filelock import FileLock, SoftFileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock = FileLock(str(path) + ".lock")
        lock.acquire()
    except NotImplementedError:   # a file system without flock (some cluster mounts): a lock file instead
        lock = SoftFileLock(str(path) + ".softlock")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda handle: handle.write(data))


def write_json_atomic(path: Path, data: dict) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n").encode("utf-8"))


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
