"""Monitor lifecycle: one engine shared by every Monitor, gone after the last close."""

import os
import threading

import pytest

from syncmon import Monitor
from helpers import HANG, SIGNALFD, eventually, open_fds, sh, signalfd_count


def spawn_and_wait(mon, code=0):
    return mon.spawn(sh(f"exit {code}")).wait(timeout=HANG)


def test_context_manager_opens_and_closes(pidfd_mode):
    with Monitor(pidfd=pidfd_mode) as mon:
        assert not mon.closed
        assert mon.pidfd is pidfd_mode
        assert spawn_and_wait(mon, 3).returncode == 3
    assert mon.closed


def test_close_is_idempotent(pidfd_mode):
    mon = Monitor(pidfd=pidfd_mode)
    mon.close()
    mon.close()
    assert mon.closed
    with mon:  # leaving the block closes it once more
        pass
    assert mon.closed


def test_last_close_stops_the_engine_thread_and_closes_its_fds(pidfd_mode):
    threads_before = set(threading.enumerate())
    fds_before = open_fds()
    assert SIGNALFD not in fds_before.values()

    with Monitor(pidfd=pidfd_mode) as mon:
        spawn_and_wait(mon)
        engine_threads = set(threading.enumerate()) - threads_before
        assert len(engine_threads) == 1, engine_threads
        assert signalfd_count() == 1

    assert eventually(lambda: set(threading.enumerate()) == threads_before, timeout=10), \
        f"engine thread still alive: {engine_threads}"
    assert eventually(lambda: open_fds() == fds_before, timeout=10), \
        f"fds left open: {set(open_fds().items()) - set(fds_before.items())}"


def test_engine_thread_is_named_after_syncmon():
    before = set(threading.enumerate())
    with Monitor() as mon:
        spawn_and_wait(mon)
        (engine,) = set(threading.enumerate()) - before
        assert "syncmon" in engine.name.lower()


def test_monitors_share_one_engine():
    """Two signalfds for SIGCHLD would steal each other's wake-ups (rule 7)."""
    before = set(threading.enumerate())
    with Monitor(pidfd=True) as a, Monitor(pidfd=False) as b, Monitor() as c:
        for i, mon in enumerate([a, b, c]):
            assert spawn_and_wait(mon, i).returncode == i
        assert signalfd_count() == 1
        assert len(set(threading.enumerate()) - before) == 1


def test_closing_one_monitor_leaves_the_engine_to_the_others(pidfd_mode):
    other = Monitor(pidfd=not pidfd_mode)
    with Monitor(pidfd=pidfd_mode) as mon:
        r, w = os.pipe()
        try:
            waiting = mon.spawn(sh("read x; exit 4"), stdin=r)
        finally:
            os.close(r)
        other.close()
        assert spawn_and_wait(mon, 5).returncode == 5
        os.close(w)
        assert waiting.wait(timeout=HANG).returncode == 4
        assert signalfd_count() == 1


def test_engine_restarts_after_the_last_close(pidfd_mode):
    for code in range(3):
        with Monitor(pidfd=pidfd_mode) as mon:
            assert spawn_and_wait(mon, code).returncode == code


def test_closed_monitor_refuses_spawn(pidfd_mode):
    mon = Monitor(pidfd=pidfd_mode)
    mon.close()
    with pytest.raises(RuntimeError):
        mon.spawn(["true"])


def test_closed_monitor_refuses_adopt(pidfd_mode):
    mon = Monitor(pidfd=pidfd_mode)
    mon.close()
    pid = os.posix_spawn("/bin/true", ["true"], os.environ)
    try:
        with pytest.raises(RuntimeError):
            mon.adopt(pid)
    finally:
        os.waitpid(pid, 0)  # refused, so still ours to reap


def test_handles_keep_working_after_their_monitor_closes(pidfd_mode):
    """The engine stays while a watched child is unreaped, then goes (no_leaks)."""
    with Monitor(pidfd=pidfd_mode) as mon:
        r, w = os.pipe()
        try:
            h = mon.spawn(sh("read x; exit 4"), stdin=r)
        finally:
            os.close(r)
    os.close(w)
    assert h.wait(timeout=HANG).returncode == 4
    assert h.future.result(timeout=HANG).returncode == 4
