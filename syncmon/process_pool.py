"""``ProcessPoolExecutor``: a process pool that a dying worker cannot break.

The stdlib pool learns of a worker's death indirectly (a broken pipe, a
sentinel) and cannot tell which task the worker was running, so it fails
them all and breaks.  Here every worker is our own child, forked by a
:class:`~syncmon.ForkServer` and watched by our monitor through a pidfd from
birth: its death, with its true status, reaches the pool the moment it is
reaped, and the pool knows which task that worker was running.

Threads: one I/O thread per pool (``syncmon-process-pool``) owns the sockets,
the buffers and the workers; it sleeps in ``select`` (epoll) on the listening
socket, the workers' connections and a wake-up socket.  Deaths arrive through
death-future *notifiers* (on the monitor thread, where nothing may block):
they only queue the worker and write one wake-up byte.  Callers
(``submit``, ``kill``, ``shutdown``) touch the shared state under ``_lock``.

The order that makes "exactly the running task fails" true: a dead worker's
connection is read to its end *before* its task is failed.  A Unix stream
socket queues a write in the receiver's buffer before ``write`` returns, so
everything the worker sent before dying (its last result, say) is there by
the time the death is reported, and a task that completed is never failed.

Prefetch: a ready worker holds up to :data:`PREFETCH` tasks queued ahead of
the one it runs, in its socket, so that it starts the next task the moment it
has sent a result instead of idling for a round trip through the I/O thread
(which was 93% of a worker's time on tiny tasks).  Which of a worker's tasks
is running follows from order alone, with no message for it: a worker reads
and answers its tasks strictly in order, and starts the next one right after
sending a result, so once everything it sent is read, the first task still
unanswered is the one it was running and those behind it never started.  The
one case that rule gets wrong is a worker that dies between sending a result
and reading the next task (a few microseconds, with the task already in its
buffer): that task is failed though it never started, as it was before
prefetch, when the window was a whole round trip.  A task's ``task_timeout``
counts from when it starts: from its sending to an idle worker, or for a task
queued ahead, from the arrival of the result before it.
"""

from __future__ import annotations

import atexit
import collections
import errno
import itertools
import logging
import os
import pickle
import secrets
import selectors
import socket
import sys
import threading
import time
import weakref
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.process import current_process
from typing import Any, Callable, Iterable, Iterator, TypeVar

from . import _cgroup, _pool_worker as wire
from ._proctree import ProcTree
from .child import ChildHandle
from .forkserver import ForkServer
from .futures import wait_serving
from .monitor import Monitor, default_monitor
from .state import ChildState
from .tree import ProcessTree, CgroupMembers

_T = TypeVar("_T")
_logger = logging.getLogger("syncmon")

#: After this many workers in a row die before they are ready (a failing
#: initializer, a crash at import), the pool is broken instead of forking on.
MAX_STARTUP_FAILURES = 3
#: How long shutdown waits for a worker to exit after its connection closed.
EXIT_GRACE_SECONDS = 5.0
_READ_CHUNK = 1 << 20
#: After a worker could not be forked, when the I/O thread tries again.
_RETRY_SECONDS = 0.1
#: How long forks may keep failing for want of a pid, memory or a descriptor
#: (EAGAIN at pid_max, ``pids.max`` or RLIMIT_NPROC; ENOMEM; EMFILE) before the
#: pool is broken.  Such a want passes: three failures 0.2 s apart would break
#: a pool over a moment of pid famine (the stress scenario ``pool`` did).
FORK_RETRY_SECONDS = 30.0
_TRANSIENT_FORK_ERRNOS = frozenset({errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE})
#: Tasks a busy worker holds queued ahead of the one it runs.  Only when no
#: worker is idle or starting and the pool cannot grow: a task queued behind a
#: long one would otherwise wait while another worker could run it.
PREFETCH = 1


