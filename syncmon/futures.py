"""The death future, the pool's futures, and the threads their callbacks run on.

``concurrent.futures.Future.set_result`` runs the done-callbacks right away,
in the thread that sets the result.  The thread that learns of a death is the
monitor thread, or a thread inside somebody's ``wait()``, always under the
child's handle lock; running user code there would let one slow or broken
callback stall the monitoring of every other child, or another user's
``wait()`` (DESIGN.md rule 6).  So a callback that is added before the
resolution is handed to a :class:`CallbackRunner`, while threads blocked in
``result()``, ``concurrent.futures.wait`` or ``as_completed`` are still woken
directly by the resolution: they need no hop through the runner.

Library code that only needs to *hear* of a resolution (``CommandPool``)
uses :meth:`OwnedFuture.add_done_notifier` instead: it runs in the resolving
thread, so it never waits behind user callbacks, and must therefore be
tiny and non-blocking.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from .state import ChildState

_T = TypeVar("_T")

_logger = logging.getLogger("syncmon")

#: How long a callback thread with nothing to do waits for more work before it
#: exits.  A burst of deaths reuses threads; a quiet program keeps none.
CALLBACK_IDLE_SECONDS = 5.0

Callback = Callable[[Future[Any]], object]


def _block_sigchld() -> None:
    """Keep callback threads from swallowing SIGCHLD (rule 1), whoever started them."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})


class CallbackRunner:
    """Runs done-callbacks on threads of its own, away from the resolving thread.

    A callback that blocks holds only its own thread: whenever a callback is
    queued and no thread is idle, a new one is started, without a limit
    (a cap would let that many blocked callbacks starve every later one).
    The price is one thread per callback blocked at the same moment; idle
    threads exit after :data:`CALLBACK_IDLE_SECONDS`.

    When a thread cannot be started (the process or its cgroup is at its
    thread limit, or the interpreter is exiting), the callback stays queued
    and runs exactly once, on the next callback thread that is free: a busy
    one once its callback returns, or one started for a later callback.
    With no callback thread at all it waits for that later callback; this
    is logged.  It is never run inline in the resolving thread, which holds
    the child's handle lock.

    At interpreter exit the callbacks already queued are waited for (a
    callback that never returns holds exit back, as with
    ``ThreadPoolExecutor``).  On CPython 3.12 no thread at all can be
    started once exit has begun (gh-104690), so a callback queued then is
    *stranded*: the main thread runs it, in :func:`wait_serving` (what
    exit-time code that waits for syncmon's work calls) or at the latest
    after the runners are drained.  The main thread holds no syncmon lock
    there, so that is safe where the resolving thread would not be.
    """

    def __init__(self) -> None:
        self._reset()
        _runners.add(self)

    def _reset(self) -> None:
        # Also the at-fork reset: the parent's threads do not exist in the
        # child, and its callbacks are the parent's to run.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._exited = threading.Condition(self._lock)
        self._queue: deque[tuple[Callback, Future[Any]]] = deque()
        self._threads = 0  # guarded by _lock, as are the two below
        self._idle = 0  # threads in _work.wait(); each will look at the queue
        self._closing = False

    def submit(self, callback: Callback, future: Future[Any]) -> None:
        """Queue ``callback(future)``.  Never raises, never runs it here."""
        with self._lock:
            self._queue.append((callback, future))
            if len(self._queue) <= self._idle:
                # An idle thread is counted for every queued callback: it
                # rechecks the queue once it wakes.
                self._work.notify()
                return
            stranded = not self._start_thread()
        if stranded:
            # After our lock is released: wait_serving takes _stranded, then ours.
            _note_stranded()

    def _start_thread(self) -> bool:
        """With the lock held: one more thread for the queue.  False when the
        queue is left with no thread at all (the callbacks are stranded)."""
        thread = threading.Thread(target=self._serve, name="syncmon-callback", daemon=True)
        try:
            thread.start()
        except (RuntimeError, MemoryError) as error:  # EAGAIN, or interpreter shutdown
            if self._threads:
                _logger.warning("no new callback thread (%s): %d callback(s) wait for a busy one",
                                error, len(self._queue))
                return True
            # At exit (threading's own flag, set before its exit hooks run) the
            # main thread runs them: expected on 3.12, not worth an error.
            level = logging.DEBUG if getattr(threading, "_SHUTTING_DOWN", False) else logging.ERROR
            _logger.log(level, "no callback thread can be started (%s): %d callback(s) wait for "
                        "the next callback (at exit: for the main thread)", error, len(self._queue))
            return False
        self._threads += 1
        return True

    def _take(self) -> tuple[Callback, Future[Any]] | None:
        """The next queued callback, for a thread that is not one of ours."""
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def _serve(self) -> None:
        _block_sigchld()
        while True:
            with self._lock:
                item = self._next()
                if item is None:
                    self._threads -= 1
                    self._exited.notify_all()
                    return
            self._call(*item)

    def _next(self) -> tuple[Callback, Future[Any]] | None:
        """With the lock held: the next callback, or None once this thread should exit."""
        while not self._queue:
            if self._closing:
                return None
            self._idle += 1
            woken = self._work.wait(CALLBACK_IDLE_SECONDS)
            self._idle -= 1
            if not woken and not self._queue:
                return None
        return self._queue.popleft()

    @staticmethod
    def _call(callback: Callback, future: Future[Any]) -> None:
        # Logged, never propagated: not even SystemExit or KeyboardInterrupt
        # (raised by the callback itself, as no signal reaches this thread)
        # may end the thread that serves everybody's callbacks silently.
        try:
            callback(future)
        except BaseException:
            _logger.exception("exception calling callback for %r", future)

    def shutdown(self) -> None:
        """Let idle threads exit now.  Queued callbacks still run, and later ones are
        still accepted (a callback added as the owner stops must run too)."""
        with self._lock:
            self._closing = True
            self._work.notify_all()

    def drain(self) -> None:
        """Shut down and wait until every callback thread has exited (at interpreter exit)."""
        with self._lock:
            self._closing = True
            self._work.notify_all()
            while self._threads:
                self._exited.wait()


