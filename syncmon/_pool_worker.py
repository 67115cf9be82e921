"""What runs in a :class:`syncmon.ProcessPoolExecutor` worker, and the wire both sides speak.

A worker is a fork child of the pool's ``ForkServer`` (so it is *our* child,
watched through a pidfd from birth).  The fork server cannot hand it a
descriptor of ours, so the worker connects back to the pool's listening
socket (an abstract-namespace ``AF_UNIX`` address, which leaves no file
behind) and proves who it is with a one-time token the pool made for it.

Frames, both ways: an 8-byte big-endian length, then a pickle.  Pool to
worker: ``(task_id, call_bytes)``, the call pickled once by ``submit`` in the
caller's thread.  Worker to pool: first the raw token (``TOKEN_SIZE`` bytes,
unframed: nothing from an unproven peer is ever unpickled), then ``(READY,)`` or
``(INIT_FAILED, traceback_text)``, then ``(task_id, ok, value)`` per task.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import socket
import struct
import sys
import traceback
from multiprocessing.process import current_process
from typing import Any, Callable, Iterable, Sequence

HEADER = struct.Struct("!Q")
READY, INIT_FAILED = -1, -2
TOKEN_SIZE = 16


def frame(message: object) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


# --- exceptions that carry their traceback across -----------------------------------

def _rebuild(error: BaseException, text: str) -> BaseException:
    """Runs in the pool's process, at unpickling.  The cause is the stdlib's own
    ``_RemoteTraceback`` (its text in ``.tb``), so that code written for the
    stdlib pool reads it as it always did."""
    from concurrent.futures.process import _RemoteTraceback

    error.__cause__ = _RemoteTraceback(text)  # type: ignore[arg-type]  # typeshed says a traceback; the stdlib passes this text
    return error


class _WithTraceback:
    """Pickles as ``error`` with the worker's formatted traceback as its cause.

    (The traceback object itself cannot be pickled; its text can.)
    """

    def __init__(self, error: BaseException) -> None:
        self.error = error
        lines = traceback.format_exception(type(error), error, error.__traceback__)
        self.text = '\n"""\n' + "".join(lines) + '"""'

    def __reduce__(self) -> tuple[Callable[..., BaseException], tuple[BaseException, str]]:
        return _rebuild, (self.error, self.text)


def _failure(task_id: int, error: BaseException) -> bytes:
    """The frame for a failed task; an exception that cannot be pickled is
    described instead of lost (the worker must carry on either way)."""
    try:
        return frame((task_id, False, _WithTraceback(error)))
    except Exception as pickling_error:
        stand_in = RuntimeError(f"the task raised {error!r}, which could not be pickled: {pickling_error!r}")
        stand_in.__traceback__ = error.__traceback__
        return frame((task_id, False, _WithTraceback(stand_in)))


# --- map's chunks -------------------------------------------------------------------

class ChunkRunner:
    """One task of ``map(chunksize=n)``: ``fn`` over up to n argument tuples
    (a class, since a closure could not be pickled)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, chunk: Sequence[tuple[Any, ...]]) -> list[Any]:
        return [self.fn(*args) for args in chunk]


# --- the worker ---------------------------------------------------------------------

def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return bytes(buffer)


def _recv(sock: socket.socket) -> Any:
    header = _recv_exactly(sock, HEADER.size)
    if header is None:
        return None
    body = _recv_exactly(sock, HEADER.unpack(header)[0])
    return None if body is None else pickle.loads(body)


def _load_main(main: tuple[str | None, str | None]) -> None:
    """Make the pool's ``__main__`` importable here, as multiprocessing's
    spawn does, so functions defined in a script can be submitted.  Its
    ``if __name__ == "__main__"`` block does not run (the name differs)."""
    spec_name, path = main
    if spec_name is not None:
        module = importlib.import_module(spec_name)
    elif path is not None:
        spec = importlib.util.spec_from_file_location("__mp_main__", path)
        if spec is None or spec.loader is None:
            return
        module = importlib.util.module_from_spec(spec)
        sys.modules["__mp_main__"] = module
        spec.loader.exec_module(module)
    else:
        return
    sys.modules["__main__"] = module


def serve(address: bytes, token: bytes, new_session: bool, main: tuple[str | None, str | None],
          authkey: bytes, initializer: Callable[..., object] | None, initargs: Iterable[Any],
          max_tasks: int | None) -> None:
    """The worker's life: connect, say who we are, initialize, run tasks until
    the pool closes its end or ``max_tasks`` are done; then return (exit 0).

    A pool that went away meanwhile (it shut down while we started) shows as
    a refused connection or a broken pipe: nobody is left to tell, so the
    worker just exits."""
    if new_session:
        # Without a cgroup, the worker's tree is its session (see ProcTree).
        os.setsid()
    # multiprocessing's children share their parent's authkey, and its
    # Manager proxies (passed as arguments) authenticate with it.
    current_process().authkey = authkey
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address)
        sock.sendall(token)
        _initialize(sock, main, initializer, initargs)
        done = 0
        while max_tasks is None or done < max_tasks:
            message = _recv(sock)
            if message is None:
                return  # the pool is done with us
            task_id, call = message
            sock.sendall(_run_task(task_id, call))
            done += 1
    except (ConnectionRefusedError, BrokenPipeError, ConnectionResetError):
        return


def _initialize(sock: socket.socket, main: tuple[str | None, str | None],
                initializer: Callable[..., object] | None, initargs: Iterable[Any]) -> None:
    try:
        _load_main(main)
        if initializer is not None:
            initializer(*initargs)
    except BaseException:
        sock.sendall(frame((INIT_FAILED, traceback.format_exc())))
        sys.exit(1)
    sock.sendall(frame((READY,)))


def _run_task(task_id: int, call: bytes) -> bytes:
    try:
        fn, args, kwargs = pickle.loads(call)
        result = fn(*args, **kwargs)
    except BaseException as error:
        return _failure(task_id, error)
    try:
        return frame((task_id, True, result))
    except BaseException as error:
        # An unpicklable result fails this task, never the worker.
        return _failure(task_id, error)
