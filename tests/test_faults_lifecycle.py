"""Fault suite, lifecycle: a monitor closed while threads wait; callbacks that raise, block, wait or spawn."""

from __future__ import annotations

import asyncio
import signal
import os
import threading

import pytest

import syncmon
from syncmon import Monitor, W
from helpers import HANG, run_in_threads, sh

pytestmark = pytest.mark.timeout(60)


def test_monitor_closed_while_threads_wait(pidfd_mode, no_leaks):
    mon = Monitor(pidfd=pidfd_mode)
    h = mon.spawn(["sleep", "100"])
    closer = threading.Timer(0.3, mon.close)
    killer = threading.Timer(0.6, h.kill)
    closer.start()
    killer.start()
    try:
        options = [W.EXITED, W.STOPPED, W.EXITED | W.CONTINUED] * 3
        states = run_in_threads(lambda o: h.wait(o, timeout=HANG), [(o,) for o in options])
    finally:
        closer.join()
        killer.join()
    assert {st.returncode for st in states} == {-signal.SIGKILL}
    with pytest.raises(RuntimeError):
        mon.spawn(["true"])


def test_a_raising_callback_is_logged_and_others_still_run(monitor, caplog):
    h = monitor.spawn(["true"])
    ran = threading.Event()
    h.future.add_done_callback(lambda f: 1 / 0)
    h.future.add_done_callback(lambda f: ran.set())
    assert h.wait(timeout=HANG).returncode == 0
    assert ran.wait(HANG)
    assert monitor.spawn(sh("exit 2")).wait(timeout=HANG).returncode == 2


def test_blocking_callbacks_do_not_starve_other_futures(monitor):
    """More blocking callbacks than callback threads (16): other futures, waits and aio.wait still resolve."""
    release = threading.Event()
    # The children wait for EOF on a pipe, so every callback is added while
    # its child lives: one added to a done future would run in this thread.
    read_end, write_end = os.pipe()
    try:
        blockers = [monitor.spawn(sh("read x"), stdin=read_end) for _ in range(20)]
    finally:
        os.close(read_end)
    for b in blockers:
        b.future.add_done_callback(lambda f: release.wait(HANG))
    os.close(write_end)
    try:
        for b in blockers:
            b.wait(timeout=HANG)
        h = monitor.spawn(sh("exit 5"))
        assert h.future.result(timeout=10).returncode == 5
        assert asyncio.run(asyncio.wait_for(syncmon.aio.wait(monitor.spawn(sh("exit 6"))), 10)).returncode == 6
    finally:
        release.set()


def test_a_callback_that_waits_and_spawns(monitor):
    results: list[object] = []
    done = threading.Event()
    other = monitor.spawn(["sleep", "0.3"])

    def callback(f):
        try:
            results.append(other.wait(timeout=HANG).returncode)  # waits on another child
            results.append(monitor.spawn(sh("exit 4")).wait(timeout=HANG).returncode)  # spawns
            results.append(f.result().returncode)
        except BaseException as e:  # noqa: BLE001 - reported below
            results.append(e)
        finally:
            done.set()

    h = monitor.spawn(sh("exit 3"))
    h.future.add_done_callback(callback)
    assert h.wait(timeout=HANG).returncode == 3
    assert done.wait(HANG)
    assert results == [0, 4, 3]


def test_a_callback_that_waits_on_its_own_handle(monitor):
    got: list[object] = []
    done = threading.Event()
    h = monitor.spawn(sh("exit 8"))

    def callback(f):
        got.append(h.wait(timeout=HANG).returncode)
        done.set()

    h.future.add_done_callback(callback)
    assert done.wait(HANG)
    assert got == [8]
