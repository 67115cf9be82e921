"""The workloads, and the checks that catch a status or a signal going to the wrong child.

Every child is started with a fate chosen in advance (``sh -c 'exit 173'``), and
its handle must report exactly that fate, for exactly its pid.  Under fast pid
reuse the ways to get this wrong are few and each has its own column:

``misattributed``  a handle reported a fate that is not its child's (another
                   child's exit code, or a pid that is not its own);
``wrong_signals``  a child died of :data:`PROBE` although nobody aimed it at that
                   child: a ``kill()`` landed on a reused pid.  No child in any
                   scenario is *meant* to die of PROBE except a ``kill_race``
                   target, so any other such death is a stray signal;
``hung_waits``     a wait still unanswered after ``wait_bound`` seconds: the
                   status was lost (taken by another waiter, or a wake-up missed).

Scenarios are functions ``(run, rng) -> None`` executed by every thread of a
crew until the run's budget (seconds, children) is spent.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, TypeVar

from stress import pool, trees
from stress.crew import PerRun
from stress.config import RESERVED_PIDS, Config
from stress.subjects import (
    CONTINUED,
    STOPPED,
    Fate,
    Handle,
    Outcome,
    Subject,
    Waitable,
    exited,
    killed,
)

PROBE = signal.SIGUSR1
"""The signal ``kill_race`` aims at its targets.  Nothing else in the harness sends it,
so a child that dies of it was hit by a stray kill; the worker counts hits on itself."""

ERROR_KEYS = (
    "misattributed",
    "wrong_signals",
    "hung_waits",
    "zombies",
    "children_left",
    "members_left",
    "fds_left",
    "exceptions",
    "wrong_results",
    "stray_failures",
)
"""Tally fields that are failures.  For syncmon every one of them must stay at zero."""

MAX_NOTES = 6

NOTHING = None
"""In the fates allowed for a poll: that it finds nothing."""

T = TypeVar("T")


@dataclass
class Tally:
    """What one scenario did and what went wrong, per subject."""

    children: int = 0
    pid_reuses: int = 0
    """Children that got a pid an earlier child of the same run already had."""
    misattributed: int = 0
    wrong_signals: int = 0
    hung_waits: int = 0
    zombies: int = 0
    children_left: int = 0
    fds_left: int = 0
    exceptions: int = 0
    members_left: int = 0
    """Tree members (pid and start time) still alive once their tree's wait returned."""
    trees: int = 0
    members: int = 0
    bystanders: int = 0
    bystander_reuses: int = 0
    """Bystanders born with a pid that a tree's root or member had earlier in the run."""
    tree_mechanism: str = ""
    tasks: int = 0
    """Scenario ``pool``: tasks submitted and checked."""
    task_deaths: int = 0
    """Tasks that failed with WorkerDied naming their worker and its true cause."""
    unledgered_deaths: int = 0
    """Of those, tasks killed before their first line: only the pid could be checked."""
    kills: int = 0
    """SIGKILLs the pool scenario's killer sent to workers."""
    wrong_results: int = 0
    """A task's result that is not its own (another seed, another worker's identity)."""
    stray_failures: int = 0
    """Tasks that failed though their worker was neither killed nor told to exit."""
    eagain: int = 0
    """Spawns refused for want of a free pid and retried (load, not a failure)."""
    seconds: float = 0.0
    pid_range: tuple[int, int] | None = None
    """Lowest and highest child pid: after the wrap, inside [300, pid_max)."""
    sigchld_blocked: str = ""
    """How many of the crew's threads block SIGCHLD, as ``n/threads``."""
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)
    resources: dict[str, object] | None = None
    """The soak's resource samples, summarised (see ``stress.soak.Sampler.summary``)."""

    def errors(self) -> int:
        return sum(getattr(self, key) for key in ERROR_KEYS)

    def as_dict(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "errors": self.errors()}


