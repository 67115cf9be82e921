"""``python -m syncmon``: a short demonstration on real children.

Several threads start children at once and block waiting for them; a timer
ends each child at an instant the demo records (a signal, or closing the
pipe the child reads so it exits by itself), so the table can show how long
the waiting thread took to learn of the death.  The same is then done with
``subprocess.Popen.wait(timeout=...)``, CPython's sleep-and-look loop, and a
batch of deaths is collected as futures.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import signal
import statistics
import subprocess
import threading
import time
from typing import Callable

import syncmon

THREADS = 4
PER_THREAD = 6


def _plan(n: int) -> tuple[list[str], int | None]:
    """The n-th child, and the signal that ends it (None: it exits by itself)."""
    if n % 3 == 0:
        return ["sleep", "30"], signal.SIGTERM
    if n % 3 == 1:
        return ["sleep", "30"], signal.SIGKILL
    return ["sh", "-c", f"read _; exit {n}"], None


def _end_later(end: Callable[[], None]) -> list[float]:
    """Run ``end`` 20-80 ms from now, when the waiter is long asleep; return
    a list that receives the instant it ran."""
    ended: list[float] = []

    def run() -> None:
        ended.append(time.monotonic())
        end()

    threading.Timer(random.uniform(0.02, 0.08), run).start()
    return ended


#: thread, pid, command, how it ended, seconds from the end to the waiter waking
Row = tuple[str, int, str, str, float]


def syncmon_worker(monitor: syncmon.Monitor, thread: int, rows: list[Row]) -> None:
    for kind in range(PER_THREAD):
        argv, sig = _plan(thread * PER_THREAD + kind)
        read_end, write_end = os.pipe()
        with monitor.spawn(argv, stdin=read_end) as child:
            os.close(read_end)
            ended = _end_later(lambda: os.close(write_end) if sig is None else child.kill(sig))
            state = child.wait(timeout=10)
            learned = time.monotonic() - ended[0]
        if sig is not None:
            os.close(write_end)
        how = str(state).removeprefix(f"pid {state.pid} ")
        rows.append((f"T{thread}", state.pid, " ".join(argv), how, learned))


def polling_latencies(samples: int) -> list[float]:
    latencies = []
    for _ in range(samples):
        process = subprocess.Popen(["sleep", "30"])
        ended = _end_later(process.kill)
        process.wait(timeout=10)
        latencies.append(time.monotonic() - ended[0])
    return latencies


def main() -> None:
    rows: list[Row] = []
    started = time.monotonic()
    with syncmon.Monitor() as monitor:
        print(f"syncmon demo: {THREADS} threads x {PER_THREAD} children, pidfds: {monitor.pidfd}\n")
        threads = [threading.Thread(target=syncmon_worker, args=(monitor, i, rows)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        print(f"{'thread':<7}{'pid':>8}  {'command':<22}{'how it ended':<26}{'learned after':>14}")
        for thread_name, pid, command, how, learned in sorted(rows):
            print(f"{thread_name:<7}{pid:>8}  {command:<22}{how:<26}{learned * 1e6:>11.0f} us")

        handles = [monitor.spawn(["sh", "-c", f"sleep 0.0{n % 5}; exit {n}"]) for n in range(12)]
        order = [f.result().status for f in concurrent.futures.as_completed(h.future for h in handles)]
        print(f"\n12 deaths as futures (as_completed), exit codes in order of death: {order}")

    ours = [learned for *_, learned in rows]
    theirs = polling_latencies(12)
    print(
        f"\nmedian time from a child's end to its waiter waking:"
        f"\n  syncmon ChildHandle.wait():              {statistics.median(ours) * 1e6:8.0f} us  ({len(ours)} children)"
        f"\n  subprocess.Popen.wait(timeout=10):       {statistics.median(theirs) * 1e6:8.0f} us  ({len(theirs)} children)"
        f"\n  ratio {statistics.median(theirs) / statistics.median(ours):.0f}x;"
        f" the demo took {time.monotonic() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
