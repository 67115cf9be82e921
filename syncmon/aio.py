"""asyncio on top of the death futures.

``await wait(handle_or_popen)`` works from any running loop while plain
threads wait on the same child: the loop only awaits the child's
``concurrent.futures.Future`` (``asyncio.wrap_future``), so no loop owns the
child.  Cancelling the ``await`` cancels only the awaiting task: the death
future cannot be cancelled, and the child keeps being watched.

On Pythons that still have asyncio's child-watcher API (before 3.14),
:class:`ChildWatcher` lets ``asyncio.create_subprocess_exec`` be watched by
syncmon: ``asyncio.set_child_watcher(syncmon.aio.ChildWatcher())``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import warnings
from concurrent.futures import Future
from typing import Any, Callable, Union

from .child import ChildHandle
from .state import ChildState, ReapedElsewhere, UncleanExit
from .monitor import Monitor, default_monitor
from .popen import Popen

_logger = logging.getLogger("syncmon")

Watched = Union[ChildHandle, Popen]


def _handle_of(target: Watched) -> ChildHandle:
    if isinstance(target, ChildHandle):
        return target
    if isinstance(target, Popen):
        return target.handle
    raise TypeError(f"expected a ChildHandle or syncmon.Popen, not {type(target).__name__}")


async def wait(target: Watched) -> ChildState:
    """The child's death.  For a ``Popen``, Popen then reaps it, so its ``returncode`` is set."""
    state = await asyncio.wrap_future(_handle_of(target).future)
    if isinstance(target, Popen):
        target.poll()  # the child is a zombie now: this reaps without blocking
    return state


async def check(target: Watched) -> ChildState:
    """Like :meth:`ChildHandle.check`: raise ``UncleanExit`` unless the child exited with 0.

    If the ``await`` is cancelled, the child gets SIGTERM, as a ``check()``
    whose wait is cut short does in threads.
    """
    handle = _handle_of(target)
    try:
        state = await wait(target)
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            handle.terminate()
        raise
    if not state.clean():
        raise UncleanExit(state, handle.command)
    return state


if hasattr(asyncio, "AbstractChildWatcher"):
    with warnings.catch_warnings():
        # 3.12 and 3.13 warn when the deprecated ABC is subclassed.
        warnings.simplefilter("ignore", DeprecationWarning)

        class ChildWatcher(asyncio.AbstractChildWatcher):  # type: ignore[misc,name-defined,unused-ignore]
            """An asyncio child watcher backed by a syncmon monitor.

            Unlike asyncio's watchers it needs no loop in the main thread
            (``SafeChildWatcher``), no thread per child
            (``ThreadedChildWatcher``), never reaps other code's children
            (``FastChildWatcher``), and works in every loop of every thread
            at once.  ``asyncio`` starts the child inside ``with watcher:``,
            and that block lets SIGCHLD through, so the child does not
            inherit syncmon's block (rule 2).
            """

            def __init__(self, monitor: Monitor | None = None) -> None:
                self._monitor = monitor
                self._callbacks: dict[int, Future[ChildState]] = {}
                self._lock = threading.Lock()
                self._unblocked = threading.local()

            def _get_monitor(self) -> Monitor:
                return self._monitor if self._monitor is not None else default_monitor()

            def add_child_handler(  # type: ignore[override]  # the stub's TypeVarTuple needs 3.11
                self, pid: int, callback: Callable[..., object], *args: Any
            ) -> None:
                loop = asyncio.get_running_loop()
                handle = self._get_monitor().adopt(pid)
                with self._lock:
                    self._callbacks[pid] = handle.future
                handle.future.add_done_callback(
                    lambda future: self._deliver(loop, pid, future, callback, args)
                )

            def _deliver(self, loop: asyncio.AbstractEventLoop, pid: int, future: Future[ChildState],
                         callback: Callable[..., object], args: tuple[Any, ...]) -> None:
                with self._lock:
                    if self._callbacks.get(pid) is not future:
                        return  # removed with remove_child_handler
                    del self._callbacks[pid]
                try:
                    returncode = future.result().returncode
                except ReapedElsewhere as lost:
                    # asyncio's protocol needs an int; 255 is what its own watchers
                    # report here.  Unlike them, say so.
                    _logger.error("%s; reporting returncode 255 to asyncio", lost)
                    returncode = 255
                if not loop.is_closed():
                    loop.call_soon_threadsafe(callback, pid, returncode, *args)

            def remove_child_handler(self, pid: int) -> bool:
                with self._lock:
                    return self._callbacks.pop(pid, None) is not None

            def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
                """Nothing to attach: deliveries go to the loop that added the handler."""

            def close(self) -> None:
                with self._lock:
                    self._callbacks.clear()

            def is_active(self) -> bool:
                return True

            def __enter__(self) -> ChildWatcher:
                window = self._get_monitor().sigchld_unblocked()
                window.__enter__()
                self._windows().append(window)
                return self

            def __exit__(self, *exc_info: Any) -> None:
                self._windows().pop().__exit__(*exc_info)

            def _windows(self) -> list[contextlib.AbstractContextManager[None]]:
                """This thread's open ``with watcher:`` blocks (loops in several threads share us)."""
                if not hasattr(self._unblocked, "windows"):
                    self._unblocked.windows = []
                return self._unblocked.windows  # type: ignore[no-any-return]
