"""The sandbox for generated code: hostile programs are scored as failed and nothing outside their directory
changes. Each attack is tried twice where it can be: through the guarded Python API, and around the guard
(the `posix` / `_socket` modules), where the kernel-level layers must hold on their own."""

import os
import time

import pytest

from folora.evals.sandbox import Limits, check_function, interpreter, run_program

FAST = Limits(wall_s=3.0, cpu_s=3)
# Attacks around the Python guard need the kernel layers (namespaces, uid nobody), which need a root parent.
KERNEL = pytest.mark.skipif(os.geteuid() != 0 or not interpreter()[1],
                            reason="kernel-level containment needs root (namespaces, dropping to nobody)")


@pytest.fixture
def outside(tmp_path_factory):
    """Files and a folder outside any sandbox directory that hostile programs try to destroy."""
    root = tmp_path_factory.mktemp("outside")
    os.chmod(root, 0o777)  # even world-writable
    (root / "keep.txt").write_text("keep")
    (root / "folder").mkdir()
    (root / "folder" / "inner.txt").write_text("inner")
    return root


def snapshot(root):
    return sorted((str(p.relative_to(root)), p.read_text() if p.is_file() else None) for p in root.rglob("*"))


def test_a_correct_program_passes_and_a_wrong_one_fails():
    assert run_program("assert sorted([3, 1, 2]) == [1, 2, 3]").passed
    result = run_program("assert 1 + 1 == 3")
    assert not result.passed and result.status == "failed" and "AssertionError" in result.detail


def test_humaneval_style_check():
    completion = "def add(a, b):\n    return a + b\n"
    test = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
    assert check_function(completion, test, "add").passed
    assert not check_function("def add(a, b):\n    return a - b\n", test, "add").passed


@pytest.mark.parametrize("program", ["while True:\n    pass", "import time\ntime.sleep(60)"], ids=["busy", "sleep"])
def test_an_infinite_loop_is_killed_at_the_limit(program):
    start = time.perf_counter()
    result = run_program(program, FAST)
    assert result.status == "timeout" and not result.passed
    assert time.perf_counter() - start < FAST.wall_s + 2


def test_the_cpu_limit_stops_a_busy_loop_before_a_long_wall_limit():
    start = time.perf_counter()
    result = run_program("while True:\n    pass", Limits(wall_s=30.0, cpu_s=1))
    assert result.status == "timeout" and "CPU limit" in result.detail
    assert time.perf_counter() - start < 15


@pytest.mark.parametrize("program", [
    "import os\nwhile True:\n    os.fork()",
    pytest.param("import posix\nwhile True:\n    posix.fork()", marks=KERNEL),
], ids=["guarded", "around-the-guard"])
def test_a_fork_bomb_is_contained(program):
    result = run_program(program, FAST)
    assert not result.passed
    assert run_program("assert True").passed  # the machine still runs programs afterwards


def test_a_huge_allocation_fails_cleanly():
    result = run_program("x = bytearray(16 * 1024**3)\nassert True")
    assert not result.passed and "MemoryError" in result.detail


@pytest.mark.parametrize("attack", [
    "import shutil\nshutil.rmtree({folder!r})",
    "import os\nos.remove({keep!r})",
    "open({keep!r}, 'w').write('gone')",
    "open({new!r}, 'w').write('new')",
    pytest.param("import posix\nposix.unlink({keep!r})", marks=KERNEL),
    pytest.param("import posix\nfd = posix.open({new!r}, posix.O_WRONLY | posix.O_CREAT)\nposix.write(fd, b'new')", marks=KERNEL),
    pytest.param("import posix\nposix.rename({keep!r}, {new!r})", marks=KERNEL),
], ids=["rmtree", "remove", "overwrite", "create", "posix-unlink", "posix-create", "posix-rename"])
def test_files_outside_its_directory_are_untouched(outside, attack):
    before = snapshot(outside)
    program = attack.format(folder=str(outside / "folder"), keep=str(outside / "keep.txt"), new=str(outside / "new.txt"))
    result = run_program(program + "\nassert True", FAST)
    assert not result.passed, result
    assert snapshot(outside) == before


def test_writing_inside_its_own_directory_works():
    assert run_program("open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'").passed


@pytest.mark.parametrize("program", [
    "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)",
    pytest.param("import _socket\ns = _socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', 22))", marks=KERNEL),
    pytest.param("import _socket\n_socket.getaddrinfo('pypi.org', 443)", marks=KERNEL),
], ids=["guarded", "raw-socket", "dns"])
def test_no_network(program):
    assert not run_program(program + "\nassert True", FAST).passed


@pytest.mark.parametrize("program", ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "import posix\nposix._exit(0)",
                                     "raise SystemExit"], ids=["sys.exit", "os._exit", "posix._exit", "SystemExit"])
def test_exiting_early_is_not_passing(program):
    result = run_program(program + "\nassert False")
    assert not result.passed


def test_environment_secrets_are_not_inherited(monkeypatch):
    monkeypatch.setenv("FOLORA_TEST_SECRET", "hunter2")
    assert not run_program("import os\nassert os.environ.get('FOLORA_TEST_SECRET') == 'hunter2'").passed
    parent_environ = f"assert 'hunter2' in open('/proc/{os.getpid()}/environ').read()"
    assert not run_program(parent_environ).passed


@pytest.mark.parametrize("program", ["import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
                                     pytest.param("import posix\nposix.kill(posix.getppid(), 9)", marks=KERNEL),
                                     pytest.param(f"import posix\nposix.kill({os.getpid()}, 9)", marks=KERNEL)], ids=["os", "posix", "by-pid"])
def test_it_cannot_kill_its_parent(program):
    result = run_program(program + "\nassert True")
    assert not result.passed  # and this test process is still alive to check it


def test_containment_is_reported():
    result = run_program("assert True")
    assert {"rlimits", "guard", "stripped env", "timeout"} <= set(result.containment)


@pytest.mark.skipif(os.geteuid() != 0, reason="the kernel-level layers need a root parent")
def test_a_root_parent_reports_the_kernel_layers():
    result = run_program("assert True")
    assert "network namespace" in result.containment
    assert ("uid nobody" in result.containment) == interpreter()[1]