class WorkerDied(BrokenProcessPool):
    """The worker running this task died; ``.pid`` and ``.state`` (a ChildState) say how.

    A subclass of the stdlib's ``BrokenProcessPool`` so that existing
    ``except`` clauses still match; but only this task failed, and the pool
    carries on.
    """

    def __init__(self, pid: int, state: ChildState | None, detail: str = "") -> None:
        how = "died" if state is None else str(state).removeprefix(f"pid {pid} ")
        super().__init__(f"the worker (pid {pid}) running this task died: {how}{detail}")
        self.pid = pid
        self.state = state


class _Task:
    __slots__ = ("id", "future", "call", "worker", "deadline", "killed")

    def __init__(self, task_id: int, future: Future[Any], call: bytes) -> None:
        self.id = task_id
        self.future = future
        self.call = call
        self.worker: _Worker | None = None
        self.deadline: float | None = None
        # By kill(future): its worker is killed once it runs (at once if it
        # does now, else when the result before it arrives); fails with WorkerDied.
        self.killed = False


class _Worker:
    """One worker: its handle, and (I/O thread only) its connection and buffers."""

    def __init__(self, handle: ChildHandle, token: bytes) -> None:
        self.handle = handle
        self.token = token
        self.sock: socket.socket | None = None
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.ready = False
        self.init_error: str | None = None
        # Sent and unanswered, in order: the first is running, the rest are
        # queued ahead in its socket (see the module's docstring).  Guarded by
        # the pool's _lock.  A task that timed out stays first (its future
        # failed) until its worker's death, so that a late result still
        # lines up with the task it answers.
        self.tasks: collections.deque[_Task] = collections.deque()
        self.sent = 0  # tasks ever sent: at most max_tasks_per_child
        self.retiring = False  # max_tasks_per_child reached, or killed: no more tasks
        self.lost = False  # its connection ended: it is dying, whatever it was doing
        self.done_tasks = 0

    def kill_tree(self) -> None:
        """SIGKILL the worker and everything it started, never anybody else.

        With a cgroup (the worker was born in it) that is one ``cgroup.kill``,
        and works after the worker's death too.  Without one the worker leads
        its own session and the tree is found through /proc and verified
        through pidfds (``ProcTree``), which needs the worker still unreaped:
        once it is dead, only the worker itself was killed.
        """
        tree = self.handle.tree
        if tree is not None:
            tree.kill()
            return
        try:
            procs = ProcTree(self.handle.pid, session=True)
        except (ChildProcessError, ValueError):
            self.handle.kill()
            return
        with procs:
            procs.kill()
            procs.wait_empty(EXIT_GRACE_SECONDS)


