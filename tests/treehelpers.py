"""Helpers for the process-tree tests (tests/test_cgroup.py, tests/test_proctree.py).

Processes are placed in a cgroup at birth without the ForkServer: a shell
writes its own pid into ``cgroup.procs`` and then execs the payload, so the
payload and everything it forks are born inside.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import pytest

from helpers import HANG, eventually

CGROUP_ROOT = "/sys/fs/cgroup"

#: Enter cgroup directories given as $1.. (up to the "--"), then exec the rest.
_ENTER = 'while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || exit 99; shift; done; shift; exec "$@"'


def syncmon_cgroups(pid: int | None = None) -> list[str]:
    """Every cgroup directory with "syncmon" in its name that process ``pid`` (default: us) made.

    Other programs on the machine (other syncmon test runs) have cgroups of
    their own: only names carrying our pid (``syncmon-<pid>-<n>``,
    ``syncmon-test-pids-<pid>``) and what lies below them are ours.
    """
    pid = os.getpid() if pid is None else pid
    mine = (f"-{pid}-", f"-{pid}")
    found = []
    for directory, subdirs, _files in os.walk(CGROUP_ROOT):
        for d in subdirs:
            path = os.path.join(directory, d)
            if any(part.startswith("syncmon") and (part.endswith(mine[1]) or mine[0] in part)
                   for part in path.split("/")):
                found.append(path)
    return found


@pytest.fixture
def no_cgroups_left():
    """Fail a test that leaves a cgroup of ours behind (and remove it, so later tests are not blamed)."""
    before = set(syncmon_cgroups())
    yield
    left = sorted(set(syncmon_cgroups()) - before)
    for path in sorted(left, key=len, reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(path)
    assert not left, f"cgroups left behind: {left}"


@pytest.fixture
def plain_signal_mask():
    """Run the test with nothing blocked, as a fresh program would.

    An engine of an earlier test may have left SIGCHLD blocked in this
    thread, and subprocess.Popen hands the mask on: dash's ``wait`` then
    sleeps through its children's deaths and the tree hangs.
    """
    old = signal.pthread_sigmask(signal.SIG_SETMASK, ())
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, old)


def start_in(directories: list[str], argv: list[str], **kwargs) -> subprocess.Popen:
    """Start argv born in every cgroup directory given (one per hierarchy)."""
    return subprocess.Popen(["sh", "-c", _ENTER, "sh", *directories, "--", *argv], **kwargs)


def sh_tree(script: str) -> list[str]:
    return ["sh", "-c", script]


def wait_count(count_members, n: int) -> None:
    """Wait (bounded) until the tree has n live members."""
    got = eventually(lambda: len(count_members()) >= n, timeout=HANG)
    assert got, f"tree never reached {n} members: {count_members()}"


def comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return None


def wait_sleepers(members, n: int, others: int = 1) -> list[int]:
    """Wait (bounded) until the tree is n live `sleep`s and `others` other members; return the members.

    Counting sleeps, not members, makes sure the short-lived middle
    processes (a double fork's) are gone and the last sleep has exec'd.
    """
    def settled():
        pids = members()
        names = [comm(pid) for pid in pids]
        return pids if names.count("sleep") == n and len(pids) == n + others else None
    got = eventually(settled, timeout=HANG)
    assert got, f"tree never settled at {n} sleeps: {[(p, comm(p)) for p in members()]}"
    return got


def reap(p: subprocess.Popen) -> int:
    return p.wait(timeout=HANG)


@contextlib.contextmanager
def v1_pids_limit(limit: int):
    """A v1 pids cgroup with pids.max=limit under our own v1 pids cgroup; removed after.

    The cgroup2 hierarchy here offers no pids controller, but the v1 pids
    hierarchy is mounted: a process can be in both at once.
    """
    mount = os.path.join(CGROUP_ROOT, "pids")
    own = next((line.split(":", 2)[2].strip() for line in open("/proc/self/cgroup")
                if line.split(":")[1] == "pids"), None)
    if own is None or not os.path.isdir(mount):
        pytest.skip("no v1 pids hierarchy")
    path = os.path.join(mount, own.lstrip("/"), f"syncmon-test-pids-{os.getpid()}")
    os.mkdir(path)
    try:
        with open(os.path.join(path, "pids.max"), "w") as f:
            f.write(str(limit))
        yield path
    finally:
        # Members may still be exiting after the v2 kill; rmdir needs it empty.
        eventually(lambda: not open(os.path.join(path, "cgroup.procs")).read(), timeout=HANG)
        os.rmdir(path)


#: A fork bomb: every process forks as fast as it can, and on EAGAIN tries again.
FORK_BOMB = [sys.executable, "-c", """
import os, time
while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.005)
"""]
