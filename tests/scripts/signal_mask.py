"""Rule 2: a spawned program sees the signal mask it would have had without syncmon.

Usage: python signal_mask.py pidfd|signalfd      (prints "ok")

The program blocks SIGUSR1 on its own before syncmon exists: children must
still get SIGUSR1 blocked and SIGCHLD not, whether they are spawned from the
main thread or from a thread started after the engine (which inherited the
engine's blocked SIGCHLD).
"""

import os
import signal
import sys
import threading

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
expected = set(signal.pthread_sigmask(signal.SIG_BLOCK, ()))
assert signal.SIGCHLD not in expected

from syncmon import Monitor  # noqa: E402 - the mask above must predate syncmon


def child_mask(mon):
    r, w = os.pipe()
    try:
        h = mon.spawn(["grep", "SigBlk", "/proc/self/status"], stdout=w)
    finally:
        os.close(w)
    with open(r) as f:
        line = f.read()
    assert h.wait(timeout=20).returncode == 0
    mask = int(line.split()[1], 16)
    return {signal.Signals(n + 1) for n in range(mask.bit_length()) if mask >> n & 1}


with Monitor(pidfd=sys.argv[1] == "pidfd") as mon:
    masks = {"main thread": child_mask(mon)}
    t = threading.Thread(target=lambda: masks.update(thread=child_mask(mon)))
    t.start()
    t.join()

for who, mask in masks.items():
    assert mask == expected, f"child spawned from {who}: SigBlk {mask}, expected {expected}"
print("ok")
