"""The fork server process: what runs on the far side of :class:`syncmon.ForkServer`.

Started by the client through its monitor (so the server is watched too) as
``python -c BOOT <request fd> <preload...>``.  It is single-threaded by
construction and checks that it stays so after importing ``preload``: a raw
``clone3`` is sound only when no other thread can hold a lock (of malloc,
stdio, or the interpreter) at that instant.

Its loop: receive a request, ``clone3(CLONE_PARENT | CLONE_PIDFD)`` (see
``_clone.py``), report the child on the request's reply channel, close every
descriptor of the request, repeat.  The child reports itself as well, then
either execs (spawn) or runs the pickled call (fork) and exits.  The server
never waits for a child: they are not its children.

Signals: an empty mask; SIGINT ignored, so that a Ctrl-C to the terminal's
process group does not kill the server in the middle of a request (fork
children get Python's usual handler back, spawned programs ``SIG_DFL``); the
rest as a Python program has them.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import pickle
import resource
import signal
import socket
import sys
import threading
import traceback
from typing import Any, Callable, NoReturn, Sequence

from . import _forkserver_wire as wire
from ._clone import Cloner
from ._ffi import GLIBC_INTERNAL_SIGNALS, SYS_rt_sigaction, ffi, lib

#: Exit status of a spawn child whose exec failed (as the shell and subprocess use).
EXEC_FAILED_STATUS = 127
#: Signals whose disposition a Python interpreter changes and an exec'd program must not inherit.
_PYTHON_SIGNALS = (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ)


def main(argv: Sequence[str]) -> int:
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _default_internal_signals()
    sock = socket.socket(fileno=int(argv[0]))
    sock.set_inheritable(False)
    try:
        for name in argv[1:]:
            importlib.import_module(name)
        if threading.active_count() != 1 or len(os.listdir("/proc/self/task")) != 1:
            raise RuntimeError("preloading started a thread: the fork server must stay single-threaded")
        cloner = Cloner()
    except BaseException:
        wire.send_message(sock, (wire.STARTUP_FAILED, traceback.format_exc()))
        return 1
    wire.send_message(sock, (wire.READY, os.getpid()))
    with sock:
        serve(sock, cloner)
    return 0


def _default_internal_signals() -> None:
    """Undo what glibc 2.36's ``posix_spawn`` (which started us) did: it leaves
    its two internal signals ignored in the child, and an ignored signal
    survives exec, so every child of ours would inherit that."""
    if SYS_rt_sigaction is None:
        return
    default = ffi.new("char[]", 32)  # a kernel struct sigaction of zeros: SIG_DFL
    for signum in GLIBC_INTERNAL_SIGNALS:
        lib.syscall(SYS_rt_sigaction, ffi.cast("int", signum), default, ffi.NULL, ffi.cast("size_t", 8))


def serve(sock: socket.socket, cloner: Cloner) -> None:
    """Serve requests until the client closes its end."""
    while True:
        try:
            received = wire.recv_request(sock)
        except ConnectionError:
            return  # the client stopped in the middle of a request: it is done with us
        if received is None:
            return
        body, fds = received
        try:
            _serve_one(sock, cloner, pickle.loads(body), fds)
        except OSError:
            # The client abandoned this request (its channel is closed, EPIPE):
            # nothing to tell, and the next request is unaffected.
            pass
        finally:
            wire.close_all(fds)


def _serve_one(sock: socket.socket, cloner: Cloner, request: dict[str, Any], fds: list[int]) -> None:
    channel = fds[request["channel"]]
    cgroup = None if request["cgroup"] is None else fds[request["cgroup"]]
    try:
        pid, pidfd = cloner.clone(cgroup)
    except OSError as error:
        _send(channel, (wire.CLONE_FAILED, error.errno))
        return
    if pid == 0:
        _child(sock, request, fds)
    try:
        _send(channel, (wire.BORN, pid), [pidfd])
    finally:
        os.close(pidfd)


def _send(fd: int, message: tuple[Any, ...], fds: Sequence[int] = ()) -> None:
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=fd)
    try:
        wire.send_message(channel, message, fds)
    finally:
        channel.detach()  # the descriptor is the request's, closed with the others


def _child(sock: socket.socket, request: dict[str, Any], fds: list[int]) -> NoReturn:
    """Run in the new process, which must never return into the server's loop."""
    status = EXEC_FAILED_STATUS if request["kind"] == "spawn" else 1
    try:
        channel = fds[request["channel"]]
        _report_birth(channel)
        if request["kind"] == "spawn":
            _exec(request, fds, channel)
        else:
            status = _run_call(sock, request, fds, channel)
    finally:
        os._exit(status)


def _report_birth(channel: int) -> None:
    """Tell the client who we are, in case the server is killed before it can.

    A pidfd opened on ourselves cannot name anybody else; a failure here is
    not fatal, since the server's own report names us too.
    """
    try:
        pidfd = os.pidfd_open(os.getpid())
    except OSError:
        return
    try:
        _send(channel, (wire.BORN, os.getpid()), [pidfd])
    except OSError:
        pass
    finally:
        os.close(pidfd)


