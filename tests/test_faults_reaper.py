"""Fault suite, a foreign ``waitpid(-1)`` reaper under pid reuse (issue 7 item 9).

In a pid namespace whose pid_max is 312 (stress/namespace.py), one thread of
the program reaps any child in a loop while spawner threads start children
through a pidfd monitor and wait for them.  Every status must be the child's
true one or ``ReapedElsewhere``; no signal from a dead child's handle may
reach another process.  The run's counts are printed (``-s``) for the record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO, python_env

pytestmark = pytest.mark.timeout(120)

SCRIPT = textwrap.dedent("""
    import json, os, random, signal, threading, time
    import syncmon
    from syncmon import Monitor, ReapedElsewhere

    SECONDS, THREADS = 8.0, 4
    stop = threading.Event()
    lock = threading.Lock()
    tally = dict(children=0, true=0, reaped_elsewhere=0, misattributed=0, stray_signals=0,
                 hung=0, reuses=0, foreign_reaps=0, notes=[])
    seen = set()

    def note(key, text):
        with lock:
            tally[key] += 1
            if len(tally["notes"]) < 5:
                tally["notes"].append(text)

    def reaper():
        while not stop.is_set():
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                time.sleep(0.001)
                continue
            with lock:
                tally["foreign_reaps"] += 1
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGUSR1:
                note("stray_signals", f"foreign reaper saw pid {pid} killed by SIGUSR1")

    def spawner(seed):
        rng = random.Random(seed)
        while not stop.is_set():
            code = rng.randrange(1, 200)
            try:
                h = mon.spawn(["sh", "-c", f"exit {code}"])
            except BlockingIOError:
                time.sleep(0.001)
                continue
            with lock:
                tally["children"] += 1
                tally["reuses"] += h.pid in seen
                seen.add(h.pid)
            try:
                st = h.wait(timeout=10)
            except ReapedElsewhere:
                with lock:
                    tally["reaped_elsewhere"] += 1
            except TimeoutError:
                note("hung", f"pid {h.pid}: no answer in 10 s")
            else:
                if st.pid == h.pid and st.returncode == code:
                    with lock:
                        tally["true"] += 1
                elif st.returncode == -signal.SIGUSR1:
                    note("stray_signals", f"pid {h.pid} (exit {code}) killed by SIGUSR1")
                else:
                    note("misattributed", f"pid {h.pid} should have exited {code}; reported {st}")
            h.kill(signal.SIGUSR1)  # known dead or lost: must reach nobody

    with Monitor(pidfd=True) as mon:
        threads = [threading.Thread(target=reaper)] + [
            threading.Thread(target=spawner, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        time.sleep(SECONDS)
        stop.set()
        for t in threads[1:]:
            t.join(30)
        mon.spawn(["true"])  # wakes the reaper's last waitpid
        threads[0].join(30)
    print(json.dumps(tally), flush=True)
""")


def test_foreign_waitpid_reaper_never_misattributes_nor_misdirects_a_signal():
    sys.path.insert(0, str(REPO))
    from stress import namespace

    why = namespace.unavailable()
    if why:
        pytest.skip(f"no pid namespace with its own pid_max: {why}")
    command = namespace.wrap([sys.executable, "-c", SCRIPT], 312)
    done = subprocess.run(command, env=python_env(), capture_output=True, text=True, timeout=100,
                          stdin=subprocess.DEVNULL)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    tally = json.loads(lines[-1])
    print("foreign reaper run:", tally)
    assert tally["children"] > 100 and tally["reuses"] > 0, tally
    assert (tally["misattributed"], tally["stray_signals"], tally["hung"]) == (0, 0, 0), tally