class Run:
    """One scenario against one subject: the shared budget, the pid ledger and the tally."""

    def __init__(self, subject: Subject, config: Config) -> None:
        self.subject = subject
        self.bound = config.wait_bound
        self.pid_max = config.pid_max
        self.reserved_pids = RESERVED_PIDS
        self.tally = Tally()
        self._max_children = config.max_children
        self._deadline = time.monotonic() + config.seconds
        self._seen: set[int] = set()
        self._lock = threading.Lock()

    def going(self) -> bool:
        return time.monotonic() < self._deadline and self.tally.children < self._max_children

    def spawn(self, argv: Sequence[str]) -> Handle:
        handle = self.retrying(lambda: self.subject.spawn(argv))
        self.record(handle.pid)
        return handle

    def popen(self, argv: Sequence[str]) -> Waitable:
        popen = self.retrying(lambda: self.subject.popen(argv))
        self.record(popen.pid)
        return popen

    def start(self, starter: Callable[[], Handle]) -> Handle:
        """A child started some other way (``ForkServer``), counted like the subject's."""
        handle = self.retrying(starter)
        self.record(handle.pid)
        return handle

    def plain_popen(self, argv: Sequence[str]) -> Waitable:
        popen: Waitable = self.retrying(lambda: subprocess.Popen(argv))
        self.record(popen.pid)
        return popen

    def retrying(self, start: Callable[[], T]) -> T:
        """Start a child, waiting out EAGAIN.

        With a pid range this small, a burst of live children can take every
        free pid, and fork fails with EAGAIN.  That is load, not a bug; a spawn
        still refused after ``bound`` is.
        """
        give_up = time.monotonic() + self.bound
        while True:
            try:
                return start()
            except BlockingIOError:
                if time.monotonic() > give_up:
                    raise
                with self._lock:
                    self.tally.eagain += 1
                time.sleep(0.002)

    def record(self, pid: int) -> None:
        with self._lock:
            self.tally.children += 1
            if pid in self._seen:
                self.tally.pid_reuses += 1
            else:
                self._seen.add(pid)
            low, high = self.tally.pid_range or (pid, pid)
            self.tally.pid_range = (min(low, pid), max(high, pid))

    def check(self, pid: int, got: Outcome | None, allowed: Collection[Fate | None], what: str) -> bool:
        """Count ``got`` against what child ``pid`` may legitimately have done; True if it is that.

        ``None`` in ``allowed`` (:data:`NOTHING`) is for a poll that must find nothing.
        """
        fate = None if got is None else got.fate
        if fate in allowed and (got is None or got.pid == pid):
            return True
        if got is None:
            self.count("hung_waits", f"{what}: pid {pid} not reported within {self.bound}s")
        else:
            key = "wrong_signals" if got.fate == killed(PROBE) else "misattributed"
            want = " or ".join(sorted(fate.describe() if fate else "nothing to report" for fate in allowed))
            reported = f"reported pid {got.pid} {got.fate.describe()}"
            self.count(key, f"{what}: pid {pid} should have {want}; {reported}")
        return False

    def fail(self, error: BaseException) -> None:
        self.count("exceptions", f"{type(error).__name__}: {error}")

    def note(self, text: str) -> None:
        with self._lock:
            if len(self.tally.notes) < MAX_NOTES:
                self.tally.notes.append(text)

    def count(self, key: str, text: str) -> None:
        with self._lock:
            setattr(self.tally, key, getattr(self.tally, key) + 1)
        self.note(text)


# -- ways of learning a child's fate ---------------------------------------------------------
# Each takes (handle, os.W* options, bound) and raises TimeoutError past the bound.
# They are mixed at random because each is a different path through the subject:
# a blocking wait, the future the monitor thread resolves, and caller-side polls
# that race the monitor thread's own reap.

Waiter = Callable[[Handle, int, float], Outcome]


def by_wait(handle: Handle, options: int, bound: float) -> Outcome:
    return handle.wait(options, timeout=bound)


