"""Stopping cleanly on a scheduler's signal.

SIGTERM and SIGUSR1 (Slurm's preemption and time-limit warnings; SIGUSR2 under submitit) arriving during training
let the current step finish; the loop then checkpoints and raises `Interrupted`, and the run records
`status: interrupted`. Outside training a signal stops the run at once.
"""

from __future__ import annotations

import signal


class Interrupted(BaseException):
    """A stop signal arrived during training; the checkpoint of step `step` holds the run's state."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; a checkpoint of that step "
                         f"was written and the same command resumes from it")
        self.signum, self.step = signum, step


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_stop = {"signal": None, "training": False}
_handed_over: dict[int, object] = {}   # signals a job scheduler's own handler also wants (submitit's USR2: requeue)


def install_stop_handlers() -> None:
    """SIGTERM and SIGUSR1: during training, finish the step, checkpoint and stop; elsewhere, stop at once (the run
    records status=failed, and a restart resumes from the last checkpoint). Under submitit (Hydra's Slurm or local
    launcher) SIGUSR2 is its timeout and preemption signal: the run checkpoints the same way, then hands the
    signal to submitit, which requeues the job; the requeued job resumes from the checkpoint."""
    previous = signal.getsignal(signal.SIGUSR2)
    under_submitit = callable(previous)
    for signum in STOP_SIGNALS:
        # submitit ignores SIGTERM on purpose: on preemption Slurm sends it before the requeue signal (USR2), and
        # stopping on it would end the job without a requeue
        if not (under_submitit and signum == signal.SIGTERM):
            signal.signal(signum, _on_stop_signal)
    if under_submitit:
        _handed_over[signal.SIGUSR2] = previous
        signal.signal(signal.SIGUSR2, _on_stop_signal)


def _on_stop_signal(signum, frame):
    if _stop["training"] and _stop["signal"] is None:
        _stop["signal"] = signum   # finish the step, checkpoint, stop
        return
    if _stop["training"] and signum not in _handed_over and _stop["signal"] in _handed_over:
        return                     # a requeue is already on its way: keep it
    hand_over(signum)              # outside training, or a second signal while a step hangs: stop now
    raise SystemExit(f"terminated by signal {signum}")


def hand_over(signum: int) -> None:
    """Pass a stop signal on to the scheduler's handler that was installed before ours (submitit requeues the job
    and exits); nothing for a signal no one else handles."""
    handler = _handed_over.get(signum)
    if handler is not None:
        handler(signum, None)


def stop_requested() -> int | None:
    return _stop["signal"]


class training_section:
    """While open, a stop signal waits for the end of the current step instead of stopping at once."""

    def __enter__(self):
        _stop["training"], _stop["signal"] = True, None

    def __exit__(self, *exc):
        _stop["training"] = False
        if _stop["signal"] is not None and exc[0] is None:   # a signal between the last check and the end
            hand_over(_stop["signal"])
            raise SystemExit(f"terminated by signal {_stop['signal']}")
