"""ChildHandle.wait(): exit states, timeouts, many waiters, stop/continue."""

import os
import signal
import threading
import time

import pytest

from syncmon import CLD, W
from helpers import HANG, eventually, has_exited, proc_state, run_in_threads, sh

SLEEPER = ["sleep", "100"]


@pytest.mark.parametrize("script, code, status, returncode", [
    ("exit 0", CLD.EXITED, 0, 0),
    ("exit 3", CLD.EXITED, 3, 3),
    ("exit 255", CLD.EXITED, 255, 255),
    ("kill -KILL $$", CLD.KILLED, signal.SIGKILL, -signal.SIGKILL),
    ("kill -TERM $$", CLD.KILLED, signal.SIGTERM, -signal.SIGTERM),
    ("ulimit -c 0; kill -SEGV $$", CLD.KILLED, signal.SIGSEGV, -signal.SIGSEGV),
], ids=["exit0", "exit3", "exit255", "sigkill", "sigterm", "sigsegv"])
def test_wait_reports_how_the_child_ended(monitor, script, code, status, returncode):
    h = monitor.spawn(sh(script))
    st = h.wait(timeout=HANG)
    assert (st.pid, st.code, st.status, st.returncode) == (h.pid, code, status, returncode)
    assert st.died()
    assert st.clean() is (returncode == 0)
    assert h.returncode == returncode


def test_wait_sees_a_kill_from_outside(monitor):
    h = monitor.spawn(SLEEPER)
    os.kill(h.pid, signal.SIGKILL)
    assert h.wait(timeout=HANG).returncode == -signal.SIGKILL


def test_wait_again_returns_the_same_state(monitor):
    h = monitor.spawn(sh("exit 6"))
    first = h.wait(timeout=HANG)
    again = h.wait(timeout=HANG)
    assert (again.code, again.status) == (first.code, first.status)
    assert h.poll().returncode == 6


def test_wait_timeout_raises_timeout_error_and_leaves_the_child_alone(monitor):
    h = monitor.spawn(SLEEPER)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        h.wait(timeout=0.2)
    assert time.monotonic() - start >= 0.2, "returned before the timeout"
    assert h.poll() is None and h.returncode is None
    assert proc_state(h.pid) not in (None, "Z")
    h.kill()
    assert h.wait(timeout=HANG).returncode == -signal.SIGKILL


def test_wait_timeout_zero_on_a_live_child_raises(monitor):
    h = monitor.spawn(SLEEPER)
    with pytest.raises(TimeoutError):
        h.wait(timeout=0)
    h.kill()
    h.wait(timeout=HANG)


def test_wait_timeout_zero_on_a_dead_child_returns_its_state(monitor):
    """The state must be looked for before the deadline is checked."""
    h = monitor.spawn(sh("exit 2"))
    assert eventually(lambda: has_exited(h.pid))
    assert h.wait(timeout=0).returncode == 2


def test_many_threads_waiting_on_one_child_all_get_its_death(monitor):
    r, w = os.pipe()
    try:
        h = monitor.spawn(sh("read x; exit 7"), stdin=r)
    finally:
        os.close(r)
    n = 16
    barrier = threading.Barrier(n + 1)

    def waiter():
        barrier.wait(HANG)
        return h.wait(timeout=HANG)

    closer = threading.Thread(target=lambda: (barrier.wait(HANG), os.close(w)))
    closer.start()
    states = run_in_threads(waiter, [()] * n)
    closer.join()
    assert {(st.pid, st.code, st.status) for st in states} == {(h.pid, CLD.EXITED, 7)}


def test_many_threads_waiting_on_many_children_that_die_together(monitor):
    """Simultaneous deaths coalesce into one pending SIGCHLD: none may be missed."""
    r, w = os.pipe()
    try:
        handles = [monitor.spawn(sh(f"read x; exit {i}"), stdin=r) for i in range(20)]
    finally:
        os.close(r)
    waits = [(h, i) for i, h in enumerate(handles)] * 2  # two waiters per child
    timer = threading.Timer(0.1, os.close, [w])  # all children see EOF at once
    timer.start()
    states = run_in_threads(lambda h, i: (h.wait(timeout=HANG).returncode, i), waits)
    timer.join()
    assert all(code == i for code, i in states)


