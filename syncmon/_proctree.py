"""Process trees without cgroups: /proc links, verified through pidfds.

The tree of a root process we started is found by walking parent links:
``/proc/<m>/task/*/children`` for every member ``m`` (children are listed
per thread, by the thread that forked them).  A pid read from /proc is only a
number: by the time we act on it, the process may have died, been reaped and
its pid handed to a stranger.  So nothing is ever done by pid.  Every
candidate is *verified*:

1. open a pidfd on the candidate (from now on it names one process);
2. read its ``/proc/<pid>/stat``: its parent must be a member ``p`` we hold a
   pidfd to (or, with ``session=True``, its session must be the root's);
3. *after* that read, confirm the candidate is still unreaped (alive, or a
   zombie child of ours) and so is ``p``.  An unreaped process keeps its pid,
   so the /proc read described the process our pidfd names, and its "parent
   ``p``" was our member, not a successor with the same number.

Only then is it a member; it is signalled through its pidfd
(``pidfd_send_signal``), which cannot reach a reused pid.  ``kill()``
repeats passes (scan, signal the new) until a pass finds nobody new, so a
member forked during a pass is caught by the next one.

The session criterion (``session=True``, for a root started as the leader of
a new session, ``start_new_session=True``): a session id is the pid of the
process that created it, and the kernel never gives that number to another
process while any process still uses it as its session id (the ``struct pid``
stays allocated).  So a process whose session is the root's is a descendant
of the root, provided the root's session still exists after we read the
candidate's stat: we check that the root is still an unreaped child of ours
(``waitid(P_PIDFD, WNOWAIT)``), or that a held member still reports that
session.  This finds members that lost their parent link (orphans reparented
before any pass saw them).  Keeping the root unreaped (a zombie) until the
tree is empty keeps the criterion valid for the tree's whole life.

What the fallback cannot see (the cgroup mechanism sees all of these):

* a process whose parent link was cut before a pass verified it *and* that
  is not in the root's session: e.g. a double-forking daemon that calls
  ``setsid()`` in the middle process, whose middle process exits before the
  next pass.  The daemon is reparented (to us while we are a subreaper, else
  to init or a subreaper inside the tree) and no longer provably a member:
  it is neither signalled nor reaped.  A child of ours that we did not
  spawn looks exactly like a child another part of this program started,
  and must be left alone.
* without ``session=True``, every process reparented between two passes
  (its parent exited before the pass that would have seen it).
* processes that a member moved out of reach deliberately (a new pid
  namespace's members are seen by their outer pids and are found; a process
  ``ptrace``-reparented is not).

Subreaper rule.  While a ``ProcTree`` exists the process is a child
subreaper (``PR_SET_CHILD_SUBREAPER``), so orphaned members are reparented to
us instead of to init, and stay reachable through the pidfds we hold.  The
flag is restored (cleared) when the last tree closes, unless it was already
set before (by the program, or because we are pid 1 and get orphans anyway).

What is reaped, exactly: ``ProcTree`` reaps a process only with
``waitid(P_PIDFD, fd, WEXITED | WNOHANG)`` on a pidfd ``fd`` that it opened
and verified as a tree member *other than the root*, i.e. verified while its
parent was another live member (not us), or while it was in the root's live
session (which no process this program spawned can be in, other than the
root).  Such a process was never created by this process's own ``fork`` or
``spawn``: only the root was.  So it is reaped only if it was reparented to
us, no other code here can be waiting for it, and ``P_PIDFD`` can only ever
reap the very process the pidfd names.  The root is never reaped here (its
``ChildHandle`` does that).  Children of ours that were never verified
members (``subprocess.Popen``'s, a ``fork()``'s, unattributable orphans) are
never reaped here: an unattributable orphan stays a zombie until the program
exits, the price of never stealing a status.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable

from ._ffi import ffi, lib

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37

#: Passes ``signal_until_stable`` makes at most: a tree that forks faster
#: than it is signalled (a fork bomb that ignores the signal) would otherwise
#: keep it busy forever.
MAX_PASSES = 1000

# Parse the types now (cffi takes an internal lock on first use; a fork from
# another thread while it is held would leave it held in the child).
ffi.typeof("unsigned long")
ffi.typeof("int *")


# --- /proc and pidfds -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat this module needs."""

    state: str
    ppid: int
    sid: int
    starttime: int  # clock ticks after boot: (pid, starttime) names one process


