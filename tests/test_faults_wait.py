"""Fault suite, waiting (issue 7 items 10-12): options, timeouts, and a death after the engine stopped.

The contract: options are ``syncmon.W`` flags; a plain int, float or bool in
their place is refused with a hint to use ``timeout=`` (``h.wait(10)`` is the
``Popen.wait`` habit, and 10 must not silently mean STOPPED|CONTINUED).  A
timeout is None or a real number: a str or a bool is a TypeError, NaN a
ValueError, a negative one means "do not wait", and a huge one (30 days,
``2_200_000``, ``math.inf``) waits rather than overflowing poll()'s int.
"""

from __future__ import annotations

import math
import signal
import subprocess
import threading

import pytest

import syncmon
from syncmon import CLD, Monitor, W
from helpers import HANG, eventually, has_exited, sh

SLEEPER = ["sleep", "100"]

# Tests of defects hang until fixed: fail them sooner than the default 60 s.
pytestmark = pytest.mark.timeout(20)


def _kill_later(h, delay: float = 0.3) -> threading.Timer:
    timer = threading.Timer(delay, h.kill)
    timer.start()
    return timer


# --- item 11: a positional number is not options --------------------------------------

@pytest.mark.parametrize("call", [
    lambda h: h.wait(10),
    lambda h: h.wait(5),
    lambda h: h.wait(1.5),
    lambda h: h.wait(True),
    lambda h: h.poll(3),
    lambda h: h.poll(1),
], ids=["wait(10)", "wait(5)", "wait(1.5)", "wait(True)", "poll(3)", "poll(1)"])
def test_a_positional_number_is_refused_with_a_hint_to_use_timeout(monitor, call):
    h = monitor.spawn(SLEEPER)
    try:
        with pytest.raises(TypeError, match="timeout="):
            call(h)
        assert h.poll() is None, "the refused call did something to the child"
    finally:
        h.kill()
    assert h.wait(timeout=HANG).returncode == -signal.SIGKILL


def test_w_flags_still_work_positionally(monitor):
    h = monitor.spawn(SLEEPER)
    h.kill(signal.SIGSTOP)
    assert h.wait(W.STOPPED, HANG).code is CLD.STOPPED
    h.kill(signal.SIGCONT)
    assert h.wait(W.CONTINUED, timeout=HANG).code is CLD.CONTINUED
    assert h.poll(W.EXITED) is None
    h.kill()
    assert h.wait(W.EXITED | W.STOPPED, HANG).returncode == -signal.SIGKILL


# --- item 10: timeouts ----------------------------------------------------------------

@pytest.mark.parametrize("timeout", ["1", b"1", True, False, [1], 1j], ids=repr)
def test_a_timeout_that_is_not_a_real_number_is_a_type_error(monitor, timeout):
    h = monitor.spawn(SLEEPER)
    try:
        with pytest.raises(TypeError):
            h.wait(timeout=timeout)
        with pytest.raises(TypeError):
            h.check(timeout=timeout)
    finally:
        h.kill()
    h.wait(timeout=HANG)


def test_a_nan_timeout_is_a_value_error(monitor):
    h = monitor.spawn(SLEEPER)
    try:
        with pytest.raises(ValueError):
            h.wait(timeout=math.nan)
    finally:
        h.kill()
    h.wait(timeout=HANG)


@pytest.mark.parametrize("timeout", [-1, -0.5, -math.inf], ids=repr)
def test_a_negative_timeout_means_do_not_wait(monitor, timeout):
    h = monitor.spawn(SLEEPER)
    try:
        with pytest.raises(TimeoutError):
            h.wait(timeout=timeout)
    finally:
        h.kill()
    assert eventually(lambda: has_exited(h.pid))
    assert h.wait(timeout=timeout).returncode == -signal.SIGKILL  # dead: answered at once


HUGE = [30 * 86400, 2_200_000, 2.2e6, math.inf, 2**64]


@pytest.mark.parametrize("timeout", HUGE, ids=repr)
def test_a_huge_timeout_waits_for_the_death(monitor, timeout):
    h = monitor.spawn(SLEEPER)
    timer = _kill_later(h)
    try:
        assert h.wait(timeout=timeout).returncode == -signal.SIGKILL
    finally:
        timer.join()


@pytest.mark.parametrize("timeout", HUGE, ids=repr)
def test_a_huge_timeout_on_a_stop_wait(monitor, timeout):
    h = monitor.spawn(SLEEPER)
    timer = threading.Timer(0.3, h.kill, [signal.SIGSTOP])
    timer.start()
    try:
        assert h.wait(W.STOPPED, timeout=timeout).code is CLD.STOPPED
    finally:
        timer.join()
        h.kill()
    h.wait(timeout=HANG)


@pytest.mark.parametrize("timeout", HUGE, ids=repr)
def test_a_huge_timeout_on_popen_wait(monitor, timeout):
    p = syncmon.Popen(SLEEPER, monitor=monitor)
    timer = threading.Timer(0.3, p.kill)
    timer.start()
    try:
        assert p.wait(timeout=timeout) == -signal.SIGKILL
    finally:
        timer.join()


# (Popen.communicate with such a timeout overflows in CPython's own selectors,
# for plain subprocess too: not syncmon's to change.)


# --- item 12: W.STOPPED after the engine stopped -----------------------------------

def test_stop_wait_after_the_death_is_recorded_and_the_engine_stopped_returns_the_death(pidfd_mode, no_leaks):
    with Monitor(pidfd=pidfd_mode) as mon:
        h = mon.spawn(sh("exit 4"))
        assert h.wait(timeout=HANG).returncode == 4
    # The monitor is closed and its last child reaped: the engine has stopped.
    for options in (W.STOPPED, W.STOPPED | W.CONTINUED, W.CONTINUED, W.EXITED):
        st = h.wait(options, timeout=HANG)
        assert (st.code, st.status) == (CLD.EXITED, 4), options
        assert h.poll(options).returncode == 4


def test_a_stop_waiter_gets_the_death_of_a_closed_monitors_last_child(pidfd_mode, no_leaks):
    mon = Monitor(pidfd=pidfd_mode)
    h = mon.spawn(SLEEPER)
    got: list[object] = []

    def stop_waiter() -> None:
        try:
            got.append(h.wait(W.STOPPED, timeout=HANG))
        except BaseException as e:  # noqa: BLE001 - reported below
            got.append(e)

    waiter = threading.Thread(target=stop_waiter)
    waiter.start()
    try:
        mon.close()  # the engine lives on for h; it stops once h's child is reaped
        h.kill()
    finally:
        waiter.join(HANG)
    assert not waiter.is_alive()
    [st] = got
    assert isinstance(st, syncmon.ChildState), st
    assert st.returncode == -signal.SIGKILL
    assert h.future.result(timeout=HANG).returncode == -signal.SIGKILL
