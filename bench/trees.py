"""``python -m bench.trees``: time from a tree kill to "the tree is gone", per mechanism.

For trees of 1, 10, 100 and 1,000 processes (a ``sh`` root and N-1 ``sleep``
children), three ways in one run:

* ``cgroup``    ``Cgroup.kill()`` (``cgroup.kill``), then ``populated 0`` seen
                through an epoll on ``cgroup.events`` (no polling);
* ``proctree``  ``ProcTree.kill(SIGKILL)`` (verified pidfds, passes until
                nobody is new), then ``ProcTree.wait_empty()`` (poll on the
                members' pidfds; reparented members are reaped on the way);
* ``killpg``    ``os.killpg(pgid, SIGKILL)``, then waiting by hand: reap the
                root, then scan /proc every millisecond until no live process
                has that process group (the orphans are init's to reap).

Each tree runs ``LIVE`` seconds before it is killed: the kernel sends
``cgroup.events`` notifications at most once per 10 ms per file, so a kill
right after the tree's start would measure that rate limit (the
``populated 1`` notification of the start delays the next one).
Timing starts just before the kill call and stops when the tree is known
empty; the root is reaped after the clock stops (cgroup, proctree).  Needs
root (cgroups) and is a private tool of the tree mechanisms; it will move
into ``python -m bench`` when ``ProcTree`` is public.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import statistics
import subprocess
import time
from collections.abc import Callable

from syncmon._cgroup import Cgroup
from syncmon._proctree import ProcTree

SIZES = (1, 10, 100, 1000)
LIVE = 0.05
SETTLE = 120.0  # bound for a tree to start or end: reached only if something hangs


def _script(n: int) -> list[str]:
    return ["sh", "-c", f"i=1; while [ $i -lt {n} ]; do sleep 1000 & i=$((i+1)); done; exec sleep 1000"
            if n > 1 else "exec sleep 1000"]


def _until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SETTLE
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)


def _group_size(pgid: int) -> int:
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            fields = data[data.rindex(b")") + 2:].split()
            n += int(fields[2]) == pgid and fields[0] != b"Z"
    return n


def run_cgroup(n: int) -> float:
    with Cgroup() as cg:
        enter = 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"'
        p = subprocess.Popen(["sh", "-c", enter, "sh", cg.path, *_script(n)])
        _until(lambda: len(cg.pids()) == n, "tree start")
        ep = select.epoll()
        try:
            ep.register(cg.events_fd, select.EPOLLPRI)
            cg.populated()
            time.sleep(LIVE)
            start = time.perf_counter()
            cg.kill()
            while cg.populated():
                if not ep.poll(SETTLE):
                    raise TimeoutError("populated 0")
            elapsed = time.perf_counter() - start
        finally:
            ep.close()
            p.wait()
    return elapsed


def run_proctree(n: int) -> float:
    p = subprocess.Popen(_script(n), start_new_session=True)
    with ProcTree(p.pid, session=True) as tree:
        _until(lambda: _group_size(p.pid) == n, "tree start")
        time.sleep(LIVE)
        start = time.perf_counter()
        tree.kill(signal.SIGKILL)
        if not tree.wait_empty(SETTLE):
            raise TimeoutError("proctree empty")
        elapsed = time.perf_counter() - start
        p.wait()
    return elapsed


def run_killpg(n: int) -> float:
    p = subprocess.Popen(_script(n), start_new_session=True)
    _until(lambda: _group_size(p.pid) == n, "tree start")
    time.sleep(LIVE)
    start = time.perf_counter()
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    # killpg(pgid, 0) would also count the zombies that init has not reaped
    # yet (this machine's init reaps orphans up to a second late): look for
    # live members instead, the same end as populated 0.
    deadline = time.monotonic() + SETTLE
    while _group_size(p.pid):
        if time.monotonic() > deadline:
            raise TimeoutError("killpg group gone")
        time.sleep(0.001)
    return time.perf_counter() - start


WAYS: dict[str, Callable[[int], float]] = {"cgroup": run_cgroup, "proctree": run_proctree, "killpg": run_killpg}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="trials per size and way (median reported)")
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    args = parser.parse_args()
    print(f"{'processes':>9}  " + "  ".join(f"{w + ' ms':>12}" for w in WAYS))
    for n in args.sizes:
        medians = []
        for run in WAYS.values():
            times = []
            for _ in range(args.rounds):  # ways interleave per size, rounds are sequential
                times.append(run(n))
            medians.append(statistics.median(times) * 1000)
        print(f"{n:>9}  " + "  ".join(f"{m:>12.2f}" for m in medians), flush=True)


if __name__ == "__main__":
    main()
