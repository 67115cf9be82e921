"""Fault suite, fork (issue 7 item 16): fork() at each point of a handle's and a Popen's life.

In the fork child every inherited handle and Popen refuses clearly
(RuntimeError) or reports what plain subprocess reports there; its future
fails; nothing closes, writes or polls a descriptor the child does not own;
the child can use syncmon afresh.  The parent's children must not notice.
Each case runs in a fresh interpreter (it forks a threaded process).
"""

from __future__ import annotations

import os
import textwrap

import pytest

from helpers import run_code

pytestmark = pytest.mark.timeout(60)

TESTS = os.path.dirname(os.path.abspath(__file__))

SCRIPT = textwrap.dedent("""
    import gc, os, signal, subprocess, sys, threading, time, traceback, warnings
    warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a threaded process: that is the point
    sys.path.insert(0, {tests!r})
    import syncmon
    from syncmon import Monitor, W
    from faults import GuardedFds

    POINT = {point!r}
    mon = Monitor()
    plain = subprocess.Popen(["sleep", "100"])          # the reference: what subprocess says
    h = mon.spawn(["sleep", "100"])
    p = syncmon.Popen(["sleep", "100"], monitor=mon)
    dead = mon.spawn(["true"])
    waiters = []

    def wait_in_thread(fn):
        t = threading.Thread(target=lambda: _swallow(fn), daemon=True)
        t.start()
        waiters.append(t)

    def _swallow(fn):
        try:
            fn()
        except BaseException:
            pass

    if POINT == "death-recorded":
        dead.future.result(timeout=20)
    elif POINT == "thread-in-wait":
        wait_in_thread(h.wait)
        wait_in_thread(p.wait)
    elif POINT == "thread-in-stop-wait":
        wait_in_thread(lambda: h.wait(W.STOPPED))
    elif POINT == "thread-in-communicate":
        wait_in_thread(p.communicate)
    elif POINT == "monitor-closed":
        mon.close()
    time.sleep(0.3)  # let the waiters block

    def in_child():
        guard = GuardedFds(8)  # the child's own descriptors, reusing numbers the parent's had
        problems = []
        reference = plain.poll()
        for name, call in [
            ("Popen.poll", p.poll), ("Popen.wait", lambda: p.wait(timeout=0.2)),
            ("Popen.send_signal", lambda: p.send_signal(signal.SIGUSR1)),
            ("handle.poll", h.poll), ("handle.wait", lambda: h.wait(timeout=0.2)),
            ("handle.kill", lambda: h.kill(signal.SIGUSR1)), ("handle.check", lambda: h.check(timeout=0.2)),
            ("dead.wait", lambda: dead.wait(timeout=0.2)),
        ]:
            try:
                got = call()
            except RuntimeError:
                continue
            except BaseException as e:
                problems.append(f"{{name}}: {{type(e).__name__}}: {{e}}")
                continue
            if name == "Popen.poll" and got != reference:
                problems.append(f"Popen.poll gave {{got!r}}, subprocess gives {{reference!r}}")
            elif name.startswith("handle.") and name != "handle.kill" or name == "Popen.wait":
                problems.append(f"{{name}} returned {{got!r}} for a child that is not ours")
        for fut in (h.future, p.future):
            try:
                fut.exception(timeout=5)
            except BaseException as e:
                problems.append(f"inherited future not failed within 5 s: {{type(e).__name__}}")
        subprocess._cleanup()
        gc.collect()
        damage = guard.damage()
        problems += damage
        with Monitor() as fresh:
            if fresh.spawn(["sh", "-c", "exit 6"]).wait(timeout=20).returncode != 6:
                problems.append("a new Monitor in the fork child does not work")
        return problems

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        status = 1
        try:
            problems = in_child()
            os.write(w, ("\\n".join(problems)).encode())
            status = 0
        except BaseException:
            os.write(w, traceback.format_exc().encode())
        finally:
            os._exit(status)
    os.close(w)
    with os.fdopen(r) as f:
        report = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and not report, report
    # The parent's children were not touched by the fork child (no SIGUSR1 reached them).
    assert h.poll() is None and p.poll() is None, (h.poll(), p.poll())
    for x in (h, p, plain):
        x.kill()
    assert h.wait(timeout=20).returncode == -signal.SIGKILL
    assert p.wait(timeout=20) == -signal.SIGKILL
    plain.wait()
    for t in waiters:
        t.join(20)
    mon.close()
    print("ok")
""")

POINTS = ["live", "death-recorded", "thread-in-wait", "thread-in-stop-wait",
          "thread-in-communicate", "monitor-closed"]


@pytest.mark.parametrize("point", POINTS)
def test_inherited_handles_and_popen_in_a_fork_child(point):
    out = run_code(SCRIPT.format(tests=TESTS, point=point), timeout=50)
    assert out.strip() == "ok", out
