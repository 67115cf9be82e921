"""``ForkServer``: a helper process whose every creation is *our* child.

The seed design's second idea.  A single-threaded server process that we
start (through our monitor, so it is watched too) creates processes with
``clone3(CLONE_PARENT | CLONE_PIDFD)``: their parent is us, not the server.
Each one is reported back with a pidfd opened by the kernel at its birth, and
becomes a :class:`ChildHandle` of our one monitor: reaped by our own
``waitid(P_PIDFD)``, with its true status, never relayed by the server.  Our
own (large, multithreaded) process is never forked.

Protocol and failure handling are in ``_forkserver_wire.py``; the server's
side is ``_forkserver_main.py``; the ``clone3`` itself is ``_clone.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
from typing import Any, Callable, Iterable, Mapping, Sequence

from . import _forkserver_wire as wire
from ._clone import clone3_missing
from ._forkserver_main import BOOT
from .child import ChildHandle
from .launch import SpawnOptions, StrOrBytesPath, as_command
from .monitor import Monitor, default_monitor


class ForkServerError(RuntimeError):
    """The fork server could not start, or died before it served a request.

    A request that fails so created no process (or one that was reaped
    already); the next request starts a new server.
    """


# --- spawn options ----------------------------------------------------------------
# A stand-in for syncmon.launch.SpawnOptions, behind the one function that
# the real thing replaces.

@dataclasses.dataclass(frozen=True)
class _SpawnOptions:
    argv: tuple[bytes, ...]
    env: tuple[bytes, ...] | None
    cwd: bytes | None
    stdin: int | None
    stdout: int | None
    stderr: int | None
    start_new_session: bool
    process_group: int | None
    pass_fds: tuple[int, ...]


def _wire_options(parsed: SpawnOptions) -> _SpawnOptions:
    """The request's form of options ``SpawnOptions.parse`` already checked."""
    stdin, stdout, stderr = parsed.streams
    return _SpawnOptions(
        argv=parsed.argv,
        env=parsed.env,
        cwd=parsed.cwd,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=parsed.start_new_session,
        process_group=parsed.process_group,
        pass_fds=parsed.pass_fds,
    )


# --- requests -----------------------------------------------------------------------

class _Request:
    """The body and descriptors of one request, built before anything is sent.

    The descriptors are the caller's own (never closed here) except the far
    end of the reply channel, made here and closed once sent.
    """

    def __init__(self, kind: str, cgroup_fd: int | None, streams: Sequence[int | None]) -> None:
        if cgroup_fd is not None and (isinstance(cgroup_fd, bool) or not isinstance(cgroup_fd, int)):
            raise TypeError("cgroup_fd must be a descriptor number")
        self.fds: list[int] = []
        self.body: dict[str, Any] = {
            "kind": kind,
            "cgroup": None if cgroup_fd is None else self.add(cgroup_fd),
            "stdio": [self._stream(target, source) for target, source in enumerate(streams)],
        }

    def add(self, fd: int) -> int:
        os.fstat(fd)  # EBADF here, in the caller, rather than in the server
        self.fds.append(fd)
        return len(self.fds) - 1

    def _stream(self, target: int, source: int | None) -> Any:
        if source == subprocess.DEVNULL:
            return "devnull"
        if source == subprocess.STDOUT:
            return "stdout"
        if source is None:
            # Not the server's stdio but ours now, as a child of ours would have.
            try:
                os.fstat(target)
            except OSError:
                return "closed"
            source = target
        return self.add(source)


def _spawn_request(options: _SpawnOptions, cgroup_fd: int | None) -> _Request:
    request = _Request("spawn", cgroup_fd, (options.stdin, options.stdout, options.stderr))
    room = wire.MAX_FDS - len(request.fds) - 1  # the reply channel travels too
    if len(options.pass_fds) > room:
        raise ValueError(f"this request can pass at most {room} pass_fds (one message of SCM_RIGHTS)")
    env = options.env
    if env is None:  # our environment now, as Monitor.spawn passes it
        env = tuple(key + b"=" + value for key, value in os.environb.items())
    request.body.update(
        argv=list(options.argv),
        env=list(env),
        cwd=options.cwd,
        setsid=options.start_new_session,
        pgroup=options.process_group,
    )
    request.body["pass"] = [(request.add(fd), fd) for fd in options.pass_fds]
    return request


def _fork_request(call: bytes, cgroup_fd: int | None) -> _Request:
    request = _Request("fork", cgroup_fd, (None, None, None))
    request.body["call"] = call
    return request


# --- the server ---------------------------------------------------------------------