def proc_stat(pid: int) -> ProcStat | None:
    """/proc/<pid>/stat, or None if there is no such process now."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses: the fields start after the last ')'
    fields = data[data.rindex(b")") + 2:].split()
    return ProcStat(fields[0].decode(), int(fields[1]), int(fields[3]), int(fields[19]))


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def boot_ticks() -> int:
    """Now, in the clock of /proc/<pid>/stat's start time (ticks of CLOCK_BOOTTIME, truncated).

    A process born after this call has a start time >= this value.
    """
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * _CLK_TCK)


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def children(pid: int) -> set[int]:
    """Children of pid, from every thread's children file (empty if pid is gone)."""
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.update(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass  # that thread exited meanwhile
    return found


def exited(pidfd: int) -> bool:
    """Whether the process behind pidfd has exited (zombie or reaped): a pidfd polls readable."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def our_child(pidfd: int) -> bool:
    """Whether the process behind pidfd is an unreaped child of ours (alive or zombie).

    ``WNOWAIT`` leaves a zombie as it is; ``ECHILD`` means not our child, or
    already reaped.
    """
    try:
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def unreaped(pidfd: int) -> bool:
    """Whether the pid of pidfd's process is still that process's (alive, or our zombie).

    A zombie that is not our child is not counted: we cannot tell it from a
    reaped process without another /proc read, which would need the same
    anchoring again.
    """
    return not exited(pidfd) or our_child(pidfd)


def open_pidfd(pid: int) -> int | None:
    """pidfd_open, or None if the process is gone."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def check_signal(sig: int) -> int:
    """A valid signal number for a tree (0 is not: a tree has no single "exists")."""
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise TypeError(f"signal must be an int, not {type(sig).__name__}")
    if sig not in signal.valid_signals():
        raise ValueError(f"invalid signal number {sig}")
    return int(sig)


def send(pidfd: int, sig: int) -> bool:
    """Signal through the pidfd; False if the process has exited meanwhile."""
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        return False
    return True


def signal_until_stable(candidates: Callable[[], Iterable[int]],
                        is_member: Callable[[int], bool], sig: int) -> int:
    """Signal every verified member, pass after pass, until a pass finds nobody new.

    ``candidates()`` lists pids that may be members; ``is_member(pid)`` reads
    /proc to say whether pid is one.  Each candidate is verified with a
    pidfd held (opened before ``is_member``, checked unreaped after it) and
    signalled through it.  Members are told apart by (pid, start time), so
    a pid reused within the tree counts as new.  Returns how many were
    signalled.
    """
    done: set[tuple[int, int]] = set()
    for _ in range(MAX_PASSES):
        new = 0
        for pid in candidates():
            fd = open_pidfd(pid)
            if fd is None:
                continue
            try:
                st = proc_stat(pid)
                if st is None or (pid, st.starttime) in done or not is_member(pid):
                    continue
                if exited(fd):
                    continue  # dead already, or the reads described a successor
                if send(fd, sig):
                    done.add((pid, st.starttime))
                    new += 1
            finally:
                os.close(fd)
        if not new:
            return len(done)
    return len(done)


class DescriptorReserve:
    """Descriptor slots held back for a step that must not meet EMFILE halfway.

    Once a tree's root runs, it may fork at any moment, and a tree that
    cannot be watched can only be killed whole by what needs no descriptor
    (see ``tree._spawn_in_session``).  So the descriptors the tree needs
    right after the spawn are taken *before* it, as placeholders: at EMFILE
    the spawn fails while no child exists yet.  ``release()`` frees the
    slots just before they are needed (``O_PATH`` of ``/``: no device, no
    side effect; ``O_CLOEXEC``: no child inherits one).  Another thread can
    still take a freed slot first; the caller must survive that, rarely.
    """

    def __init__(self, count: int) -> None:
        self._fds: list[int] = []
        try:
            for _ in range(count):
                self._fds.append(os.open("/", os.O_PATH | os.O_CLOEXEC))
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        while self._fds:
            os.close(self._fds.pop())


# --- subreaper --------------------------------------------------------------------------

def _prctl(option: int, arg: int = 0) -> int:
    result = int(lib.prctl(option, ffi.cast("unsigned long", arg), ffi.cast("unsigned long", 0),
                           ffi.cast("unsigned long", 0), ffi.cast("unsigned long", 0)))
    if result == -1:
        err = ffi.errno
        raise OSError(err, os.strerror(err), "prctl")
    return result


def is_subreaper() -> bool:
    flag = ffi.new("int *")
    _prctl(PR_GET_CHILD_SUBREAPER, int(ffi.cast("uintptr_t", flag)))
    return bool(flag[0])


class _Subreaper:
    """A count of the trees that need the flag; set at the first, cleared after the last.

    The flag is per process and not inherited by fork children: the count
    belongs to the pid that took it, and a fork child starts from zero.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._users = 0
        self._was_set = False

    def hold(self) -> None:
        with self._lock:
            if self._pid != os.getpid():
                self._pid, self._users = os.getpid(), 0
            if self._users == 0:
                self._was_set = is_subreaper()
                if not self._was_set:
                    _prctl(PR_SET_CHILD_SUBREAPER, 1)
            self._users += 1

    def release(self) -> None:
        with self._lock:
            if self._pid != os.getpid() or self._users == 0:
                return  # taken in the parent before a fork: not ours to give back
            self._users -= 1
            if self._users == 0 and not self._was_set:
                _prctl(PR_SET_CHILD_SUBREAPER, 0)


subreaper = _Subreaper()


# --- the tree ------------------------------------------------------------------------------

@dataclasses.dataclass
class _Member:
    fd: int
    starttime: int


class ProcTree:
    """The live descendants of ``root_pid`` (an unreaped child of ours), by /proc and pidfds.

    Thread-safe: every method takes the tree's lock.  Member pidfds are
    closed only under that lock and never while ``wait_empty`` polls them
    (``_pollers`` counts the pollers; closing is deferred to the last one).
    """

    mechanism = "proc"

    #: Descriptors ``__init__`` needs: the root's pidfd (kept) and its stat read (closed again).
    DESCRIPTORS_TO_START = 2

    def __init__(self, root_pid: int, *, session: bool = False) -> None:
        self._lock = threading.Lock()
        self.root_pid = root_pid
        #: (pid, waitid result) of every member reaped here, oldest first
        self.reaped: list[tuple[int, os.waitid_result]] = []
        self._pollers = 0
        self._deferred: list[int] = []
        self._closed = False
        try:
            fd = os.pidfd_open(root_pid)
        except ProcessLookupError:
            raise ChildProcessError(errno.ECHILD, f"{root_pid} is not an unreaped child of ours") from None
        try:
            st = proc_stat(root_pid)
            if not our_child(fd) or st is None:
                raise ChildProcessError(errno.ECHILD, f"{root_pid} is not an unreaped child of ours")
            if session and st.sid != root_pid:
                raise ValueError(f"session=True, but {root_pid} does not lead its own session")
            subreaper.hold()
        except BaseException:
            os.close(fd)
            raise
        self._session = root_pid if session else None
        self._root = _Member(fd, st.starttime)
        self._members: dict[int, _Member] = {root_pid: self._root}

    def __enter__(self) -> ProcTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public -------------------------------------------------------------------------

    def pids(self) -> list[int]:
        """Live members now (zombies are not members), the root included."""
        with self._lock:
            self._scan()
            return [pid for pid, m in self._members.items() if not exited(m.fd)]

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Signal every live member through its pidfd, until a pass finds nobody new.

        Returns how many processes were signalled.  A member that exits in
        the meantime is skipped (``ESRCH`` from its pidfd is not an error).
        """
        sig = check_signal(sig)
        with self._lock:
            self._check_open()
            done: set[tuple[int, int]] = set()
            for _ in range(MAX_PASSES):
                self._scan()
                new = 0
                for pid, m in list(self._members.items()):
                    if (pid, m.starttime) not in done and not exited(m.fd) and send(m.fd, sig):
                        done.add((pid, m.starttime))
                        new += 1
                if not new:
                    break
            return len(done)

    def reap(self) -> list[tuple[int, os.waitid_result]]:
        """Reap members that were reparented to us and have exited (see the rule above)."""
        with self._lock:
            before = len(self.reaped)
            self._scan()
            return self.reaped[before:]

    def empty(self) -> bool:
        """No live member is left (the root's reaping is its handle's business)."""
        with self._lock:
            self._scan()
            return all(exited(m.fd) for m in self._members.values())

    def wait_empty(self, timeout: float | None) -> bool:
        """Block until no live member is left; True if so, False on timeout.

        Sleeps in ``poll`` on the live members' pidfds (each turns readable
        when its process exits) and rescans on every wake-up, so new members
        seen by the rescan are waited for too.  No polling interval.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                self._scan()
                live = [m.fd for m in self._members.values() if not exited(m.fd)]
                if not live:
                    return True
                self._pollers += 1
            try:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                poller = select.poll()
                for fd in live:
                    poller.register(fd, select.POLLIN)
                poller.poll(None if remaining is None else max(1, int(remaining * 1000)))
            finally:
                with self._lock:
                    self._pollers -= 1
                    self._flush_deferred()

    def close(self) -> None:
        """Close every pidfd and give back the subreaper flag.  Kills nothing, reaps once more."""
        with self._lock:
            if self._closed:
                return
            self._scan()
            self._closed = True
            for m in self._members.values():
                self._close_fd(m.fd)
            self._members.clear()
            subreaper.release()

    # -- the scan ------------------------------------------------------------------------
    # Everything below: call with self._lock held.

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("ProcTree is closed")

    def _close_fd(self, fd: int) -> None:
        if self._pollers:
            self._deferred.append(fd)  # a wait_empty is polling it: closing could hand its number on
        else:
            os.close(fd)

    def _flush_deferred(self) -> None:
        if not self._pollers:
            for fd in self._deferred:
                os.close(fd)
            self._deferred.clear()

    def _scan(self) -> None:
        """Reap or forget exited members, then verify new ones: by parent link, then by session."""
        self._check_open()
        self._prune()
        frontier = [pid for pid, m in self._members.items() if not exited(m.fd)]
        while True:
            while frontier:
                p = frontier.pop()
                for c in children(p):
                    if not self._known(c) and self._verify(c, functools.partial(self._child_of, p)):
                        frontier.append(c)
            if self._session is None:
                return
            # Also when no member is alive: our zombies may be in the session.
            # Members found by session may have children: walk those too.
            frontier = [pid for pid in all_pids()
                        if pid != self._session and not self._known(pid)
                        and self._verify(pid, self._in_session)]
            if not frontier:
                return

    def _known(self, pid: int) -> bool:
        # After _prune every entry is a process that still owns its pid (alive,
        # our zombie, or a zombie of a member), so the number cannot name another.
        return pid in self._members

    def _verify(self, pid: int, after_read: Callable[[ProcStat], bool]) -> bool:
        """Open a pidfd on pid, read its stat, keep it if after_read(stat) holds and the read was of it.

        ``after_read`` checks the relation (parent link, session), including
        that the relative is still unreaped.  The stat read described the
        pidfd's process if that process is unreaped now (its pid was never
        free), or if the stat's start time is earlier than the moment the
        pidfd was opened: a successor with the same pid would have been born
        after.  The second test admits zombies of live members, which are
        reparented to us (and ours to reap) if their parent dies first.
        """
        opened_after = boot_ticks()
        fd = open_pidfd(pid)
        if fd is None:
            return False
        try:
            st = proc_stat(pid)  # may raise EMFILE: the pidfd must not leak then
            verified = st is not None and after_read(st) and (st.starttime < opened_after or unreaped(fd))
        except BaseException:
            os.close(fd)
            raise
        if not verified:
            os.close(fd)
            return False
        assert st is not None
        self._members[pid] = _Member(fd, st.starttime)
        return True

    def _child_of(self, parent: int, st: ProcStat) -> bool:
        """The parent link, read before its parent's unreapedness is checked."""
        return st.ppid == parent and unreaped(self._members[parent].fd)

    def _in_session(self, st: ProcStat) -> bool:
        return st.sid == self._session and self._session_alive()

    def _session_alive(self) -> bool:
        """Whether the root's session still exists now (so its number was not reused)."""
        if our_child(self._root.fd):
            return True
        for pid, m in self._members.items():
            if pid != self.root_pid and not exited(m.fd):
                st = proc_stat(pid)
                if st is not None and st.sid == self._session and not exited(m.fd):
                    return True
        return False

    def _prune(self) -> None:
        """Reap exited members reparented to us; forget those reaped elsewhere.

        A zombie that is still another member's child is kept: if that parent
        dies first, the zombie is reparented to us and is ours to reap.
        """
        for pid, m in list(self._members.items()):
            if pid == self.root_pid or not exited(m.fd):
                continue
            try:
                result = os.waitid(os.P_PIDFD, m.fd, os.WEXITED | os.WNOHANG)
            except ChildProcessError:
                st = proc_stat(pid)
                if st is not None and st.starttime == m.starttime and st.state == "Z":
                    continue  # a zombie of its (member) parent: keep watching
                result = None
            else:
                if result is None:
                    continue  # not reapable yet (exit still in progress)
                self.reaped.append((pid, result))
            del self._members[pid]
            self._close_fd(m.fd)