def by_future(handle: Handle, options: int, bound: float) -> Outcome:
    """Deaths only: a future resolves once, at death."""
    return handle.result(bound)


def by_poll(handle: Handle, options: int, bound: float) -> Outcome:
    until = time.monotonic() + bound
    while (got := handle.poll(options)) is None:
        if time.monotonic() > until:
            raise TimeoutError(f"pid {handle.pid}: poll found nothing")
        time.sleep(0.0005)
    return got


DEATH_WAITERS: tuple[Waiter, ...] = (by_wait, by_future, by_poll)
CHANGE_WAITERS: tuple[Waiter, ...] = (by_wait, by_poll)


def awaited(how: Waiter, handle: Handle, options: int, bound: float) -> Outcome | None:
    """``how``'s answer, or None if it hung past ``bound``."""
    try:
        return how(handle, options, bound)
    except (TimeoutError, futures.TimeoutError):  # two classes before Python 3.11
        return None


def quick_exit(code: int, rng: random.Random) -> list[str]:
    """A child that exits with ``code``: at once, or one time in four after a few milliseconds
    (a child that outlives other threads' spawns).

    Neither forks.  A ``sh -c 'sleep ...; exit N'`` would, and when the small pid
    range is full its fork fails and the shell exits 2: a wrong status that no
    subject could be blamed for.
    """
    if rng.random() < 0.25:
        return ["perl", "-e", f"select(undef, undef, undef, 0.0{rng.randrange(1, 5)}); exit {code}"]
    return ["sh", "-c", f"exit {code}"]


# -- scenarios ------------------------------------------------------------------------------


def exit_codes(run: Run, rng: random.Random) -> None:
    """Every thread spawns children with random exit codes and collects each one way or another.

    Catches a status handed to the wrong handle: with ``waitid(P_ALL)`` a child
    can be reaped, and its pid reused, before its spawner has recorded the pid.
    """
    while run.going():
        _exit_once(run, rng)


def _exit_once(run: Run, rng: random.Random) -> None:
    code = rng.randrange(256)
    handle = run.spawn(quick_exit(code, rng))
    how = rng.choice(DEATH_WAITERS)
    run.check(handle.pid, awaited(how, handle, os.WEXITED, run.bound), {exited(code)}, how.__name__)


def soak(run: Run, rng: random.Random) -> None:
    """``exit_codes`` with children that exit at once, for as many children as the budget allows.

    Only ``sh -c 'exit N'``: the soak is about what a long run accumulates
    (statuses, descriptors, threads, memory), so it spends its time on children
    rather than on children that sleep.
    """
    while run.going():
        code = rng.randrange(256)
        handle = run.spawn(["sh", "-c", f"exit {code}"])
        how = rng.choice(DEATH_WAITERS)
        run.check(handle.pid, awaited(how, handle, os.WEXITED, run.bound), {exited(code)}, how.__name__)


def kill_race(run: Run, rng: random.Random) -> None:
    """Kills that race the reap, while other threads spawn bystanders into the freed pids.

    A *target* ignores PROBE (``trap '' USR1``) and has PROBE fired at it
    without pause until its death is known, so kills keep coming right across
    the moment of the reap.  A *bystander* is a ``sleep`` that must exit 0.  A
    kill sent after the reap goes to whatever now has the pid: usually nobody,
    under fast reuse a bystander, which then dies of PROBE.
    """
    while run.going():
        if rng.random() < 0.5:
            _target_once(run, rng)
        else:
            _bystander_once(run, rng)


def _target_once(run: Run, rng: random.Random) -> None:
    code = rng.randrange(1, 256)
    handle = run.spawn(["sh", "-c", f"trap '' USR1; exit {code}"])
    reported = rng.choice((_reported_by_poll, _reported_by_future))
    got = _hammer(handle, reported, run.bound)
    # A PROBE that lands before the shell has run ``trap`` kills it: that one was aimed.
    run.check(handle.pid, got, {exited(code), killed(PROBE)}, f"target/{reported.__name__}")


