"""Rule 3: a fork child gets a fresh monitor and leaves the parent's alone."""

from helpers import run_script


def test_fork_child_uses_a_fresh_monitor_and_parent_carries_on(pidfd_mode):
    out = run_script("fork_child.py", "pidfd" if pidfd_mode else "signalfd")
    assert out.strip() == "ok"
