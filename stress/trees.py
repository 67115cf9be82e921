"""Scenario ``trees``: process trees killed and awaited under pid reuse, next to bystanders.

Each iteration starts a tree whose root (a perl script, so that a fork refused
for want of a pid is retried instead of changing the root's exit status) forks
1-3 members of random shapes: a plain child, a child that ``setsid()``s, or a
double fork (the intermediate exits at once, orphaning the member).  Every
member writes its pid *and start time* (read from its own ``/proc/self/stat``
before it execs ``sleep``) up a pipe, so that "is it still alive" is asked of
that very process, never of whoever has its pid later.  The root then exits at
once (orphaning its members) or sleeps.  The tree ends one of three ways:

``natural``  members sleep a few milliseconds and the root exits CODE;
``kill``     members sleep 100 s, then ``tree.kill(SIGKILL)``;
``stop``     members sleep 100 s, then ``handle.stop(grace)`` (SIGTERM, then SIGKILL);
``late_kill`` as ``natural``, with a ``tree.kill(SIGKILL)`` a few milliseconds later
             (a timeout that fires as the job finishes).

Checked: the tree's wait reports the root's pid and its true fate; when it
returns no member is alive (``members_left``).  *Bystanders*, a few plain
``subprocess.Popen`` children in sessions of their own, blocking every signal,
are retired and replaced all the time, so they keep taking pids that tree
processes just freed.  Retired, a bystander prints the signals pending on it;
any signal there, or a bystander that died (SIGKILL cannot be blocked), is a
signal sent to a process outside every tree (``wrong_signals``).

The contrast subject kills trees the naive way (:class:`NaiveTree`).
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import signal
import subprocess
import threading
import time
from collections.abc import Collection
from typing import Any, Protocol

from stress.crew import PerRun
from stress.subjects import Fate, Outcome, exited, killed

ROOT_SCRIPT = r"""
use POSIX ();
my ($shapes, $nap, $end) = @ARGV;
sub forked { while (1) { my $p = fork; return $p if defined $p; select(undef, undef, undef, 0.002); } }
sub me { open(my $f, '<', '/proc/self/stat') or die; my $s = <$f>; $s =~ s/^.*\) //; (split ' ', $s)[19] }
my @members;
for my $shape (split //, $shapes) {
    pipe(my $r, my $w) or die;
    my $pid = forked();
    if ($pid == 0) {
        close $r;
        POSIX::setsid() if $shape eq 's';
        if ($shape eq 'd' && forked() != 0) { POSIX::_exit(0); }
        syswrite $w, "$$:" . me() . "\n";
        close $w;
        open(STDOUT, '>', '/dev/null');
        exec 'sleep', $nap;
        POSIX::_exit(127);
    }
    close $w;
    my $line = <$r>;
    close $r;
    waitpid($pid, 0) if $shape eq 'd';
    chomp $line;
    push @members, $line;
}
syswrite STDOUT, "@members\n";
if ($end eq 'sleep') { exec 'sleep', '100'; }
exit $end;
"""
"""argv: SHAPES (one letter a member: p plain, s setsid, d double fork), the members'
``sleep`` argument, and the root's end: an exit code, or ``sleep`` (100 s)."""

BYSTANDER_SCRIPT = r"""
use POSIX ();
my $all = POSIX::SigSet->new; $all->fillset; POSIX::sigprocmask(POSIX::SIG_BLOCK, $all);
<STDIN>;
my $p = POSIX::SigSet->new; POSIX::sigpending($p);
syswrite STDOUT, "pending:" . join(",", grep { $p->ismember($_) } 1..64) . "\n";
"""

BYSTANDERS = 2
"""Bystanders alive at once, per run: each holds a pid the trees then cannot have."""
PIDS_PER_TREE = 6
"""A tree at its largest: root, three members, a double fork's intermediate, and the
fallback's watching thread (a thread id is a pid)."""
STOP_GRACE = 0.05
ENDINGS = ("natural", "kill", "stop", "late_kill")
LATE_KILL_AFTER = 0.15
"""``late_kill``: a tree whose members nap 10-90 ms is killed up to this long after
starting (a timeout firing as the job finishes): by then its pids may be a bystander's."""


class Tree(Protocol):
    """One tree as the scenario drives it: syncmon's, or the naive one."""

    @property
    def pid(self) -> int: ...

    @property
    def mechanism(self) -> str: ...

    def kill(self, sig: int) -> None: ...

    def stop(self, grace: float, bound: float) -> Outcome | None: ...

    def wait(self, bound: float) -> Outcome | None: ...


