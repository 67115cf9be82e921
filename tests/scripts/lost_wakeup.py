"""Rule 1: a thread started before the engine does not block SIGCHLD.

Usage: python lost_wakeup.py pidfd|signalfd      (prints "ok N")

The early thread spawns children itself, with os.posix_spawn + adopt and with
mon.spawn.  With SIGCHLD unblocked and at its default disposition in the
forking thread, the kernel discards the SIGCHLD of that thread's children, so
the signalfd never hears of those deaths.  Every wait() must return anyway.
"""

import os
import signal
import sys
import threading

ROUNDS = 50
go = threading.Event()
done = []


def early_thread():
    go.wait()
    assert signal.SIGCHLD not in signal.pthread_sigmask(signal.SIG_BLOCK, ()), \
        "premise: this thread must not block SIGCHLD"
    for i in range(ROUNDS):
        code = i % 7
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", f"exit {code}"], os.environ)
        assert mon.adopt(pid).wait(timeout=10).returncode == code, "adopted child"
        slow = f"sleep 0.0{i % 3}; exit {code}"  # some die before, some after wait() starts
        assert mon.spawn(["sh", "-c", slow]).wait(timeout=10).returncode == code, "spawned"
        done.append(i)


early = threading.Thread(target=early_thread, name="early")
early.start()  # before syncmon is even imported

from syncmon import Monitor  # noqa: E402

with Monitor(pidfd=sys.argv[1] == "pidfd") as mon:
    go.set()
    early.join(timeout=30)
    assert not early.is_alive(), "early thread hung"
assert len(done) == ROUNDS, f"only {len(done)} of {ROUNDS} rounds finished"
print("ok", len(done))
