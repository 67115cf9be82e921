"""Starting a child: ``posix_spawn``, with the hygiene ``subprocess`` would apply.

glibc's ``posix_spawn`` creates the child with ``clone(CLONE_VM|CLONE_VFORK)``
and reports an ``exec`` failure as an error code after reaping the failed
child itself, so a missing program raises ``FileNotFoundError`` here with no
zombie and no descriptor left behind.  It is called through cffi rather than
``os.posix_spawn`` for two glibc extensions that Python does not expose:
``addchdir_np`` (``cwd=``) and ``addclosefrom_np``, which closes every
descriptor that some library opened without ``O_CLOEXEC``, as
``subprocess``'s ``close_fds=True`` does.

The child must see the signal mask it would have had without syncmon (rule
2): syncmon blocks SIGCHLD in its threads, and an ``exec`` keeps the mask, so
a program like a shell would otherwise never hear of its own children.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any, Iterable, Sequence, Union

from ._ffi import (
    POSIX_SPAWN_SETPGROUP,
    POSIX_SPAWN_SETSID,
    POSIX_SPAWN_SETSIGDEF,
    POSIX_SPAWN_SETSIGMASK,
    check_errno_result,
    ffi,
    has_symbol,
    lib,
)

StrOrBytesPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
Redirect = Union[None, int, IO[Any]]

#: Reset to the default action in the child, as subprocess's restore_signals does:
#: Python ignores SIGPIPE and SIGXFSZ, and an exec'd program should not inherit that.
_RESTORED_SIGNALS = frozenset({signal.SIGPIPE, signal.SIGXFSZ})


def as_command(argv: StrOrBytesPath | Sequence[StrOrBytesPath]) -> list[Any]:
    """The command as a list, for messages: a single path is a one-item command."""
    return [argv] if isinstance(argv, (str, bytes, os.PathLike)) else list(argv)


def normalize_argv(argv: StrOrBytesPath | Sequence[StrOrBytesPath]) -> list[bytes]:
    """subprocess's rules: one path is a program without arguments; otherwise a
    non-empty sequence of str, bytes or path-like objects."""
    try:
        items = as_command(argv)
    except TypeError:
        raise TypeError(f"argv must be a sequence of str, bytes or path-like, not {type(argv).__name__}") from None
    if not items:
        raise ValueError("argv must not be empty")
    encoded = []
    for item in items:
        if not isinstance(item, (str, bytes, os.PathLike)):
            raise TypeError(f"argv items must be str, bytes or path-like, not {type(item).__name__}")
        value = os.fsencode(item)
        if b"\0" in value:
            raise ValueError("argv items must not contain NUL bytes")
        encoded.append(value)
    return encoded


def _encode_environment(env: Mapping[Any, Any]) -> tuple[bytes, ...]:
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping of names to values, not {type(env).__name__}")
    entries = []
    for key, value in env.items():
        key, value = os.fsencode(key), os.fsencode(value)
        if b"=" in key or not key or b"\0" in key + value:
            raise ValueError(f"illegal environment variable name or value: {key!r}")
        entries.append(key + b"=" + value)
    return tuple(entries)


def find_program(program: bytes, search_path: Sequence[str]) -> bytes:
    """Resolve ``program`` on the child's PATH, as subprocess does (not the parent's)."""
    found = shutil.which(os.fsdecode(program), path=os.pathsep.join(search_path))
    if found is None:
        raise FileNotFoundError(2, "No such file or directory", os.fsdecode(program))
    return os.fsencode(found)


_C_INT_MAX = 2**31 - 1  # descriptors and group ids are C ints


def _check_fd(fd: object, name: str) -> int:
    if isinstance(fd, bool) or not isinstance(fd, int):
        raise TypeError(f"{name} must be a file descriptor (int), not {type(fd).__name__}")
    if not 0 <= fd <= _C_INT_MAX:
        raise ValueError(f"{name}: invalid file descriptor {fd}")
    os.fstat(fd)  # EBADF now, rather than a confusing failure in the child
    return fd


def _redirect_fd(target: Redirect, name: str) -> int | None:
    """A standard stream's source: ``None`` (inherit), DEVNULL, STDOUT (stderr only) or an open fd."""
    if target is None:
        return None
    if isinstance(target, int) and not isinstance(target, bool):
        if target == subprocess.PIPE:
            raise ValueError(f"{name}=PIPE needs pipes the handle does not manage: use Monitor.popen()")
        if target == subprocess.DEVNULL or (name == "stderr" and target == subprocess.STDOUT):
            return target
        return _check_fd(target, name)
    if hasattr(target, "fileno"):
        return _check_fd(target.fileno(), name)
    raise TypeError(f"{name} must be None, a file descriptor, a file object or DEVNULL, not {type(target).__name__}")


