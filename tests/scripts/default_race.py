"""Many threads make first use of the default monitor at the same moment.

Usage: python default_race.py      (prints "ok")

Half the threads call default_monitor(), half call syncmon.spawn(): all must
end up on one Monitor object and one engine (one thread, one signalfd).
"""

import os
import threading

import syncmon

N = 16
barrier = threading.Barrier(N)
monitors = []


def first_use(i):
    barrier.wait()
    if i % 2:
        monitors.append(syncmon.default_monitor())
    else:
        assert syncmon.spawn(["true"]).wait(timeout=10).returncode == 0


threads = [threading.Thread(target=first_use, args=(i,)) for i in range(N)]
for t in threads:
    t.start()
for t in threads:
    t.join(timeout=20)
    assert not t.is_alive()

assert len(monitors) == N // 2
assert all(m is monitors[0] for m in monitors)
assert syncmon.default_monitor() is monitors[0]

signalfds = 0
for fd in os.listdir("/proc/self/fd"):
    try:
        signalfds += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[signalfd]"
    except FileNotFoundError:
        pass
assert signalfds == 1, f"{signalfds} signalfds"
assert threading.active_count() == 2, threading.enumerate()
print("ok")
