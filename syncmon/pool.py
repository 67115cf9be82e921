"""``CommandPool``: run many commands, at most N at a time, as futures of ``CompletedProcess``.

The shape of a ``concurrent.futures.Executor``, for commands instead of
callables.  One pool thread does all the work that is not waiting for
deaths: it starts queued commands when a slot frees, feeds ``input=``,
reads every captured pipe of every running command through one epoll, and
enforces timeouts.  Deaths come from the children's futures (the monitor
thread).  So 10,000 commands need no more threads than 10: the pool's own
thread, the monitor thread and the small callback pool.
"""

from __future__ import annotations

import io
import locale
import os
import select
import subprocess
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Iterable, Iterator, Mapping

from .child import ChildHandle
from .futures import CallbackRunner, DeferringFuture
from .monitor import Monitor, default_monitor
from .launch import as_command

_CHUNK = 65536

#: Keywords of ``subprocess.run`` that ``submit`` accepts.  Others (``preexec_fn``,
#: ``user``, ``executable``, ...) need subprocess's fork path and are refused.
_SPAWN_KEYWORDS = frozenset(
    {"env", "cwd", "stdin", "stdout", "stderr", "start_new_session", "process_group", "pass_fds"}
)
_TEXT_KEYWORDS = frozenset({"text", "universal_newlines", "encoding", "errors"})


class _Job:
    """One command: its future, its child once started, and its captured output."""

    def __init__(
        self,
        args: Any,
        future: Future[subprocess.CompletedProcess[Any]],
        spawn_kwargs: dict[str, Any],
        *,
        capture_output: bool,
        input: bytes | str | None,
        check: bool,
        timeout: float | None,
        text: dict[str, Any] | None,
    ) -> None:
        self.args = args
        self.future = future
        self.spawn_kwargs = spawn_kwargs
        self.capture_output = capture_output
        self.input = input
        self.check = check
        self.timeout = timeout
        self.text = text
        self.handle: ChildHandle | None = None
        self.kill_requested = False  # kill() came while the child was being started
        self.deadline: float | None = None
        self.timed_out = False
        self.pipes: dict[int, str] = {}  # our end's fd -> "stdin" / "stdout" / "stderr"
        self.output: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        self.pending_input = b""

    def decoded(self, name: str) -> bytes | str | None:
        if name not in self.output or not self._captured(name):
            return None
        data = b"".join(self.output[name])
        if self.text is None:
            return data
        # TextIOWrapper gives exactly subprocess's text mode: the encoding
        # (locale's by default), the errors policy and universal newlines.
        return io.TextIOWrapper(io.BytesIO(data), **self.text).read()

    def _captured(self, name: str) -> bool:
        return self.capture_output or self.spawn_kwargs.get(name) is subprocess.PIPE


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
        self._queue: deque[_Job] = deque()
        self._running: dict[Future[Any], _Job] = {}
        self._dead: deque[_Job] = deque()
        self._shutdown = False
        self._thread: threading.Thread | None = None
        self._epoll = select.epoll()
        self._wakeup = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._epoll.register(self._wakeup, select.EPOLLIN)
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
        """Queue ``args``; the keywords are ``subprocess.run``'s."""
        unknown = set(kwargs) - _SPAWN_KEYWORDS - _TEXT_KEYWORDS
        if unknown:
            raise TypeError(f"CommandPool.submit() does not support {', '.join(sorted(unknown))}")
        if capture_output and ({"stdout", "stderr"} & set(kwargs)):
            raise ValueError("stdout and stderr arguments may not be used with capture_output.")
        if input is not None and "stdin" in kwargs:
            raise ValueError("stdin and input arguments may not both be used.")
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be non-negative")
        text = _text_options({k: kwargs.pop(k) for k in _TEXT_KEYWORDS & set(kwargs)})
        argv = ["/bin/sh", "-c", *as_command(args)] if shell else as_command(args)
        future: Future[subprocess.CompletedProcess[Any]] = DeferringFuture(self._callbacks)
        job = _Job(args, future, kwargs, capture_output=capture_output, input=input,
                   check=check, timeout=timeout, text=text)
        job.spawn_kwargs["argv"] = argv
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
            self._queue.append(job)
            self._start_thread()
        self._wake()
        return future

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

        Returns False if it had already finished.  The future then resolves
        as the killed command's result (or ``CalledProcessError`` with
        ``check=True``), like any other death.
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
        job.handle.kill()
        return True

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while self._queue:
                    self._queue.popleft().future.cancel()
            thread = self._thread
        self._wake()
        if thread is None:
            self._close()
        elif wait:
            thread.join()

    def __enter__(self) -> CommandPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(wait=True)

    # -- the pool thread ----------------------------------------------------------------

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="syncmon-pool", daemon=True)
            self._thread.start()

    def _wake(self) -> None:
        os.eventfd_write(self._wakeup, 1)

    def _run(self) -> None:
        try:
            while self._step():
                pass
        finally:
            self._close()

    def _close(self) -> None:
        self._epoll.close()
        os.close(self._wakeup)
        self._callbacks.shutdown()

    def _step(self) -> bool:
        self._start_queued()
        with self._lock:
            if self._shutdown and not self._queue and not self._running:
                return False
        for fd, events in self._epoll.poll(self._next_timeout()):
            if fd == self._wakeup:
                os.eventfd_read(self._wakeup)
            elif events & select.EPOLLOUT:
                self._feed(fd)
            else:
                self._read(fd)
        self._enforce_timeouts()
        self._finish_dead()
        return True

    def _start_queued(self) -> None:
        while True:
            with self._lock:
                if not self._queue or len(self._running) >= self.max_running:
                    return
                job = self._queue.popleft()
                if not job.future.set_running_or_notify_cancel():
                    continue  # cancelled while queued
                self._running[job.future] = job
            self._start(job)

    def _start(self, job: _Job) -> None:
        monitor = self._monitor if self._monitor is not None else default_monitor()
        kwargs = dict(job.spawn_kwargs)
        argv = kwargs.pop("argv")
        ours: list[int] = []  # parent ends of pipes
        theirs: list[int] = []  # child ends, closed here once the child has them
        try:
            for name in ("stdin", "stdout", "stderr"):
                wants_pipe = kwargs.get(name) is subprocess.PIPE or (
                    name == "stdin" and job.input is not None
                ) or (name != "stdin" and job.capture_output)
                if wants_pipe:
                    read_end, write_end = os.pipe2(os.O_CLOEXEC)
                    mine, child = (write_end, read_end) if name == "stdin" else (read_end, write_end)
                    ours.append(mine)
                    theirs.append(child)
                    kwargs[name] = child
                    job.pipes[mine] = name
            handle = monitor.spawn(argv, **kwargs)
        except BaseException as error:
            for fd in ours:
                os.close(fd)
            job.pipes.clear()
            with self._lock:
                del self._running[job.future]
            job.future.set_exception(error)
            return
        finally:
            for fd in theirs:
                os.close(fd)
        with self._lock:
            job.handle = handle
            kill_now = job.kill_requested
        if kill_now:
            handle.kill()
        if job.timeout is not None:
            job.deadline = time.monotonic() + job.timeout
        for fd, name in job.pipes.items():
            os.set_blocking(fd, False)
            self._by_fd[fd] = job
            if name == "stdin":
                job.pending_input = _encode_input(job.input, job.text)
                self._epoll.register(fd, select.EPOLLOUT)
            else:
                self._epoll.register(fd, select.EPOLLIN)
        handle.future.add_done_callback(lambda _: self._on_death(job))

    def _on_death(self, job: _Job) -> None:
        # Runs on a syncmon callback thread: hand the job over and wake the pool.
        self._dead.append(job)
        self._wake()

    def _read(self, fd: int) -> None:
        job = self._by_fd[fd]
        try:
            data = os.read(fd, _CHUNK)
        except BlockingIOError:
            return
        if data:
            job.output[job.pipes[fd]].append(data)
        else:
            self._close_pipe(fd)

    def _feed(self, fd: int) -> None:
        job = self._by_fd[fd]
        try:
            written = os.write(fd, job.pending_input[:_CHUNK])
        except BlockingIOError:
            return
        except BrokenPipeError:
            written = len(job.pending_input)  # the child stopped reading: as subprocess, not an error
        job.pending_input = job.pending_input[written:]
        if not job.pending_input:
            self._close_pipe(fd)

    def _close_pipe(self, fd: int) -> None:
        self._epoll.unregister(fd)
        os.close(fd)
        del self._by_fd[fd]

    def _next_timeout(self) -> float:
        deadlines = [job.deadline for job in self._running.values()
                     if job.deadline is not None and not job.timed_out]
        if not deadlines:
            return -1
        return max(0.0, min(deadlines) - time.monotonic())

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        for job in list(self._running.values()):
            if job.deadline is not None and not job.timed_out and now >= job.deadline:
                # As subprocess.run: kill, then collect what the child had written.
                job.timed_out = True
                assert job.handle is not None
                job.handle.kill()

    def _finish_dead(self) -> None:
        """Resolve jobs whose child is dead; their pipes are drained to EOF first.

        A pipe reaches EOF once every writer is gone; a grandchild that keeps
        it open holds the result back, exactly as it does in ``subprocess.run``.
        """
        waiting = deque()
        while self._dead:
            job = self._dead.popleft()
            reading = [fd for fd, name in job.pipes.items() if name != "stdin"]
            if any(fd in self._by_fd for fd in reading):
                waiting.append(job)
                continue
            for fd in list(job.pipes):
                if fd in self._by_fd:
                    self._close_pipe(fd)  # stdin the child never read
            with self._lock:
                del self._running[job.future]
            _resolve(job)
        self._dead.extend(waiting)


