"""Running a grid's commands on this machine: its sweeps one after another, or one queue of cells N at a time (a
thread pool whose workers each run one cell's subprocess and wait for it), stopped cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import shlex
import signal
import subprocess
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from experiments.commands import parallel_jobs
from experiments.grid import REPO, Cell


def run_sweeps(commands: list[list[str]]) -> dict[str, float]:
    """Run each sweep in turn; a sweep with a failed run exits non-zero after its other runs completed."""
    seconds = {}
    for command in commands:
        sweep = " ".join(a.split("=", 1)[1] for a in command if a.startswith(("method=", "variant=")))
        print(f"\n[reproduce] {sweep}: {shlex.join(command[1:])}", flush=True)
        start = time.perf_counter()
        process = subprocess.run(command, cwd=REPO)
        seconds[sweep] = round(time.perf_counter() - start, 1)
        if process.returncode != 0:
            print(f"[reproduce] {sweep}: the sweep reported a failed run (exit {process.returncode}); "
                  f"its other runs are complete", flush=True)
    return seconds


def run_queue(commands: dict[Cell, list[str]], jobs: int) -> dict[str, float]:
    """Run one command per cell, `jobs` at a time, starting the next cell as soon as one ends, across the grid's
    methods and variants: a core is idle only while the grid's last cells finish, not at the end of every method's
    sweep (a sweep of 3 cells on 2 lanes leaves one lane idle for a third of its time). A failed cell is reported
    and the others go on. Returns each cell's wall seconds. Stopped (Ctrl-C, SIGTERM, SIGHUP), it starts no further
    cell and stops the ones it started: `stop_processes`. A cell that ends by such a signal closes the queue too, so
    a lane never starts the next cell in the moment before the queue's own handler runs."""
    parallel_jobs(jobs)   # refuses a count below one
    queue = _Queue(len(commands))
    # The main thread only polls the cells, and a signal (Ctrl-C, SIGTERM, SIGHUP) sets `stopped` rather than raising
    # wherever the main thread happens to be: an exception raised inside a future's condition wait can leave its lock
    # held, and the queue then never finishes shutting down.
    stopped: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: stopped.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="cell")
    try:
        # the pool's work queue is first in, first out: cells start in the order given
        pending = [pool.submit(queue.run, cell, command) for cell, command in commands.items()]
        while pending and not stopped:
            done, _ = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            for future in done:
                pending.remove(future)
                future.result()   # raises what a worker raised (a command that could not start)
    finally:
        for signum, handler in previous.items():   # a second Ctrl-C now interrupts `stop_processes`
            signal.signal(signum, handler)
        try:
            stop_processes(queue.close())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    if stopped:   # exit as the signal says: Ctrl-C as KeyboardInterrupt, the others as 128 + signal
        if stopped[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + stopped[0])
    return queue.seconds


class _Queue:
    """The cells a pool's workers run: which processes are running, how many cells wait, each cell's wall time; once
    closed, no further cell starts and none is reported."""

    def __init__(self, total: int):
        self.seconds: dict[str, float] = {}
        self._waiting = total
        self._running: set[subprocess.Popen] = set()
        self._closed = False
        self._lock = threading.Lock()

    def run(self, cell: Cell, command: list[str]) -> None:
        """Start the cell's process unless the queue is closed, wait for it and report how it ended."""
        with self._lock:   # a process starts only while the queue is open, and is known to `close` at once
            if self._closed:
                return
            self._waiting -= 1
            print(f"\n[reproduce] start {cell_name(cell)}: {shlex.join(command[1:])}", flush=True)
            process = subprocess.Popen(command, cwd=REPO)
            self._running.add(process)
        start = time.perf_counter()
        code = process.wait()
        with self._lock:
            self._running.discard(process)
            if not self._closed:   # a cell stopped with the queue is not reported, as it did not end by itself
                self._report(cell, code, round(time.perf_counter() - start, 1))
            if code in STOPPED_BY_SIGNAL:
                # A signal to the process group reaches the cells at once, but the queue's own handler runs only when
                # the main thread next gets the interpreter: close now, or this lane would start the next cell first.
                self._closed = True

    def _report(self, cell: Cell, code: int, seconds: float) -> None:
        self.seconds[cell_name(cell)] = seconds
        outcome = "done" if code == 0 else f"failed (exit {code})" if code > 0 else f"killed by signal {-code}"
        print(f"[reproduce] {outcome}: {cell_name(cell)} after {seconds:.0f} s; {self._waiting} waiting", flush=True)

    def close(self) -> list[subprocess.Popen]:
        """Start nothing more; the processes still running."""
        with self._lock:
            self._closed = True
            return list(self._running)


# How a cell ends when a stop signal (Ctrl-C, SIGTERM, SIGHUP) reached it: killed by it, or exiting as a run does
# after checkpointing on it (128 + signal number).
STOPPED_BY_SIGNAL = {code for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) for code in (-signum, 128 + signum)}


def stop_processes(processes: list[subprocess.Popen], grace_s: float = 60.0, patience_s: float = 180.0) -> None:
    """Stop the cells still running when the queue stops. A signal sent to the whole process group (Ctrl-C, `kill --
    -PGID`) has reached them already: a run in training finishes its step, checkpoints and exits, so each gets
    `grace_s` before it is sent SIGTERM (a second signal would cut the step and its checkpoint short); then
    `patience_s` before SIGKILL. A second Ctrl-C kills them at once. Each resumes from its last checkpoint."""
    try:
        for deadline, send in ((grace_s, "terminate"), (patience_s, "kill")):
            end = time.monotonic() + deadline
            while any(p.poll() is None for p in processes) and time.monotonic() < end:
                time.sleep(0.2)
            for process in processes:
                if process.poll() is None:
                    getattr(process, send)()
        for process in processes:
            process.wait()
    except KeyboardInterrupt:
        for process in processes:
            process.kill()
        raise


def cell_name(cell: Cell) -> str:
    """`lora math train.lr=0.001 seed=0`: how the queue's log and its wall times name a cell."""
    knob = [f"{cell.knob}={cell.value}"] if cell.value is not None else []
    return " ".join([cell.method, *([cell.variant] if cell.variant else []), cell.task, *knob, f"seed={cell.seed}"])
