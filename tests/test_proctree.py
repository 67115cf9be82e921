"""The fallback tree mechanism (syncmon._proctree): /proc links and session ids, verified through pidfds.

Real processes throughout; the test process itself becomes a child
subreaper while a tree exists, so orphaned members come back to it and the
autouse leak check proves they are reaped (and bystanders are not).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time

import pytest

from helpers import HANG, eventually, our_children, proc_stat
from syncmon import _proctree
from syncmon._proctree import ProcTree, check_signal, is_subreaper, subreaper
from treehelpers import (FORK_BOMB, plain_signal_mask, comm, no_cgroups_left, reap, sh_tree, start_in,  # noqa: F401
                         v1_pids_limit, wait_sleepers)

pytestmark = pytest.mark.usefixtures("no_cgroups_left", "plain_signal_mask")


@pytest.fixture(autouse=True)
def subreaper_restored():
    """Each test starts and ends as a plain process (not a subreaper)."""
    assert not is_subreaper()
    yield
    assert not is_subreaper(), "a test left the process a subreaper"


def orphans_of_ours(named: str) -> list[int]:
    return [pid for pid in our_children() if comm(pid) == named]


def start(script: str, session: bool = True) -> subprocess.Popen:
    return subprocess.Popen(sh_tree(script), start_new_session=session)


def test_grandchildren_and_setsid_member():
    p = start("sleep 100 & setsid sleep 100 & sh -c 'sleep 100 & wait' & wait", session=False)
    with ProcTree(p.pid) as tree:
        try:
            members = wait_sleepers(tree.pids, 3, others=2)
            assert p.pid in members
            assert len({proc_stat(pid)["session"] for pid in members}) == 2
            assert tree.kill(signal.SIGKILL) == 5
            assert tree.wait_empty(HANG)
            assert tree.pids() == []
        finally:
            assert reap(p) == -signal.SIGKILL


def test_double_fork_daemon_found_by_session():
    """The middle process exits at once: the daemon is our child now, found by the root's session, reaped by the tree."""
    subreaper.hold()  # before the spawn: the orphan must come to us, not to init
    try:
        p = start("(sleep 100 &); sleep 100")
        with ProcTree(p.pid, session=True) as tree:
            try:
                members = wait_sleepers(tree.pids, 2)
                (daemon,) = [pid for pid in members if proc_stat(pid)["ppid"] == os.getpid() and pid != p.pid]
                assert tree.kill(signal.SIGTERM) == 3
                assert tree.wait_empty(HANG)
            finally:
                assert reap(p) == -signal.SIGTERM
        # The daemon for sure; the root's sleep too if the root died first and handed it to us.
        reaped = {pid: (r.si_code, r.si_status) for pid, r in tree.reaped}
        assert daemon in reaped and set(reaped) <= set(members) - {p.pid}
        assert set(reaped.values()) == {(os.CLD_KILLED, signal.SIGTERM)}
    finally:
        subreaper.release()


def test_setsid_orphan_is_out_of_reach():
    """The documented blind spot: setsid() in a process whose parent died before any pass saw it."""
    subreaper.hold()
    try:
        p = start("(setsid sleep 100 &); exec sleep 100")
        # The escaped one: our child now (we are the subreaper), in a session of its own.
        (escaped,) = eventually(lambda: [pid for pid in orphans_of_ours("sleep") if pid != p.pid])
        assert proc_stat(escaped)["session"] == escaped
        with ProcTree(p.pid, session=True) as tree:
            try:
                assert tree.pids() == [p.pid]
                assert tree.kill() == 1
                assert tree.wait_empty(HANG)
                assert proc_stat(escaped)["state"] != "Z"  # not killed: the tree cannot prove it is a member
            finally:
                reap(p)
                os.kill(escaped, signal.SIGKILL)  # our unreaped child: its pid is still its own
                os.waitpid(escaped, 0)
        assert tree.reaped == []
    finally:
        subreaper.release()


def test_bystanders_are_neither_signalled_nor_reaped():
    """Children of ours outside the tree, alive or zombie, keep their true statuses."""
    zombie = subprocess.Popen(["sh", "-c", "exit 7"])
    zombie_own_session = subprocess.Popen(["sh", "-c", "exit 8"], start_new_session=True)
    alive = subprocess.Popen(["sleep", "100"])
    try:
        assert eventually(lambda: proc_stat(zombie.pid)["state"] == "Z"
                          and proc_stat(zombie_own_session.pid)["state"] == "Z")
        p = start("(sleep 100 &); sleep 100 & wait")
        with ProcTree(p.pid, session=True) as tree:
            try:
                wait_sleepers(tree.pids, 2)
                members = set(tree.pids())
                assert not members & {zombie.pid, zombie_own_session.pid, alive.pid}
                tree.kill()
                assert tree.wait_empty(HANG)
                tree.reap()
            finally:
                reap(p)
        assert alive.poll() is None
        assert zombie.wait(HANG) == 7 and zombie_own_session.wait(HANG) == 8
        reaped = {pid for pid, _ in tree.reaped}
        assert not reaped & {zombie.pid, zombie_own_session.pid, alive.pid}
    finally:
        alive.kill()
        alive.wait()