_runners: weakref.WeakSet[CallbackRunner] = weakref.WeakSet()


def _reset_runners_in_child() -> None:
    for runner in list(_runners):
        runner._reset()


def _drain_runners() -> None:
    """At interpreter exit, before non-daemon threads are joined: let the callbacks
    already queued finish, as ``ThreadPoolExecutor`` does (the callback threads
    are daemons only so that idle ones never hold exit back); then run here
    what is left with no thread (stranded)."""
    for runner in list(_runners):
        runner.drain()
    while _run_stranded():
        pass


# Stranded callbacks (queued when no callback thread could be started and none
# was alive) are announced here: _strandings counts the announcements, and
# wait_serving sleeps on the condition until it changes.  Lock order: this
# condition is never held while a runner's lock is taken, nor the reverse.
_stranded = threading.Condition(threading.Lock())
_strandings = 0


def _note_stranded() -> None:
    global _strandings
    with _stranded:
        _strandings += 1
        _stranded.notify_all()


def _run_stranded() -> bool:
    """Run, in this thread, one callback that waits in any runner; False if none did."""
    for runner in list(_runners):
        item = runner._take()
        if item is not None:
            CallbackRunner._call(*item)
            return True
    return False


def wait_serving(future: Future[Any], timeout: float | None = None) -> bool:
    """Wait until ``future`` is done (False after ``timeout`` seconds), running
    here, meanwhile, the callbacks that found no thread.

    For a thread that waits for syncmon's own work and holds no syncmon lock
    (the main thread at interpreter exit; a pool's I/O thread waiting for
    its workers' trees).  When no thread can be started (always at exit on
    CPython 3.12, or at a thread limit) a child's death callback would
    otherwise wait forever in its runner, and so would whoever waits for
    what the callback finishes (a process tree's end).  ``future`` is a plain
    ``Future`` (its callbacks run in the resolving thread) or an
    :class:`OwnedFuture` (its notifiers do).
    """
    if isinstance(future, OwnedFuture):
        future.add_done_notifier(lambda _: _note_stranded())
    else:
        future.add_done_callback(lambda _: _note_stranded())
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with _stranded:
            seen = _strandings
        if future.done():
            return True
        if _run_stranded():
            continue
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        with _stranded:
            # An announcement since `seen` (a new stranded callback, or the
            # future's end) makes this return at once: none is missed.
            _stranded.wait_for(lambda: _strandings != seen, remaining)


