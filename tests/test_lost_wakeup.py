"""Rule 1: no wait() may hang because a SIGCHLD went to a thread that did not block it."""

from helpers import run_script


def test_children_of_a_thread_older_than_the_engine_are_all_waited_for(pidfd_mode):
    """Needs a fresh interpreter: the thread must exist before any engine."""
    out = run_script("lost_wakeup.py", "pidfd" if pidfd_mode else "signalfd")
    assert out.split()[0] == "ok"
