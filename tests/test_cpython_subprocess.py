"""syncmon.Popen against CPython's own subprocess test suite (issue 3: "drop-in")."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).with_name("cpython_subprocess.py")

#: Tests that cannot pass by design, each with its reason.
BY_DESIGN = {
    # Reaps the child behind Popen's back, then mocks os.waitpid to report a
    # stop for that pid.  syncmon.Popen reaps through the pidfd and never asks
    # about a pid whose child was reaped elsewhere: it reports the true
    # status (see tests/test_popen.py::test_after_a_foreign_reap_popen_never_asks_the_pid_again).
    "test.test_subprocess.POSIXProcessTestCase.test_stopped",
}

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("test.test_subprocess") is None,
    reason="this Python ships without its test suite",
)


def run_cpython_suite(mode: str) -> dict:
    # The checkout first on the path: the suite must test this syncmon even
    # where it is not installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(RUNNER.parent.parent), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run(
        [sys.executable, str(RUNNER), mode], capture_output=True, text=True, timeout=500, env=env,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(1100)
def test_no_cpython_subprocess_test_fails_only_with_syncmon_popen() -> None:
    with_syncmon = run_cpython_suite("syncmon")
    assert with_syncmon["run"] > 100  # 3.11 has 331 tests, 3.12 300
    if with_syncmon["failed"]:
        # Only failures that plain subprocess does not share count against us
        # (this machine may fail a few on its own, e.g. for missing locales).
        baseline = run_cpython_suite("plain")
        assert sorted(set(with_syncmon["failed"]) - set(baseline["failed"]) - BY_DESIGN) == []
