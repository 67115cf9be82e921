"""``python -m bench.process_pool``: syncmon.ProcessPoolExecutor against the stdlib's pool.

One run, medians of ``--rounds`` rounds, contenders interleaved round by
round (a shared machine's load falls on all alike).  Per contender, each
round on a fresh pool of ``--workers`` workers:

* **first result**: from the constructor call to the first ``submit``'s result;
* **tiny tasks/s**: ``--tiny`` submits of a no-op, all results collected;
* **1 MB results/s**: ``--big`` tasks returning 1 MB each;
* **SIGKILL to failed future**: a worker running a task is SIGKILLed; the
  time until that task's future fails (the stdlib fails it with
  ``BrokenProcessPool``, and every other pending task with it; syncmon fails
  only that one).

Ratios are syncmon's speed over each contender's (above 1: syncmon faster).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import signal
import statistics
import tempfile
import threading
import time
from typing import Any, Callable

import syncmon


def noop() -> None:
    return None


def megabyte() -> bytes:
    return b"x" * (1 << 20)


def announce_and_sleep(path: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(60)


def make_pool(name: str, workers: int) -> concurrent.futures.Executor:
    if name == "syncmon":
        return syncmon.ProcessPoolExecutor(workers, preload=("bench.process_pool",))
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(name))


def first_result(name: str, workers: int) -> float:
    start = time.perf_counter()
    pool = make_pool(name, workers)
    pool.submit(noop).result()
    elapsed = time.perf_counter() - start
    pool.shutdown()
    return elapsed


def throughput(name: str, workers: int, fn: Callable[[], Any], n: int) -> float:
    with make_pool(name, workers) as pool:
        pool.submit(noop).result()  # started, warm
        start = time.perf_counter()
        for f in [pool.submit(fn) for _ in range(n)]:
            f.result()
        return n / (time.perf_counter() - start)


def kill_to_failure(name: str, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pid")
        pool = make_pool(name, workers)
        try:
            future = pool.submit(announce_and_sleep, path)
            while not os.path.exists(path):
                time.sleep(0.001)
            with open(path) as f:
                pid = int(f.read())
            done = concurrent.futures.wait([future], timeout=0)  # nothing: it is running
            assert not done.done
            start = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            future.exception(timeout=60)
            return time.perf_counter() - start
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tiny", type=int, default=2000)
    parser.add_argument("--big", type=int, default=200)
    args = parser.parse_args()
    # syncmon's monitor starts in a thread of its own, so that SIGCHLD stays
    # unblocked in this one: the stdlib pools start their processes from
    # here, and multiprocessing's fork server would inherit syncmon's block
    # (README, "Children started with other tools"), never reap a killed
    # worker, and its pool's shutdown would wait for it forever (what hung
    # this benchmark's full run).
    starter = threading.Thread(target=syncmon.default_monitor)
    starter.start()
    starter.join()
    names = ["syncmon", "fork", "forkserver", "spawn"]
    measures: dict[str, Callable[[str], float]] = {
        "first result (ms)": lambda n: 1000 * first_result(n, args.workers),
        "tiny tasks/s": lambda n: throughput(n, args.workers, noop, args.tiny),
        "1 MB results/s": lambda n: throughput(n, args.workers, megabyte, args.big),
        "SIGKILL to failed future (ms)": lambda n: 1000 * kill_to_failure(n, args.workers),
    }
    higher_is_better = {"tiny tasks/s", "1 MB results/s"}
    results: dict[str, dict[str, list[float]]] = {m: {n: [] for n in names} for m in measures}
    for _ in range(args.rounds):
        for measure, run in measures.items():
            for name in names:
                results[measure][name].append(run(name))
    print(f"workers={args.workers} rounds={args.rounds} tiny={args.tiny} big={args.big} (medians)")
    print(f"{'measure':32}" + "".join(f"{n:>12}" for n in names) + "   syncmon speed-up vs " + "/".join(names[1:]))
    for measure in measures:
        medians = {n: statistics.median(results[measure][n]) for n in names}
        ours = medians["syncmon"]
        ratios = [(ours / medians[n]) if measure in higher_is_better else (medians[n] / ours) for n in names[1:]]
        print(f"{measure:32}" + "".join(f"{medians[n]:12.1f}" for n in names)
              + "   " + " ".join(f"{r:.2f}x" for r in ratios))


if __name__ == "__main__":
    main()
