"""Monitor.adopt(): children made elsewhere, and pids that are not ours to watch."""

import os
import signal

import pytest

from syncmon import Monitor
from helpers import HANG, eventually, proc_state, sh


def posix_spawn_sh(script):
    return os.posix_spawn("/bin/sh", sh(script), os.environ)


def test_adopt_a_child_from_posix_spawn(monitor):
    h = monitor.adopt(posix_spawn_sh("exit 5"))
    assert h.wait(timeout=HANG).returncode == 5
    assert h.command is None


def test_adopt_a_child_from_fork(monitor):
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    assert monitor.adopt(pid).wait(timeout=HANG).returncode == 7


def test_adopt_a_child_that_is_already_a_zombie(monitor):
    """Its SIGCHLD came before the handle existed: adopt must look for itself."""
    pid = posix_spawn_sh("exit 6")
    assert eventually(lambda: proc_state(pid) == "Z")
    h = monitor.adopt(pid)
    assert h.future.result(timeout=HANG).returncode == 6
    assert h.wait(timeout=HANG).returncode == 6


def test_adopted_child_can_be_killed(monitor):
    h = monitor.adopt(os.posix_spawn("/bin/sleep", ["sleep", "100"], os.environ))
    h.kill()
    assert h.wait(timeout=HANG).returncode == -signal.SIGKILL


@pytest.mark.parametrize("pid, error", [
    (1, ChildProcessError),
    (os.getppid(), ChildProcessError),
    (os.getpid(), ValueError),
    (0, ValueError),
    (-1, ValueError),
    (-os.getpid(), ValueError),
    ("123", TypeError),
    (1.0, TypeError),
    (None, TypeError),
    (True, (TypeError, ChildProcessError)),  # bool is an int; either answer is fine
    (False, (TypeError, ValueError)),
], ids=["init", "our-parent", "ourselves", "zero", "minus-one", "our-group",
        "str", "float", "none", "true", "false"])
def test_adopt_refuses_what_is_not_our_child(monitor, pid, error):
    with pytest.raises(error):
        monitor.adopt(pid)


def test_adopt_refuses_a_grandchild(monitor):
    r, w = os.pipe()
    try:
        h = monitor.spawn(sh("sleep 100 & echo $!; wait"), stdout=w, start_new_session=True)
    finally:
        os.close(w)
    with open(r) as out:
        grandchild = int(out.readline())
    try:
        with pytest.raises(ChildProcessError):
            monitor.adopt(grandchild)
    finally:
        h.killpg(signal.SIGKILL)
        h.wait(timeout=HANG)


def test_adopt_refuses_a_child_we_reaped_ourselves(monitor):
    pid = posix_spawn_sh("exit 0")
    os.waitpid(pid, 0)
    with pytest.raises(ChildProcessError):
        monitor.adopt(pid)


def test_adopt_refuses_a_child_syncmon_reaped(monitor):
    h = monitor.spawn(["true"])
    h.wait(timeout=HANG)
    with pytest.raises(ChildProcessError):
        monitor.adopt(h.pid)


@pytest.mark.parametrize("second", ["same-monitor", "other-monitor"])
@pytest.mark.parametrize("first", ["spawn", "adopt"])
def test_watching_a_pid_twice_never_makes_two_reapers(monitor, pidfd_mode, first, second):
    """Two handles on one pid would race to reap it: one gets the status, the
    other ECHILD (or, after pid reuse, a stranger's status)."""
    r, w = os.pipe()
    try:
        if first == "spawn":
            h1 = monitor.spawn(sh("read x; exit 3"), stdin=r)
        else:
            h1 = monitor.adopt(os.posix_spawn("/bin/sh", sh("read x <&3; exit 3"), os.environ,
                                              file_actions=[(os.POSIX_SPAWN_DUP2, r, 3)]))
    finally:
        os.close(r)
    with Monitor(pidfd=not pidfd_mode) as other:
        mon2 = monitor if second == "same-monitor" else other
        try:
            h2 = mon2.adopt(h1.pid)
        except (ValueError, RuntimeError, ChildProcessError):
            h2 = h1  # refusing is fine too
        assert h2 is h1
        os.close(w)
        states = [h.wait(timeout=HANG) for h in (h1, h2)]
    assert [st.returncode for st in states] == [3, 3]
