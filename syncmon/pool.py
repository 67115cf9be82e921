"""``CommandPool``: run many commands, at most N at a time, as futures of ``CompletedProcess``.

The shape of a ``concurrent.futures.Executor``, for commands instead of
callables.  One pool thread does all the work that is not waiting for
deaths: it starts queued commands when a slot frees, feeds ``input=``,
reads every captured pipe of every running command through one epoll, and
enforces timeouts.  Deaths come from the children's futures, through a
notifier that only queues the job and wakes the pool thread (it never
waits behind user callbacks).  So 10,000 commands need no more threads
than 10: the pool's own thread, the monitor thread and the callback threads
of whatever user callbacks run at that moment.

The pool thread is an exception barrier: whatever goes wrong while it
handles one job (a pipe error, undecodable output, a bug) fails that job's
future, after its child was killed and its pipes closed, and the pool goes on.

Lifecycle: ``NEW`` (no thread) -> ``RUNNING`` (the thread owns a :class:`_Loop`,
the epoll and eventfd) -> ``SHUTTING_DOWN`` -> ``CLOSED``.  The loop exists only
while the thread runs, and is reached from other threads only under the
pool's lock, so no shutdown, late death or second ``shutdown()`` can write
to or close a descriptor number the pool no longer owns.

Lock order: a child's handle lock, then ``CommandPool._lock`` (the death
notifier runs under the handle lock).  Nothing here calls a handle method
with ``_lock`` held.
"""

from __future__ import annotations

import codecs
import enum
import io
import locale
import logging
import math
import numbers
import os
import select
import subprocess
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Iterator, Mapping, cast

from .child import ChildHandle
from .futures import CallbackRunner, OwnedFuture
from .launch import SPAWN_KEYWORDS, SpawnOptions, as_command
from .monitor import Monitor, default_monitor

_logger = logging.getLogger("syncmon")

_CHUNK = 65536

#: The longest single epoll wait: a deadline further away (``timeout=30 * 86400``)
#: is reached in several waits, since ``epoll.poll`` overflows at about 24.8 days.
_MAX_POLL_SECONDS = 86400.0

_TEXT_KEYWORDS = frozenset({"text", "universal_newlines", "encoding", "errors"})
_STREAMS = ("stdin", "stdout", "stderr")


class _State(enum.Enum):
    NEW = "new"  # no pool thread (never started, or it could not start)
    RUNNING = "running"
    SHUTTING_DOWN = "shutting down"  # no new jobs; the thread finishes the others
    CLOSED = "closed"


