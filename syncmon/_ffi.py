"""The only place where syncmon calls C.

Everything the standard library already wraps (``os.waitid``, ``select.epoll``,
``signal.pthread_sigmask``, ``os.pidfd_open``, ``signal.pidfd_send_signal``)
is used from the standard library.  What it does not wrap is declared here, in
cffi's ABI mode, so that installing syncmon needs no C compiler:

* ``signalfd`` and the ``sigset_t`` operations that build its mask;
* ``sigaction``, read-only, to learn the *real* SIGCHLD disposition (Python's
  ``signal.getsignal`` only knows what Python itself installed, not what a C
  extension set);
* ``posix_spawn`` with the glibc extensions Python does not expose:
  ``addchdir_np`` (a working directory without forking by hand) and
  ``addclosefrom_np`` (close every descriptor a careless library left
  inheritable, as ``subprocess`` does with ``close_fds=True``);
* ``ioctl(PIDFD_GET_INFO)``, which since Linux 6.15 tells the exit status of a
  process that somebody else already reaped.
* ``siginfo_t`` and ``struct rusage`` for the raw ``waitid`` system call,
  whose usage argument ``os.waitid`` drops (syncmon/_waitid.py).

The structure layouts below are glibc's public ones for LP64 Linux (x86-64,
aarch64); syncmon supports nothing else.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import cffi

ffi = cffi.FFI()
ffi.cdef(
    """
    typedef struct { unsigned long __val[16]; } sigset_t;
    int sigemptyset(sigset_t *set);
    int sigaddset(sigset_t *set, int signum);
    int sigismember(const sigset_t *set, int signum);

    int signalfd(int fd, const sigset_t *mask, int flags);

    struct sigaction {
        void *sa_handler;
        sigset_t sa_mask;
        int sa_flags;
        void *sa_restorer;
    };
    int sigaction(int signum, const struct sigaction *act, struct sigaction *oldact);

    typedef struct {
        int __allocated;
        int __used;
        void *__actions;
        int __pad[16];
    } posix_spawn_file_actions_t;
    struct sched_param { int sched_priority; };
    typedef struct {
        short __flags;
        int __pgrp;
        sigset_t __sd;
        sigset_t __ss;
        struct sched_param __sp;
        int __policy;
        int __pad[16];
    } posix_spawnattr_t;

    int posix_spawn_file_actions_init(posix_spawn_file_actions_t *);
    int posix_spawn_file_actions_destroy(posix_spawn_file_actions_t *);
    int posix_spawn_file_actions_adddup2(posix_spawn_file_actions_t *, int, int);
    int posix_spawn_file_actions_addclose(posix_spawn_file_actions_t *, int);
    int posix_spawn_file_actions_addopen(posix_spawn_file_actions_t *, int,
                                         const char *, int, unsigned int);
    int posix_spawn_file_actions_addchdir_np(posix_spawn_file_actions_t *, const char *);
    int posix_spawn_file_actions_addclosefrom_np(posix_spawn_file_actions_t *, int);
    int posix_spawnattr_init(posix_spawnattr_t *);
    int posix_spawnattr_destroy(posix_spawnattr_t *);
    int posix_spawnattr_setflags(posix_spawnattr_t *, short);
    int posix_spawnattr_setsigmask(posix_spawnattr_t *, const sigset_t *);
    int posix_spawnattr_setsigdefault(posix_spawnattr_t *, const sigset_t *);
    int posix_spawnattr_setpgroup(posix_spawnattr_t *, int);
    int posix_spawn(int *pid, const char *path,
                    const posix_spawn_file_actions_t *file_actions,
                    const posix_spawnattr_t *attrp,
                    char *const argv[], char *const envp[]);
    int posix_spawnp(int *pid, const char *file,
                     const posix_spawn_file_actions_t *file_actions,
                     const posix_spawnattr_t *attrp,
                     char *const argv[], char *const envp[]);

    struct pidfd_info {
        uint64_t mask;
        uint64_t cgroupid;
        uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid;
        int32_t exit_code;
    };
    int ioctl(int fd, unsigned long request, ...);

    extern char **environ;

    int prctl(int option, ...);
    struct clone_args {
        uint64_t flags;
        uint64_t pidfd;
        uint64_t child_tid;
        uint64_t parent_tid;
        uint64_t exit_signal;
        uint64_t stack;
        uint64_t stack_size;
        uint64_t tls;
        uint64_t set_tid;
        uint64_t set_tid_size;
        uint64_t cgroup;
    };
    long syscall(long number, ...);
    void *pthread_self(void);

    struct timeval { long tv_sec; long tv_usec; };
    struct rusage {
        struct timeval ru_utime;
        struct timeval ru_stime;
        long ru_maxrss, ru_ixrss, ru_idrss, ru_isrss, ru_minflt, ru_majflt, ru_nswap,
             ru_inblock, ru_oublock, ru_msgsnd, ru_msgrcv, ru_nsignals, ru_nvcsw, ru_nivcsw;
    };
    /* The SIGCHLD member of glibc's 128-byte siginfo_t, flattened: the union
       starts at 16 on LP64, its pid, uid and status come first. */
    typedef struct {
        int si_signo, si_errno, si_code, __pad0;
        int si_pid;
        unsigned int si_uid;
        int si_status;
        int __pad1[25];
    } siginfo_t;
    """
)
lib = ffi.dlopen(None)

SFD_NONBLOCK = 0o4000
SFD_CLOEXEC = 0o2000000
SIG_IGN = 1
SA_NOCLDWAIT = 2

POSIX_SPAWN_SETPGROUP = 0x02
POSIX_SPAWN_SETSIGDEF = 0x04
POSIX_SPAWN_SETSIGMASK = 0x08
POSIX_SPAWN_SETSID = 0x80

# _IOWR(PIDFS_IOCTL_MAGIC = 0xFF, 11, struct pidfd_info), with the 64-byte
# first version of the structure; newer kernels accept the old size.
PIDFD_GET_INFO = (3 << 30) | (64 << 16) | (0xFF << 8) | 11
PIDFD_INFO_EXIT = 1 << 3


@functools.cache
def has_symbol(name: str) -> bool:
    """Whether this libc exports ``name`` (glibc extensions came late)."""
    try:
        getattr(lib, name)
    except AttributeError:
        return False
    return True


def _make_fork_safe() -> None:
    """Do every first use of cffi now, at import.

    cffi parses a C type, and binds a library function, under an internal
    lock the first time each is used.  A fork taken while another thread
    holds that lock leaves it held forever in the fork child, whose first
    ``spawn`` would then hang.  Parsed types and bound functions are cached
    and later uses take no lock, so doing them all here closes that window.
    """
    for cdecl in ("int *", "char *", "char[]", "char *[]", "uintptr_t", "sigset_t *", "struct sigaction *",
                  "struct pidfd_info *", "posix_spawn_file_actions_t *", "posix_spawnattr_t *"):
        ffi.typeof(cdecl)
    for name in dir(lib):
        has_symbol(name)


_make_fork_safe()


def check(result: int, what: str = "") -> int:
    """Raise the ``OSError`` subclass for ``errno`` when a libc call returns -1."""
    if result == -1:
        err = ffi.errno
        raise OSError(err, os.strerror(err), *((what,) if what else ()))
    return result


def check_errno_result(result: int, filename: object = None) -> None:
    """Raise for the ``posix_spawn*`` family, which return the error number."""
    if result != 0:
        raise OSError(result, os.strerror(result), *((filename,) if filename is not None else ()))


# --- clone3, for the fork server (syncmon/_clone.py) ------------------------------
#
# glibc 2.36 has no clone3 wrapper, so it is the raw system call.  cffi
# releases the GIL around it; that is harmless in the fork server, which has
# no other thread to take the GIL meanwhile (and the child reacquires a GIL
# that nobody holds).  The interpreter's own fork hooks, by contrast, must
# run with the GIL held, so they are called through ctypes.pythonapi (a
# PyDLL, which keeps it) and not through cffi.

SYS_clone3 = 435
CLONE_CHILD_SETTID = 0x01000000
CLONE_PIDFD = 0x00001000
CLONE_PARENT = 0x00008000
CLONE_INTO_CGROUP = 0x200000000

#: rt_sigaction by number (the per-architecture one): glibc's sigaction refuses
#: its internal signals, which its posix_spawn leaves ignored in the child.
SYS_rt_sigaction = {"x86_64": 13, "aarch64": 134}.get(os.uname().machine)
GLIBC_INTERNAL_SIGNALS = (32, 33)  # SIGCANCEL, SIGSETXID

ffi.typeof("struct clone_args *")


def python_fork_hooks() -> tuple[Any, Any, Any]:
    """``PyOS_BeforeFork``, ``PyOS_AfterFork_Parent``, ``PyOS_AfterFork_Child``, GIL held."""
    import ctypes

    api = ctypes.pythonapi
    hooks = (api.PyOS_BeforeFork, api.PyOS_AfterFork_Parent, api.PyOS_AfterFork_Child)
    for hook in hooks:
        hook.argtypes, hook.restype = (), None
    return hooks
