"""cgroup v2: one cgroup per process tree, the primary tree mechanism.

Why a cgroup: every process born in a cgroup (and every process it forks, at
any depth, whatever it does with ``setsid()``, process groups or double
forks) stays in it unless somebody with write access to a common ancestor
moves it out.  So membership needs no guessing: ``cgroup.procs`` lists it,
``cgroup.kill`` (Linux 5.14) SIGKILLs all of it in one kernel operation
(forks racing the kill are killed too: the kernel marks the cgroup first),
and ``cgroup.events`` says ``populated 0`` once its last process has exited.

Facts this module relies on (checked on Linux 6.18):

* A process leaves its cgroup when it *exits* (``cgroup_exit`` runs in
  ``do_exit``, before the zombie is reaped).  ``populated 0`` therefore means
  "no live member", not "every member reaped": a zombie child waiting for our
  ``waitid`` is no longer listed, and the cgroup can already be removed.
* ``cgroup.events`` is a kernfs file that notifies: ``poll``/``epoll`` report
  ``EPOLLPRI`` (with ``EPOLLERR``) when it changed since this open file was
  last read, level-triggered until it is read again.  A freshly opened file
  reports once at once.  So: register, then read; any change after that read
  wakes the epoll.  No polling interval anywhere.
* After ``rmdir`` the open ``cgroup.events`` reads ``ENODEV`` and files can no
  longer be opened under the directory fd: read the statistics before.
* The root cgroup has neither ``cgroup.events`` nor ``cgroup.kill``; every
  child cgroup has both (5.14+), plus ``cpu.stat`` (``usage_usec``,
  ``user_usec``, ``system_usec``, hierarchical) with no controller enabled.
  ``memory.peak``/``memory.current`` exist only where the parent has
  ``memory`` in ``cgroup.subtree_control``.

Where syncmon creates cgroups: directly below *our own* cgroup (the ``0::``
line of ``/proc/self/cgroup``, under the cgroup2 mount found in
``/proc/self/mountinfo``), named ``syncmon-<pid>-<n>``.  Moving a child into a
cgroup (which ``CLONE_INTO_CGROUP`` does at birth) needs write access to
``cgroup.procs`` of the common ancestor of source and target, which is our own
cgroup: so our own cgroup must be writable, and that is the rule ``base()``
applies.

* Root on a machine like this one (cgroup2 at ``/sys/fs/cgroup/unified``
  beside the v1 controllers, our cgroup ``/``): writable.
* A systemd host as root, in a service's cgroup: writable.  A service with
  ``Delegate=yes`` is the clean case (systemd then leaves the subtree alone).
* A systemd host as an unprivileged user: a login session's
  ``session-N.scope`` belongs to root, so ``CgroupUnavailable`` is raised and
  the caller falls back (``_proctree``).  Under ``systemd-run --user --scope``
  (or any unit of the user manager, whose subtree ``user@UID.service`` is
  delegated to the user) our cgroup is the user's and is writable.
* cgroup v2's no-internal-processes rule: a non-root cgroup that holds
  processes cannot enable domain controllers for its children (writing its
  ``cgroup.subtree_control`` fails with ``EBUSY``).  Our own cgroup holds us,
  so the trees' cgroups get no controllers unless our cgroup is the root (or
  was set up by someone else before we joined it): no ``memory.peak``, no
  ``pids.max``.  syncmon does not move the program into a leaf to get them
  (that would change the program's own placement, not ours to decide);
  ``stats()`` reports ``None`` for what is missing.

Nested trees: ``Cgroup(parent=other)`` creates a cgroup inside another one;
the parent's ``kill()``, ``populated()`` and ``stats()`` include it (the
kernel's view is hierarchical), and the parent's ``remove()`` removes empty
sub-cgroups bottom-up first (also ones that members created and left behind).

Not thread-safe by itself except where stated: ``Cgroup`` serialises its own
methods with a lock so that ``close()`` cannot close a descriptor another
thread is about to use (an ``openat`` relative to a reused fd number would
touch a directory of the program's own).
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import os
import select
import signal
import threading
import time

from . import _proctree

#: ``SYNCMON_CGROUP=0`` turns the cgroup mechanism off (the fallback is used).
ENVIRONMENT_SWITCH = "SYNCMON_CGROUP"

#: Errors that say "not now", never "not here": they are raised, never cached.
TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR})

#: How long ``remove()`` retries ``rmdir`` on EBUSY: the kernel may still be
#: finishing the exits of the last members (``populated`` flips in
#: ``cgroup_exit``, a hair before the css is released).
REMOVE_RETRY = 1.0

#: How long ``close()`` waits for the killed members to exit.  Only a process
#: stuck in uninterruptible sleep (D state) can take this long.
CLOSE_WAIT = 10.0

_names = itertools.count()
_cached: bool | str | None = None


class CgroupUnavailable(OSError):
    """No cgroup2 hierarchy that syncmon may write (the reason is the message)."""


@dataclasses.dataclass(frozen=True)
class CgroupStats:
    """A tree's resource use, hierarchical (sub-cgroups included).

    ``memory_*`` are ``None`` where the memory controller is not enabled for
    the cgroup (not on this machine: the v2 hierarchy offers only hugetlb).
    """

    usage_usec: int
    user_usec: int
    system_usec: int
    memory_peak: int | None
    memory_current: int | None


# --- finding the hierarchy ------------------------------------------------------------

def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> tuple[str, str] | None:
    """(mount point, root of the mount inside the hierarchy) of the first cgroup2 mount."""
    with open(mountinfo) as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup2":
                return _unescape(fields[4]), _unescape(fields[3])
    return None


def own_cgroup(cgroup_file: str = "/proc/self/cgroup") -> str | None:
    """Our cgroup v2 path (``0::/path``), or None on a v1-only system."""
    with open(cgroup_file) as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].rstrip("\n")
    return None


def base() -> tuple[str, str]:
    """Where tree cgroups are created: our own cgroup's (directory, cgroup path).

    The cgroup path is the spelling of ``/proc/<pid>/cgroup``, relative to
    the hierarchy (or cgroup namespace) root.

    Raises ``CgroupUnavailable`` with the reason when there is none we may
    write.  Transient errors (EMFILE...) propagate as the plain ``OSError``.
    """
    if os.environ.get(ENVIRONMENT_SWITCH, "1") == "0":
        raise CgroupUnavailable(f"cgroups disabled by {ENVIRONMENT_SWITCH}=0")
    mount = cgroup2_mount()
    if mount is None:
        raise CgroupUnavailable("no cgroup2 hierarchy is mounted")
    mount_point, mount_root = mount
    path = own_cgroup()
    if path is None:
        raise CgroupUnavailable("/proc/self/cgroup has no cgroup v2 (0::) line")
    if path.endswith(" (deleted)"):
        raise CgroupUnavailable(f"our cgroup {path} was removed")
    # A bind mount of a subtree shows our path relative to the hierarchy root;
    # outside the mounted subtree there is no directory to use.
    if mount_root != "/" and not (path == mount_root or path.startswith(mount_root + "/")):
        raise CgroupUnavailable(f"our cgroup {path} lies outside the cgroup2 mount of {mount_root}")
    rel = path[len(mount_root):] if mount_root != "/" else path
    directory = os.path.join(mount_point, rel.lstrip("/"))
    if not os.access(directory, os.W_OK) or not os.access(
            os.path.join(directory, "cgroup.procs"), os.W_OK):
        raise CgroupUnavailable(
            f"our cgroup {directory} is not writable (on a systemd host run under "
            "'systemd-run --user --scope' or a unit with Delegate=yes)")
    return directory, path


def available() -> bool | str:
    """True if tree cgroups can be made here, else the reason (a str).

    The probe creates and removes a real cgroup: ``os.access`` cannot see a
    seccomp filter or an LSM.  A definite answer is cached; a transient error
    (EMFILE, ENOMEM, ...) is raised instead, so that one bad moment never
    switches cgroups off for the rest of the process.  The environment switch
    is read on every call.
    """
    global _cached
    if os.environ.get(ENVIRONMENT_SWITCH, "1") == "0":
        return f"cgroups disabled by {ENVIRONMENT_SWITCH}=0"
    if _cached is not None:
        return _cached
    try:
        Cgroup().close()
    except CgroupUnavailable as e:
        _cached = str(e)
    except OSError as e:
        if e.errno in TRANSIENT:
            raise
        _cached = f"cannot create a cgroup: {e}"
    else:
        _cached = True
    return _cached


# --- one cgroup -------------------------------------------------------------------------

class Cgroup:
    """A uniquely named cgroup that this object alone owns and removes.

    ``dir_fd`` (``O_RDONLY|O_DIRECTORY|O_CLOEXEC``) is what
    ``clone3(CLONE_INTO_CGROUP)`` takes.  ``events_fd`` goes into an epoll
    with ``EPOLLPRI``; after each wake-up call ``populated()`` (which reads
    the file, re-arming the notification).  Both stay valid until
    ``close()``; callers must unregister ``events_fd`` from their epoll first.
    """

    def __init__(self, parent: Cgroup | None = None) -> None:
        self._lock = threading.Lock()
        self.parent = parent
        where, cgroup_path = (parent.path, parent.cgroup_path) if parent is not None else base()
        path, self.dir_fd = _make_dir(where)
        #: the directory under the cgroup2 mount
        self.path: str = path
        #: this cgroup as /proc/<pid>/cgroup names it
        self.cgroup_path: str = cgroup_path.rstrip("/") + "/" + os.path.basename(path)
        self.removed = False
        self._last_stats: CgroupStats | None = None
        try:
            self.events_fd = os.open("cgroup.events", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.dir_fd)
        except BaseException:
            os.close(self.dir_fd)
            _rmdir_tree(self.path)
            raise
        self._closed = False

    def __repr__(self) -> str:
        return f"<Cgroup {self.path}{' removed' if self.removed else ''}>"

    def __enter__(self) -> Cgroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading --------------------------------------------------------------------------

    def _read(self, name: str) -> str:
        """Read a file of this cgroup; call with self._lock held (dir_fd must stay open)."""
        self._check_open()
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.dir_fd)
        try:
            return os.read(fd, 1 << 20).decode()
        finally:
            os.close(fd)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        if self.removed:
            raise ProcessLookupError(errno.ENOENT, "cgroup already removed", self.path)

    def populated(self) -> bool:
        """Whether a live process is in this cgroup or below; re-arms ``events_fd``.

        ``ProcessLookupError`` once the cgroup is removed (also by the
        ``remove()`` of a parent cgroup: the open file then reads ENODEV).
        """
        with self._lock:
            self._check_open()
            try:
                return _populated(os.pread(self.events_fd, 256, 0).decode())
            except OSError as e:
                if e.errno != errno.ENODEV:
                    raise
                self.removed = True
                raise ProcessLookupError(errno.ENOENT, "cgroup removed", self.path) from e

    def pids(self) -> list[int]:
        """Live members now, this cgroup's and its sub-cgroups' (zombies are not members)."""
        with self._lock:
            self._check_open()
            return _procs(self.path)

    def stats(self) -> CgroupStats:
        """CPU use from ``cpu.stat``; memory only where the controller is on.

        After ``remove()`` this returns the values read just before the rmdir.
        """
        with self._lock:
            if self.removed and self._last_stats is not None:
                return self._last_stats
            return self._stats_locked()

    def _stats_locked(self) -> CgroupStats:
        cpu = dict(line.split() for line in self._read("cpu.stat").splitlines())
        return CgroupStats(int(cpu["usage_usec"]), int(cpu["user_usec"]), int(cpu["system_usec"]),
                           self._optional_int("memory.peak"), self._optional_int("memory.current"))

    def _optional_int(self, name: str) -> int | None:
        try:
            return int(self._read(name))
        except FileNotFoundError:
            return None

    # -- changing ---------------------------------------------------------------------------

    def add(self, pid: int) -> None:
        """Move ``pid`` in (tests, and the fallback when a child cannot be born inside).

        A process moved in after birth may already have forked children that
        stay outside: ``CLONE_INTO_CGROUP`` is the race-free way.
        """
        with self._lock:
            self._check_open()
            _write(self.dir_fd, "cgroup.procs", str(pid))

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to every member; return how many were signalled by pid (0 for cgroup.kill).

        SIGKILL goes through ``cgroup.kill``: atomic, forks racing it are
        killed too.  Other signals (and SIGKILL before Linux 5.14) go to each
        member through a pidfd whose membership was verified after opening
        (``_proctree.signal_verified``), pass after pass until a pass finds
        nobody new: a member forked after a pass is caught by the next one.
        """
        sig = _proctree.check_signal(sig)
        with self._lock:
            self._check_open()
            if sig == signal.SIGKILL:
                try:
                    _write(self.dir_fd, "cgroup.kill", "1")
                    return 0
                except FileNotFoundError:
                    pass  # before 5.14
            return self._kill_each(sig)

    def _kill_each(self, sig: int) -> int:
        """The per-pid way; call with self._lock held."""
        return _proctree.signal_until_stable(
            lambda: _procs(self.path), lambda pid: _in_cgroup(pid, self.cgroup_path), sig)

    def reap_orphans(self, roots: frozenset[int]) -> list[tuple[int, os.waitid_result]]:
        """Reap exited members that were reparented to us (we are pid 1 or a subreaper).

        Rule: a zombie child of ours is reaped here only if its
        ``/proc/<pid>/cgroup`` is exactly this cgroup (a zombie keeps naming
        its cgroup, with " (deleted)" after the rmdir) and it is not one of
        ``roots`` (the children we spawned into it, whose handles reap them).
        Only the roots were born into a tree cgroup as our children, so no
        other code of ours waits for such a zombie.  The read is trusted
        because the pidfd, opened before it, still names our unreaped child
        after it; reaping goes through that pidfd (``P_PIDFD``).  Nested
        cgroups reap their own.
        """
        me = os.getpid()
        reaped: list[tuple[int, os.waitid_result]] = []
        for pid in _proctree.all_pids():
            if pid in roots:
                continue
            st = _proctree.proc_stat(pid)
            if st is None or st.ppid != me or st.state != "Z":
                continue
            fd = _proctree.open_pidfd(pid)
            if fd is None:
                continue
            try:
                path = own_cgroup(f"/proc/{pid}/cgroup")
            except (FileNotFoundError, ProcessLookupError):
                path = None
            try:
                if path is not None and path.removesuffix(" (deleted)") == self.cgroup_path \
                        and _proctree.our_child(fd):
                    result = os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
                    if result is not None:
                        reaped.append((pid, result))
            finally:
                os.close(fd)
        return reaped

    def wait_empty(self, timeout: float | None) -> bool:
        """Block until no live member is left (or timeout); True if empty.

        Sleeps in ``poll`` on a private duplicate of ``events_fd`` (the same
        open file, so the same notification state), so that ``close()`` in
        another thread can never close an fd this wait is blocked on.
        """
        with self._lock:
            self._check_open()
            fd = os.dup(self.events_fd)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLPRI)
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                if not _populated(os.pread(fd, 256, 0).decode()):  # read first: re-arms
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                poller.poll(None if remaining is None else max(1, int(remaining * 1000)))
        finally:
            os.close(fd)

    def remove(self) -> None:
        """rmdir this cgroup (empty sub-cgroups first), once no live member is left.

        Idempotent.  Retries EBUSY for ``REMOVE_RETRY`` seconds, then raises
        it: a live member is still inside.  Reads ``stats()`` first, which
        are gone with the directory.
        """
        with self._lock:
            if self.removed:
                return
            if self._closed:
                raise ValueError(f"{self!r} is closed")
            try:
                self._last_stats = self._stats_locked()
            except OSError:
                # Removed behind our back (ENOENT), or no descriptor to read
                # them with (EMFILE): the statistics are lost, the removal
                # must still happen, or the cgroup outlives us.
                pass
            _rmdir_tree(self.path)
            self.removed = True

    def close(self) -> None:
        """Kill what is left, wait for it to exit, remove the cgroup, close both fds.

        Idempotent.  If the directory cannot be removed (a member stuck in D
        state past ``CLOSE_WAIT``) the error is raised and the fds stay open,
        so that a later ``close()`` can finish the job: no cgroup is ever
        silently left behind.
        """
        if self._closed:
            return
        if not self.removed:
            try:
                if self.populated():
                    self.kill()
                    self.wait_empty(CLOSE_WAIT)
            except ProcessLookupError:
                pass  # a parent's remove() took it
            self.remove()
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self.events_fd)
                os.close(self.dir_fd)


