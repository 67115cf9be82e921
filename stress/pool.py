"""Scenario ``pool``: a ``syncmon.ProcessPoolExecutor`` whose workers die under pid reuse.

One pool per run, shared by the crew.  The first thread in is the *killer*:
every few milliseconds it SIGKILLs a worker the pool itself lists (busy ones
mostly, sometimes an idle one), through the worker's ``ChildHandle``, which
cannot signal a process that reuses the pid.  The other threads submit small
tasks in batches and check each one; a few tasks end their worker with
``os._exit(n)``.

The truth comes from the workers, not from the pool: before doing anything
else a task appends ``seed pid starttime pidfs-inode`` to its thread's ledger
file (one ``write`` with ``O_APPEND``), so the ledger says which worker
process ran which task even when that process then dies.  The identity is the
triple, not the pid: with 8 recycled pids one pid serves dozens of workers in a
run.  The killer writes the same identity of each victim into its set before
the kill.  Then every task must have one of these ends:

* its true result ``(seed, identity of the worker in the ledger, digest(seed))``;
* ``WorkerDied`` with ``.pid`` the ledger's pid and ``.state``
  "exited with status n" (an ``os._exit(n)`` task) or "killed by SIGKILL" (the
  ledger's worker is one the killer hit);
* ``WorkerDied`` "killed by SIGKILL" for a task with no ledger line (killed
  between dispatch and its first line), whose ``.pid`` is a victim's pid.

Columns: a wrong pid or state in a ``WorkerDied`` is ``misattributed``; a
result that is not the task's own is ``wrong_results``; any other failure (a
task failed whose worker nobody killed, ``BrokenProcessPool``, another
exception) is ``stray_failures``; a future still pending after ``wait_bound``
is a ``hung_wait``.  Children, zombies and fds left once the pool is shut down
are counted by the worker as for every scenario.

Weaker than it looks in one place: the killer reads a victim's identity from
/proc between two looks at the handle's ``returncode``.  A worker reaped in
between, whose pid a new worker took at once, would put the newcomer's identity
in the victim set.  That can only excuse a SIGKILL report (slack), never
cause an error.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import zlib
from concurrent import futures
from dataclasses import dataclass
from typing import Any, NamedTuple

from stress.crew import PerRun
from stress.subjects import Fate, exited, killed

MAX_WORKERS = 3
PIDS_BESIDE_WORKERS = 4
"""Recycled pids the pool needs besides its workers: the fork server, the pool's I/O
thread, a ``syncmon-callback`` thread, and one free for a replacement's fork."""
BATCH = 8
"""Tasks a submitting thread has in flight before it checks them."""
EXIT_SHARE = 0.03
"""Tasks that end their worker with ``os._exit(n)``."""
IDLE_KILL_SHARE = 0.2
"""Kills aimed at any ready worker, busy or not (an idle death must fail nothing)."""
KILL_GAP = (0.005, 0.05)
"""Seconds between two kills, uniform."""
MAX_NAP = 0.004
"""A task sleeps up to this long, so that kills find workers mid-task."""


class Identity(NamedTuple):
    """One process, for the whole boot: its pid is reused, the other two are not
    (the pidfs inode is unique since Linux 6.9; the start time is in clock ticks)."""

    pid: int
    start: int
    inode: int


def identity(pid: int) -> Identity | None:
    """Who has ``pid`` now, or None if nobody does."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            start = int(f.read().rpartition(")")[2].split()[19])
        return Identity(pid, start, _pidfs_inode(pid))
    except (FileNotFoundError, ProcessLookupError):
        return None


def _pidfs_inode(pid: int) -> int:
    """The inode of a pidfd for ``pid``; 0 on a kernel without pidfd_open (the start time
    then has to do)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError as error:
        if error.errno != errno.ENOSYS:
            raise
        return 0
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def digest(seed: int) -> int:
    return zlib.crc32(seed.to_bytes(8, "little"))


def task(ledger: str, seed: int, nap: float, exit_code: int | None) -> tuple[int, Identity, int]:
    """Runs in a pool worker: say who runs ``seed``, then return or die."""
    me = identity(os.getpid())
    assert me is not None
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        os.write(fd, f"{seed} {me.pid} {me.start} {me.inode}\n".encode())
    finally:
        os.close(fd)
    if nap:
        time.sleep(nap)
    if exit_code is not None:
        os._exit(exit_code)
    return seed, me, digest(seed)


@dataclass(frozen=True)
class Planned:
    seed: int
    exit_code: int | None
    future: futures.Future[Any]


class Ledger:
    """One thread's ledger file, read as it grows (every line is one whole ``write``)."""

    def __init__(self, directory: str) -> None:
        fd, self.path = tempfile.mkstemp(dir=directory, prefix="ledger-")
        os.close(fd)
        self._offset = 0
        self.ran_by: dict[int, Identity] = {}

    def catch_up(self) -> list[Identity]:
        """Read the new lines; the identities in them, in order."""
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        seen = []
        for line in data[:end].decode().splitlines():
            seed, pid, start, inode = map(int, line.split())
            self.ran_by[seed] = Identity(pid, start, inode)
            seen.append(self.ran_by[seed])
        return seen