class SyncmonTree:
    """``Monitor.spawn(argv, tree=True)``: the handle's ``tree`` and ``stop``."""

    def __init__(self, monitor: Any, argv: list[str], stdout: int) -> None:
        self._handle = monitor.spawn(argv, tree=True, stdout=stdout)
        self.pid: int = self._handle.pid
        self.mechanism: str = self._handle.tree.mechanism

    def kill(self, sig: int) -> None:
        self._handle.tree.kill(sig)

    def stop(self, grace: float, bound: float) -> Outcome | None:
        state = self._handle.stop(grace)
        # stop() returns once the tree is empty; the tree's own answer must agree.
        return _agreeing(_outcome(state), self.wait(bound))

    def wait(self, bound: float) -> Outcome | None:
        try:
            return _outcome(self._handle.tree.wait(timeout=bound))
        except TimeoutError:
            return None


def _outcome(state: Any) -> Outcome:
    return Outcome(int(state.pid), Fate(int(state.code), int(state.status)))


def _agreeing(first: Outcome, second: Outcome | None) -> Outcome | None:
    return first if second == first else second


class NaiveTree:
    """What a tree kill looks like without a mechanism that owns the members.

    The root leads a session (so its pid is the members' process group); kill
    is ``killpg(root pid)`` plus ``kill()`` of every pid the members reported
    when they started; stop is SIGTERM, ``grace``, then SIGKILL to the same
    pids; wait is the root's wait, then "until no listed pid exists".  Each of
    these names processes by pid, long after the pid may have been freed: a
    group whose last member left can be reused as a bystander's pid, and a
    member killed by the SIGTERM frees its pid before the SIGKILL is sent.
    """

    mechanism = "naive"

    def __init__(self, reaper: Any, argv: list[str], stdout: int) -> None:
        self._root = reaper.spawn(argv, stdout=stdout, start_new_session=True)
        self.pid: int = self._root.pid
        self.listed: list[int] = []

    def kill(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)
        for pid in self.listed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop(self, grace: float, bound: float) -> Outcome | None:
        self.kill(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            self._root.wait(timeout=grace)
        self.kill(signal.SIGKILL)
        return self.wait(bound)

    def wait(self, bound: float) -> Outcome | None:
        until = time.monotonic() + bound
        try:
            root = self._root.wait(timeout=bound)
        except TimeoutError:
            return None
        while any(_exists(pid) for pid in self.listed):
            if time.monotonic() > until:
                return None
            time.sleep(0.001)
        return root  # type: ignore[no-any-return]


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def open_tree(subject: object, argv: list[str], stdout: int) -> Tree | None:
    """The subject's tree for ``argv``, or None if the subject has no trees."""
    monitor = getattr(subject, "_monitor", None)  # a SyncmonSubject's
    if monitor is not None:
        return SyncmonTree(monitor, argv, stdout)
    from stress.contrast import PAllReaper

    if isinstance(subject, PAllReaper):
        return NaiveTree(subject, argv, stdout)
    return None


# -- the scenario ---------------------------------------------------------------------------


class TreeRun:
    """What the ``trees`` threads of one run share: the bystanders, the tree slots, the ledger."""

    def __init__(self, run: Any) -> None:
        self.run = run
        # Pids for trees: not the bystanders', the fork server's, nor a fallback thread's.
        free = max(0, run.pid_max - run.reserved_pids - BYSTANDERS - 2)
        # A tree's forks retry on EAGAIN; more trees than pids would starve each other.
        self.max_members = max(1, min(3, free - 2))
        self.slots = threading.BoundedSemaphore(max(1, free // (self.max_members + 2)))
        self.tree_pids: set[int] = set()
        self._bystanders: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._churning = threading.Lock()

    def churn(self, rng: random.Random) -> None:
        """Retire one bystander (if there are enough) and start a new one in a freshly freed pid.

        One churn at a time, so that never more than BYSTANDERS exist."""
        if not self._churning.acquire(blocking=False):
            return
        try:
            self._swap(rng)
        finally:
            self._churning.release()

    def _swap(self, rng: random.Random) -> None:
        with self._lock:
            old = self._bystanders.pop(rng.randrange(len(self._bystanders))) if (
                len(self._bystanders) >= BYSTANDERS) else None
        if old is not None:
            self._retire(old)
        new = self.run.retrying(
            lambda: subprocess.Popen(
                ["perl", "-e", BYSTANDER_SCRIPT],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,
            )
        )
        self.run.record(new.pid)
        with self._lock:
            self.run.tally.bystanders += 1
            if new.pid in self.tree_pids:
                self.run.tally.bystander_reuses += 1
            self._bystanders.append(new)

    def retire_all(self) -> None:
        with self._lock:
            left, self._bystanders = self._bystanders, []
        for bystander in left:
            self._retire(bystander)

    def _retire(self, bystander: subprocess.Popen[bytes]) -> None:
        out, _ = bystander.communicate(b"\n", timeout=self.run.bound)
        text = out.decode(errors="replace").strip()
        pending = text.removeprefix("pending:") if text.startswith("pending:") else None
        if pending is None:
            self.run.count("wrong_signals", f"bystander {bystander.pid} died: returncode {bystander.returncode}")
        elif pending:
            names = ",".join(_signal_name(int(n)) for n in pending.split(","))
            self.run.count("wrong_signals", f"bystander {bystander.pid} had signals pending: {names}")

    def note_tree(self, tree: Tree, members: list[tuple[int, int]]) -> None:
        with self._lock:
            self.run.tally.trees += 1
            self.run.tally.members += len(members)
            self.run.tally.tree_mechanism = tree.mechanism
            self.tree_pids.add(tree.pid)
            self.tree_pids.update(pid for pid, _ in members)
        for pid, _ in members:
            self.run.record(pid)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


#: One TreeRun per run; the last thread out retires the bystanders (our children).
_tree_runs: PerRun[TreeRun] = PerRun(TreeRun, TreeRun.retire_all)


def trees(run: Any, rng: random.Random) -> None:
    """See the module's docstring."""
    if getattr(run.subject, "_monitor", None) is None and run.subject.name != "contrast":
        run.tally.skipped = "needs a syncmon subject or the contrast"
        return
    with _tree_runs.use(run) as shared:
        while run.going():
            if rng.random() < 0.7:
                shared.churn(rng)
            if shared.slots.acquire(timeout=0.01):
                try:
                    _tree_once(shared, rng)
                finally:
                    shared.slots.release()


def _tree_once(shared: TreeRun, rng: random.Random) -> None:
    run = shared.run
    ending = rng.choice(ENDINGS)
    code = rng.randrange(256)
    root_end = "sleep" if ending != "natural" and rng.random() < 0.5 else str(code)
    shapes = "".join(rng.choice("psd") for _ in range(rng.randrange(1, shared.max_members + 1)))
    natural = ending in ("natural", "late_kill")
    root_end = str(code) if natural else root_end
    nap = f"0.0{rng.randrange(1, 10)}" if natural else "100"
    argv = ["perl", "-e", ROOT_SCRIPT, shapes, nap, root_end]
    r, w = os.pipe()
    try:
        tree = run.retrying(lambda: open_tree(run.subject, argv, w))
    finally:
        os.close(w)
    try:
        members = _read_members(r, run.bound)
    finally:
        os.close(r)
    assert tree is not None
    run.record(tree.pid)
    if isinstance(tree, NaiveTree):
        tree.listed = [pid for pid, _ in members]
    shared.note_tree(tree, members)
    what = f"tree {shapes}/{ending}/root {root_end}"
    if ending == "natural":
        got, allowed = tree.wait(run.bound), {exited(code)}
    elif ending == "late_kill":
        time.sleep(rng.uniform(0, LATE_KILL_AFTER))
        tree.kill(signal.SIGKILL)
        got, allowed = tree.wait(run.bound), {exited(code), killed(signal.SIGKILL)}
    elif ending == "kill":
        tree.kill(signal.SIGKILL)
        got, allowed = tree.wait(run.bound), _killed_or(code, root_end, {signal.SIGKILL})
    else:
        got = tree.stop(STOP_GRACE, run.bound)
        allowed = _killed_or(code, root_end, {signal.SIGTERM, signal.SIGKILL})
    run.check(tree.pid, got, allowed, what)
    if got is not None:
        _check_gone(run, list(zip(shapes, members)), what)


def _killed_or(code: int, root_end: str, sigs: Collection[int]) -> set[Fate]:
    """A killed tree's root died of the signal; a root that exits at once may have won the race."""
    fates = {killed(sig) for sig in sigs}
    return fates if root_end == "sleep" else fates | {exited(code)}


def _read_members(fd: int, bound: float) -> list[tuple[int, int]]:
    """The root's line "pid:starttime ...", one per member."""
    data = b""
    until = time.monotonic() + bound
    while not data.endswith(b"\n"):
        left = until - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError("the tree's root did not report its members")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise RuntimeError(f"the tree's root ended before reporting its members: {data!r}")
        data += chunk
    return [(int(pid), int(start)) for pid, start in (item.split(":") for item in data.decode().split())]


def _check_gone(run: Any, members: list[tuple[str, tuple[int, int]]], what: str) -> None:
    """After the tree's wait, none of its members (each with its shape letter) may be
    alive or our zombie (a zombie whose parent is the namespace's init is dead:
    reaping it is init's business)."""
    for shape, (pid, start) in members:
        fields = _stat(pid)
        ours_or_alive = fields[1:2] == [str(os.getpid())] or fields[:1] != ["Z"]
        if len(fields) > 19 and int(fields[19]) == start and ours_or_alive:
            run.count("members_left",
                      f"{what}: member {pid} (shape {shape}) still alive ({fields[0]}) after the tree's wait")


def _stat(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return []