# --- helpers ------------------------------------------------------------------------------

def _make_dir(where: str) -> tuple[str, int]:
    """mkdir a fresh syncmon-<pid>-<n> under ``where``; return (path, dir fd).

    EEXIST means a cgroup left by an earlier process with our pid (one that
    crashed): try the next name.  On any failure after mkdir, rmdir again.
    """
    while True:
        path = os.path.join(where, f"syncmon-{os.getpid()}-{next(_names)}")
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise CgroupUnavailable(e.errno, f"cannot create a cgroup under {where}: "
                                        f"{os.strerror(e.errno)}", path) from e
            raise
        try:
            return path, os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except BaseException:
            os.rmdir(path)
            raise


def _write(dir_fd: int, name: str, value: str) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _populated(events: str) -> bool:
    for line in events.splitlines():
        key, _, value = line.partition(" ")
        if key == "populated":
            return value.strip() != "0"
    raise OSError(errno.EINVAL, f"no populated line in cgroup.events: {events!r}")


def _procs(path: str) -> list[int]:
    """cgroup.procs of path and every sub-cgroup (cgroup.procs alone is not hierarchical)."""
    pids: list[int] = []
    for directory, subdirs, _files in os.walk(path):
        try:
            with open(os.path.join(directory, "cgroup.procs")) as f:
                pids.extend(int(line) for line in f)
        except FileNotFoundError:
            subdirs.clear()  # removed while we walked
    return pids