def _hammer(handle: Handle, reported: Callable[[Handle], Outcome | None], bound: float) -> Outcome | None:
    until = time.monotonic() + bound
    while time.monotonic() < until:
        handle.kill(PROBE)
        if (got := reported(handle)) is not None:
            return got
    return None


def _reported_by_poll(handle: Handle) -> Outcome | None:
    """The killing thread reaps: kill and waitid race in the caller."""
    return handle.poll()


def _reported_by_future(handle: Handle) -> Outcome | None:
    """The monitor thread reaps: kill races the reap on another thread."""
    return handle.result(0) if handle.done() else None


def _bystander_once(run: Run, rng: random.Random) -> None:
    handle = run.spawn(["sleep", f"0.0{rng.randrange(10)}"])
    how = rng.choice(DEATH_WAITERS)
    got = awaited(how, handle, os.WEXITED, run.bound)
    run.check(handle.pid, got, {exited(0)}, f"bystander/{how.__name__}")


def stop_continue(run: Run, rng: random.Random) -> None:
    """Children stopped and continued (each change awaited alone), then killed; quick exiters between.

    Stop and continue reports are state changes that a wait for death must keep
    for a later ``W.STOPPED`` / ``W.CONTINUED`` wait, not discard, and that must
    not be confused with the death.  The kernel keeps only the latest of them, so
    each is collected before the next signal is sent.
    """
    while run.going():
        handle = run.spawn(["sleep", "60"])
        _stop_and_continue(run, rng, handle)
        handle.kill(signal.SIGKILL)
        how = rng.choice(DEATH_WAITERS)
        got = awaited(how, handle, os.WEXITED, run.bound)
        run.check(handle.pid, got, {killed(signal.SIGKILL)}, f"sigkill/{how.__name__}")
        _exit_once(run, rng)


STOP_THEN_CONTINUE = (
    (signal.SIGSTOP, os.WSTOPPED, STOPPED),
    (signal.SIGCONT, os.WCONTINUED, CONTINUED),
)


def _stop_and_continue(run: Run, rng: random.Random, handle: Handle) -> None:
    for _ in range(rng.randrange(1, 4)):
        for sig, options, fate in STOP_THEN_CONTINUE:
            handle.kill(sig)
            # A look for the death in between must find none, and must leave the
            # stop or continue report for the wait below (which would hang otherwise).
            if rng.random() < 0.5 and not run.check(handle.pid, handle.poll(), {NOTHING}, "poll"):
                return
            how = rng.choice(CHANGE_WAITERS)
            got = awaited(how, handle, options, run.bound)
            if not run.check(handle.pid, got, {fate}, f"{fate.describe()}/{how.__name__}"):
                return


def popen_side_by_side(run: Run, rng: random.Random) -> None:
    """The subject's Popen and plain ``subprocess.Popen`` in the same threads, awaited in random order.

    Plain Popen reaps its own pid with ``waitpid(pid)``.  A reaper that takes
    any child leaves it ECHILD, which Popen reports as returncode 0: so exit
    codes here are never 0.  The subject must also not be confused by children
    it does not own dying all around it.
    """
    while run.going():
        mine, theirs = rng.randrange(1, 256), rng.randrange(1, 256)
        pair = [
            (run.popen(quick_exit(mine, rng)), mine, "subject-popen"),
            (run.plain_popen(quick_exit(theirs, rng)), theirs, "subprocess.Popen"),
        ]
        rng.shuffle(pair)
        for popen, code, what in pair:
            run.check(popen.pid, _returncode(popen, run.bound), {exited(code)}, what)


def _returncode(popen: Waitable, bound: float) -> Outcome | None:
    try:
        return Outcome.of_returncode(popen.pid, popen.wait(timeout=bound))
    except (TimeoutError, subprocess.TimeoutExpired):
        return None