class ForkServer:
    """A single-threaded helper process that starts processes as *our* children.

    ``spawn(argv, **options)`` execs a program (the options of
    ``Monitor.spawn``); ``fork(fn, *args, **kwargs)`` runs ``fn`` in a fresh
    copy of the server, which has imported ``preload`` once.  Both return a
    :class:`ChildHandle` of ``monitor`` (default: the process-wide one).

    Thread-safe: any number of threads may call ``spawn``/``fork`` at once.
    If the server dies, the requests it had not served raise
    :class:`ForkServerError` and the next request starts a new server;
    children already made are unaffected.  ``close()`` ends the server and
    never its children.
    """

    def __init__(self, preload: Iterable[str] = (), *, monitor: Monitor | None = None) -> None:
        missing = clone3_missing()
        if missing is not None:
            raise OSError(f"syncmon.ForkServer needs clone3 (Linux 5.5+): {missing}")
        self._preload = [str(name) for name in preload]
        self._owner = os.getpid()  # the process whose children the server makes
        self._monitor = monitor if monitor is not None else default_monitor()
        # _lock guards _server/_socket and orders the messages of one request.
        self._lock = threading.Lock()
        self._closed = False
        self._server: ChildHandle | None = None
        self._socket: socket.socket | None = None
        with self._lock:
            self._start()

    @property
    def pid(self) -> int | None:
        """The server's pid now (None when it is not running)."""
        server = self._server
        return None if server is None else server.pid

    def spawn(
        self,
        argv: StrOrBytesPath | Sequence[StrOrBytesPath],
        *,
        tree: bool = False,
        **options: Any,
    ) -> ChildHandle:
        """Start ``argv`` as our child; the options mean what they mean to ``Monitor.spawn``.

        A program that cannot be executed raises the ``OSError`` of its exec
        (``FileNotFoundError``, ``PermissionError``, ...), with the failed
        child already reaped.  ``tree=True``: the child and everything it
        starts are one :class:`~syncmon.ProcessTree` (``handle.tree``).
        """
        if not isinstance(tree, bool):
            raise TypeError(f"tree must be True or False, not {type(tree).__name__}")
        request = SpawnOptions.parse(argv, **options)
        if tree:
            from .tree import spawn_tree

            return spawn_tree(self._monitor, request, as_command(argv), server=self)
        handle = self.spawn_parsed(request)
        handle.command = as_command(argv)  # for check()'s UncleanExit, as Monitor.spawn's
        return handle

    def spawn_parsed(self, request: SpawnOptions, *, cgroup_fd: int | None = None) -> ChildHandle:
        """:meth:`spawn` with options already parsed; ``cgroup_fd`` (for process
        trees): a cgroup2 directory the child is born in (``CLONE_INTO_CGROUP``)."""
        parsed = _wire_options(request)
        paths = {"exec": os.fsdecode(parsed.argv[0])}
        if parsed.cwd is not None:
            paths["cwd"] = os.fsdecode(parsed.cwd)
        return self._request(_spawn_request(parsed, cgroup_fd), paths)

    def fork(self, function: Callable[..., object], /, *args: Any, **kwargs: Any) -> ChildHandle:
        """Run ``function(*args, **kwargs)`` in a fresh copy of the server.

        The child exits 0 when the call returns, 1 after printing the
        traceback when it raises, or as ``sys.exit``/``os._exit`` says.  The
        call is pickled here (so what cannot be pickled raises here) and
        loaded in the child; a call the child cannot load (a function of
        ``__main__``, a module the server cannot import) raises
        ``ForkServerError`` with the child's traceback.
        """
        return self._fork(function, args, kwargs, None)

    def _fork(self, function: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any],
              cgroup_fd: int | None) -> ChildHandle:
        """``fork`` with the internal ``cgroup_fd`` (kept out of the call's keywords)."""
        if not callable(function):
            raise TypeError(f"fork() needs a callable, not {type(function).__name__}")
        call = pickle.dumps((function, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        return self._request(_fork_request(call, cgroup_fd), {})

    def close(self) -> None:
        """End the server (it exits when its request socket closes) and reap it.

        The children it made are ours and carry on; their handles still work.
        """
        with self._lock:
            self._closed = True
            self._stop()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ForkServer pid={self.pid} preload={self._preload!r}{' closed' if self._closed else ''}>"

    # --- the server's life; call with _lock held --------------------------------------

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with theirs:
                server = self._monitor.spawn(
                    [sys.executable, "-c", BOOT, json.dumps(sys.path), str(theirs.fileno()), *self._preload],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=[theirs.fileno()],
                )
            try:
                message, fds = wire.recv_message(ours)
                wire.close_all(fds)
                if message is None or message[0] != wire.READY:
                    detail = "it exited" if message is None else message[1]
                    raise ForkServerError(f"the fork server did not start: {detail}")
            except BaseException:
                server.kill()
                server.wait()
                raise
        except BaseException:
            ours.close()
            raise
        self._server, self._socket = server, ours

    def _stop(self) -> None:
        sock, server, self._socket, self._server = self._socket, self._server, None, None
        if sock is not None:
            sock.close()
        if server is not None:
            server.wait()

    def _send(self, request: _Request) -> socket.socket:
        """Send ``request`` (starting a server if none runs); return our end of its channel."""
        mine, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with far:
                request.body["channel"] = request.add(far.fileno())
                body = pickle.dumps(request.body, protocol=pickle.HIGHEST_PROTOCOL)
                with self._lock:
                    self._send_locked(body, request.fds)
        except BaseException:
            mine.close()
            raise
        return mine

    def _send_locked(self, body: bytes, fds: list[int]) -> None:
        """Send to a live server, starting one if there is none.

        A server found dead on sending (EPIPE) has received nothing of this
        request, so nothing was made for it: it is sent once more to a new
        server.  Any other failure in the middle leaves half a request,
        which would be read as the start of the next: that server is done
        with (it exits at end-of-file).
        """
        if self._closed:
            raise RuntimeError("this ForkServer is closed")
        for attempt in range(2):
            if self._socket is None or self._server is None or self._server.poll() is not None:
                self._stop()
                self._start()
            assert self._socket is not None
            try:
                wire.send_request(self._socket, body, fds)
                return
            except (BrokenPipeError, ConnectionResetError) as error:
                self._stop()
                if attempt:
                    raise ForkServerError("the fork server died before it received the request") from error
            except BaseException:
                self._stop()
                raise

    def _request(self, request: _Request, paths: dict[str, str]) -> ChildHandle:
        if os.getpid() != self._owner:
            # The server's children are its parent's children: made for a fork
            # child of ours, they would be our parent's, watched by nobody.
            raise RuntimeError("this ForkServer was made before fork(); make a new one in the child")
        with self._send(request) as channel:
            return _Reply(self._monitor).collect(channel, paths)


#: How long an interrupted request still listens for the child made for it.
_DRAIN_SECONDS = 5.0


class _Reply:
    """What one request's channel says, read to its end."""

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor
        self.handle: ChildHandle | None = None
        self.failure: tuple[Any, ...] | None = None

    def collect(self, channel: socket.socket, paths: dict[str, str]) -> ChildHandle:
        try:
            self._read_to_end(channel)
        except BaseException:
            # Interrupted (KeyboardInterrupt): the caller gets no handle, so a
            # child made for it must not outlive this call.  Read on, for a
            # bounded time (the server reports within milliseconds, or is
            # dead and the channel ends), to learn of it; then kill and reap it.
            try:
                channel.settimeout(_DRAIN_SECONDS)
                self._read_to_end(channel)
            except BaseException:
                pass  # the first exception is the one the caller must see
            if self.handle is not None and self.handle.poll() is None:
                self.handle.kill()
                self.handle.wait()
            raise
        return self._outcome(paths)

    def _read_to_end(self, channel: socket.socket) -> None:
        while True:
            message, fds = wire.recv_message(channel)
            if message is None:
                return
            self._take(message, fds)

    def _take(self, message: tuple[Any, ...], fds: list[int]) -> None:
        tag = message[0]
        if tag != wire.BORN:
            wire.close_all(fds)
            self.failure = message
            return
        # At EMFILE the kernel drops the pidfd from the message (MSG_CTRUNC):
        # the child is still our unreaped child, so its pid is still its own,
        # and it is adopted by pid (watched through SIGCHLD if no pidfd can be had).
        pidfd = fds[0] if fds else None  # recv_message takes one at most
        if self.handle is not None:  # the second report of the same child
            wire.close_all(fds[:1])
        elif self._monitor.pidfd and pidfd is not None:
            self.handle = self._monitor.adopt(message[1], pidfd=pidfd)
        else:
            wire.close_all(fds[:1])
            self.handle = self._monitor.adopt(message[1])

    def _outcome(self, paths: dict[str, str]) -> ChildHandle:
        """The handle, or the error the caller gets (with the failed child reaped)."""
        failure, handle = self.failure, self.handle
        if failure is None and handle is not None:
            return handle
        if handle is not None:
            handle.wait()  # it is exiting (127 or 1) after its report
        if failure is None:
            raise ForkServerError("the fork server died before it served the request")
        tag = failure[0]
        if tag == wire.LOAD_FAILED:
            raise ForkServerError(f"the child could not start:\n{failure[1]}")
        err = failure[1]
        filename = paths.get(failure[2]) if tag == wire.EXEC_FAILED else None
        raise OSError(err, os.strerror(err), *((filename,) if filename is not None else ()))
