"""After a child is reaped, its handle must never signal its pid again.

Usage: unshare --pid --fork --mount-proc python pid_reuse.py pidfd|signalfd

As pid 1 of a fresh pid namespace we can choose the next pid through
/proc/sys/kernel/ns_last_pid, so the dead child's pid goes to a new process
(the victim) that blocks every signal it can and reports what reached it.
Prints "victim untouched" on success.
"""

import signal
import subprocess
import sys

from syncmon import Monitor

VICTIM = """
import signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
print("ready", flush=True)
sys.stdin.read()
print(sorted(int(s) for s in signal.sigpending()))
"""

with Monitor(pidfd=sys.argv[1] == "pidfd") as mon:
    h = mon.spawn(["true"], start_new_session=True)
    h.wait(timeout=20)

    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(h.pid - 1))
    victim = subprocess.Popen([sys.executable, "-c", VICTIM], start_new_session=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert victim.pid == h.pid, f"pid not reused: child {h.pid}, victim {victim.pid}"
    assert victim.stdout.readline() == "ready\n"

    h.kill()
    h.terminate()
    h.kill(signal.SIGUSR1)
    h.killpg(signal.SIGUSR2)

    pending, _ = victim.communicate("", timeout=20)
    assert victim.returncode == 0, f"victim died with {victim.returncode}"
    assert pending.strip() == "[]", f"signals reached the victim: {pending}"
    print("victim untouched")
