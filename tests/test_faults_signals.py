"""Fault suite, signals: SIGINT and SIGTERM delivered to the main thread during every blocking call.

Each case: the exception leaves the call, and afterwards the child is still
served (the future resolves without anyone waiting again, a later wait gives
the true status), no descriptor is leaked or touched.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess

import pytest

import syncmon
from syncmon import CLD, W
from faults import Terminated, guarded_fds, signal_during
from helpers import HANG

pytestmark = pytest.mark.timeout(30)

SIGNALS = [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)]
IDS = ["SIGINT", "SIGTERM"]


def _interrupted(sig, exc, call):
    with guarded_fds():
        with pytest.raises(exc):
            with signal_during(sig):
                call()


def _still_served(h, sig=signal.SIGKILL):
    h.kill(sig)
    assert h.future.result(timeout=HANG).returncode == -sig
    assert h.wait(timeout=HANG).returncode == -sig


@pytest.mark.parametrize("sig, exc", SIGNALS, ids=IDS)
@pytest.mark.parametrize("options", [W.EXITED, W.STOPPED, W.EXITED | W.CONTINUED], ids=repr)
def test_signal_during_wait(monitor, sig, exc, options):
    h = monitor.spawn(["sleep", "100"])
    _interrupted(sig, exc, lambda: h.wait(options))
    _still_served(h)


@pytest.mark.parametrize("sig, exc", SIGNALS, ids=IDS)
def test_signal_during_wait_with_timeout(monitor, sig, exc):
    h = monitor.spawn(["sleep", "100"])
    _interrupted(sig, exc, lambda: h.wait(timeout=HANG))
    _still_served(h)


@pytest.mark.parametrize("sig, exc", SIGNALS, ids=IDS)
def test_signal_during_check_terminates_the_child(monitor, sig, exc):
    h = monitor.spawn(["sleep", "100"])
    _interrupted(sig, exc, h.check)
    st = h.wait(timeout=HANG)
    assert (st.code, st.status) == (CLD.KILLED, signal.SIGTERM)


@pytest.mark.parametrize("sig, exc", SIGNALS, ids=IDS)
def test_signal_during_popen_wait(monitor, sig, exc):
    p = syncmon.Popen(["sleep", "100"], monitor=monitor)
    _interrupted(sig, exc, p.wait)
    p.kill()
    assert p.wait(timeout=HANG) == -signal.SIGKILL
    assert p.future.result(timeout=HANG).returncode == -signal.SIGKILL


@pytest.mark.parametrize("sig, exc", SIGNALS, ids=IDS)
def test_signal_during_communicate(monitor, sig, exc):
    p = syncmon.Popen(["sh", "-c", "echo early; exec sleep 100"], stdout=subprocess.PIPE, monitor=monitor)
    _interrupted(sig, exc, p.communicate)
    p.kill()
    # What was read before the interrupt is subprocess's business (with one pipe
    # and no timeout it is lost, for plain subprocess too); the death is ours.
    p.communicate(timeout=HANG)
    assert p.returncode == -signal.SIGKILL
    assert p.future.result(timeout=HANG).returncode == -signal.SIGKILL


@pytest.mark.parametrize("sig, exc", SIGNALS, ids=IDS)
def test_signal_during_aio_wait(monitor, sig, exc):
    h = monitor.spawn(["sleep", "100"])
    _interrupted(sig, exc, lambda: asyncio.run(syncmon.aio.wait(h)))
    _still_served(h)


@pytest.mark.parametrize("sig, exc", SIGNALS, ids=IDS)
def test_signal_during_pool_result(no_leaks, sig, exc):
    # An explicit monitor: the process-wide one would outlive the leak check.
    with syncmon.Monitor() as monitor, syncmon.CommandPool(monitor=monitor) as pool:
        slow = pool.submit(["sleep", "100"])
        _interrupted(sig, exc, lambda: slow.result(timeout=HANG))
        pool.kill(slow)
        done = slow.result(timeout=HANG)
        assert done.returncode == -signal.SIGKILL
        assert pool.submit(["sh", "-c", "exit 3"]).result(timeout=HANG).returncode == 3