# --- stop / continue -----------------------------------------------------------

def test_wait_stopped_sees_sigstop(monitor):
    h = monitor.spawn(SLEEPER)
    h.kill(signal.SIGSTOP)
    st = h.wait(W.STOPPED, timeout=HANG)
    assert (st.code, st.status, st.returncode) == (CLD.STOPPED, signal.SIGSTOP, None)
    assert not st.died()
    assert h.poll() is None and h.returncode is None
    h.kill()
    assert h.wait(timeout=HANG).returncode == -signal.SIGKILL


def test_wait_continued_sees_sigcont(monitor):
    h = monitor.spawn(SLEEPER)
    h.kill(signal.SIGSTOP)
    h.wait(W.STOPPED, timeout=HANG)
    h.kill(signal.SIGCONT)
    st = h.wait(W.CONTINUED, timeout=HANG)
    assert (st.code, st.status, st.returncode) == (CLD.CONTINUED, signal.SIGCONT, None)
    h.kill()
    h.wait(timeout=HANG)


def _stop_and_let_the_engine_look(monitor, h):
    """SIGSTOP h, and make sure the engine has run a reap pass since."""
    h.kill(signal.SIGSTOP)
    assert eventually(lambda: proc_state(h.pid) == "T")
    # Another child's death wakes the engine, which then looks at every handle.
    monitor.spawn(["true"]).wait(timeout=HANG)


def test_stop_seen_by_the_engine_is_kept_for_a_later_wait_stopped(monitor):
    h = monitor.spawn(SLEEPER)
    _stop_and_let_the_engine_look(monitor, h)
    assert h.wait(W.STOPPED, timeout=HANG).code == CLD.STOPPED
    h.kill()
    h.wait(timeout=HANG)


def test_stop_during_a_wait_for_exit_is_kept_for_a_later_wait_stopped(monitor):
    """Rule 5: a state one waiter does not want is not dropped."""
    h = monitor.spawn(SLEEPER)
    exit_waiter = threading.Thread(target=h.wait, kwargs={"timeout": HANG})
    exit_waiter.start()
    _stop_and_let_the_engine_look(monitor, h)
    assert exit_waiter.is_alive(), "wait(W.EXITED) returned on a stop"
    assert h.wait(W.STOPPED, timeout=HANG).code == CLD.STOPPED
    h.kill()
    exit_waiter.join(HANG)
    assert h.returncode == -signal.SIGKILL


def test_wait_stopped_returns_the_death_of_a_child_that_dies(monitor):
    h = monitor.spawn(sh("exit 9"))
    st = h.wait(W.STOPPED, timeout=HANG)
    assert (st.code, st.returncode) == (CLD.EXITED, 9)


def test_nowait_peeks_at_a_death_without_consuming_it(monitor):
    h = monitor.spawn(sh("exit 4"))
    for _ in range(2):
        assert h.wait(W.EXITED | W.NOWAIT, timeout=HANG).returncode == 4
    assert h.wait(timeout=HANG).returncode == 4


def test_nowait_peeks_at_a_stop_and_a_plain_wait_consumes_it(monitor):
    h = monitor.spawn(SLEEPER)
    h.kill(signal.SIGSTOP)
    for _ in range(2):
        assert h.wait(W.STOPPED | W.NOWAIT, timeout=HANG).code == CLD.STOPPED
    assert h.wait(W.STOPPED, timeout=HANG).code == CLD.STOPPED
    with pytest.raises(TimeoutError):
        h.wait(W.STOPPED, timeout=0.1)
    h.kill()
    h.wait(timeout=HANG)