class DeferringFuture(Future[_T]):
    """A ``Future`` whose callbacks never run in the thread that resolves it.

    A callback added before the future is done goes to the runner's
    threads; one added after runs at once in the caller's thread, as
    ``Future`` documents.
    """

    def __init__(self, runner: CallbackRunner) -> None:
        super().__init__()
        self._runner = runner

    def add_done_callback(self, fn: Callback) -> None:
        if self.done():
            super().add_done_callback(fn)
            return
        # If the future completes between the check and this line, the
        # wrapper runs at once and merely queues fn on the runner: still correct.
        super().add_done_callback(lambda future: self._runner.submit(fn, future))


class OwnedFuture(DeferringFuture[_T]):
    """A future that only the code which made it may start or resolve.

    ``set_result``, ``set_exception`` and ``set_running_or_notify_cancel``
    raise ``RuntimeError`` and leave the future untouched: a caller that
    resolved a child's death future with a made-up value would otherwise
    make syncmon's own resolution fail.  The owner uses :meth:`start`,
    :meth:`resolve` and :meth:`fail`.
    """

    def __init__(self, runner: CallbackRunner) -> None:
        super().__init__(runner)
        # Guarded by Future's own condition, as its done-callbacks are: a
        # lock of its own would be one more allocation per child.
        self._notifiers: list[Callback] | None = []  # None once resolved

    def _refuse(self, method: str) -> RuntimeError:
        return RuntimeError(f"{type(self).__name__} is resolved by syncmon alone: "
                            f"{method}() is not for callers, and the future is unchanged")

    def set_result(self, result: Any) -> None:
        raise self._refuse("set_result")

    def set_exception(self, exception: BaseException | None) -> None:
        raise self._refuse("set_exception")

    def set_running_or_notify_cancel(self) -> bool:
        raise self._refuse("set_running_or_notify_cancel")

    def start(self) -> bool:
        """For the owner: ``Future.set_running_or_notify_cancel``."""
        return Future.set_running_or_notify_cancel(self)

    def resolve(self, result: Any) -> None:
        """For the owner: ``Future.set_result``, then the notifiers."""
        Future.set_result(self, result)
        self._notify()

    def fail(self, exception: BaseException) -> None:
        """For the owner: ``Future.set_exception``, then the notifiers."""
        Future.set_exception(self, exception)
        self._notify()

    def add_done_notifier(self, fn: Callback) -> None:
        """For library code: call ``fn(future)`` once the future is resolved.

        Unlike a done-callback, ``fn`` runs in the thread that resolves the
        future, right after waiters are woken; for a death future that is
        under the child's handle lock, often on the monitor thread.  So
        ``fn`` must not block, take a lock that is held while a handle
        method is called, or raise (an exception is logged).  Added to a
        future that is already resolved, ``fn`` runs at once in this thread.
        """
        with self._condition:  # Future's own
            if self._notifiers is not None:
                self._notifiers.append(fn)
                return
        self._run_notifier(fn)

    def _notify(self) -> None:
        with self._condition:
            notifiers, self._notifiers = self._notifiers or [], None
        for fn in notifiers:
            self._run_notifier(fn)

    def _run_notifier(self, fn: Callback) -> None:
        try:
            fn(self)
        except Exception:
            _logger.exception("exception calling notifier for %r", self)


class DeathFuture(OwnedFuture["ChildState"]):
    """The ``Future[ChildState]`` of a child's death: RUNNING from birth.

    It is marked running at once, as an executor's job is once it starts:
    the child is running, and its death cannot be cancelled.  ``cancel()``
    therefore returns ``False`` and the future can always be resolved, which
    is what keeps a caller's cancellation (asyncio cancels the wrapped future
    when an ``await`` is cancelled) from breaking the reap pass.  The
    child's handle resolves it with :meth:`resolve` (the death) or
    :meth:`fail` (the death was lost).
    """

    def __init__(self, runner: CallbackRunner) -> None:
        super().__init__(runner)
        self.start()

    def abandon(self, error: BaseException) -> None:
        """In a fork child: fail without running any callback or notifier.

        They were added in the parent and act on its behalf (on its
        descriptors, its threads); run in the fork child they would write to
        descriptors this process does not own.  The locks are replaced: a
        thread of the parent may have held them at the fork.
        """
        self._condition = threading.Condition()
        self._done_callbacks.clear()  # type: ignore[attr-defined]  # Future's own list
        self._notifiers = None
        Future.set_exception(self, error)
