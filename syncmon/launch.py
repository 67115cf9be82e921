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
import shutil
import signal
import subprocess
from typing import IO, Any, Iterable, Mapping, Sequence, Union

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


def _encode_environment(env: Mapping[Any, Any]) -> list[bytes]:
    entries = []
    for key, value in env.items():
        key, value = os.fsencode(key), os.fsencode(value)
        if b"=" in key or not key or b"\0" in key + value:
            raise ValueError(f"illegal environment variable name or value: {key!r}")
        entries.append(key + b"=" + value)
    return entries


def _needs_own_path_search(program: bytes, env: Mapping[Any, Any] | None) -> bool:
    """Whether glibc's PATH search (``posix_spawnp``, which reads *our* PATH)
    would look in the wrong places: only when the child gets another PATH."""
    return b"/" not in program and env is not None and os.get_exec_path(env) != os.get_exec_path()


def _find_program(program: bytes, env: Mapping[Any, Any] | None) -> bytes:
    """Resolve ``program`` on the child's PATH, as subprocess does (not the parent's)."""
    path = os.pathsep.join(os.fsdecode(d) for d in os.get_exec_path(env))
    found = shutil.which(os.fsdecode(program), path=path)
    if found is None:
        raise FileNotFoundError(2, "No such file or directory", os.fsdecode(program))
    return os.fsencode(found)


def _redirect_fd(target: Redirect, name: str) -> int | None:
    if target is None:
        return None
    if target is subprocess.PIPE or target == subprocess.PIPE:
        raise ValueError(f"{name}=PIPE needs pipes the handle does not manage: use Monitor.popen()")
    if isinstance(target, bool):
        raise TypeError(f"{name} must be None, a file descriptor, a file object or DEVNULL")
    if isinstance(target, int):
        if target < 0 and target != subprocess.DEVNULL and not (name == "stderr" and target == subprocess.STDOUT):
            raise ValueError(f"{name}: invalid file descriptor {target}")
        return target
    if hasattr(target, "fileno"):
        return int(target.fileno())
    raise TypeError(f"{name} must be None, a file descriptor, a file object or DEVNULL")


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


class _SpawnRequest:
    """The C-side objects of one ``posix_spawn`` call, destroyed in ``close``."""

    def __init__(self) -> None:
        self.actions = ffi.new("posix_spawn_file_actions_t *")
        self.attributes = ffi.new("posix_spawnattr_t *")
        check_errno_result(lib.posix_spawn_file_actions_init(self.actions))
        check_errno_result(lib.posix_spawnattr_init(self.attributes))
        self._keepalive: list[Any] = []

    def strings(self, values: list[bytes]) -> Any:
        """A NULL-terminated ``char *[]`` pointing into one buffer: one
        allocation instead of one per string (the environment has dozens)."""
        blob = ffi.new("char[]", b"\0".join(values))  # cffi adds the last NUL
        array = ffi.new("char *[]", len(values) + 1)  # zeroed: ends in NULL
        base = ffi.cast("char *", blob)
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
            path = ffi.new("char[]", os.devnull.encode())
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
        keep = set(pass_fds)
        highest = max(keep, default=2)
        for fd in range(3, highest):
            if fd not in keep:
                # Closing a descriptor that is not open is not an error here.
                check_errno_result(lib.posix_spawn_file_actions_addclose(self.actions, fd))
        check_errno_result(lib.posix_spawn_file_actions_addclosefrom_np(self.actions, highest + 1))

    def chdir(self, cwd: StrOrBytesPath) -> None:
        path = os.fsencode(cwd)
        if not os.path.isdir(path):
            # posix_spawn would report a bad cwd as ENOENT "of the program";
            # say which path is wrong, as subprocess does.
            raise FileNotFoundError(2, "No such directory", os.fsdecode(path))
        if not has_symbol("posix_spawn_file_actions_addchdir_np"):
            raise NotImplementedError("cwd= needs glibc 2.29 or newer")
        cpath = ffi.new("char[]", path)
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


def _check_fds(pass_fds: Iterable[int]) -> list[int]:
    fds = sorted(set(pass_fds))
    for fd in fds:
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"pass_fds must hold ints, not {type(fd).__name__}")
        if fd < 3:
            raise ValueError(f"pass_fds: {fd} is a standard stream; use stdin/stdout/stderr")
        os.fstat(fd)  # EBADF now, rather than a confusing failure in the child
    return fds


def spawn_process(
    argv: StrOrBytesPath | Sequence[StrOrBytesPath],
    *,
    sigmask: set[int],
    env: Mapping[Any, Any] | None = None,
    cwd: StrOrBytesPath | None = None,
    stdin: Redirect = None,
    stdout: Redirect = None,
    stderr: Redirect = None,
    start_new_session: bool = False,
    process_group: int | None = None,
    pass_fds: Iterable[int] = (),
) -> int:
    """Start ``argv`` and return its pid; every argument is checked before anything starts."""
    arguments = normalize_argv(argv)
    environment = None if env is None else _encode_environment(env)
    if process_group is not None:
        if isinstance(process_group, bool) or not isinstance(process_group, int):
            raise TypeError("process_group must be an int")
        if process_group < 0:
            raise ValueError("process_group must be 0 (a new group) or a group id")
        if start_new_session:
            raise ValueError("start_new_session already makes a new process group")
    streams = [_redirect_fd(stdin, "stdin"), _redirect_fd(stdout, "stdout"), _redirect_fd(stderr, "stderr")]
    fds = _check_fds(pass_fds)
    program, spawn = arguments[0], lib.posix_spawnp
    if _needs_own_path_search(program, env):
        program, spawn = _find_program(program, env), lib.posix_spawn

    request = _SpawnRequest()
    try:
        for target, source in enumerate(streams):
            request.redirect(source, target)
        request.close_all_but(fds)
        if cwd is not None:
            request.chdir(cwd)
        request.set_attributes(sigmask, start_new_session, process_group)
        pid = ffi.new("int *")
        check_errno_result(
            spawn(
                pid,
                program,
                request.actions,
                request.attributes,
                request.strings(arguments),
                # No env: the C environ, which os.environ keeps current
                # (putenv), exactly what subprocess's exec would pass.
                lib.environ if environment is None else request.strings(environment),
            ),
            os.fsdecode(arguments[0]),
        )
        return int(pid[0])
    finally:
        request.close()
