"""What a scenario leaves behind in the worker, read from /proc.

Children are found by scanning ``/proc/*/stat`` for our pid as parent, because
``/proc/PID/task/TID/children`` needs CONFIG_PROC_CHILDREN, which kernels often
lack.  Inside the stress pid namespace /proc lists only a few dozen processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Snapshot:
    fds: dict[int, str]
    """Open fd -> what it points to."""
    children: frozenset[int]


@dataclass(frozen=True)
class Leftovers:
    fds: list[str]
    """What each fd opened since the first snapshot points to (e.g. ``anon_inode:[pidfd]``)."""
    children: list[int]
    zombies: list[int]
    """The children above that are dead and unreaped: a status nobody collected."""


def snapshot() -> Snapshot:
    return Snapshot(open_fds(), frozenset(children_of(os.getpid())))


def leftovers(before: Snapshot, after: Snapshot) -> Leftovers:
    children = sorted(after.children - before.children)
    return Leftovers(
        fds=[after.fds[fd] for fd in sorted(after.fds.keys() - before.fds.keys())],
        children=children,
        zombies=[pid for pid in children if process_state(pid) == "Z"],
    )


def open_fds() -> dict[int, str]:
    """Our open fds.  The listing's own directory fd is gone by the time we readlink it."""
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            continue
    return fds


def children_of(parent: int) -> list[int]:
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit() and _stat_fields(int(name))[1:2] == [str(parent)]:
            kids.append(int(name))
    return kids


def process_state(pid: int) -> str | None:
    """The one-letter state (``R``, ``S``, ``Z``...), or None once the process is gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def _stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` after the command name: state, ppid, ...; [] if the process is gone.

    The name is in parentheses and may itself contain spaces and parentheses,
    hence the split at the last ``)``.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return text.rpartition(")")[2].split()


def blocks(tid: int, sig: int) -> bool:
    """Whether thread ``tid`` of this process has ``sig`` in its signal mask."""
    with open(f"/proc/self/task/{tid}/status") as f:
        for line in f:
            if line.startswith("SigBlk:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    raise LookupError(f"no SigBlk line for thread {tid}")
