"""Process trees: a child and everything it started, killed and waited for as one.

``spawn(..., tree=True)`` gives the handle a :class:`ProcessTree`.  Two
mechanisms find the members:

* ``"cgroup"`` (primary): the child is *born* in a cgroup v2 of its own
  (``clone3(CLONE_INTO_CGROUP)`` through the monitor's ``ForkServer``; this
  glibc's ``posix_spawn`` cannot place a child), so nothing it starts can
  escape between birth and placement, whatever it does with ``setsid()``,
  process groups or double forks.  ``cgroup.kill`` kills the tree in one
  kernel step, and ``cgroup.events`` sits in the monitor's own epoll, so
  learning that the tree is empty needs no polling and no thread.
* ``"proc"`` (no writable cgroup, or ``SYNCMON_CGROUP=0``): the child leads a
  new session; members are found through ``/proc/<pid>/task/*/children`` and
  the session id, verified through pidfds before they are signalled (see
  ``_proctree``), and the process is a child subreaper while such trees
  exist, so orphans come to us and are reaped.  One thread per tree sleeps
  in ``poll()`` on the members' pidfds until the tree is empty.  It cannot see
  a member that left the session (``setsid()``) if its parent exited before a
  scan saw it (scans run at ``pids()``, ``kill()`` and a watched member's exit).

A tree is *done* when the child's death is recorded and no member is alive;
then the cgroup is removed, and :attr:`ProcessTree.future` resolves with the
child's :class:`ChildState`.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from . import _cgroup, _proctree
from .child import ChildHandle, deadline_of
from .futures import CallbackRunner, OwnedFuture
from .launch import SpawnOptions, child_signal_mask, spawn_process
from .pidfd import TRANSIENT_ERRNOS
from .state import ChildState

from .monitor import Monitor, handle_of

if TYPE_CHECKING:
    from .forkserver import ForkServer

#: The trees' futures run their done-callbacks here (never on the monitor thread).
_CALLBACKS = CallbackRunner()

#: How long the fallback waits before it scans again after EMFILE and its kind.
_TRANSIENT_BACKOFF = 0.05


@dataclasses.dataclass(frozen=True)
class TreeUsage:
    """What the tree used, where the mechanism knows it (``None`` where it does not).

    ``cpu_seconds``: user + system CPU of every member, living and dead
    (the cgroup's ``cpu.stat``); ``memory_peak``: bytes (``memory.peak``,
    only where the memory controller is enabled for our cgroup's children).
    """

    cpu_seconds: float | None
    memory_peak: int | None


class _Members(Protocol):
    """A mechanism: who is in the tree, and telling the tree when nobody is left."""

    mechanism: str

    def pids(self) -> list[int]: ...

    def kill(self, sig: int) -> None: ...

    def usage(self) -> TreeUsage: ...

    def watch(self, on_empty: Callable[[], None]) -> None:
        """Call ``on_empty()`` once no member is alive (once, from any thread)."""

    def close(self) -> None:
        """The tree is done: stop watching, remove what was made, close descriptors."""


class ProcessTree:
    """A child and its descendants.  Made by ``spawn(..., tree=True)``; see ``handle.tree``."""

    def __init__(self, root: ChildHandle, members: _Members) -> None:
        self.root_pid = root.pid
        self.mechanism = members.mechanism
        self._members = members
        self._lock = threading.Lock()
        self._root_end: Future[ChildState] | None = None  # guarded by _lock
        self._empty = False  # guarded by _lock
        self._done = False  # guarded by _lock
        self._future: OwnedFuture[ChildState] = OwnedFuture(_CALLBACKS)
        self._future.start()
        # A callback, not a notifier: finishing the tree may reap the root
        # (the fallback's), which takes the root's lock, held by notifiers.
        root.future.add_done_callback(self._root_ended)
        members.watch(self._members_gone)

    @property
    def future(self) -> OwnedFuture[ChildState]:
        """The child's state, resolved once every member is gone and the child reaped."""
        return self._future

    def pids(self) -> list[int]:
        """The live members now: the child (until it dies) and its descendants."""
        with self._lock:
            if self._done:
                return []
        return self._members.pids()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to every live member, never to a process outside the tree.

        Signal 0 is refused: "does it exist" has no single answer for a tree
        (use :meth:`pids`)."""
        _proctree.check_signal(sig)
        with self._lock:
            if self._done:
                return
        self._members.kill(sig)

    def wait(self, timeout: float | None = None) -> ChildState:
        """The child's state, once every member is gone and the child is reaped."""
        deadline = deadline_of(timeout)
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return self._future.result(None if remaining is None else min(remaining, threading.TIMEOUT_MAX))
            except FutureTimeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"the tree of pid {self.root_pid} was not empty within {timeout} s") from None

    def usage(self) -> TreeUsage:
        return self._members.usage()

    def __repr__(self) -> str:
        return f"<ProcessTree of pid {self.root_pid} {self.mechanism} {'done' if self._done else 'live'}>"

    # -- the end ---------------------------------------------------------------------

    def _root_ended(self, death: Future[ChildState]) -> None:
        # On a callback thread (or here, if the root was already dead), no lock held.
        with self._lock:
            self._root_end = death
        self._settle()

    def _members_gone(self) -> None:
        with self._lock:
            self._empty = True
        self._settle()

    def _settle(self) -> None:
        """Both halves are in (child recorded dead, nobody alive): finish, once."""
        with self._lock:
            if self._done or self._root_end is None or not self._empty:
                return
            self._done = True
            death = self._root_end
        try:
            self._members.close()
        finally:
            error = death.exception()
            if error is not None:
                self._future.fail(error)
            else:
                self._future.resolve(death.result())


