"""A program that set SIGCHLD to SIG_IGN: the kernel reaps its children at once
and sends no SIGCHLD at all, so the signalfd never wakes up.

Usage: python sigchld_ignored.py pidfd|signalfd dies-at-once|dies-while-waited

Prints, for a child someone waits for and for one nobody waits for (only its
future), "exited 3" (the true status) or "ReapedElsewhere: <message>".
A wait() without a timeout, or a future, that does not end within HANG
seconds is reported as a hang and fails the script.  Without pidfds nothing
could ever tell of such a child, so spawn refuses up front: the script then
prints "refused: <message>" once.
"""

import signal
import sys
import threading

from syncmon import Monitor, ReapedElsewhere

HANG = 10
mode, child = sys.argv[1:]
script = {"dies-at-once": "exit 3", "dies-while-waited": "sleep 0.3; exit 3"}[child]


def outcome(get):
    try:
        st = get()
    except ReapedElsewhere as e:
        return f"ReapedElsewhere: {e}"
    return f"{st.code.name.lower()} {st.status}"


def wait_without_timeout(h):
    """h.wait() with no timeout, run on a daemon thread so that a hang is reported."""
    result = []
    waiter = threading.Thread(target=lambda: result.append(outcome(h.wait)), daemon=True)
    waiter.start()
    waiter.join(HANG)
    assert not waiter.is_alive(), f"wait() did not return within {HANG} s"
    return result[0]


signal.signal(signal.SIGCHLD, signal.SIG_IGN)
with Monitor(pidfd=mode == "pidfd") as mon:
    try:
        waited = mon.spawn(["sh", "-c", script])
    except ChildProcessError as e:
        print(f"refused: {e}")
        sys.exit(0)
    unwaited = mon.spawn(["sh", "-c", script])
    print("waited", wait_without_timeout(waited))
    print("future", outcome(lambda: unwaited.future.result(timeout=HANG)))