def _rmdir_tree(path: str) -> None:
    """Remove path and its (empty) sub-cgroups bottom-up, retrying EBUSY briefly.

    A cgroup without sub-cgroups (the usual case) is removed with one
    ``rmdir``, which needs no descriptor: at EMFILE a tree that failed to
    start must still be able to clean up.  Listing sub-cgroups needs one, and
    a listing that fails raises (``os.walk`` would skip it silently).
    """
    try:
        os.rmdir(path)
        return
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EBUSY):
            raise
    # Sub-cgroups (EBUSY), or members still finishing their exits: bottom-up, retrying.

    def fail(error: OSError) -> None:
        raise error

    for directory, _subdirs, _files in os.walk(path, topdown=False, onerror=fail):
        try:
            _rmdir_retrying(directory)
        except FileNotFoundError:
            pass


def _rmdir_retrying(directory: str) -> None:
    deadline = time.monotonic() + REMOVE_RETRY
    while True:
        try:
            os.rmdir(directory)
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _in_cgroup(pid: int, cgroup_path: str) -> bool:
    """Whether /proc/<pid>/cgroup puts pid in cgroup_path or below."""
    try:
        path = own_cgroup(f"/proc/{pid}/cgroup")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return path is not None and (path == cgroup_path or path.startswith(cgroup_path + "/"))