# -- cgroup ------------------------------------------------------------------------------

class CgroupMembers:
    """The cgroup mechanism: a cgroup of our own for one tree, watched from the
    monitor's epoll.  Also what ``ProcessPoolExecutor`` gives each worker."""

    mechanism = "cgroup"

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor
        self.cgroup = _cgroup.Cgroup()
        self._unwatch: Callable[[], None] | None = None
        self._on_empty: Callable[[], None] | None = None
        self._told = threading.Lock()  # on_empty once
        self.roots: frozenset[int] = frozenset()  # the child born in it: its handle reaps it

    def pids(self) -> list[int]:
        try:
            return self.cgroup.pids()
        except (ValueError, FileNotFoundError):
            return []  # removed meanwhile: the tree is done

    def kill(self, sig: int) -> None:
        try:
            self.cgroup.kill(sig)
        except (ValueError, FileNotFoundError, ProcessLookupError):
            pass  # removed meanwhile: nobody is left

    def usage(self) -> TreeUsage:
        stats = self.cgroup.stats()
        cpu = None if stats.usage_usec is None else stats.usage_usec / 1e6
        return TreeUsage(cpu_seconds=cpu, memory_peak=stats.memory_peak)

    def watch(self, on_empty: Callable[[], None]) -> None:
        self._on_empty = on_empty
        # epoll reports a freshly opened cgroup.events once at once: the first
        # call reads the state as it is now.
        self._unwatch = self._monitor.watch_fd(self.cgroup.events_fd, self._on_event)

    def _on_event(self) -> None:
        """On the monitor thread: ``cgroup.events`` changed (reading it re-arms it)."""
        try:
            populated = self.cgroup.populated()
        except (ValueError, OSError):
            return  # closed by the tree's end in another thread
        if not populated and self._on_empty is not None and self._told.acquire(blocking=False):
            if os.getpid() == 1 or _proctree.is_subreaper():
                # Members orphaned by their parents' deaths were reparented to
                # us, and nobody else will reap them (it scans /proc: only then).
                self.cgroup.reap_orphans(self.roots)
            self._on_empty()

    def close(self) -> None:
        if self._unwatch is not None:
            self._unwatch()  # before the descriptor is closed
        self.cgroup.close()


# -- /proc fallback ----------------------------------------------------------------------

class _ProcMembers:
    mechanism = "proc"

    def __init__(self, root_pid: int, reap_root: Callable[[], None]) -> None:
        self._tree = _proctree.ProcTree(root_pid, session=True)
        self._reap_root = reap_root
        self._thread: threading.Thread | None = None

    def pids(self) -> list[int]:
        try:
            return self._tree.pids()
        except ValueError:
            return []  # closed meanwhile: the tree is done

    def kill(self, sig: int) -> None:
        try:
            self._tree.kill(sig)
        except ValueError:
            pass  # closed meanwhile: nobody is left

    def usage(self) -> TreeUsage:
        return TreeUsage(cpu_seconds=None, memory_peak=None)

    def watch(self, on_empty: Callable[[], None]) -> None:
        def wait_then_tell() -> None:
            # "Empty" is only as good as the scan that said so: a member that
            # became visible just after it (seen here: the orphans of a
            # leader that exits at once) is found by the next.  The leader is
            # kept unreaped meanwhile, so its session id stays ours to trust.
            while not self._looked_empty():
                pass
            on_empty()

        self._thread = threading.Thread(target=wait_then_tell, name=f"syncmon-tree-{self._tree.root_pid}",
                                        daemon=True)
        self._thread.start()

    def _looked_empty(self) -> bool:
        """One wait for the members to be gone; False if it must be tried again.

        A scan reads ``/proc`` and opens pidfds: at EMFILE it fails, and the
        tree must still end once descriptors are back, so a transient error
        is waited out (the one place this mechanism sleeps, and only then).
        """
        try:
            self._tree.wait_empty(None)
            self._tree.reap()  # orphans reparented to us (we are a subreaper now)
            return not self._tree.pids()
        except OSError as error:
            if error.errno not in TRANSIENT_ERRNOS:
                raise
            time.sleep(_TRANSIENT_BACKOFF)
            return False

    def close(self) -> None:
        self._tree.close()
        self._reap_root()  # only now: the session id is no longer needed