class _Pool:
    """The pool's state and its I/O thread; the public executor wraps it so that
    dropping the executor (a weak reference) can shut the pool down."""

    def __init__(self, max_workers: int, monitor: Monitor, preload: Iterable[str],
                 initializer: Callable[..., object] | None, initargs: tuple[Any, ...],
                 max_tasks_per_child: int | None, task_timeout: float | None) -> None:
        self.max_workers = max_workers
        self.monitor = monitor
        self.initializer = initializer
        self.initargs = initargs
        self.max_tasks = max_tasks_per_child
        self.task_timeout = task_timeout
        self.main = _main_reference()
        self.server = ForkServer(preload, monitor=monitor)
        # _lock guards the queue, the task table, the workers' task slots and
        # the flags below; never held while waiting for a process.
        self._lock = threading.Lock()
        self.queue: collections.deque[_Task] = collections.deque()
        self.tasks: dict[Future[Any], _Task] = {}
        self.shutting_down = False
        self.broken: BrokenProcessPool | None = None
        self._ids = itertools.count(1)
        self.workers: dict[bytes, _Worker] = {}  # by token
        self.ended: list[_Worker] = []  # dead, their trees maybe still settling
        self.deaths: collections.deque[_Worker] = collections.deque()
        self.startup_failures = 0
        self.start_failed = False  # the last fork failed: retry after _RETRY_SECONDS
        self.wanting_since: float | None = None  # forks fail for a transient want since then
        self.address = b"\0syncmon-pool-" + secrets.token_hex(16).encode()
        self.selector = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.address)
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        self.hellos: dict[socket.socket, bytearray] = {}  # connections before their token
        # Resolved when the I/O thread has ended everything (a plain Future: its
        # callbacks run in that thread, which is what wait_serving needs).
        self.closed: Future[None] = Future()
        self.thread = threading.Thread(target=self._run, name="syncmon-process-pool", daemon=True)
        self.thread.start()

    # --- callers' side -------------------------------------------------------------------

    def submit(self, call: bytes) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self.broken is not None:
                raise BrokenProcessPool(str(self.broken))
            if self.shutting_down:
                raise RuntimeError("cannot schedule new futures after shutdown")
            task = _Task(next(self._ids), future, call)
            self.queue.append(task)
            self.tasks[future] = task
        self.wake()
        return future

    def kill(self, future: Future[Any]) -> bool:
        """A task queued ahead in a worker is not killed now, which would kill the
        task that worker runs; its worker is killed when it starts (_on_result)."""
        with self._lock:
            task = self.tasks.get(future)
            worker = None if task is None else task.worker
            if task is None or worker is None:
                return False
            task.killed = True
            worker.retiring = True
            running = worker.tasks[0] is task
        if running:
            worker.kill_tree()
        return True

    def begin_shutdown(self, cancel_futures: bool) -> None:
        with self._lock:
            self.shutting_down = True
            if cancel_futures:
                # A task back from a dead worker's prefetch is RUNNING (it was
                # sent): it runs, as a task in the stdlib's call queue does.
                queued, self.queue = self.queue, collections.deque()
                for task in queued:
                    if task.future.cancel():
                        del self.tasks[task.future]
                    else:
                        self.queue.append(task)
        self.wake()

    def wake(self) -> None:
        try:
            self.wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is pending already (or the thread is gone)

    def _on_death(self, worker: _Worker) -> None:
        """A death-future notifier (monitor thread, handle lock held): queue, wake."""
        self.deaths.append(worker)
        self.wake()

    # --- the I/O thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._finished():
                for key, events in self.selector.select(self._next_timeout()):
                    self._on_ready(key.fileobj, events)  # type: ignore[arg-type]
                self._handle_deaths()
                self._expire()
                self._dispatch()
                self._grow()
        except BaseException:
            _logger.exception("syncmon.ProcessPoolExecutor: the I/O thread failed")
            self._break(BrokenProcessPool("the pool's I/O thread failed (see the log)"))
        finally:
            try:
                self._close()
            finally:
                self.closed.set_result(None)

    def _finished(self) -> bool:
        with self._lock:
            if not self.shutting_down or self.queue:
                return False
            return all(not w.tasks for w in self.workers.values())

    def _next_timeout(self) -> float | None:
        with self._lock:
            deadlines = [w.tasks[0].deadline for w in self.workers.values()
                         if w.tasks and w.tasks[0].deadline is not None]
        if self.start_failed:
            deadlines.append(time.monotonic() + _RETRY_SECONDS)  # try again soon, not never
        return None if not deadlines else max(0.0, min(deadlines) - time.monotonic())

    def _on_ready(self, sock: socket.socket, events: int) -> None:
        if sock is self.wake_r:
            try:
                while sock.recv(4096):
                    pass
            except BlockingIOError:
                pass
        elif sock is self.listener:
            self._accept()
        else:
            worker = self._owner(sock)
            if events & selectors.EVENT_WRITE and worker is not None:
                self._flush(worker)
            if events & selectors.EVENT_READ:
                self._read(sock, worker)

    def _owner(self, sock: socket.socket) -> _Worker | None:
        for worker in self.workers.values():
            if worker.sock is sock:
                return worker
        return None

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                return
            conn.setblocking(False)
            self.hellos[conn] = bytearray()
            self.selector.register(conn, selectors.EVENT_READ)

    def _read(self, sock: socket.socket, worker: _Worker | None) -> None:
        """Read what is there; a connection not yet known must begin with a valid hello."""
        if worker is None:
            self._read_hello(sock)
            return
        if not _drain_into(sock, worker.inbox):
            self._disconnect(worker)
        for message in _frames(worker.inbox):
            self._on_message(worker, message)

    def _read_hello(self, conn: socket.socket) -> None:
        """A new connection: its first bytes must be a token we gave a live
        worker (anyone on this host can connect to an abstract address, and
        a dead worker's late connection must not be taken for its successor's)."""
        buffer = self.hellos[conn]
        open_ = _drain_into(conn, buffer, limit=wire.TOKEN_SIZE)
        if open_ and len(buffer) < wire.TOKEN_SIZE:
            return  # the rest of the token is on its way
        del self.hellos[conn]
        worker = self.workers.get(bytes(buffer))
        if not open_ or worker is None or worker.sock is not None:
            self.selector.unregister(conn)
            conn.close()
            return
        worker.sock = conn
        self._read(conn, worker)

    def _on_message(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == wire.READY:
            worker.ready = True
            self.startup_failures = 0
        elif kind == wire.INIT_FAILED:
            worker.init_error = message[1]
        else:
            self._on_result(worker, kind, *message[1:])

    def _on_result(self, worker: _Worker, task_id: int, ok: bool, value: Any) -> None:
        """The running task's answer; the worker has started the next one already."""
        with self._lock:
            task = worker.tasks.popleft()
            assert task.id == task_id, "a worker answers its tasks in order"
            pending = self.tasks.pop(task.future, None) is not None  # else: timed out
            started = worker.tasks[0] if worker.tasks else None
            if started is not None:
                self._start_clock(started)
        worker.done_tasks += 1
        if self.max_tasks is not None and worker.done_tasks >= self.max_tasks:
            worker.retiring = True
        if started is not None and started.killed:
            worker.kill_tree()
        if pending:
            _settle(task.future, ok, value)

    def _start_clock(self, task: _Task) -> None:
        """``task`` starts running now; call with _lock held."""
        if self.task_timeout is not None:
            task.deadline = time.monotonic() + self.task_timeout

    def _flush(self, worker: _Worker) -> None:
        assert worker.sock is not None
        try:
            sent = worker.sock.send(worker.outbox)
        except BlockingIOError:
            sent = 0
        except OSError:
            return  # the worker is dying: its death fails its task
        del worker.outbox[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if worker.outbox else 0)
        self.selector.modify(worker.sock, events)

    def _disconnect(self, worker: _Worker) -> None:
        if worker.sock is not None:
            self.selector.unregister(worker.sock)
            worker.sock.close()
            worker.sock = None
            worker.lost = True

    # --- deaths ---------------------------------------------------------------------------

    def _handle_deaths(self) -> None:
        while self.deaths:
            worker = self.deaths.popleft()
            # Everything it sent before dying is queued for us: read it first
            # (a hello still in the listen queue included).
            self._accept()
            for conn in list(self.hellos):
                self._read_hello(conn)
            if worker.sock is not None:
                self._read(worker.sock, worker)
            self._disconnect(worker)
            self._bury(worker)

    def _bury(self, worker: _Worker) -> None:
        state = _state_of(worker.handle)
        self.workers.pop(worker.token, None)
        # Kept until its tree has settled, for shutdown to wait on; no longer.
        self.ended = [w for w in self.ended if w.handle.tree is not None and not w.handle.tree.future.done()]
        self.ended.append(worker)
        worker.kill_tree()  # what it started dies with it (sound with a cgroup)
        with self._lock:
            sent = list(worker.tasks)
            worker.tasks.clear()
            failed = self._take_back(sent[1:])
            if sent and self.tasks.pop(sent[0].future, None) is not None:  # else: timed out
                failed.insert(0, sent[0])
        for task in failed:
            detail = " (killed by ProcessPoolExecutor.kill)" if task.killed else ""
            task.future.set_exception(WorkerDied(worker.handle.pid, state, detail))
        if sent:
            return  # it died running a task: that task fails, not the pool
        if not worker.ready:
            self._startup_failed(worker, state)
        elif not worker.retiring:
            _logger.warning("syncmon.ProcessPoolExecutor: idle worker %s; starting another", state)

    def _take_back(self, unstarted: list[_Task]) -> list[_Task]:
        """A dead worker's tasks queued ahead (never started: see the module's
        docstring) go back to the front of the queue in order, to run
        elsewhere; those that kill() was asked to kill are returned, to fail
        instead.  Call with _lock held."""
        killed = [task for task in unstarted if task.killed]
        for task in reversed(unstarted):
            if not task.killed:
                task.worker = None
                task.deadline = None
                self.queue.appendleft(task)
        for task in killed:
            del self.tasks[task.future]
        return killed

    def _startup_failed(self, worker: _Worker, state: ChildState | None) -> None:
        self.startup_failures += 1
        detail = worker.init_error or f"{state} before it was ready"
        _logger.warning("syncmon.ProcessPoolExecutor: a worker failed to start (%d in a row): %s",
                        self.startup_failures, detail)
        if self.startup_failures >= MAX_STARTUP_FAILURES:
            self._break(BrokenProcessPool(
                f"{MAX_STARTUP_FAILURES} workers in a row failed to start; the last: {detail}"))

    def _break(self, error: BrokenProcessPool) -> None:
        """No more workers: fail every queued task, refuse new ones."""
        with self._lock:
            self.broken = error
            self.shutting_down = True
            queued, self.queue = list(self.queue), collections.deque()
            for task in queued:
                del self.tasks[task.future]
        for task in queued:
            if task.future.running() or task.future.set_running_or_notify_cancel():
                task.future.set_exception(BrokenProcessPool(str(error)))

    def _expire(self) -> None:
        now = time.monotonic()
        expired = []
        with self._lock:
            for worker in self.workers.values():
                task = worker.tasks[0] if worker.tasks else None
                if task is not None and task.deadline is not None and task.deadline <= now:
                    task.deadline = None  # stays first: see _Worker.tasks
                    worker.retiring = True
                    del self.tasks[task.future]
                    expired.append((worker, task))
        for worker, task in expired:
            worker.kill_tree()
            # The builtin TimeoutError, as every syncmon timeout (before 3.11
            # concurrent.futures.TimeoutError was another class).
            task.future.set_exception(TimeoutError(
                f"the task ran longer than task_timeout={self.task_timeout} s; "
                f"its worker (pid {worker.handle.pid}) was killed"))

    # --- work ------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """A task to every idle worker; then, if the pool is all busy and at its
        size, up to PREFETCH more to each worker, queued ahead."""
        for depth in range(1, 2 + PREFETCH):
            if depth > 1 and not self._all_busy():
                return
            for worker in list(self.workers.values()):
                if not self._send_task(worker, depth):
                    return

    def _send_task(self, worker: _Worker, depth: int) -> bool:
        """Send ``worker`` the next task if it holds fewer than ``depth``; False
        when no task is left to send."""
        if not worker.ready or worker.retiring or worker.sock is None:
            return True
        if self.max_tasks is not None and worker.sent >= self.max_tasks:
            return True  # it exits after that many: more would be lost with it
        with self._lock:
            if len(worker.tasks) >= depth:
                return True
            task = self._next_task()
            if task is None:
                return False
            task.worker = worker
            if not worker.tasks:
                self._start_clock(task)
            worker.tasks.append(task)
        worker.sent += 1
        worker.outbox += wire.frame((task.id, task.call))
        self._flush(worker)
        return True

    def _all_busy(self) -> bool:
        """No worker idle or starting, and no room for another."""
        usable = [w for w in self.workers.values() if not (w.retiring or w.lost)]
        return len(usable) >= self.max_workers and all(w.ready and w.tasks for w in usable)

    def _next_task(self) -> _Task | None:
        """The next task that was not cancelled; call with _lock held.  A task
        taken back from a dead worker is RUNNING already."""
        while self.queue:
            task = self.queue.popleft()
            if task.future.running() or task.future.set_running_or_notify_cancel():
                return task
            del self.tasks[task.future]
        return None

    def _grow(self) -> None:
        """Start workers while queued tasks outnumber the workers that could take them."""
        while True:
            with self._lock:
                if self.broken is not None:
                    return
                waiting = len(self.queue)
            usable = [w for w in self.workers.values() if not (w.retiring or w.lost)]
            available = sum(1 for w in usable if not w.tasks)
            # A worker that died before it was ready counts until it is
            # buried: its death is a startup failure, and a replacement forked
            # before that is counted is one worker too many when the pool then
            # breaks at MAX_STARTUP_FAILURES (its connection ends before the
            # monitor reports the death).
            failing = sum(1 for w in self.workers.values() if w.lost and not w.ready)
            live = len(usable) + failing
            if waiting <= available or live >= self.max_workers:
                return
            if not self._start_worker():
                return

    def _start_worker(self) -> bool:
        token = secrets.token_bytes(wire.TOKEN_SIZE)
        try:
            handle = self._fork(token)
            self.start_failed = False
            self.wanting_since = None
        except Exception as error:
            self.start_failed = True
            if self._fork_failed(error):
                self._break(BrokenProcessPool(f"cannot start workers: {error!r}"))
            return False
        worker = _Worker(handle, token)
        self.workers[token] = worker
        handle.future.add_done_notifier(lambda _: self._on_death(worker))
        return True

    def _fork_failed(self, error: Exception) -> bool:
        """Count a failed fork; True when the pool must give up.  A transient want is
        logged once and retried for up to FORK_RETRY_SECONDS; anything else counts
        as a failed start."""
        now = time.monotonic()
        if isinstance(error, OSError) and error.errno in _TRANSIENT_FORK_ERRNOS:
            if self.wanting_since is None:
                self.wanting_since = now
                _logger.warning("syncmon.ProcessPoolExecutor: cannot start a worker now: %r; retrying", error)
            return now - self.wanting_since >= FORK_RETRY_SECONDS
        _logger.warning("syncmon.ProcessPoolExecutor: cannot start a worker: %r", error)
        self.startup_failures += 1
        return self.startup_failures >= MAX_STARTUP_FAILURES

    def _fork(self, token: bytes) -> ChildHandle:
        """A new worker, born in a cgroup of its own where we can make one (so
        that killing "it and everything it started" is one step and sound)."""
        cgroup = _cgroup.available() is True
        args = (self.address, token, not cgroup, self.main, bytes(current_process().authkey),
                self.initializer, self.initargs, self.max_tasks)
        if not cgroup:
            return self.server.fork(wire.serve, *args)
        members = CgroupMembers(self.monitor)
        try:
            handle = self.server._fork(wire.serve, args, {}, members.cgroup.dir_fd)
        except BaseException:
            members.close()
            raise
        members.roots = frozenset({handle.pid})
        handle.tree = ProcessTree(handle, members)
        return handle

    # --- the end ---------------------------------------------------------------------------

    def _close(self) -> None:
        """Close every connection (idle workers exit at end-of-file), wait for
        the workers and their trees, then end the fork server."""
        for conn in self.hellos:
            conn.close()
        for worker in list(self.workers.values()):
            if worker.sock is not None:
                worker.sock.close()
                worker.sock = None
        deadline = time.monotonic() + EXIT_GRACE_SECONDS
        for worker in [*self.workers.values(), *self.ended]:
            _reap(worker, deadline)
        self.server.close()
        self.selector.close()
        self.listener.close()
        self.wake_r.close()
        self.wake_w.close()
        with self._lock:
            left = list(self.tasks.values())
            self.tasks.clear()
        for task in left:  # only after a failure of this thread
            if task.future.set_running_or_notify_cancel() or task.future.running():
                task.future.set_exception(BrokenProcessPool("the pool's I/O thread ended"))


def _reap(worker: _Worker, deadline: float) -> None:
    try:
        worker.handle.wait(timeout=max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        worker.kill_tree()
        worker.handle.wait()
    if worker.handle.tree is not None:
        # The tree ends through a death callback: serve it here if no
        # callback thread can be started (at exit on 3.12, at a thread limit).
        done = worker.handle.tree.future
        if not wait_serving(done, max(0.0, deadline - time.monotonic())):
            worker.kill_tree()
            wait_serving(done)


def _state_of(handle: ChildHandle) -> ChildState | None:
    error = handle.future.exception()
    return None if error is not None else handle.future.result()


def _settle(future: Future[Any], ok: bool, value: Any) -> None:
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _drain_into(sock: socket.socket, buffer: bytearray, limit: int | None = None) -> bool:
    """Append what ``sock`` has now to ``buffer``; False at end-of-file."""
    while limit is None or len(buffer) < limit:
        try:
            chunk = sock.recv(_READ_CHUNK if limit is None else limit - len(buffer))
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not chunk:
            return False
        buffer += chunk
    return True


def _frames(buffer: bytearray) -> Iterator[Any]:
    """The complete frames at the head of ``buffer``, removed as they are yielded."""
    while len(buffer) >= wire.HEADER.size:
        size = wire.HEADER.unpack_from(buffer)[0]
        end = wire.HEADER.size + size
        if len(buffer) < end:
            return
        body = bytes(buffer[wire.HEADER.size:end])
        del buffer[:end]
        yield pickle.loads(body)


def _main_reference() -> tuple[str | None, str | None]:
    """How a worker finds our ``__main__``: by module name (``python -m``) or path."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in ("__main__",):
        return spec.name, None
    path = getattr(main, "__file__", None)
    if path is not None and os.path.exists(path):
        return None, os.path.abspath(path)
    return None, None


# --- the public executor -----------------------------------------------------------------

_live_pools: weakref.WeakSet[_Pool] = weakref.WeakSet()


class ProcessPoolExecutor(Executor):
    """``concurrent.futures.ProcessPoolExecutor`` on syncmon's workers.

    Same constructor and methods; the differences:

    * a worker that dies fails only the task it was running, with
      :class:`WorkerDied` (``.pid``, ``.state``); a new worker starts and the
      pool carries on.  A worker that dies idle is logged and replaced.
      :data:`MAX_STARTUP_FAILURES` workers in a row that die before they are
      ready (an initializer that raises every time) break the pool: queued and
      new tasks fail with ``BrokenProcessPool`` naming the last failure.
    * ``mp_context`` is accepted and ignored: workers are always forked from a
      syncmon ``ForkServer`` (a fresh interpreter that imported ``preload``,
      like multiprocessing's "forkserver" method), never copies of this process.
    * ``preload``: modules the fork server imports once, so workers start warm.
    * ``task_timeout``: a task running longer fails with ``TimeoutError`` and
      its worker is killed with everything it started.  It counts from the
      task's start, not from its sending to a worker that held it queued ahead.
    * :meth:`kill`: kill the worker running ``future`` (and its tree); the
      task fails with ``WorkerDied``.
    * ``monitor``: the :class:`~syncmon.Monitor` watching the workers (default:
      the process-wide one).  Shut the pool down before closing it.
    """

    def __init__(self, max_workers: int | None = None, mp_context: object | None = None,
                 initializer: Callable[..., object] | None = None, initargs: Iterable[Any] = (),
                 *, max_tasks_per_child: int | None = None, preload: Iterable[str] = (),
                 task_timeout: float | None = None, monitor: Monitor | None = None) -> None:
        if max_workers is None:
            max_workers = len(os.sched_getaffinity(0)) or 1
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        if task_timeout is not None and not task_timeout > 0:
            raise ValueError("task_timeout must be a positive number of seconds")
        initargs = tuple(initargs)
        pickle.dumps((initializer, initargs))  # what cannot reach a worker fails here
        self._max_workers = max_workers
        self._pool = _Pool(max_workers, monitor if monitor is not None else default_monitor(), preload,
                           initializer, initargs, max_tasks_per_child, task_timeout)
        _live_pools.add(self._pool)
        # Dropped without shutdown: shut down (the I/O thread holds the _Pool, not us).
        self._finalizer = weakref.finalize(self, self._pool.begin_shutdown, False)

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        """Run ``fn(*args, **kwargs)`` in a worker.  An argument that cannot be
        pickled fails the returned future (with the pickling error), not the pool."""
        try:
            call = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:
            future: Future[_T] = Future()
            with self._pool._lock:
                if self._pool.shutting_down:
                    raise RuntimeError("cannot schedule new futures after shutdown") from None
            future.set_running_or_notify_cancel()
            future.set_exception(error)
            return future
        return self._pool.submit(call)

    def map(self, fn: Callable[..., _T], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[_T]:
        """As ``Executor.map``; ``chunksize`` arguments travel (and run) per task."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        chunks = super().map(wire.ChunkRunner(fn), _chunks(zip(*iterables), chunksize), timeout=timeout)
        return _unchunk(chunks)

    def kill(self, future: Future[Any]) -> bool:
        """Kill the worker running ``future``, with everything it started.

        The task fails with :class:`WorkerDied` once the worker is reaped, and
        a new worker takes its place.  A task queued ahead in a busy worker
        (RUNNING, as a task in the stdlib's call queue is) is killed the same
        way when it starts, the moment the task before it answers: the task
        before it is not harmed, and it may run for an instant first.
        Returns False (and does nothing) if the task is not running now
        (queued, done, or not this pool's).
        """
        return self._pool.kill(future)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Run what is queued (or cancel it), then end the workers and the fork server.

        With ``wait=False`` that happens in the pool's thread; nothing is left
        behind either way (interpreter exit waits for it, as the stdlib does).
        """
        self._pool.begin_shutdown(cancel_futures)
        if wait:
            self._pool.thread.join()

    def __repr__(self) -> str:
        return f"<syncmon.ProcessPoolExecutor max_workers={self._max_workers}>"


def _unchunk(chunks: Iterator[list[_T]]) -> Iterator[_T]:
    """The results one by one, each given up as it is yielded: a result the
    caller dropped must not live on in our chunk (as in the stdlib's map)."""
    for chunk in chunks:
        chunk.reverse()
        while chunk:
            yield chunk.pop()


def _chunks(items: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    while True:
        chunk = list(itertools.islice(items, size))
        if not chunk:
            return
        yield chunk


def _shutdown_all() -> None:
    """At interpreter exit, before non-daemon threads are joined: finish every pool.

    The main thread waits with :func:`~syncmon.futures.wait_serving`, not a
    plain join: the I/O thread waits for its workers' trees, whose end comes
    through a death callback, and on CPython 3.12 no callback thread can be
    started at exit; the main thread runs that callback instead.
    """
    pools = list(_live_pools)
    for pool in pools:
        pool.begin_shutdown(False)
    for pool in pools:
        wait_serving(pool.closed)
        pool.thread.join()


if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_shutdown_all)
else:  # pragma: no cover - every supported CPython has it
    atexit.register(_shutdown_all)