# --- spawn -------------------------------------------------------------------------

def _exec(request: dict[str, Any], fds: list[int], channel: int) -> None:
    """Set the process up as ``subprocess`` would, and exec; report any failure.

    Returns only after reporting a failure (the caller exits 127).
    """
    step = "redirect"
    try:
        pass_fds = [(fds[index], target) for index, target in request["pass"]]
        channel = _arrange(request["stdio"], fds, pass_fds, channel)
        _close_all_but({0, 1, 2, channel, *(target for _, target in pass_fds)})
        for signum in _PYTHON_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        step = "session"
        if request["setsid"]:
            os.setsid()
        if request["pgroup"] is not None:
            os.setpgid(0, request["pgroup"])
        step = "cwd"
        if request["cwd"] is not None:
            os.chdir(request["cwd"])
        step = "exec"
        _execute(request["argv"], request["env"])
    except OSError as error:
        _send(channel, (wire.EXEC_FAILED, error.errno, step))
    except BaseException:
        _send(channel, (wire.LOAD_FAILED, traceback.format_exc()))


_CLOSED, _AS_STDOUT = -1, -2


def _arrange(specs: list[Any], fds: list[int], pass_fds: list[tuple[int, int]], channel: int) -> int:
    """Put the request's descriptors on 0, 1, 2 and the pass_fds numbers; close
    the rest of the request's.  Returns the channel's new number.

    Every source (and the channel) is first copied above every target, so no
    ``dup2`` onto a target can overwrite a source still to be placed, however
    the numbers of the received descriptors fell.  ``dup2`` clears
    close-on-exec on the copy it makes; every other copy keeps it.
    """
    sources = [_stdio_source(spec, target, fds) for target, spec in enumerate(specs)]
    targets = {0, 1, 2, *(target for _, target in pass_fds)}
    floor = max(targets) + 1
    movable = {source for source in sources if source >= 0} | {source for source, _ in pass_fds}
    lifted = {fd: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in movable}
    channel = fcntl.fcntl(channel, fcntl.F_DUPFD_CLOEXEC, floor)
    for target, source in enumerate(sources):
        if source >= 0:
            os.dup2(lifted[source], target)
        elif source == _CLOSED:
            _close_if_open(target)
    if sources[2] == _AS_STDOUT:
        os.dup2(1, 2)
    for source, target in pass_fds:
        os.dup2(lifted[source], target)
    for fd in ({*fds, *movable, *lifted.values()} - targets) - {channel}:
        _close_if_open(fd)
    return channel


def _stdio_source(spec: Any, target: int, fds: list[int]) -> int:
    """The descriptor ``target`` should become (opened here for DEVNULL)."""
    if spec == "devnull":
        return os.open(os.devnull, (os.O_RDONLY if target == 0 else os.O_WRONLY) | os.O_CLOEXEC)
    if spec == "closed":
        return _CLOSED
    if spec == "stdout":
        return _AS_STDOUT
    return fds[int(spec)]


def _close_if_open(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _close_all_but(keep: set[int]) -> None:
    """Close every descriptor from 3 up but ``keep``, as close_fds=True does
    (CPython's closerange is close_range(2) here, one call per gap)."""
    low = 3
    for fd in sorted(number for number in keep if number >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


def _execute(argv: list[bytes], env_entries: list[bytes]) -> NoReturn:
    """exec argv, searching the *child's* PATH for a bare name, as subprocess does."""
    env = dict(entry.split(b"=", 1) for entry in env_entries)
    program = argv[0]
    if b"/" in program:
        os.execve(program, argv, env)
    os.execvpe(program, argv, env)


# --- fork --------------------------------------------------------------------------

def _run_call(sock: socket.socket, request: dict[str, Any], fds: list[int], channel: int) -> int:
    """Become a worker: the client's stdio, Python's signals, the call; its exit status."""
    sock.close()  # the server's request socket is the server's alone
    channel = _arrange(request["stdio"], fds, [], channel)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        function, args, kwargs = pickle.loads(request["call"])
    except BaseException:
        _send(channel, (wire.LOAD_FAILED, traceback.format_exc()))
        return 1
    os.close(channel)  # end-of-file: the client's fork() returns, the call starts
    return _call(function, args, kwargs)


def _call(function: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Run the call and give its exit status, as the interpreter would for a script."""
    try:
        function(*args, **kwargs)
        status = 0
    except SystemExit as exit_request:
        status = _exit_status(exit_request.code)
    except BaseException:
        traceback.print_exc()
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    return status


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


#: The first code the server runs: the client's import path, before anything is imported.
BOOT = (
    "import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
    "from syncmon._forkserver_main import main; sys.exit(main(sys.argv[2:]))"
)
