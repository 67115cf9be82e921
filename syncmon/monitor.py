"""``Monitor``: a scope of child handles on the process's one engine, and how children start.

A :class:`Monitor` holds one engine reference while it is open; every child it
starts or adopts gets a :class:`~syncmon.watch.Watch` (which holds one more,
until the child's end is recorded) and a :class:`ChildHandle` for the user.

Starting a child is where a pid is most exposed: between the moment the
kernel creates the child and the moment syncmon holds a pidfd for it, the
child is known only by its number.  If a foreign reaper (``os.waitpid(-1)``
in another thread) reaps it in that window, the number is free, and the next
child started in the process may get it; a pidfd opened then would name that
newer child.  Every child syncmon starts (``spawn``, ``syncmon.Popen``) is
therefore created under one *spawn lock*, held until its pidfd is open and
proven to name an unreaped child of ours: no other syncmon child can take the
number in between.  What remains is a child started by other code in the
same process (plain ``subprocess``, ``os.fork``) taking the freed number in
that window, while a foreign reaper runs; ``ForkServer`` children have a pidfd
from birth and no such window.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, cast

from . import pidfd as pidfds
from .child import ChildHandle
from .engine import LIFETIME, Engine
from .launch import SpawnOptions, StrOrBytesPath, as_command, child_signal_mask, spawn_process
from .signalfd import children_autoreaped
from .watch import Watch, is_unreaped_child, lost_at_birth, open_pidfd, watch_child

if TYPE_CHECKING:
    from .forkserver import ForkServer
    from .popen import Popen

#: Held from a child's creation until its pidfd is open and verified (see the
#: module docstring).  Outermost of syncmon's locks: taken before any other.
_SPAWN_LOCK = threading.Lock()

#: Largest pid the kernel can give (PID_MAX_LIMIT, 2**22 on 64-bit).
_PID_MAX_LIMIT = 4 * 1024 * 1024


class Monitor:
    """A scope of child handles on the process's one monitor thread.

    ``close()`` (or leaving the ``with`` block) stops this monitor from
    starting or adopting more children; handles it already made keep
    working until their child is reaped.  When no monitor is open and no
    watched child is left, the thread stops and its descriptors are closed.
    """

    def __init__(self, *, pidfd: bool | None = None) -> None:
        """``pidfd=None`` uses pidfds where the kernel has them (unless the
        ``SYNCMON_PIDFD=0`` environment variable says not to); ``False``
        watches this monitor's children through the signalfd alone."""
        if pidfd is not None and not isinstance(pidfd, bool):
            raise TypeError(f"pidfd must be True, False or None, not {type(pidfd).__name__}")
        self.pidfd = pidfds.wanted(pidfd)
        self._lock = threading.Lock()
        self._engine: Engine | None = LIFETIME.acquire()
        self._tree_server_lock = threading.Lock()
        self._tree_server: ForkServer | None = None  # made on the first spawn(tree=True)

    @property
    def closed(self) -> bool:
        return self._engine is None

    def close(self) -> None:
        """Stop starting children here (those started keep being watched).  The
        fork server of this monitor's trees ends too; its children do not."""
        with self._tree_server_lock:
            server, self._tree_server = self._tree_server, None
        if server is not None:
            server.close()
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            LIFETIME.stop_and_wait(engine)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Monitor {state} pidfd={self.pidfd}>"

    def _open_engine(self) -> Engine:
        """The engine, with one more reference reserved for the child about to be watched.

        Reserving under the monitor's lock means a concurrent ``close()``
        cannot stop the engine between the check and the registration.
        """
        if not self.pidfd and children_autoreaped():
            # No SIGCHLD is even sent then (the kernel reaps at once), and
            # without pidfds nothing else would ever tell of these children.
            raise ChildProcessError(
                errno.ECHILD,
                "SIGCHLD is set to SIG_IGN (or SA_NOCLDWAIT): the kernel reaps children at once, "
                "and a monitor without pidfds could never learn how they end",
            )
        with self._lock:
            engine = self._engine
            if engine is None:
                raise RuntimeError("this Monitor is closed")
            if engine.abandoned:
                raise RuntimeError("this Monitor was made before fork(); use a new one in the child")
            engine.retain()
            return engine

    # -- starting children ---------------------------------------------------------

    def spawn(
        self, argv: StrOrBytesPath | Sequence[StrOrBytesPath], *, tree: bool = False, **options: Any
    ) -> ChildHandle:
        """Start ``argv`` and watch it.

        The keywords are those of :meth:`SpawnOptions.parse` (``env``, ``cwd``,
        ``stdin``, ``stdout``, ``stderr``, ``start_new_session``,
        ``process_group``, ``pass_fds``), and mean what they mean to
        ``subprocess.Popen``.  Every argument is checked before anything starts.
        ``tree=True``: the child and everything it starts are one
        :class:`~syncmon.ProcessTree` (``handle.tree``).
        """
        if not isinstance(tree, bool):
            raise TypeError(f"tree must be True or False, not {type(tree).__name__}")
        request = SpawnOptions.parse(argv, **options)
        if tree:
            from .tree import spawn_tree

            return spawn_tree(self, request, as_command(argv))
        return self.spawn_parsed(request, as_command(argv))

    def spawn_parsed(self, request: SpawnOptions, command: Sequence[Any] | None = None) -> ChildHandle:
        """:meth:`spawn` with options already parsed (``CommandPool`` parses at submit)."""
        engine = self._open_engine()

        def create() -> int:
            return spawn_process(request, child_signal_mask(engine.reactor.sigchld_blocked_by_user))

        watch = self._start(engine, create, threading.Lock(), reaps=True)
        return handle_of(watch, command)

    def start_watched(self, create: Callable[[Engine], int], lock: threading.Lock) -> Watch:
        """For ``syncmon.Popen``: run ``create(engine)`` (which starts a child the
        caller reaps itself, and returns its pid) under the spawn lock, and watch it
        with ``lock``, the caller's own reaping lock, without ever reaping it."""
        engine = self._open_engine()
        return self._start(engine, lambda: create(engine), lock, reaps=False)

    def _start(self, engine: Engine, create: Callable[[], int], lock: threading.Lock, *, reaps: bool) -> Watch:
        """Create a child and watch it; the engine reference reserved for it passes on.

        A failure after the child exists kills and reaps it before the
        exception propagates: nobody else would ever reap it.
        """
        with _SPAWN_LOCK:
            try:
                pid = create()
            except BaseException:
                engine.release()
                raise
            try:
                pidfd = self._pidfd_at_birth(pid)
            except _LostAtBirth:
                return lost_at_birth(engine, pid, lock)
            except BaseException:
                _discard_child(pid)
                engine.release()
                raise
            try:
                return watch_child(engine, pid, pidfd, lock=lock, reaps=reaps, stale_is_certain=True)
            except BaseException:
                _discard_child(pid)  # the lock is held: the pid is still our child's
                raise

    def _pidfd_at_birth(self, pid: int) -> int | None:
        """A pidfd for the child just created, proven to name it; ``None`` without pidfds.

        A pidfd opened by number names whatever process has the number now:
        if a foreign reaper took our child, that is a stranger (or nobody).
        ``WNOWAIT`` on the new pidfd proves it names an unreaped child of
        ours, and under the spawn lock no other child of ours can be it.
        """
        if not self.pidfd:
            return None
        try:
            pidfd = open_pidfd(pid)
        except ChildProcessError:
            raise _LostAtBirth from None
        if pidfd is not None and not is_unreaped_child(pid, pidfd):
            os.close(pidfd)
            raise _LostAtBirth
        return pidfd  # None at EMFILE: this one child is watched through SIGCHLD

    def adopt(self, pid: int, *, pidfd: int | None = None) -> ChildHandle:
        """Watch a child made by other means (``os.posix_spawn``, ``fork``, ``clone3``, ...).

        Raises ``ChildProcessError`` unless ``pid`` is our own unreaped child.
        Adopting a pid this monitor already watches returns the same handle.
        ``pidfd``: a pidfd the caller opened at the child's birth
        (``clone3(CLONE_PIDFD)``); the handle takes it over, and closes it even
        when adopting fails.  Only a pidfd from birth makes adopting immune to
        a foreign reaper: ``pidfd_open(pid)`` later may name a reused pid.
        """
        try:
            _check_pid(pid)
            if pidfd is not None and not self.pidfd:
                raise ValueError("pidfd= given to a monitor made with pidfd=False")
            engine = self._open_engine()
        except BaseException:
            if pidfd is not None:
                os.close(pidfd)
            raise
        try:
            if pidfd is None and self.pidfd:
                pidfd = open_pidfd(pid)
            if not is_unreaped_child(pid, pidfd):
                raise ChildProcessError(errno.ECHILD, f"pid {pid} is not an unreaped child of this process")
        except BaseException:
            if pidfd is not None:
                os.close(pidfd)
            engine.release()
            raise
        watch = watch_child(engine, pid, pidfd, lock=threading.Lock(), reaps=True, stale_is_certain=False)
        return handle_of(watch, None)

    def watch_fd(self, fd: int, on_ready: Callable[[], None]) -> Callable[[], None]:
        """Have the monitor thread call ``on_ready()`` whenever ``fd`` has priority
        data (see :meth:`Registry.add_fd`); return the function that
        stops it, to be called once, before ``fd`` is closed.  The descriptor
        stays the caller's; the engine lives at least until the stop."""
        engine = self._open_engine()
        try:
            engine.registry.add_fd(fd, on_ready)
        except BaseException:
            engine.release()
            raise
        stopped = threading.Lock()

        def unwatch() -> None:
            if stopped.acquire(blocking=False):  # exactly once
                engine.registry.remove_fd(fd)
                engine.release()

        return unwatch

    def tree_server(self) -> ForkServer:
        """The fork server that starts this monitor's trees (children born in a
        cgroup need ``clone3``); made on first use, ended by :meth:`close`."""
        with self._tree_server_lock:
            if self._tree_server is None:
                if self.closed:
                    raise RuntimeError("this Monitor is closed")
                from .forkserver import ForkServer

                self._tree_server = ForkServer(monitor=self)
            return self._tree_server

    @contextlib.contextmanager
    def sigchld_unblocked(self) -> Iterator[None]:
        """A window in which this thread can start children with another tool
        (``subprocess``, asyncio) and have them inherit an unblocked SIGCHLD.

        See :meth:`Reactor.sigchld_unblocked`: a wake-up lost in the window is
        made up for when it closes.
        """
        engine = self._open_engine()  # the engine must outlive the window
        try:
            with engine.reactor.sigchld_unblocked():
                yield
        finally:
            engine.release()

    def popen(self, args: Any, **kwargs: Any) -> Popen:
        """A :class:`syncmon.Popen` watched by this monitor."""
        from .popen import Popen

        return Popen(args, monitor=self, **kwargs)


