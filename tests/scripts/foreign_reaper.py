"""A foreign ``os.waitpid(-1)`` reaper while threads spawn, under pid reuse (issue 7, item 9).

Usage: python foreign_reaper.py pidfd|signalfd CHILDREN_PER_THREAD, inside a pid
namespace with a low pid_max (stress.namespace.wrap), so that a pid the
foreign reaper frees comes back within microseconds.

Every child exits with a code fixed in advance.  With pidfds each handle must
report that code or ``ReapedElsewhere``, never another child's; and no
``kill`` through a handle may reach a process other than its child (every
child kills a victim of ours only if we ask; victims count what reached them).
Prints one line ``true=N lost=N wrong=N``; exits 1 if wrong > 0.
"""

import os
import sys
import threading
import time

from syncmon import Monitor, ReapedElsewhere

THREADS = 4

stop = threading.Event()


def foreign_reaper() -> None:
    while not stop.is_set():
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(0.0005)


tally = {"true": 0, "lost": 0, "wrong": 0}
lock = threading.Lock()


def worker(mon: Monitor, n: int, count: int) -> None:
    for i in range(count):
        code = (n * 7 + i) % 50
        handle = mon.spawn(["sh", "-c", f"exit {code}"])
        try:
            outcome = "true" if handle.wait(timeout=20).returncode == code else "wrong"
        except ReapedElsewhere:
            outcome = "lost"
        handle.kill()  # known dead or lost: must be a no-op, never a signal to a stranger
        with lock:
            tally[outcome] += 1


def main() -> int:
    mode, count = sys.argv[1], int(sys.argv[2])
    threading.Thread(target=foreign_reaper, daemon=True).start()
    with Monitor(pidfd=mode == "pidfd") as mon:
        threads = [threading.Thread(target=worker, args=(mon, n, count)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    stop.set()
    print(" ".join(f"{k}={v}" for k, v in tally.items()), flush=True)
    return 1 if tally["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
