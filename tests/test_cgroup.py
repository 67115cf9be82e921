"""The cgroup v2 tree mechanism (syncmon._cgroup) with real processes and real cgroups.

Needs root (or a delegated cgroup) and cgroup2; skipped otherwise.  Every
test also checks that no cgroup named "syncmon" is left anywhere under
/sys/fs/cgroup.
"""

from __future__ import annotations

import errno
import os
import random
import select
import signal
import subprocess
import textwrap
import time

import pytest

from helpers import HANG, REPO, eventually, our_children, proc_stat, python_env, run_code
from syncmon import _cgroup
from syncmon._cgroup import Cgroup, CgroupUnavailable
from treehelpers import (FORK_BOMB, plain_signal_mask, no_cgroups_left, reap, sh_tree, start_in,  # noqa: F401
                         syncmon_cgroups, v1_pids_limit, wait_count, wait_sleepers)

if _cgroup.available() is not True:
    pytest.skip(f"no writable cgroup2: {_cgroup.available()}", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("no_cgroups_left", "plain_signal_mask")

#: The root sh, two background sleeps (grandchildren), a setsid one, and a
#: double-forked daemon whose middle process exits at once: 5 processes
#: once the middle one is gone.
TREE = ("sleep 100 & sleep 100 & setsid sleep 100 & "
        "(sh -c 'sleep 100 &' &); wait")
TREE_SIZE = 5


def wait_populated_zero(cg: Cgroup, timeout: float = HANG) -> bool:
    """Wait for populated 0 in an epoll on events_fd, as the monitor will: no polling."""
    ep = select.epoll()
    try:
        ep.register(cg.events_fd, select.EPOLLPRI)
        deadline = time.monotonic() + timeout
        while cg.populated():  # read after registering: re-arms, and a change after it wakes us
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not ep.poll(remaining):
                return False
        return True
    finally:
        ep.close()


# --- finding the hierarchy ------------------------------------------------------------

def test_finds_hierarchy_and_own_cgroup():
    mount_point, mount_root = _cgroup.cgroup2_mount()
    assert os.path.exists(os.path.join(mount_point, "cgroup.controllers"))
    own = _cgroup.own_cgroup()
    assert own is not None and own.startswith("/")
    directory, path = _cgroup.base()
    assert path == own and os.path.isdir(directory)


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv("SYNCMON_CGROUP", "0")
    reason = _cgroup.available()
    assert isinstance(reason, str) and "SYNCMON_CGROUP" in reason
    with pytest.raises(CgroupUnavailable):
        Cgroup()


def test_unwritable_gives_clear_error():
    """An unprivileged user may not write our (root-owned) cgroup: a reason, and a specific error."""
    out = run_code(textwrap.dedent("""
        import os
        from syncmon import _cgroup  # before dropping privileges: /root is closed to nobody
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
        reason = _cgroup.available()
        assert isinstance(reason, str) and "not writable" in reason, reason
        try:
            _cgroup.Cgroup()
        except _cgroup.CgroupUnavailable as e:
            assert isinstance(e, OSError)
            print("unavailable:", e)
        else:
            raise AssertionError("Cgroup() worked as nobody")
    """))
    assert "unavailable:" in out


def test_transient_error_is_raised_not_cached():
    """EMFILE while probing (a real RLIMIT_NOFILE) is raised, leaves no cgroup, and is not cached."""
    run_code(textwrap.dedent("""
        import errno, os, resource
        from syncmon import _cgroup
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # Fill the table up to one free slot: mkdir works, the dir fd works, cgroup.events fails.
        fds = []
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        try:
            while True:
                fds.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        os.close(fds.pop())
        try:
            _cgroup.available()
        except OSError as e:
            assert e.errno == errno.EMFILE, e
        else:
            raise AssertionError("probe did not see EMFILE")
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert _cgroup.available() is True
        from treehelpers import syncmon_cgroups
        assert syncmon_cgroups() == [], syncmon_cgroups()  # the failed probe removed its cgroup
    """), env=python_env(PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")])))


# --- one cgroup ------------------------------------------------------------------------

def test_fresh_cgroup_files_and_fds():
    with Cgroup() as cg:
        assert "syncmon" in os.path.basename(cg.path) and os.path.isdir(cg.path)
        assert os.path.samestat(os.fstat(cg.dir_fd), os.stat(cg.path))
        assert os.get_inheritable(cg.dir_fd) is False and os.get_inheritable(cg.events_fd) is False
        for name in ("cgroup.procs", "cgroup.events", "cgroup.kill", "cpu.stat"):
            assert os.path.exists(os.path.join(cg.path, name)), name
        assert not cg.populated() and cg.pids() == []
        st = cg.stats()
        assert st.usage_usec == 0
        has_memory = os.path.exists(os.path.join(cg.path, "memory.peak"))
        assert (st.memory_peak is not None) == has_memory
        path = cg.path
    assert not os.path.exists(path)


def test_tree_kill_everything(no_leaks):
    """Grandchildren, a setsid() one and a double-forked daemon: all in, all killed at once."""
    with Cgroup() as cg:
        p = start_in([cg.path], sh_tree(TREE))
        try:
            wait_sleepers(cg.pids, TREE_SIZE - 1)
            members = cg.pids()
            assert p.pid in members
            sessions = {proc_stat(pid)["session"] for pid in members}
            assert len(sessions) >= 2  # the setsid one is in a session of its own
            orphans = [pid for pid in members if proc_stat(pid)["ppid"] not in members]
            assert len(orphans) == 2  # the root (our child) and the daemon (reparented)
            assert cg.populated()
            assert cg.kill() == 0  # cgroup.kill: nothing signalled by pid
            assert wait_populated_zero(cg)
            assert cg.pids() == []
        finally:
            assert reap(p) == -signal.SIGKILL
        cg.remove()
        assert not os.path.exists(cg.path)


def test_populated_zero_before_reap():
    """A member leaves the cgroup when it exits, not when it is reaped: remove works on a zombie root."""
    with Cgroup() as cg:
        p = start_in([cg.path], ["sh", "-c", "read line; exit 3"], stdin=subprocess.PIPE)
        wait_count(cg.pids, 1)  # inside before we look for the end
        p.stdin.close()
        assert wait_populated_zero(cg)
        assert proc_stat(p.pid) is not None  # still our zombie
        cg.remove()
        assert reap(p) == 3


def _kill_whole_tree(kill, sig: int) -> None:
    """Start a tree in a cgroup, kill it with ``kill(cgroup, sig)``: every member, then empty."""
    with Cgroup() as cg:
        p = start_in([cg.path], sh_tree(TREE))
        try:
            wait_sleepers(cg.pids, TREE_SIZE - 1)
            assert kill(cg, sig) == TREE_SIZE
            assert wait_populated_zero(cg)
        finally:
            assert reap(p) == -sig


def test_sigterm_goes_to_each_member():
    _kill_whole_tree(Cgroup.kill, signal.SIGTERM)


def test_kill_without_cgroup_kill_file():
    """The per-pid path used before Linux 5.14: every member, verified, through pidfds."""
    _kill_whole_tree(Cgroup._kill_each, signal.SIGKILL)


def test_stats_after_work_and_after_remove():
    with Cgroup() as cg:
        p = start_in([cg.path], ["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
        assert reap(p) == 0
        st = cg.stats()
        assert st.usage_usec > 0 and st.user_usec + st.system_usec > 0
        cg.remove()
        assert cg.stats() == st  # kept from just before the rmdir


def test_add_and_wait_empty(no_leaks):
    with Cgroup() as cg:
        p = subprocess.Popen(["sleep", "100"])
        try:
            cg.add(p.pid)
            assert cg.pids() == [p.pid]
            assert cg.wait_empty(0.05) is False
            p.kill()
            assert cg.wait_empty(HANG) is True
        finally:
            reap(p)


def test_remove_busy_then_close_kills():
    cg = Cgroup()
    p = start_in([cg.path], ["sleep", "100"])
    try:
        wait_count(cg.pids, 1)
        with pytest.raises(OSError) as e:
            cg.remove()
        assert e.value.errno == errno.EBUSY and os.path.isdir(cg.path)
        cg.close()  # kills, waits for populated 0, removes
        assert not os.path.exists(cg.path)
        cg.close()
        cg.remove()  # idempotent
        with pytest.raises(ValueError):
            cg.pids()
    finally:
        assert reap(p) == -signal.SIGKILL


def test_nested_cgroups():
    """A tree inside a tree: the outer one sees, kills and removes the inner one."""
    with Cgroup() as outer:
        inner = Cgroup(outer)
        assert os.path.dirname(inner.path) == outer.path
        assert inner.cgroup_path == outer.cgroup_path + "/" + os.path.basename(inner.path)
        a = start_in([outer.path], ["sleep", "100"])
        b = start_in([inner.path], sh_tree("sleep 100 & wait"))
        try:
            wait_count(outer.pids, 3)
            assert set(inner.pids()) <= set(outer.pids()) and b.pid in inner.pids()
            assert a.pid not in inner.pids()
            inner_path = (f"/proc/{b.pid}/cgroup", inner.cgroup_path)
            assert _cgroup.own_cgroup(inner_path[0]) == inner_path[1]
            outer.kill()
            assert wait_populated_zero(inner) and wait_populated_zero(outer)
            outer.remove()  # the inner directory first
            assert not os.path.exists(inner.path)
            with pytest.raises(ProcessLookupError):
                inner.populated()
            inner.close()  # nothing left to do, closes its fds
        finally:
            assert reap(a) == reap(b) == -signal.SIGKILL


def test_cgroups_members_made_are_removed_too():
    """A member that creates a cgroup of its own and dies: close() still leaves nothing."""
    with Cgroup() as cg:
        sub = os.path.join(cg.path, "made-by-member-syncmon")
        p = start_in([cg.path], ["sh", "-c", f"mkdir {sub} && exec sleep 100"])
        try:
            assert eventually(lambda: os.path.isdir(sub))
        finally:
            cg.kill()
            reap(p)
    assert not os.path.exists(sub)


def test_fork_bomb_capped_by_pids_limit():
    """The v2 hierarchy here has no pids controller; a v1 pids cgroup caps the bomb, cgroup.kill ends it."""
    with v1_pids_limit(20) as pids_cg, Cgroup() as cg:
        p = start_in([cg.path, pids_cg], FORK_BOMB)
        try:
            events = os.path.join(pids_cg, "pids.events")  # "max N": N forks refused by pids.max
            assert eventually(lambda: int(open(events).read().split()[1]) > 0)
            assert int(open(os.path.join(pids_cg, "pids.current")).read()) <= 20
            assert len(cg.pids()) <= 20
            cg.kill()
            assert wait_populated_zero(cg)
        finally:
            assert reap(p) == -signal.SIGKILL


@pytest.mark.hammer
@pytest.mark.timeout(240)
def test_kill_racing_with_exits(no_leaks):
    """Members exiting on their own while the tree is killed, both ways of killing (bounded)."""
    rng = random.Random(9)
    for i in range(60):
        with Cgroup() as cg:
            p = start_in([cg.path], sh_tree(
                "for i in 1 2 3 4 5 6 7 8 9; do (sleep 0.0$i; sh -c 'sleep 0.0$i &') & done; wait"))
            wait_count(cg.pids, 1)  # a kill before the root is inside would kill nothing
            time.sleep(rng.random() * 0.1)
            n = cg._kill_each(signal.SIGKILL) if i % 2 else cg.kill()
            assert n >= 0
            assert wait_populated_zero(cg)
            assert reap(p) in (0, -signal.SIGKILL)
    assert not our_children()
    assert syncmon_cgroups() == []



def test_orphans_reparented_to_us_are_reaped_bystanders_are_not():
    """As a subreaper (or pid 1), the tree's orphans are our zombies: reaped by cgroup, Popen's kept."""
    from syncmon._proctree import subreaper

    bystander = subprocess.Popen(["sh", "-c", "exit 7"])
    subreaper.hold()
    try:
        with Cgroup() as cg:
            p = start_in([cg.path], sh_tree("(sleep 100 &); (setsid sleep 100 &); exec sleep 100"))
            try:
                members = wait_sleepers(cg.pids, 3, others=0)
                orphans = {pid for pid in members if pid != p.pid}
                assert all(proc_stat(pid)["ppid"] == os.getpid() for pid in orphans)
                assert eventually(lambda: proc_stat(bystander.pid)["state"] == "Z")
                cg.kill()
                assert wait_populated_zero(cg)
                cg.remove()  # zombies keep naming the removed cgroup
                reaped = dict(cg.reap_orphans(frozenset({p.pid})))
                assert set(reaped) == orphans
                assert {r.si_status for r in reaped.values()} == {signal.SIGKILL}
            finally:
                assert reap(p) == -signal.SIGKILL
    finally:
        subreaper.release()
    assert bystander.wait(HANG) == 7