def _text_options(options: Mapping[str, Any]) -> dict[str, Any] | None:
    if not (options.get("text") or options.get("universal_newlines")
            or options.get("encoding") or options.get("errors")):
        return None
    return {"encoding": options.get("encoding"), "errors": options.get("errors")}


def _encode_input(data: bytes | str | None, text: dict[str, Any] | None) -> bytes:
    if data is None:
        return b""
    if isinstance(data, str):
        if text is None:
            raise TypeError("input must be bytes unless text mode is on")
        return data.encode(text["encoding"] or locale.getpreferredencoding(False), text["errors"] or "strict")
    return bytes(data)


def _resolve(job: _Job) -> None:
    assert job.handle is not None
    death = job.handle.future
    if death.exception() is not None:  # ReapedElsewhere: no status to report
        job.future.set_exception(death.exception())  # type: ignore[arg-type]
        return
    returncode = death.result().returncode
    stdout, stderr = job.decoded("stdout"), job.decoded("stderr")
    if job.timed_out:
        job.future.set_exception(
            subprocess.TimeoutExpired(job.args, job.timeout or 0, output=stdout, stderr=stderr)
        )
    elif job.check and returncode:
        job.future.set_exception(subprocess.CalledProcessError(returncode, job.args, stdout, stderr))
    else:
        job.future.set_result(subprocess.CompletedProcess(job.args, returncode, stdout, stderr))
