"""Rule 3: after os.fork() the child gets a fresh monitor, the parent keeps its own.

Usage: python fork_child.py pidfd|signalfd      (prints "ok")

The parent uses an explicit Monitor and the process-wide default, keeps a
child alive across every fork and keeps two threads spawning while it forks,
so that forks land while the engine is busy (holding its locks, in the middle
of a reap pass).  Each fork child must be able to use syncmon.spawn and a new
Monitor; the parent's engine must not notice anything (a fork child that
touched the inherited epoll or signalfd would disturb it).
"""

import os
import signal
import sys
import threading
import traceback

import syncmon

FORKS = 20
pidfd = sys.argv[1] == "pidfd"


def in_fork_child():
    with syncmon.Monitor(pidfd=pidfd) as mon:
        assert mon.spawn(["sh", "-c", "exit 8"]).wait(timeout=10).returncode == 8
    assert syncmon.spawn(["sh", "-c", "exit 7"]).wait(timeout=10).returncode == 7
    assert syncmon.default_monitor().spawn(["true"]).wait(timeout=10).returncode == 0
    # The forking thread had SIGCHLD blocked by the parent's engine; that is
    # not the program's own block, so the fork child's children must not get it.
    r, w = os.pipe()
    h = syncmon.spawn(["grep", "SigBlk", "/proc/self/status"], stdout=w)
    os.close(w)
    with open(r) as f:
        sigblk = int(f.read().split()[1], 16)
    h.wait(timeout=10)
    assert not sigblk >> (signal.SIGCHLD - 1) & 1, "fork child's child has SIGCHLD blocked"


mon = syncmon.Monitor(pidfd=pidfd)
assert syncmon.spawn(["true"]).wait(timeout=10).returncode == 0  # start the default too
r, w = os.pipe()
across_forks = mon.spawn(["sh", "-c", "read x; exit 5"], stdin=r)  # dies at the end
os.close(r)

stop = threading.Event()


def churn(m):
    while not stop.is_set():
        assert m.spawn(["true"]).wait(timeout=10).returncode == 0


churners = [threading.Thread(target=churn, args=(m,)) for m in (mon, syncmon.default_monitor())]
for t in churners:
    t.start()

try:
    for _ in range(FORKS):
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                in_fork_child()
                status = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(status)
        child = mon.adopt(pid)
        try:
            st = child.wait(timeout=20)
        except TimeoutError:
            child.kill()  # a deadlocked fork child must not linger
            raise
        assert st.returncode == 0, f"fork child {pid} failed: {st}"
finally:
    stop.set()
    for t in churners:
        t.join(timeout=20)
        assert not t.is_alive()
os.close(w)
assert across_forks.wait(timeout=10).returncode == 5
assert mon.spawn(["sh", "-c", "exit 3"]).wait(timeout=10).returncode == 3
mon.close()
print("ok")