class PoolRun:
    """What the ``pool`` threads of one run share: the pool, the killer's victims, the ledgers."""

    def __init__(self, run: Any) -> None:
        import syncmon

        self.run = run
        self.worker_died = syncmon.WorkerDied
        free = run.pid_max - run.reserved_pids - PIDS_BESIDE_WORKERS
        self.workers = max(1, min(MAX_WORKERS, free))
        self.directory = tempfile.mkdtemp(prefix="stress-pool-")
        self.pool = run.retrying(lambda: syncmon.ProcessPoolExecutor(
            self.workers, monitor=run.subject._monitor, preload=("stress.pool",)))
        self.victims: set[Identity] = set()
        self.workers_seen: set[Identity] = set()
        self._lock = threading.Lock()
        self._killer_taken = False
        self._seeds = iter(range(1, 1 << 62))

    def take_killer(self) -> bool:
        with self._lock:
            taken, self._killer_taken = self._killer_taken, True
        return not taken

    def next_seed(self, rng: random.Random) -> int:
        with self._lock:
            return next(self._seeds) * 1_000_003 + rng.randrange(1_000_003)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- the killer ------------------------------------------------------------------------

    def kill_one(self, rng: random.Random) -> None:
        """SIGKILL one ready worker of the pool's, recording who it is first."""
        inner = self.pool._pool
        ready = [w for w in list(inner.workers.values()) if w.ready]
        busy = [w for w in ready if w.tasks]
        choices = ready if rng.random() < IDLE_KILL_SHARE else busy
        if not choices:
            return
        handle = rng.choice(choices).handle
        if handle.returncode is not None:
            return
        who = identity(handle.pid)
        # Still not reaped after the read: the read saw this worker (see the module's docstring).
        if who is None or handle.returncode is not None:
            return
        with self._lock:
            self.victims.add(who)
        self.add("kills")
        handle.kill(signal.SIGKILL)

    def add(self, key: str, n: int = 1) -> None:
        """Count in one of the pool's own tally fields (every thread counts there)."""
        with self._lock:
            setattr(self.run.tally, key, getattr(self.run.tally, key) + n)

    def was_killed(self, who: Identity) -> bool:
        with self._lock:
            return who in self.victims

    def killed_pid(self, pid: int) -> bool:
        with self._lock:
            return any(victim.pid == pid for victim in self.victims)

    def saw_workers(self, seen: list[Identity]) -> None:
        """Count each worker process once, as the run's children (pid reuse included)."""
        for who in seen:
            with self._lock:
                new = who not in self.workers_seen
                self.workers_seen.add(who)
            if new:
                self.run.record(who.pid)


#: One PoolRun per run; the last thread out shuts the pool down (its workers and
#: fork server are our children: left running they would count as left behind).
_pool_runs: PerRun[PoolRun] = PerRun(PoolRun, PoolRun.close)


def pool(run: Any, rng: random.Random) -> None:
    """See the module's docstring."""
    if getattr(run.subject, "_monitor", None) is None:
        run.tally.skipped = "needs a syncmon subject"
        return
    with _pool_runs.use(run) as shared:
        if shared.take_killer():
            while run.going():
                time.sleep(rng.uniform(*KILL_GAP))
                shared.kill_one(rng)
            return
        ledger = Ledger(shared.directory)
        while run.going():
            _batch(shared, ledger, rng)


def _batch(shared: PoolRun, ledger: Ledger, rng: random.Random) -> None:
    planned = []
    for _ in range(BATCH):
        seed = shared.next_seed(rng)
        exit_code = rng.randrange(1, 256) if rng.random() < EXIT_SHARE else None
        nap = rng.choice((0.0, rng.uniform(0, MAX_NAP)))
        future = shared.pool.submit(task, ledger.path, seed, nap, exit_code)
        planned.append(Planned(seed, exit_code, future))
    futures.wait([p.future for p in planned], timeout=shared.run.bound)
    shared.saw_workers(ledger.catch_up())
    for p in planned:
        _check(shared, ledger, p)


def _check(shared: PoolRun, ledger: Ledger, planned: Planned) -> None:
    run = shared.run
    what = f"task {planned.seed}" + ("" if planned.exit_code is None else f" (os._exit({planned.exit_code}))")
    shared.add("tasks")
    if not planned.future.done():
        run.count("hung_waits", f"{what}: not done within {run.bound}s")
        return
    error = planned.future.exception()
    ran_by = ledger.ran_by.get(planned.seed)
    if error is None:
        _check_result(run, planned, ran_by, what)
    elif isinstance(error, shared.worker_died):
        _check_death(shared, planned, ran_by, error, what)
    else:
        run.count("stray_failures", f"{what}: {type(error).__name__}: {error}")


def _check_result(run: Any, planned: Planned, ran_by: Identity | None, what: str) -> None:
    value = planned.future.result()
    expected = (planned.seed, ran_by, digest(planned.seed))
    if planned.exit_code is not None or ran_by is None or value != expected:
        run.count("wrong_results", f"{what}: returned {value!r}, ledger says {ran_by}")


def _check_death(shared: PoolRun, planned: Planned, ran_by: Identity | None, error: Any, what: str) -> None:
    """A WorkerDied: for the worker the ledger names, with a cause that worker really had."""
    run = shared.run
    state = error.state
    got = None if state is None else Fate(int(state.code), int(state.status))
    if ran_by is None:  # killed before its first line
        allowed = {killed(signal.SIGKILL)} if shared.killed_pid(error.pid) else set()
        pid_ok = True
    else:
        allowed = set() if planned.exit_code is None else {exited(planned.exit_code)}
        if shared.was_killed(ran_by):
            allowed.add(killed(signal.SIGKILL))
        pid_ok = error.pid == ran_by.pid and (state is None or state.pid == error.pid)
    if not allowed:
        run.count("stray_failures", f"{what}: {error} (ledger: {ran_by}; its worker was neither killed nor exiting)")
    elif not pid_ok or got not in allowed:
        want = " or ".join(sorted(fate.describe() for fate in allowed))
        run.count("misattributed", f"{what}: ran by {ran_by}, should have {want}; got {error}")
    else:
        shared.add("task_deaths")
        shared.add("unledgered_deaths", ran_by is None)
