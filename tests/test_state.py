"""ChildState, W and CLD: values and predicates (states taken from real children)."""

import dataclasses
import os
import signal

import pytest

from syncmon import CLD, W
from helpers import HANG, sh


def test_w_flags_are_the_os_values():
    assert (W.EXITED, W.STOPPED, W.CONTINUED, W.NOHANG, W.NOWAIT) == (
        os.WEXITED, os.WSTOPPED, os.WCONTINUED, os.WNOHANG, os.WNOWAIT)


def test_cld_codes_are_the_os_values():
    assert (CLD.EXITED, CLD.KILLED, CLD.DUMPED, CLD.TRAPPED, CLD.STOPPED, CLD.CONTINUED) == (
        os.CLD_EXITED, os.CLD_KILLED, os.CLD_DUMPED, os.CLD_TRAPPED, os.CLD_STOPPED,
        os.CLD_CONTINUED)


@pytest.fixture
def states(monitor):
    """One state of each everyday kind, from real children."""
    h = monitor.spawn(["sleep", "100"])
    h.kill(signal.SIGSTOP)
    stopped = h.wait(W.STOPPED, timeout=HANG)
    h.kill(signal.SIGCONT)
    continued = h.wait(W.CONTINUED, timeout=HANG)
    h.kill()
    return {
        "stopped": stopped,
        "continued": continued,
        "killed": h.wait(timeout=HANG),
        "exit0": monitor.spawn(["true"]).wait(timeout=HANG),
        "exit1": monitor.spawn(sh("exit 1")).wait(timeout=HANG),
    }


def test_state_is_immutable(states):
    with pytest.raises((AttributeError, dataclasses.FrozenInstanceError)):
        states["exit0"].status = 1


@pytest.mark.parametrize("name, died, clean, returncode, wanted_by", [
    ("exit0", True, True, 0, W.EXITED),
    ("exit1", True, False, 1, W.EXITED),
    ("killed", True, False, -signal.SIGKILL, W.EXITED),
    ("stopped", False, False, None, W.STOPPED),
    ("continued", False, False, None, W.CONTINUED),
])
def test_state_predicates(states, name, died, clean, returncode, wanted_by):
    st = states[name]
    assert (st.died(), st.clean(), st.returncode) == (died, clean, returncode)
    for option in (W.EXITED, W.STOPPED, W.CONTINUED):
        assert st.state(option) is (option == wanted_by), option
    assert st.state(W.EXITED | W.STOPPED | W.CONTINUED)