# -- starting a tree ---------------------------------------------------------------------

def spawn_tree(monitor: Monitor, request: SpawnOptions, command: Sequence[Any],
               server: ForkServer | None = None) -> ChildHandle:
    """Start ``request`` as the root of a new tree, by the best mechanism available."""
    if _cgroup.available() is True:
        return _spawn_in_cgroup(monitor, request, command, server or monitor.tree_server())
    return _spawn_in_session(monitor, request, command)


def _spawn_in_cgroup(monitor: Monitor, request: SpawnOptions, command: Sequence[Any],
                     server: ForkServer) -> ChildHandle:
    members = CgroupMembers(monitor)
    try:
        handle = server.spawn_parsed(request, cgroup_fd=members.cgroup.dir_fd)
    except BaseException:
        members.close()
        raise
    handle.command = list(command)
    members.roots = frozenset({handle.pid})
    return _with_tree(handle, members)


def _with_tree(handle: ChildHandle, members: _Members) -> ChildHandle:
    """Give ``handle`` its tree.  If that fails (EMFILE for the events descriptor's
    epoll entry, EAGAIN for the fallback's thread), the members are killed and
    everything the tree held is released before the error propagates."""
    try:
        handle.tree = ProcessTree(handle, members)
    except BaseException:
        try:
            members.kill(signal.SIGKILL)
        finally:
            members.close()  # even if the kill failed: the descriptors, the leader's reaping
        raise
    return handle


def _spawn_in_session(monitor: Monitor, request: SpawnOptions, command: Sequence[Any]) -> ChildHandle:
    """The fallback: the child leads a session of its own, and stays unreaped
    until its tree is empty.

    Its children are reparented to us the moment it exits, so from then on
    only the session id ties them to the tree, and that id is only safe to
    trust while the leader's pid cannot be reused: while it is our zombie.
    So its watch only looks (``WNOWAIT``, as for ``syncmon.Popen``), and the
    tree reaps it once the members are gone; ``wait()`` on its handle still
    returns at its death.

    The descriptors the tree needs are reserved before the spawn: once the
    leader runs it may fork, and at EMFILE its members could not be found.
    """
    if request.process_group is not None:
        raise ValueError("tree=True without cgroups puts the child in a session of its own: "
                         "process_group cannot be given")
    leader = dataclasses.replace(request, start_new_session=True)
    lock = threading.Lock()
    # Subreaper first: an orphan made before the tree exists must come to us.
    _proctree.subreaper.hold()
    try:
        reserve = _proctree.DescriptorReserve(_proctree.ProcTree.DESCRIPTORS_TO_START)
        try:
            watch = monitor.start_watched(
                lambda engine: spawn_process(leader, child_signal_mask(engine.reactor.sigchld_blocked_by_user)), lock)
            handle = handle_of(watch, command)
        finally:
            reserve.release()  # for _ProcMembers, next

        def reap_leader() -> None:
            with lock:
                watch.reap(0)

        members: _Members
        try:
            members = _ProcMembers(handle.pid, reap_leader)
        except ChildProcessError:
            # Lost at birth (a foreign reaper took it): nothing is known of its tree.
            members = _NoMembers()
        except BaseException:
            # EMFILE all the same (another thread took the reserved slots):
            # nobody would ever reap the leader, which may have forked by now.
            _kill_leaders_group(handle.pid)
            reap_leader()
            raise
    finally:
        _proctree.subreaper.release()
    return _with_tree(handle, members)


def _kill_leaders_group(leader: int) -> None:
    """SIGKILL the process group of a session leader we have not reaped: no
    descriptor needed, so this works at EMFILE, where finding members does not.

    The group's id is the leader's pid, which nobody else can have while the
    leader is unreaped, and a group never spans sessions: only the leader
    and members in its group are reached.  Members that made groups of their
    own in that first instant are not (nor, at EMFILE, can anything see them).
    """
    try:
        os.killpg(leader, signal.SIGKILL)
    except ProcessLookupError:
        pass  # cannot happen while the leader is unreaped; never a reason to skip the reap


class _NoMembers:
    """The fallback's tree of a child that was reaped before its members could be found."""

    mechanism = "proc"

    def pids(self) -> list[int]:
        return []

    def kill(self, sig: int) -> None:
        pass

    def usage(self) -> TreeUsage:
        return TreeUsage(cpu_seconds=None, memory_peak=None)

    def watch(self, on_empty: Callable[[], None]) -> None:
        on_empty()

    def close(self) -> None:
        pass