def _check_process_group(process_group: int | None, start_new_session: bool) -> None:
    if process_group is None:
        return
    if isinstance(process_group, bool) or not isinstance(process_group, int):
        raise TypeError("process_group must be an int")
    if not 0 <= process_group <= _C_INT_MAX:
        raise ValueError("process_group must be 0 (a new group) or a group id")
    if start_new_session:
        raise ValueError("start_new_session already makes a new process group")


def _kept_fds(pass_fds: Iterable[int]) -> tuple[int, ...]:
    """``pass_fds`` checked, sorted and without repeats."""
    if type(pass_fds) is tuple and not pass_fds:
        return ()  # the default, without the ABC check (a tenth of a plain spawn's parsing)
    if isinstance(pass_fds, (str, bytes)) or not isinstance(pass_fds, Iterable):
        raise TypeError(f"pass_fds must be a collection of ints, not {type(pass_fds).__name__}")
    kept = tuple(sorted({_check_fd(fd, "pass_fds") for fd in pass_fds}))
    if kept and kept[0] < 3:
        raise ValueError(f"pass_fds: {kept[0]} is a standard stream; use stdin/stdout/stderr")
    return kept


@dataclass(frozen=True)
class SpawnOptions:
    """How to start one program: every option checked and normalized once.

    Every way of starting a child (``Monitor.spawn``, ``CommandPool``, the
    ``ForkServer``) takes its options through :meth:`parse`, so they are all
    refused the same way, before anything starts.  The fields are plain data
    (bytes, ints), so a request can be pickled to another process; the
    descriptors are numbers in *this* process.
    """

    argv: tuple[bytes, ...]
    #: ``KEY=VALUE`` entries, or ``None`` to pass our own environment.
    env: tuple[bytes, ...] | None = None
    #: The child's PATH where it differs from ours (``env`` changes it), else ``None``.
    search_path: tuple[str, ...] | None = None
    cwd: bytes | None = None
    #: Sources of fds 0, 1, 2: ``None`` (inherit), an fd, DEVNULL, or STDOUT for stderr.
    streams: tuple[int | None, int | None, int | None] = (None, None, None)
    start_new_session: bool = False
    process_group: int | None = None
    pass_fds: tuple[int, ...] = ()

    @classmethod
    def parse(
        cls,
        argv: StrOrBytesPath | Sequence[StrOrBytesPath],
        *,
        env: Mapping[Any, Any] | None = None,
        cwd: StrOrBytesPath | None = None,
        stdin: Redirect = None,
        stdout: Redirect = None,
        stderr: Redirect = None,
        start_new_session: bool = False,
        process_group: int | None = None,
        pass_fds: Iterable[int] = (),
    ) -> SpawnOptions:
        """Check the arguments (they mean what they mean to ``subprocess.Popen``);
        ``TypeError``/``ValueError`` for bad ones, ``OSError`` for a closed fd."""
        environment = None if env is None else _encode_environment(env)
        search_path = None
        if env is not None and (child_path := os.get_exec_path(env)) != os.get_exec_path():
            search_path = tuple(child_path)
        directory = None
        if cwd is not None:
            directory = os.fsencode(cwd)
            if b"\0" in directory:
                raise ValueError("cwd must not contain NUL bytes")
        _check_process_group(process_group, start_new_session)
        return cls(
            argv=tuple(normalize_argv(argv)),
            env=environment,
            search_path=search_path,
            cwd=directory,
            streams=(_redirect_fd(stdin, "stdin"), _redirect_fd(stdout, "stdout"), _redirect_fd(stderr, "stderr")),
            start_new_session=bool(start_new_session),
            process_group=process_group,
            pass_fds=_kept_fds(pass_fds),
        )


