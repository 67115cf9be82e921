"""A foreign waitpid(-1) reaper under pid reuse: never another child's status (issue 7, item 9)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import SCRIPTS, python_env
from stress import namespace

pytestmark = pytest.mark.skipif(namespace.unavailable() is not None, reason=str(namespace.unavailable()))


@pytest.mark.timeout(240)
def test_foreign_reaper_never_gets_a_child_another_childs_status():
    # pid_max 330 in a fresh namespace: freed pids come back at once.
    command = namespace.wrap([sys.executable, str(SCRIPTS / "foreign_reaper.py"), "pidfd", "150"], 330)
    completed = subprocess.run(command, capture_output=True, text=True, timeout=220, env=python_env(),
                               stdin=subprocess.DEVNULL)
    tally = dict(item.split("=") for item in completed.stdout.strip().splitlines()[-1].split())
    assert completed.returncode == 0, (completed.stdout, completed.stderr[-2000:])
    assert int(tally["wrong"]) == 0
    assert int(tally["true"]) + int(tally["lost"]) == 600
