"""Fixtures for the syncmon tests.

* ``pidfd_mode`` / ``monitor``: every core test runs twice, once on pidfds and
  once on the plain signalfd way (ids ``pidfd`` / ``signalfd``).
* ``no_leaks`` (autouse): after each test, and after the test's monitor is
  closed, there is no child of ours left (zombie or alive), no fd that was not
  there before, and no extra thread.  Since the last closed Monitor stops the
  engine, this also proves the engine's thread and fds go away every time.

Tests must therefore not start the process-wide default monitor in the pytest
process (it lives forever): exercise ``syncmon.spawn``/``adopt``/
``default_monitor`` in a fresh interpreter (``helpers.run_script``).
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from helpers import eventually, open_fds, our_children

DEFAULT_TIMEOUT = 60  # seconds per test, unless the config or a marker says otherwise
SETTLE = 10  # how long the leak checks let the engine finish reaping and closing


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "hammer: repeats a race thousands of times (slower, own timeout)")


def pytest_collection_modifyitems(config, items):
    # Every test is bounded even when the config does not set a timeout.
    if config.getoption("timeout", None) is None and not config.getini("timeout"):
        for item in items:
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))


def _pidfd_supported() -> bool:
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


@pytest.fixture(params=[True, False], ids=["pidfd", "signalfd"])
def pidfd_mode(request) -> bool:
    if request.param and not _pidfd_supported():
        pytest.skip("kernel without pidfd_open")
    return request.param


@pytest.fixture
def monitor(no_leaks, pidfd_mode):
    """A Monitor in the test's mode, closed before the leak checks run."""
    from syncmon import Monitor

    with Monitor(pidfd=pidfd_mode) as mon:
        yield mon


@pytest.fixture(autouse=True)
def no_leaks():
    fds_before = open_fds()
    threads_before = set(threading.enumerate())
    yield
    problems = []

    # The engine may still be reaping or shutting down: give it a moment.
    if not eventually(lambda: not our_children(), timeout=SETTLE):
        kids = our_children()
        problems.append(f"children left behind (pid: state): {kids}")
        for pid in kids:  # clean up so that later tests are not blamed
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass

    def new_threads():
        return sorted(t.name for t in set(threading.enumerate()) - threads_before)

    if not eventually(lambda: not new_threads(), timeout=SETTLE):
        problems.append(f"threads still running: {new_threads()}")

    def fd_diff():
        now = open_fds()
        opened = {fd: t for fd, t in now.items() if fds_before.get(fd) != t}
        closed = {fd: t for fd, t in fds_before.items() if now.get(fd) != t}
        return opened, closed

    if not eventually(lambda: fd_diff() == ({}, {}), timeout=SETTLE):
        opened, closed = fd_diff()
        if opened:
            problems.append(f"fds left open: {opened}")
        if closed:
            problems.append(f"fds the test did not own were closed: {closed}")

    if problems:
        pytest.fail("leak check failed:\n  " + "\n  ".join(problems), pytrace=False)
