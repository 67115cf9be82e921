"""Fault suite, hostile arguments (issue 7, Validation): the TypeError/ValueError
subprocess gives, raised before anything starts: no child, no descriptor left
(the autouse ``no_leaks`` fixture checks both)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading

import pytest

import syncmon
from syncmon import Monitor
from helpers import HANG, our_children, read_all

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("kwargs, error", [
    ({"cwd": "a\0b"}, ValueError),
    ({"cwd": b"a\0b"}, ValueError),
    ({"env": ["A=1"]}, TypeError),
    ({"env": {"A\0": "1"}}, ValueError),
    ({"stdin": 2**40}, ValueError),
    ({"stdin": -5}, ValueError),
    ({"stdout": -1}, ValueError),
    ({"stderr": 2**40}, ValueError),
], ids=lambda v: repr(v) if not isinstance(v, type) else v.__name__)
def test_spawn_refuses_hostile_arguments_before_starting_anything(monitor, kwargs, error):
    with pytest.raises(error):
        monitor.spawn(["true"], **kwargs)
    assert not our_children()
    assert monitor.spawn(["true"]).wait(timeout=HANG).returncode == 0  # still serving


def test_popen_monitor_must_be_a_monitor(no_leaks):
    with pytest.raises(TypeError):
        syncmon.Popen(["true"], monitor="x")
    assert not our_children()


def test_pool_input_must_be_bytes_like(no_leaks):
    """subprocess.run(["cat"], input=123) raises TypeError; the pool once fed 123 NUL bytes."""
    with syncmon.CommandPool() as pool:
        try:
            future = pool.submit(["cat"], input=123, capture_output=True)
        except TypeError:
            return
        with pytest.raises(TypeError):
            future.result(timeout=HANG)


@pytest.mark.parametrize("pid, error", [
    (2**31, ValueError),
    (2**63, ValueError),
    (-(2**31) - 1, ValueError),
], ids=repr)
def test_adopt_refuses_pids_out_of_range(monitor, pid, error):
    with pytest.raises(error):
        monitor.adopt(pid)


def test_adopt_of_one_of_our_threads_is_not_a_child(monitor):
    started, done = threading.Event(), threading.Event()
    tid: list[int] = []

    def thread() -> None:
        tid.append(threading.get_native_id())
        started.set()
        done.wait(HANG)

    t = threading.Thread(target=thread)
    t.start()
    try:
        started.wait(HANG)
        with pytest.raises(ChildProcessError):
            monitor.adopt(tid[0])
    finally:
        done.set()
        t.join()


def _pass_fd_at_the_limit(start) -> bytes:
    """Run a child that writes through a descriptor numbered RLIMIT_NOFILE - 1."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = soft - 1
    r, w = os.pipe()
    try:
        os.dup2(w, top, inheritable=False)
    finally:
        os.close(w)
    try:
        wait = start([sys.executable, "-c", f"import os; os.write({top}, b'hi')"], (top,))
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(top)
    out = read_all(r).encode()
    assert wait() == 0
    return out


def test_pass_fds_at_the_top_of_rlimit_nofile_works_like_subprocess(monitor):
    def with_subprocess(argv, fds):
        return subprocess.Popen(argv, pass_fds=fds).wait

    def with_spawn(argv, fds):
        h = monitor.spawn(argv, pass_fds=fds)
        return lambda: h.wait(timeout=HANG).returncode

    def with_popen(argv, fds):
        p = syncmon.Popen(argv, pass_fds=fds, monitor=monitor)
        return lambda: p.wait(timeout=HANG)

    assert _pass_fd_at_the_limit(with_subprocess) == b"hi"  # the reference
    assert _pass_fd_at_the_limit(with_spawn) == b"hi"
    assert _pass_fd_at_the_limit(with_popen) == b"hi"