#: The keywords :meth:`SpawnOptions.parse` takes.
SPAWN_KEYWORDS = frozenset(
    {"env", "cwd", "stdin", "stdout", "stderr", "start_new_session", "process_group", "pass_fds"}
)


@functools.lru_cache(maxsize=8)
def _sigset(signals: frozenset[int]) -> Any:
    """A C ``sigset_t``; cached, since a program's threads share a few masks
    and posix_spawnattr_* only copy from it."""
    mask = ffi.new("sigset_t *")
    lib.sigemptyset(mask)
    for signum in signals:
        lib.sigaddset(mask, int(signum))
    return mask


def child_signal_mask(keep_sigchld_blocked: bool) -> set[int]:
    """This thread's mask as the child should inherit it: without syncmon's SIGCHLD block."""
    mask = set(signal.pthread_sigmask(signal.SIG_BLOCK, ()))
    if not keep_sigchld_blocked:
        mask.discard(signal.SIGCHLD)
    return mask


def _open_fds_below(limit: int) -> list[int]:
    return [fd for fd in map(int, os.listdir("/proc/self/fd")) if fd < limit]


# The C types of every spawn, looked up once: by name, each ffi.new parses
# its type string again, and a spawn makes five of them.
_FILE_ACTIONS = ffi.typeof("posix_spawn_file_actions_t *")
_ATTRIBUTES = ffi.typeof("posix_spawnattr_t *")
_CHARS = ffi.typeof("char[]")
_STRINGS = ffi.typeof("char *[]")
_CHAR_POINTER = ffi.typeof("char *")
_INT = ffi.typeof("int *")


