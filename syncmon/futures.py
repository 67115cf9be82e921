"""The death future, and the threads its callbacks run on.

``concurrent.futures.Future.set_result`` runs the done-callbacks right away,
in the thread that sets the result.  The thread that learns of a death is the
monitor thread, or a thread inside somebody's ``wait()``; running user code
there would let one slow or broken callback stall the monitoring of every
other child, or another user's ``wait()`` (DESIGN.md rule 6).  So a callback
that is added before the death is handed to a small pool of callback threads,
while threads blocked in ``result()``, ``concurrent.futures.wait`` or
``as_completed`` are still woken directly by ``set_result``: they need no
hop through the pool.
"""

from __future__ import annotations

import logging
import threading
import signal
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

_logger = logging.getLogger("syncmon")

#: How many callbacks may block at once before further ones queue behind them.
CALLBACK_THREADS = 16


def _block_sigchld() -> None:
    """Keep callback threads from swallowing SIGCHLD, whoever starts them."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})


class CallbackRunner:
    """Runs done-callbacks away from the thread that resolved the future.

    A ``ThreadPoolExecutor`` starts a new worker whenever none is idle, up
    to its limit, so a callback that blocks for seconds only holds its own
    thread while the next callback gets another.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=CALLBACK_THREADS,
            thread_name_prefix="syncmon-callback",
            initializer=_block_sigchld,
        )

    def submit(self, callback: Callable[[Future[Any]], object], future: Future[Any]) -> None:
        try:
            self._pool.submit(self._call, callback, future)
        except RuntimeError:
            # Shut down (the engine stopped, or the interpreter is exiting)
            # between the future's completion and this call: nobody else is
            # left to run it, so run it here.
            self._call(callback, future)

    @staticmethod
    def _call(callback: Callable[[Future[Any]], object], future: Future[Any]) -> None:
        # The same treatment Future._invoke_callbacks gives a failing callback:
        # logged, never propagated into whoever resolved the future.
        try:
            callback(future)
        except Exception:
            _logger.exception("exception calling callback for %r", future)

    def shutdown(self) -> None:
        """Stop taking callbacks; those already queued still run."""
        self._pool.shutdown(wait=False)


class DeferringFuture(Future):  # type: ignore[type-arg]
    """A ``Future`` whose callbacks never run in the thread that resolves it.

    A callback added before the future is done goes to the runner's
    threads; one added after runs at once in the caller's thread, as
    ``Future`` documents.
    """

    def __init__(self, runner: CallbackRunner) -> None:
        super().__init__()
        self._runner = runner

    def add_done_callback(self, fn: Callable[[Future[Any]], object]) -> None:
        if self.done():
            super().add_done_callback(fn)
            return
        # If the future completes between the check and this line, the
        # wrapper runs at once and merely queues fn on the pool: still correct.
        super().add_done_callback(lambda future: self._runner.submit(fn, future))


class DeathFuture(DeferringFuture):
    """The ``Future[ChildState]`` of a child's death: RUNNING from birth.

    It is marked running at once, as an executor's job is once it starts:
    the child is running, and its death cannot be cancelled.  ``cancel()``
    therefore returns ``False`` and the future can always be resolved, which
    is what keeps a caller's cancellation (asyncio cancels the wrapped future
    when an ``await`` is cancelled) from breaking the reap pass.
    """

    def __init__(self, runner: CallbackRunner) -> None:
        super().__init__(runner)
        self.set_running_or_notify_cancel()

    def resolve(self, state: Any) -> None:
        """The death is known (for the child's watch alone)."""
        self.set_result(state)

    def fail(self, error: BaseException) -> None:
        """The child's end is known, and it has no status (for the child's watch alone)."""
        self.set_exception(error)

    def abandon(self, error: BaseException) -> None:
        """In a fork child: fail without running any callback.

        The callbacks were added in the parent and act on its behalf (on its
        descriptors, its threads); run in the fork child they would write to
        descriptors this process does not own.  The condition is replaced:
        a thread of the parent may have held it at the fork.
        """
        self._condition = threading.Condition()
        self._done_callbacks = []
        self.set_exception(error)
