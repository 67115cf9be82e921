"""Fault suite, EAGAIN on processes and threads, from a pids cgroup.

RLIMIT_NPROC would be the obvious fault, but root (these tests' user) has
CAP_SYS_RESOURCE and the kernel does not apply RLIMIT_NPROC to it; a pids
cgroup limits root too, and counts threads as well as processes.  A fresh
interpreter moves itself into a cgroup made for the test, so only it is limited.
"""

from __future__ import annotations

import os
import textwrap

import pytest

from faults import pids_cgroup, pids_cgroup_unavailable
from helpers import run_code

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(pids_cgroup_unavailable() is not None, reason=str(pids_cgroup_unavailable())),
]

TESTS = os.path.dirname(os.path.abspath(__file__))

SCRIPT = textwrap.dedent("""
    import os, signal, sys, threading
    sys.path.insert(0, {tests!r})
    from syncmon import Monitor
    from helpers import eventually, open_fds, our_children

    CG = {cgroup!r}
    def limit(n):
        with open(os.path.join(CG, "pids.max"), "w") as f:
            f.write(str(n))
    def tasks():
        with open(os.path.join(CG, "pids.current")) as f:
            return int(f.read())
    with open(os.path.join(CG, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))

    # 1. The first Monitor() cannot start its thread.
    fds, mask = open_fds(), signal.pthread_sigmask(signal.SIG_BLOCK, ())
    limit(tasks())
    try:
        with Monitor() as mon:
            mon.spawn(["true"]).wait(timeout=20)
        raise SystemExit("no thread could start, yet Monitor() and spawn worked")
    except (RuntimeError, OSError) as e:
        print("first monitor:", type(e).__name__, e)
    limit("max")
    assert eventually(lambda: open_fds() == fds, timeout=10), ("fds left", open_fds(), fds)
    assert signal.pthread_sigmask(signal.SIG_BLOCK, ()) == mask, "signal mask changed by a failed start"

    with Monitor() as mon:
        assert mon.pidfd is True
        mon.spawn(["true"]).wait(timeout=20)
        # 2. spawn at EAGAIN: a clear BlockingIOError, nothing left, still serving afterwards.
        fds = open_fds()
        limit(tasks())
        try:
            mon.spawn(["true"])
            raise SystemExit("spawn worked with no free task")
        except BlockingIOError:
            pass
        limit("max")
        assert open_fds() == fds and not our_children()
        # 3. a callback thread cannot start when the death comes: the callback runs once.
        h = mon.spawn(["sleep", "100"])
        calls = []
        ran = threading.Event()
        h.future.add_done_callback(lambda f: (calls.append(1), ran.set()))
        limit(tasks() - 1)  # the child's death frees a task, not enough for a new thread
        h.kill()
        assert h.wait(timeout=20).returncode == -signal.SIGKILL
        limit("max")
        assert calls == [], "the callback ran inline, on the thread that resolved the future"
        # Documented: a callback queued while no callback thread could start
        # waits for the next callback, whose thread start is tried again.
        later = mon.spawn(["sleep", "100"])
        later.future.add_done_callback(lambda f: None)
        later.kill()
        later.wait(timeout=20)
        assert ran.wait(20), "the callback never ran"
        assert calls == [1], f"the callback ran {{len(calls)}} times"
    assert eventually(lambda: not our_children(), timeout=10)
    print("ok")
""")


def test_eagain_on_threads_and_processes_gives_clear_errors_and_no_leak():
    with pids_cgroup(1_000_000) as procs:
        out = run_code(SCRIPT.format(tests=TESTS, cgroup=os.path.dirname(procs)), timeout=50)
    assert out.strip().endswith("ok"), out