class _SpawnRequest:
    """The C-side objects of one ``posix_spawn`` call, destroyed in ``close``."""

    def __init__(self) -> None:
        self.actions = ffi.new(_FILE_ACTIONS)
        self.attributes = ffi.new(_ATTRIBUTES)
        check_errno_result(lib.posix_spawn_file_actions_init(self.actions))
        check_errno_result(lib.posix_spawnattr_init(self.attributes))
        self._keepalive: list[Any] = []

    def strings(self, values: Sequence[bytes]) -> Any:
        """A NULL-terminated ``char *[]`` pointing into one buffer: one
        allocation instead of one per string (the environment has dozens)."""
        blob = ffi.new(_CHARS, b"\0".join(values))  # cffi adds the last NUL
        array = ffi.new(_STRINGS, len(values) + 1)  # zeroed: ends in NULL
        base = ffi.cast(_CHAR_POINTER, blob)
        offset = 0
        for index, value in enumerate(values):
            array[index] = base + offset
            offset += len(value) + 1
        self._keepalive.append((blob, array))
        return array

    def close(self) -> None:
        lib.posix_spawn_file_actions_destroy(self.actions)
        lib.posix_spawnattr_destroy(self.attributes)

    def redirect(self, source: int | None, target: int) -> None:
        if source is None:
            return
        if source == subprocess.DEVNULL:
            flags = os.O_RDONLY if target == 0 else os.O_WRONLY
            path = ffi.new(_CHARS, os.devnull.encode())
            self._keepalive.append(path)
            check_errno_result(lib.posix_spawn_file_actions_addopen(self.actions, target, path, flags, 0))
        elif source == subprocess.STDOUT:
            check_errno_result(lib.posix_spawn_file_actions_adddup2(self.actions, 1, 2))
        else:
            # dup2(fd, fd) is a no-op in POSIX, but glibc (2.29+) clears
            # FD_CLOEXEC for it, which is exactly what "keep this fd" needs.
            check_errno_result(lib.posix_spawn_file_actions_adddup2(self.actions, source, target))

    def close_all_but(self, pass_fds: Sequence[int]) -> None:
        """Close-on-exec hygiene: only 0-2 and ``pass_fds`` reach the program."""
        for fd in pass_fds:
            check_errno_result(lib.posix_spawn_file_actions_adddup2(self.actions, fd, fd))
        if not has_symbol("posix_spawn_file_actions_addclosefrom_np"):
            return  # glibc < 2.34: only descriptors without O_CLOEXEC leak, as with os.posix_spawn
        highest = pass_fds[-1] if pass_fds else 2
        if pass_fds:
            # Below the highest kept fd, close the open ones one by one (a
            # loop over every number up to a high fd would cost millions of
            # actions).  One opened by another thread after this listing
            # reaches the child only if it lacks O_CLOEXEC.
            keep = set(pass_fds)
            for fd in _open_fds_below(highest):
                if fd > 2 and fd not in keep:
                    check_errno_result(lib.posix_spawn_file_actions_addclose(self.actions, fd))
        if not pass_fds or highest + 1 < resource.getrlimit(resource.RLIMIT_NOFILE)[0]:
            # glibc refuses a start at or past the descriptor limit (EBADF):
            # there is nothing to close there anyway.  (Only a kept fd can be
            # that high: without one, 3 is always below the limit.)
            check_errno_result(lib.posix_spawn_file_actions_addclosefrom_np(self.actions, highest + 1))

    def chdir(self, path: bytes) -> None:
        if not os.path.isdir(path):
            # posix_spawn would report a bad cwd as ENOENT "of the program";
            # say which path is wrong, as subprocess does.
            raise FileNotFoundError(2, "No such directory", os.fsdecode(path))
        if not has_symbol("posix_spawn_file_actions_addchdir_np"):
            raise NotImplementedError("cwd= needs glibc 2.29 or newer")
        cpath = ffi.new(_CHARS, path)
        self._keepalive.append(cpath)
        check_errno_result(lib.posix_spawn_file_actions_addchdir_np(self.actions, cpath))

    def set_attributes(
        self, sigmask: set[int], start_new_session: bool, process_group: int | None
    ) -> None:
        flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF
        mask, defaults = _sigset(frozenset(sigmask)), _sigset(_RESTORED_SIGNALS)
        check_errno_result(lib.posix_spawnattr_setsigmask(self.attributes, mask))
        check_errno_result(lib.posix_spawnattr_setsigdefault(self.attributes, defaults))
        if start_new_session:
            flags |= POSIX_SPAWN_SETSID
        if process_group is not None:
            flags |= POSIX_SPAWN_SETPGROUP
            check_errno_result(lib.posix_spawnattr_setpgroup(self.attributes, process_group))
        check_errno_result(lib.posix_spawnattr_setflags(self.attributes, flags))




def spawn_process(options: SpawnOptions, sigmask: set[int]) -> int:
    """Start the program ``options`` describe, with ``sigmask``; return its pid."""
    program, spawn = options.argv[0], lib.posix_spawnp
    if options.search_path is not None and b"/" not in program:
        program, spawn = find_program(program, options.search_path), lib.posix_spawn
    request = _SpawnRequest()
    try:
        for target, source in enumerate(options.streams):
            request.redirect(source, target)
        request.close_all_but(options.pass_fds)
        if options.cwd is not None:
            request.chdir(options.cwd)
        request.set_attributes(sigmask, options.start_new_session, options.process_group)
        pid = ffi.new(_INT)
        check_errno_result(
            spawn(
                pid,
                program,
                request.actions,
                request.attributes,
                request.strings(options.argv),
                # No env: the C environ, which os.environ keeps current
                # (putenv), exactly what subprocess's exec would pass.
                lib.environ if options.env is None else request.strings(options.env),
            ),
            os.fsdecode(options.argv[0]),
        )
        return int(pid[0])
    finally:
        request.close()