class _LostAtBirth(Exception):
    """The child was reaped elsewhere before syncmon could hold it."""


def _check_pid(pid: object) -> None:
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"pid must be an int, not {type(pid).__name__}")
    if not 0 < pid <= _PID_MAX_LIMIT:
        raise ValueError(f"pid must be between 1 and {_PID_MAX_LIMIT}, not {pid}")
    if pid == os.getpid():
        raise ValueError("a process is not its own child")


def _discard_child(pid: int) -> None:
    """Kill and reap a child we created but could not watch.  Call with the spawn
    lock held: until it is reaped, no child of ours can have taken its pid."""
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitid(os.P_PID, pid, os.WEXITED)
    except (ProcessLookupError, ChildProcessError):
        pass  # a foreign reaper was quicker: nothing is left of it


def handle_of(watch: Watch, command: Sequence[Any] | None) -> ChildHandle:
    """The one public handle of ``watch``, made on first use: adopting the same
    child twice returns the same handle."""
    with watch.lock:
        if watch.handle is None:
            watch.handle = ChildHandle(watch, command)
        return cast(ChildHandle, watch.handle)


_default_lock = threading.Lock()
_default: Monitor | None = None


def default_monitor() -> Monitor:
    """The process-wide monitor, started on first use (never at import)."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Monitor()
        return _default


def spawn(argv: StrOrBytesPath | Sequence[StrOrBytesPath], *, tree: bool = False, **options: Any) -> ChildHandle:
    """``Monitor.spawn`` on the process-wide monitor."""
    return default_monitor().spawn(argv, tree=tree, **options)


def adopt(pid: int, *, pidfd: int | None = None) -> ChildHandle:
    """``Monitor.adopt`` on the process-wide monitor."""
    return default_monitor().adopt(pid, pidfd=pidfd)


def _after_fork_in_child() -> None:
    """Rule 3: the fork child starts with no default monitor (the engine module
    abandons the engine itself).  Locks another thread held stay held forever
    in the child: replace them."""
    global _default_lock, _default, _SPAWN_LOCK
    _default_lock = threading.Lock()
    _SPAWN_LOCK = threading.Lock()
    _default = None


os.register_at_fork(after_in_child=_after_fork_in_child)
