"""ChildState.rusage: a death carries the child's resource use, read by the waitid that reaped it.

Every test runs on the ``monitor`` fixture, in both pidfd modes: on spawned
children, on syncmon.Popen (whose own wait reaps) and on ForkServer children.
Only lower bounds on what a child certainly used, and generous upper bounds
on what a trivial child can use on a loaded machine; nothing about speed.
"""

import signal

import pytest

from syncmon import CLD, ForkServer, ResourceUsage, W
from helpers import HANG, py, sh
from test_foreign_reap import reap_before_syncmon
from test_popen import needs_exit_status_recovery

# process_time() is a system call (no vDSO for CPU clocks): a loop that only
# calls it spends most of its time in the kernel.  The sum keeps it in user mode.
BURN = "import time\nwhile time.process_time() < 0.4: sum(range(100_000))"
ALLOCATE = "b = b'x' * 200_000_000"  # writes every byte: 200 MB resident
EXIT3 = sh("exit 3")


def burnt_cpu(state):
    assert state.clean(), state
    assert isinstance(state.rusage, ResourceUsage), state
    assert state.rusage.user_seconds >= 0.25, state.rusage
    assert state.rusage.user_seconds + state.rusage.system_seconds >= 0.35, state.rusage


def used_memory(state):
    assert state.clean(), state
    assert state.rusage.max_rss_bytes >= 150e6, state.rusage


def trivial_exit3(state):
    assert (state.code, state.status, state.returncode) == (CLD.EXITED, 3, 3), state
    usage = state.rusage
    assert usage.user_seconds < 0.2 and usage.system_seconds < 0.2, usage
    # No upper bound on the RSS: a child that posix_spawn (vfork) made ran on
    # our memory until exec, and the kernel counts that mm's high-water mark
    # as the child's (after a long test run, ours is past 100 MB).
    assert usage.max_rss_bytes > 0, usage


CASES = [(py(BURN), burnt_cpu), (py(ALLOCATE), used_memory), (EXIT3, trivial_exit3)]
IDS = ["cpu", "memory", "exit3"]


@pytest.mark.parametrize("argv, check", CASES, ids=IDS)
def test_a_spawned_child_reports_its_usage(monitor, argv, check):
    h = monitor.spawn(argv)
    state = h.wait(timeout=HANG)
    check(state)
    assert h.future.result(timeout=HANG) == state


@pytest.mark.parametrize("argv, check", CASES, ids=IDS)
def test_a_popen_child_reports_its_usage(monitor, argv, check):
    with monitor.popen(argv) as p:
        assert p.wait(timeout=HANG) == p.returncode
    check(p.future.result(timeout=HANG))


@pytest.mark.parametrize("argv, check", CASES, ids=IDS)
def test_a_fork_server_child_reports_its_usage(monitor, argv, check):
    with ForkServer(monitor=monitor) as server:
        h = server.spawn(argv)
        check(h.wait(timeout=HANG))


def test_a_killed_child_has_usage_too(monitor):
    h = monitor.spawn(["sleep", "100"])
    h.kill(signal.SIGKILL)
    state = h.wait(timeout=HANG)
    assert (state.code, state.status) == (CLD.KILLED, signal.SIGKILL), state
    assert state.rusage is not None and state.rusage.max_rss_bytes > 0, state


def test_stops_and_continues_have_no_usage(monitor):
    h = monitor.spawn(["sleep", "100"])
    try:
        h.kill(signal.SIGSTOP)
        stopped = h.wait(W.STOPPED, timeout=HANG)
        h.kill(signal.SIGCONT)
        continued = h.wait(W.CONTINUED, timeout=HANG)
        assert (stopped.code, continued.code) == (CLD.STOPPED, CLD.CONTINUED)
        assert stopped.rusage is None and continued.rusage is None, (stopped, continued)
    finally:
        h.kill(signal.SIGKILL)
    assert h.wait(timeout=HANG).rusage is not None


@needs_exit_status_recovery
def test_a_death_recovered_after_a_foreign_reap_has_no_usage(no_leaks):
    from syncmon import Monitor

    with Monitor(pidfd=True) as monitor:
        h, _ = reap_before_syncmon(monitor, "exit 5")
        state = h.wait(timeout=HANG)
        assert (state.code, state.status, state.uid, state.rusage) == (CLD.EXITED, 5, None, None), state