def forkserver(run: Run, rng: random.Random) -> None:
    """exit_codes, with every child made by one ``syncmon.ForkServer`` that all threads share.

    The children are the worker's own (``CLONE_PARENT``), handed over as pidfds
    from birth and reaped by the subject's monitor: under fast reuse a status
    must still reach exactly its handle, and nothing may be left of the server
    or its children once the scenario ends.
    """
    monitor = getattr(run.subject, "_monitor", None)  # a SyncmonSubject's
    if monitor is None:
        run.tally.skipped = "needs a syncmon subject"
        return
    import syncmon
    from stress.subjects import SyncmonHandle

    with _servers.use(run) as server:
        while run.going():
            code = rng.randrange(256)

            def start() -> Handle:
                return SyncmonHandle(_through_server(server, code, rng), syncmon.W)

            handle = run.start(start)
            how = rng.choice(DEATH_WAITERS)
            got = awaited(how, handle, os.WEXITED, run.bound)
            run.check(handle.pid, got, {exited(code)}, f"forkserver/{how.__name__}")


def _through_server(server: Any, code: int, rng: random.Random) -> Any:
    """A ChildHandle whose child exits ``code``: an exec'd program, or a fork of the server."""
    if rng.random() < 0.5:
        return server.spawn(quick_exit(code, rng))
    return server.fork(os._exit, code)


def _fork_server(run: Run) -> Any:
    import syncmon

    return syncmon.ForkServer(monitor=run.subject._monitor)  # type: ignore[attr-defined]  # a SyncmonSubject


#: One ForkServer per run, started by the first thread in, closed by the last one
#: out (the server is a child of ours: left running it would count as left behind).
_servers: PerRun[Any] = PerRun(_fork_server, lambda server: server.close())


@dataclass(frozen=True)
class Scenario:
    name: str
    body: Callable[[Run, random.Random], None]
    crew: str
    """``late``: threads started after the monitor; ``early``: before syncmon was imported."""
    summary: str
    needs_popen: bool = False
    in_default_run: bool = True
    """False for the soak, which only runs when asked for (``--soak``)."""
    samples_resources: bool = False
    """Whether the worker samples its memory, descriptors and threads during the run."""


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            "exit_codes",
            exit_codes,
            "late",
            "threads spawn children with random exit codes; wait, future and poll",
        ),
        Scenario(
            "kill_race", kill_race, "late", "kill() across the reap while bystanders take the freed pids"
        ),
        Scenario(
            "early_threads",
            exit_codes,
            "early",
            "exit_codes from threads started before syncmon (SIGCHLD not blocked)",
        ),
        Scenario(
            "stop_continue",
            stop_continue,
            "late",
            "SIGSTOP/SIGCONT awaited with W.STOPPED/W.CONTINUED, then SIGKILL",
        ),
        Scenario(
            "forkserver",
            forkserver,
            "late",
            "exit_codes through one syncmon.ForkServer: children that are ours, made by a helper",
        ),
        Scenario(
            "popen_side_by_side",
            popen_side_by_side,
            "late",
            "the subject's Popen next to plain subprocess.Popen",
            needs_popen=True,
        ),
        Scenario(
            "trees",
            trees.trees,
            "late",
            "process trees (orphans, setsid, double forks) killed or ending, beside bystanders taking freed pids",
        ),
        Scenario(
            "pool",
            pool.pool,
            "late",
            "syncmon.ProcessPoolExecutor tasks while a killer SIGKILLs workers and some tasks os._exit",
        ),
        Scenario(
            "soak",
            soak,
            "late",
            "children exiting with random codes, a million by default, resources sampled (--soak)",
            in_default_run=False,
            samples_resources=True,
        ),
    )
}

DEFAULT_SCENARIOS = tuple(name for name, scenario in SCENARIOS.items() if scenario.in_default_run)
