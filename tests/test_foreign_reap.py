"""Someone else reaps our child: the true status (pidfd mode) or ReapedElsewhere.

Never a hang, never a made-up exit status 0.
"""

import os
import signal
import threading

import pytest

from syncmon import CLD, Monitor, ReapedElsewhere
from helpers import HANG, run_script, sh


def reap_before_syncmon(monitor, script, attempts=20):
    """Spawn `script` and reap it with os.waitpid before the engine does.

    We block in waitpid before the child can die, so the kernel hands the
    status to us directly; the engine would first need to wake up and take the
    GIL.  Should the engine still win, its handle must have the status, and
    we try again.
    """
    for _ in range(attempts):
        r, w = os.pipe()
        try:
            h = monitor.spawn(sh(f"read x; {script}"), stdin=r)
        finally:
            os.close(r)
        closer = threading.Timer(0.05, os.close, [w])  # EOF: the child runs `script`
        closer.start()
        try:
            _, status = os.waitpid(h.pid, 0)
        except ChildProcessError:  # the engine was first: no foreign reap this time
            h.wait(timeout=HANG)
            continue
        finally:
            closer.join()
        return h, status
    pytest.skip(f"the engine reaped first {attempts} times in a row")


@pytest.mark.parametrize("script, code, returncode", [
    ("exit 5", CLD.EXITED, 5),
    ("kill -KILL $$", CLD.KILLED, -signal.SIGKILL),
], ids=["exit5", "sigkill"])
def test_foreign_reap_in_pidfd_mode_recovers_the_true_status(script, code, returncode):
    with Monitor(pidfd=True) as monitor:
        h, raw = reap_before_syncmon(monitor, script)
        assert os.waitstatus_to_exitcode(raw) == returncode  # what the thief saw
        for st in (h.wait(timeout=HANG), h.future.result(timeout=HANG)):
            assert (st.code, st.returncode) == (code, returncode)
        h.kill()  # known dead: a no-op


def test_foreign_reap_in_signalfd_mode_raises_reaped_elsewhere():
    with Monitor(pidfd=False) as monitor:
        h, _ = reap_before_syncmon(monitor, "exit 5")
        with pytest.raises(ReapedElsewhere):
            h.wait(timeout=HANG)
        assert isinstance(h.future.exception(timeout=HANG), ReapedElsewhere)
    assert issubclass(ReapedElsewhere, ChildProcessError)


def is_lost_to_sig_ign(outcome):
    return outcome.startswith("ReapedElsewhere") and "SIG_IGN" in outcome


@pytest.mark.parametrize("child", ["dies-at-once", "dies-while-waited"])
def test_sigchld_ignored_is_reported_clearly(pidfd_mode, child):
    """With SIGCHLD set to SIG_IGN the kernel reaps children itself and sends
    no SIGCHLD at all: nothing wakes the engine or the waiters.  A pidfd opened
    before the death still tells the status; a child that dies before its
    pidfd exists (this glibc cannot spawn with a pidfd) is lost.  Without
    pidfds, spawn refuses with a ChildProcessError that names SIG_IGN."""
    out = run_script("sigchld_ignored.py", "pidfd" if pidfd_mode else "signalfd", child)
    for line in out.splitlines():  # "waited ..." and "future ..."
        who, outcome = line.split(" ", 1)
        if pidfd_mode and child == "dies-while-waited":
            assert outcome == "exited 3", who
        elif pidfd_mode:
            assert outcome == "exited 3" or is_lost_to_sig_ign(outcome), who
        else:
            assert who == "refused:" and "SIG_IGN" in outcome, line
