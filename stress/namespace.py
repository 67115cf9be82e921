"""The pid namespace that makes pids come back fast, seen from both sides.

Outside (the driver): :func:`wrap` turns a worker command line into one that
runs it in a new pid namespace with its own /proc, under ``unshare(1)``::

    unshare --pid --fork --mount-proc --kill-child -- python -m stress.namespace --pid-max N -- WORKER...

Inside, this module runs as pid 1 (:func:`main`): it lowers the namespace's
``pid_max``, starts the worker as its child, and reaps orphans until the worker
is done.  The worker must not be pid 1 itself: the kernel does not deliver to
pid 1 a signal it has no handler for, so a stray kill landing on the worker
would go unseen, and every orphan in the namespace would become a child of
the worker, muddling the children it counts.

``pid_max`` is per pid namespace since Linux 6.14: writing it inside changes
the limit for this namespace only.  On older kernels the file is the global
setting, so it is never written there; the driver also checks the host's value
before and after.  After the first wrap the kernel allocates pids from
[300, pid_max) (``RESERVED_PIDS``) and refuses ``pid_max`` below 301, so a
``pid_max`` of 308 recycles 8 pids.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading

PID_MAX = "/proc/sys/kernel/pid_max"
PER_NAMESPACE_SINCE = (6, 14)


def read_pid_max() -> int:
    with open(PID_MAX) as f:
        return int(f.read())


def unavailable() -> str | None:
    """Why the harness cannot run in a pid namespace here, or None if it can."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "unshare(1) not found"
    if os.geteuid() != 0:
        return "not root"
    if kernel_version() < PER_NAMESPACE_SINCE:
        return (
            f"pid_max is not per pid namespace before Linux {PER_NAMESPACE_SINCE[0]}.{PER_NAMESPACE_SINCE[1]}"
        )
    probe = subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", "true"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"unshare failed: {probe.stderr.strip() or probe.returncode}"
    return None


def kernel_version() -> tuple[int, int]:
    major, minor = platform.release().split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def wrap(command: list[str], pid_max: int) -> list[str]:
    """``command`` run as the child of our init in a new pid namespace with that ``pid_max``.

    ``--kill-child`` ties the namespace's life to unshare's: if the driver kills
    unshare (a worker that overran), pid 1 gets SIGKILL, and the kernel kills
    everything else in the namespace with it.
    """
    unshare = shutil.which("unshare") or "unshare"
    init = [sys.executable, "-m", "stress.namespace", "--pid-max", str(pid_max), "--"]
    return [unshare, "--pid", "--fork", "--mount-proc", "--kill-child", "--", *init, *command]


def main(argv: list[str] | None = None) -> int:
    """pid 1 of the namespace: set ``pid_max``, start the worker, reap until it exits."""
    parser = argparse.ArgumentParser(prog="python -m stress.namespace")
    parser.add_argument("--pid-max", type=int, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if os.getpid() != 1:
        raise SystemExit("stress.namespace must run as pid 1 of a new pid namespace")
    if kernel_version() < PER_NAMESPACE_SINCE:
        raise SystemExit("this kernel's pid_max is the host's: refusing to write it")
    _announce(args.pid_max)
    worker = os.posix_spawnp(command[0], command, os.environ)
    return _reap_until(worker)


def wrap_pid_cursor() -> None:
    """Use up pids until the namespace's pid cursor wraps, so every scenario runs on the
    recycled range from its first child.

    The pids are taken by threads that end at once: a thread id is a pid, and a
    thread leaves no exit status behind for anyone to reap (a child would, and
    the contrast's reaper would file it under a pid that is about to be reused).
    Call it after the worker's long-lived threads exist: they keep the pids below
    ``RESERVED_PIDS``, outside the range that is recycled.
    """
    last = 0
    while True:
        thread = threading.Thread(target=lambda: None)
        thread.start()
        thread.join()
        assert thread.native_id is not None
        if thread.native_id < last:
            return
        last = thread.native_id


def _announce(pid_max: int) -> None:
    """Lower pid_max and tell the driver, on stdout, what the namespace looks like."""
    before = read_pid_max()
    with open(PID_MAX, "w") as f:
        f.write(str(pid_max))
    print(json.dumps({"type": "namespace", "pid_max_default": before, "pid_max": read_pid_max()}), flush=True)


def _reap_until(worker: int) -> int:
    """Reap every child until ``worker`` is one of them; return its exit status.

    Here ``wait()`` for any child is right: pid 1 owns every orphan in the
    namespace and nobody else will ever reap them.
    """
    while True:
        pid, status = os.wait()
        if pid == worker:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
