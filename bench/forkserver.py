"""``python -m bench.forkserver``: syncmon.ForkServer against multiprocessing and the spawners.

Two measures, medians of many runs, contenders interleaved round by round so
that the load of a shared machine falls on all of them alike:

* **start-to-running**: from the call (``server.fork(fn)``,
  ``Process(target=fn).start()``) to the moment ``fn`` runs in the child,
  read from ``CLOCK_MONOTONIC`` (one clock for every process) that the
  child writes down first thing;
* **spawn**: how long ``server.spawn(["true"])``, ``Monitor.spawn`` and
  ``subprocess.Popen`` take to return (each returns once the program is
  exec'd), and the same plus waiting for the exit.

Every worker imports this module (so ``preload`` and the forkserver method's
preload are the same ``PRELOAD``); the spawn method imports it in each child.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

import syncmon

#: What a "preloaded worker" has imported; heavy enough to show what preloading saves.
PRELOAD = ("json", "decimal", "email.message", "http.client", "bench.forkserver")


def mark_running(path: str) -> None:
    """Run in the child: write the time it started running."""
    now = time.monotonic()
    with open(path, "w") as f:
        f.write(repr(now))


def _read_mark(path: str) -> float:
    with open(path) as f:
        return float(f.read())


def _importable_mark_running() -> Callable[[str], None]:
    """``mark_running`` under the name a child can import: run with ``-m``,
    this module is ``__main__``, which no other interpreter has."""
    import importlib

    function: Callable[[str], None] = importlib.import_module("bench.forkserver").mark_running
    return function


def mp_contenders() -> dict[str, Callable[[str], None]]:
    mark = _importable_mark_running()

    def mp(method: str) -> Callable[[str], None]:
        context = multiprocessing.get_context(method)

        def start(path: str) -> None:
            process = context.Process(target=mark, args=(path,))  # type: ignore[attr-defined]
            process.start()
            process.join()

        return start

    return {"mp fork": mp("fork"), "mp forkserver": mp("forkserver"), "mp spawn": mp("spawn")}


def forkserver_contender(server: syncmon.ForkServer) -> Callable[[str], None]:
    mark = _importable_mark_running()

    def start(path: str) -> None:
        server.fork(mark, path).wait()

    return start


def start_to_running(contender: Callable[[str], None], directory: str) -> float:
    path = os.path.join(directory, "mark")
    start = time.monotonic()
    contender(path)
    running = _read_mark(path) - start
    os.unlink(path)
    return running


def spawn_contenders(server: syncmon.ForkServer, monitor: syncmon.Monitor) -> dict[str, Callable[[], Callable[[], object]]]:
    """Each starts ``true`` and returns a function that waits for it."""
    def via_server() -> Callable[[], object]:
        return server.spawn(["true"]).wait

    def via_monitor() -> Callable[[], object]:
        return monitor.spawn(["true"]).wait

    def via_popen() -> Callable[[], object]:
        return subprocess.Popen(["true"]).wait

    return {"ForkServer.spawn": via_server, "Monitor.spawn": via_monitor, "subprocess.Popen": via_popen}


def measure(rounds: int, spawn_rounds: int) -> dict[str, dict[str, list[float]]]:
    multiprocessing.set_forkserver_preload(list(PRELOAD))
    results: dict[str, dict[str, list[float]]] = {"running": {}, "spawn": {}, "spawn+wait": {}}
    with tempfile.TemporaryDirectory() as directory:
        forks = mp_contenders()
        # Warm-up: servers started, caches filled.  multiprocessing's forkserver
        # first, before syncmon blocks SIGCHLD in this thread: that server learns
        # of its children's deaths from SIGCHLD, and would inherit the block.
        for contender in forks.values():
            start_to_running(contender, directory)
        with syncmon.Monitor() as monitor, syncmon.ForkServer(preload=PRELOAD, monitor=monitor) as server:
            forks = {"ForkServer.fork": forkserver_contender(server), **forks}
            start_to_running(forks["ForkServer.fork"], directory)
            _rounds(results, forks, spawn_contenders(server, monitor), directory, rounds, spawn_rounds)
    return results


def _rounds(results: dict[str, dict[str, list[float]]], forks: dict[str, Callable[[str], None]],
            spawns: dict[str, Callable[[], Callable[[], object]]], directory: str, rounds: int,
            spawn_rounds: int) -> None:
    for _ in range(rounds):
        for name, contender in forks.items():
            if name == "mp spawn" and len(results["running"].get(name, [])) >= max(10, rounds // 5):
                continue  # each costs a fresh interpreter: fewer runs are enough
            results["running"].setdefault(name, []).append(start_to_running(contender, directory))
    for _ in range(spawn_rounds):
        for name, start in spawns.items():
            began = time.monotonic()
            wait = start()
            returned = time.monotonic()
            wait()
            ended = time.monotonic()
            results["spawn"].setdefault(name, []).append(returned - began)
            results["spawn+wait"].setdefault(name, []).append(ended - began)


def report(results: dict[str, dict[str, list[float]]], reference: dict[str, str]) -> str:
    lines = []
    for measure_name, by_contender in results.items():
        base = statistics.median(by_contender[reference[measure_name]])
        lines.append(f"\n{measure_name} (median, ratio to {reference[measure_name]})")
        for name, samples in by_contender.items():
            median = statistics.median(samples)
            q1, _, q3 = statistics.quantiles(samples, n=4)
            lines.append(f"  {name:18} {median * 1e6:9.0f} us  (IQR {q1 * 1e6:.0f}-{q3 * 1e6:.0f})"
                         f"  x{median / base:6.2f}  n={len(samples)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.forkserver", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="start-to-running runs per contender")
    parser.add_argument("--spawn-rounds", type=int, default=300, help="spawn runs per contender")
    args = parser.parse_args()
    results = measure(args.rounds, args.spawn_rounds)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}")
    print(report(results, {"running": "ForkServer.fork", "spawn": "ForkServer.spawn",
                           "spawn+wait": "ForkServer.spawn"}))


if __name__ == "__main__":
    main()