class _Loop:
    """The pool thread's epoll and the eventfd that wakes it; closed by that thread alone."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        try:
            self.wakeup = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self.epoll.register(self.wakeup, select.EPOLLIN)
        except BaseException:
            self.epoll.close()
            raise

    def close(self) -> None:
        self.epoll.close()
        os.close(self.wakeup)


class _Job:
    """One command: its future, its child once started, its pipes and captured output."""

    def __init__(self, args: Any, argv: list[Any], spawn_kwargs: dict[str, Any], *,
                 runner: CallbackRunner, capture_output: bool, input: bytes | None,
                 check: bool, timeout: float | None, text: dict[str, Any] | None) -> None:
        self.args = args
        self.argv = argv
        self.future: OwnedFuture[subprocess.CompletedProcess[Any]] = OwnedFuture(runner)
        self.spawn_kwargs = spawn_kwargs
        self.check = check
        self.timeout = timeout
        self.text = text
        if input is None and spawn_kwargs.get("stdin") is subprocess.PIPE:
            input = b""  # a pipe, closed at once: as subprocess.run(stdin=PIPE) does
        self.input = memoryview(input) if input is not None else None
        self.written = 0  # how much of input the child has
        self.handle: ChildHandle | None = None
        self.kill_requested = False  # kill() came while the child was being started
        self.tree_killed = False  # settle once the tree is empty, not at the child's death
        self.deadline: float | None = None
        self.timed_out = False
        self.error: BaseException | None = None  # the job failed; resolves with this at the death
        self.open: dict[int, str] = {}  # our pipe ends still open -> "stdin" / "stdout" / "stderr"
        self.output: dict[str, list[bytes]] = {
            name: [] for name in ("stdout", "stderr")
            if capture_output or spawn_kwargs.get(name) is subprocess.PIPE
        }

    def wants_pipe(self, name: str) -> bool:
        return self.input is not None if name == "stdin" else name in self.output

    def decoded(self, name: str) -> bytes | str | None:
        if name not in self.output:
            return None
        data = b"".join(self.output[name])
        if self.text is None:
            return data
        # TextIOWrapper gives exactly subprocess's text mode: the encoding
        # (locale's by default), the errors policy and universal newlines;
        # and, like subprocess, UnicodeDecodeError for undecodable output.
        return io.TextIOWrapper(io.BytesIO(data), **self.text).read()

    def outcome(self) -> tuple[subprocess.CompletedProcess[Any] | None, BaseException | None]:
        """What the future resolves to, once the child is dead: (result, None) or (None, error)."""
        if self.error is not None:
            return None, self.error
        assert self.handle is not None
        death = self.handle.future
        lost = death.exception()
        if lost is not None:  # ReapedElsewhere: no status to report
            return None, lost
        returncode = death.result().returncode
        stdout, stderr = self.decoded("stdout"), self.decoded("stderr")
        if self.timed_out:
            assert self.timeout is not None
            return None, subprocess.TimeoutExpired(self.args, self.timeout, output=stdout, stderr=stderr)
        if self.check and returncode:
            return None, subprocess.CalledProcessError(returncode, self.args, stdout, stderr)
        return subprocess.CompletedProcess(self.args, cast(int, returncode), stdout, stderr), None


class CommandPool:
    """Run commands on a monitor, at most ``max_running`` at once.

    ``submit`` returns a ``Future[subprocess.CompletedProcess]``.  A queued
    future can be cancelled; a running one cannot (``Future.cancel`` returns
    False, as for an executor's running job), use :meth:`kill` for that.
    """

    def __init__(self, max_running: int | None = None, *, monitor: Monitor | None = None) -> None:
        if max_running is None:
            max_running = os.cpu_count() or 1
        if isinstance(max_running, bool) or not isinstance(max_running, int):
            raise TypeError("max_running must be an int")
        if max_running < 1:
            raise ValueError("max_running must be at least 1")
        self.max_running = max_running
        self._monitor = monitor
        self._lock = threading.Lock()
        # Guarded by _lock: the state, the loop, the queue, the running jobs and the deaths.
        # Only the pool thread changes _running, so it alone may also read it without _lock.
        self._state = _State.NEW
        self._loop: _Loop | None = None
        self._thread: threading.Thread | None = None
        self._queue: deque[_Job] = deque()
        self._running: dict[Future[Any], _Job] = {}
        self._dead: deque[_Job] = deque()
        # The pool thread's alone: its loop's epoll, and which job a registered pipe end
        # belongs to.
        self._epoll: select.epoll  # set when the thread starts
        self._by_fd: dict[int, _Job] = {}
        # The pool thread resolves the futures; user callbacks must not stall it.
        self._callbacks = CallbackRunner()

    # -- the Executor-shaped interface ------------------------------------------------

    def submit(
        self,
        args: Any,
        *,
        capture_output: bool = False,
        input: bytes | str | None = None,
        check: bool = False,
        timeout: float | None = None,
        shell: bool = False,
        **kwargs: Any,
    ) -> Future[subprocess.CompletedProcess[Any]]:
        """Queue ``args``; the keywords are ``subprocess.run``'s.

        ``input``, ``timeout``, the text options and the keyword names are
        checked here, before anything starts: a bad one raises ``TypeError``,
        ``ValueError`` or ``LookupError`` now.  The values of the spawn
        keywords are checked by ``Monitor.spawn`` when the command starts,
        and a bad one fails the future.  If the pool thread cannot be started (thread limit),
        ``RuntimeError`` is raised, nothing is queued, and a later submit
        tries again.
        """
        text = _text_options({k: kwargs.pop(k) for k in _TEXT_KEYWORDS & set(kwargs)})
        argv, spawn_kwargs = _spawn_options(args, shell, kwargs)
        if capture_output and ({"stdout", "stderr"} & set(spawn_kwargs)):
            raise ValueError("stdout and stderr arguments may not be used with capture_output.")
        if input is not None and "stdin" in spawn_kwargs:
            raise ValueError("stdin and input arguments may not both be used.")
        job = _Job(args, argv, spawn_kwargs, runner=self._callbacks, capture_output=capture_output,
                   input=_input_bytes(input, text), check=check, timeout=_check_timeout(timeout),
                   text=text)
        with self._lock:
            if self._state in (_State.SHUTTING_DOWN, _State.CLOSED):
                raise RuntimeError("cannot submit after shutdown")
            if self._state is _State.NEW:
                self._start_thread()
            self._queue.append(job)
            self._wake()
        return job.future

    def map(self, commands: Iterable[Any], *, timeout: float | None = None,
            **kwargs: Any) -> Iterator[subprocess.CompletedProcess[Any]]:
        """Like ``Executor.map``: results in submission order; ``timeout`` bounds the whole map."""
        deadline = None if timeout is None else time.monotonic() + timeout
        futures = [self.submit(command, **kwargs) for command in commands]

        def results() -> Iterator[subprocess.CompletedProcess[Any]]:
            try:
                for future in futures:
                    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                    yield future.result(remaining)
            finally:
                for future in futures:
                    future.cancel()

        return results()

    def kill(self, future: Future[Any]) -> bool:
        """Kill the command behind ``future`` (or cancel it, if still queued).

        Returns False if it had already finished.  The whole tree is
        killed, and the future resolves once it is empty, as the killed
        command's result (or ``CalledProcessError`` with ``check=True``).
        """
        if future.cancel():
            return True
        with self._lock:
            job = self._running.get(future)
            if job is None:
                return False
            if job.handle is None:
                job.kill_requested = True  # _start kills it as soon as it exists
                return True
        self._kill_job(job)  # outside _lock: see the lock order
        return True

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more commands; let queued and running ones finish.  Idempotent."""
        with self._lock:
            if cancel_futures:
                while self._queue:
                    self._queue.popleft().future.cancel()
            if self._state is _State.NEW:
                self._state = _State.CLOSED
            elif self._state is _State.RUNNING:
                self._state = _State.SHUTTING_DOWN
                self._wake()
            thread = self._thread
        if thread is None:
            self._callbacks.shutdown()
        elif wait and thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> CommandPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(wait=True)

    # -- the pool thread's life -----------------------------------------------------------

    def _start_thread(self) -> None:
        """With _lock held, in state NEW: make the loop and start the thread, or undo both."""
        loop = _Loop()
        thread = threading.Thread(target=self._run, args=(loop,), name="syncmon-pool", daemon=True)
        try:
            thread.start()
        except BaseException as error:
            loop.close()
            raise RuntimeError(f"CommandPool could not start its thread: {error}") from error
        self._loop, self._thread, self._state = loop, thread, _State.RUNNING

    def _wake(self) -> None:
        """With _lock held: wake the pool thread, if it still has a loop."""
        if self._loop is not None:
            os.eventfd_write(self._loop.wakeup, 1)

    def _run(self, loop: _Loop) -> None:
        self._epoll = loop.epoll
        try:
            while self._step(loop):
                pass
        except BaseException as error:
            # Not one job's fault (the per-job barriers caught those): no job
            # may be left unresolved, and the pool cannot go on.
            _logger.exception("CommandPool thread failed")
            self._abandon_all(error)
        finally:
            with self._lock:
                self._loop = None
                self._state = _State.CLOSED
            loop.close()
            self._callbacks.shutdown()

    def _step(self, loop: _Loop) -> bool:
        self._start_queued()
        with self._lock:
            if self._state is _State.SHUTTING_DOWN and not self._queue and not self._running:
                return False
        for fd, _ in loop.epoll.poll(self._next_timeout()):
            if fd == loop.wakeup:
                os.eventfd_read(loop.wakeup)
                continue
            job = self._by_fd.get(fd)
            if job is None:
                continue  # closed earlier in this batch, when its job failed
            # By the end's role, not the event bits: a write end whose reader
            # is gone reports EPOLLERR alone, and must not be read.
            step = self._feed if job.open[fd] == "stdin" else self._read
            self._guarded(job, step, job, fd)
        self._enforce_timeouts()
        self._finish_dead()
        return True

    def _guarded(self, job: _Job, step: Callable[..., object], *args: Any) -> None:
        """The exception barrier: ``step(*args)``; if it raises, fail ``job`` alone."""
        try:
            step(*args)
        except BaseException as error:
            self._fail(job, error)

    def _fail(self, job: _Job, error: BaseException) -> None:
        """The job goes wrong: close its pipes and kill its child; it resolves with
        ``error`` once the child is dead (and reaped by the monitor), at once if there is none."""
        if job.error is None:
            job.error = error
        for fd in list(job.open):
            self._close_pipe(job, fd)
        if job.handle is None:
            self._finish(job)
            return
        try:
            self._kill_job(job)  # a no-op if its death is known; the death then settles the job
        except OSError:
            pass  # reaped elsewhere: the death future is resolved, and with it the job

    def _abandon_all(self, error: BaseException) -> None:
        with self._lock:
            jobs = [*self._running.values(), *self._queue]
            self._queue.clear()
        for job in jobs:
            try:
                self._fail(job, error)
                self._finish(job)
            except BaseException:
                _logger.exception("CommandPool could not fail %r", job.args)

    # -- starting commands ----------------------------------------------------------------

    def _start_queued(self) -> None:
        while True:
            with self._lock:
                if not self._queue or len(self._running) >= self.max_running:
                    return
                job = self._queue.popleft()
                if not job.future.start():
                    continue  # cancelled while queued
                self._running[job.future] = job
            self._guarded(job, self._start, job)

    def _start(self, job: _Job) -> None:
        monitor = self._monitor if self._monitor is not None else default_monitor()
        kwargs = dict(job.spawn_kwargs)
        theirs: list[int] = []  # child ends, closed here once the child has them
        try:
            for name in _STREAMS:
                if job.wants_pipe(name):
                    read_end, write_end = os.pipe2(os.O_CLOEXEC)
                    mine, child = (write_end, read_end) if name == "stdin" else (read_end, write_end)
                    job.open[mine] = name
                    theirs.append(child)
                    kwargs[name] = child
            handle = monitor.spawn(job.argv, tree=True, **kwargs)
        finally:
            for fd in theirs:
                os.close(fd)
        with self._lock:
            job.handle = handle
            kill_now = job.kill_requested
        # First, so that whatever fails from here on, the death settles the job.
        handle.future.add_done_notifier(lambda _: self._on_death(job))
        if kill_now:
            self._kill_job(job)
        if job.timeout is not None and math.isfinite(job.timeout):
            job.deadline = time.monotonic() + job.timeout
        for fd, name in list(job.open.items()):
            os.set_blocking(fd, False)
            self._epoll.register(fd, select.EPOLLOUT if name == "stdin" else select.EPOLLIN)
            self._by_fd[fd] = job

    def _kill_job(self, job: _Job) -> None:
        """Kill the job's whole tree; the job settles once the tree is empty, so
        that no process of it is left when its result arrives."""
        tree = job.handle.tree if job.handle is not None else None
        assert tree is not None  # every command runs as a tree
        job.tree_killed = True
        tree.future.add_done_notifier(lambda _: self._on_death(job))
        tree.kill()

    def _on_death(self, job: _Job) -> None:
        # A notifier: runs in the resolving thread, under the handle's lock.
        with self._lock:
            self._dead.append(job)
            self._wake()

    # -- pipes ----------------------------------------------------------------------------

    def _read(self, job: _Job, fd: int) -> None:
        try:
            data = os.read(fd, _CHUNK)
        except BlockingIOError:
            return
        if data:
            self._output(job, fd).append(data)
        else:
            self._close_pipe(job, fd)

    @staticmethod
    def _output(job: _Job, fd: int) -> list[bytes]:
        return job.output[job.open[fd]]

    def _feed(self, job: _Job, fd: int) -> None:
        assert job.input is not None
        try:
            job.written += os.write(fd, job.input[job.written:job.written + _CHUNK])
        except BlockingIOError:
            return
        except BrokenPipeError:
            job.written = len(job.input)  # the child stopped reading: as subprocess, not an error
        if job.written >= len(job.input):
            self._close_pipe(job, fd)

    def _close_pipe(self, job: _Job, fd: int) -> None:
        """Close one of our ends, unregistered first: a copy of it in a child that
        another thread is forking would keep it in the epoll under a number
        we may soon reuse."""
        del job.open[fd]
        if self._by_fd.pop(fd, None) is not None:  # registered
            self._epoll.unregister(fd)
        os.close(fd)

    # -- timeouts and deaths --------------------------------------------------------------

    def _next_timeout(self) -> float:
        deadlines = [job.deadline for job in self._running.values()
                     if job.deadline is not None and not job.timed_out]
        if not deadlines:
            return -1
        return min(_MAX_POLL_SECONDS, max(0.0, min(deadlines) - time.monotonic()))

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        for job in list(self._running.values()):
            if job.deadline is not None and not job.timed_out and now >= job.deadline:
                job.timed_out = True
                assert job.handle is not None
                self._guarded(job, self._kill_job, job)  # as subprocess.run: kill, then resolve

    def _finish_dead(self) -> None:
        """Settle jobs whose child is dead.

        Normally their pipes are drained to EOF first; a grandchild that keeps
        them open holds the result back, exactly as in ``subprocess.run``.
        A job that timed out or failed is settled at the death of its child
        with the output read so far, as ``subprocess.run`` does on POSIX
        after a timeout: a grandchild cannot hold back its result.
        """
        with self._lock:
            dead, self._dead = self._dead, deque()
        for job in dead:
            cut_short = job.timed_out or job.error is not None
            if job.tree_killed and not _tree_done(job):
                continue  # killed: the tree's end brings it back
            if not cut_short and any(name != "stdin" for name in job.open.values()):
                with self._lock:
                    self._dead.append(job)  # its pipes report EOF later, and it is looked at again
                continue
            for fd in list(job.open):
                self._close_pipe(job, fd)  # stdin the child never read, or cut short
            self._finish(job)

    def _finish(self, job: _Job) -> None:
        """Resolve the job's future and free its slot; its pipes are closed."""
        with self._lock:
            self._running.pop(job.future, None)
        if job.future.done():
            return
        try:
            result, error = job.outcome()
        except BaseException as failure:  # undecodable output, or a bug: the job's own failure
            result, error = None, failure
        if error is not None:
            job.future.fail(error)
        else:
            job.future.resolve(result)


def _tree_done(job: _Job) -> bool:
    return job.handle is None or job.handle.tree is None or job.handle.tree.future.done()


def _spawn_options(args: Any, shell: bool, kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The argv and ``Monitor.spawn`` keywords of one command, checked at submit.

    ``SpawnOptions.parse`` checks them now, so a bad one is refused by
    ``submit`` rather than failing the future later; ``PIPE`` stands for a
    pipe made at start, and is checked as "inherit".  Keywords of
    ``subprocess.run`` other than the spawn ones (``preexec_fn``, ``user``,
    ``executable``, ...) need subprocess's fork path and are refused.
    """
    unknown = set(kwargs) - SPAWN_KEYWORDS
    if unknown:
        raise TypeError(f"CommandPool.submit() does not support {', '.join(sorted(unknown))}")
    argv = ["/bin/sh", "-c", *as_command(args)] if shell else as_command(args)
    as_inherited: dict[str, Any] = {k: None if v is subprocess.PIPE else v for k, v in kwargs.items()}
    SpawnOptions.parse(argv, **as_inherited)
    return argv, dict(kwargs)


def _text_options(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """TextIOWrapper's arguments for text mode, or None; an unknown codec or
    error handler raises LookupError here, as it would in subprocess.Popen."""
    encoding, errors = options.get("encoding"), options.get("errors")
    if encoding is not None:
        codecs.lookup(encoding)
    if errors is not None:
        codecs.lookup_error(errors)
    if not (options.get("text") or options.get("universal_newlines") or encoding or errors):
        return None
    return {"encoding": encoding, "errors": errors}


def _input_bytes(data: Any, text: dict[str, Any] | None) -> bytes | None:
    if data is None:
        return None
    if isinstance(data, str):
        if text is None:
            raise TypeError("input must be bytes (or text=True for a str)")
        return data.encode(text["encoding"] or locale.getpreferredencoding(False), text["errors"] or "strict")
    try:
        return memoryview(data).tobytes() if not isinstance(data, bytes) else data
    except TypeError:
        raise TypeError(f"input must be bytes-like or str, not {type(data).__name__}") from None


def _check_timeout(timeout: Any) -> float | None:
    """None, or a non-negative number of seconds; ``math.inf`` waits as long as None."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if math.isnan(timeout):
        raise ValueError("timeout must not be NaN")
    if timeout < 0:
        raise ValueError("timeout must be non-negative")
    return float(timeout)