def test_wait_empty_on_natural_exit_and_timeout():
    p = start("sleep 1 & sleep 1.5 & sleep 100 & wait", session=False)
    with ProcTree(p.pid) as tree:
        try:
            members = wait_sleepers(tree.pids, 3)
            assert tree.wait_empty(0.05) is False
            long = [pid for pid in members if pid != p.pid and "100" in open(f"/proc/{pid}/cmdline").read()]
            os.kill(long[0], signal.SIGKILL)  # a grandchild we may not wait for: sh does, and it is alive
            assert tree.wait_empty(HANG) is True
        finally:
            assert reap(p) == 0


def test_wait_empty_in_another_thread_while_killed():
    p = start("sleep 100 & sleep 100 & wait", session=False)
    with ProcTree(p.pid) as tree:
        results = []
        waiter = threading.Thread(target=lambda: results.append(tree.wait_empty(HANG)))
        try:
            wait_sleepers(tree.pids, 2)
            waiter.start()
            time.sleep(0.05)
            tree.kill()
            waiter.join(HANG)
            assert results == [True]
        finally:
            reap(p)


def test_fork_bomb_capped_by_pids_limit():
    """Passes repeat until none finds a new member: a SIGKILLed bomb cannot outrun them."""
    with v1_pids_limit(30) as pids_cg:
        p = start_in([pids_cg], FORK_BOMB, start_new_session=True)
        with ProcTree(p.pid, session=True) as tree:
            try:
                events = os.path.join(pids_cg, "pids.events")
                assert eventually(lambda: int(open(events).read().split()[1]) > 0)
                assert 1 < len(tree.pids()) <= 30
                assert tree.kill() >= 2
                assert tree.wait_empty(HANG)
            finally:
                assert reap(p) == -signal.SIGKILL
        assert not our_children()


@pytest.mark.hammer
@pytest.mark.timeout(240)
def test_kill_racing_with_exits():
    """Members exiting on their own (and orphaning theirs) while the tree is killed (bounded)."""
    rng = random.Random(9)
    for _ in range(60):
        p = start("for i in 1 2 3 4 5 6 7 8 9; do (sleep 0.0$i; sh -c 'sleep 0.0$i &') & done; wait")
        with ProcTree(p.pid, session=True) as tree:
            time.sleep(rng.random() * 0.1)
            tree.kill()
            assert tree.wait_empty(HANG)
            assert reap(p) in (0, -signal.SIGKILL)
        assert not our_children(), our_children()


def test_subreaper_flag_held_while_trees_exist():
    a, b = (subprocess.Popen(["sleep", "100"]) for _ in range(2))
    try:
        ta = ProcTree(a.pid)
        tb = ProcTree(b.pid)
        assert is_subreaper()
        ta.close()
        assert is_subreaper()
        tb.close()
        assert not is_subreaper()
        _proctree._prctl(_proctree.PR_SET_CHILD_SUBREAPER, 1)  # set by the program itself
        try:
            with ProcTree(a.pid):
                pass
            assert is_subreaper()  # not ours to clear
        finally:
            _proctree._prctl(_proctree.PR_SET_CHILD_SUBREAPER, 0)
    finally:
        for p in (a, b):
            p.kill()
            p.wait()


def test_bad_input():
    for sig in (0, -1, 999, signal.NSIG):
        with pytest.raises(ValueError):
            check_signal(sig)
    for sig in ("TERM", 9.0, True, None):
        with pytest.raises(TypeError):
            check_signal(sig)
    assert check_signal(signal.SIGTERM) == signal.SIGTERM
    with pytest.raises(ChildProcessError):
        ProcTree(os.getppid())  # not our child
    p = subprocess.Popen(["sleep", "100"])  # not a session leader
    try:
        with pytest.raises(ValueError):
            ProcTree(p.pid, session=True)
        with ProcTree(p.pid) as tree:
            with pytest.raises(ValueError):
                tree.kill(0)
        with pytest.raises(ValueError):
            tree.pids()  # closed
    finally:
        p.kill()
        p.wait()
    with pytest.raises(ChildProcessError):
        ProcTree(p.pid)  # reaped
    assert not is_subreaper()
