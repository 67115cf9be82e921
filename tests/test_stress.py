"""The stress harness as a test: ``python -m stress --short --json`` must find no syncmon error.

It also checks that the run proved something: inside a pid namespace (root,
Linux 6.14+) pids must actually have been reused in every scenario, or the
absence of errors would mean nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOUND = 240
"""Seconds.  ``--short`` takes about a minute."""

pytestmark = pytest.mark.timeout(BOUND)


def run_stress(*options: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """``python -m stress OPTIONS --json`` from the checkout: the process and its report."""
    completed = subprocess.run(
        [sys.executable, "-m", "stress", *options, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BOUND - 10,
    )
    assert completed.stdout, completed.stderr
    return completed, json.loads(completed.stdout)


def test_short_stress_run_finds_no_syncmon_error() -> None:
    completed, result = run_stress("--short")
    in_namespace = result["environment"]["namespace"]
    checked = {name: run for name, run in result["subjects"].items() if run["gates_exit_status"]}
    assert "syncmon" in checked
    for name, run in checked.items():
        assert run["finished"], f"{name} worker did not finish:\n{run['stderr']}"
        for scenario, tally in run["scenarios"].items():
            assert tally["errors"] == 0, f"{name}/{scenario}: {tally}"
            if in_namespace and not tally["skipped"]:
                assert tally["pid_reuses"] > 0, f"{name}/{scenario}: no pid was reused"
    assert result["environment"]["host_pid_max_after"] == result["environment"]["host_pid_max_before"]
    assert completed.returncode == 0, result["failures"]


SHORT_SOAK_CHILDREN = 10_000
"""About 10 s here: enough samples for first and last decile, and thousands of pid reuses."""


def test_short_soak_has_no_error_and_flat_resource_use() -> None:
    """``python -m stress --soak --children N``: the soak of stress/RESULTS.md, scaled down."""
    completed, result = run_stress("--soak", "--children", str(SHORT_SOAK_CHILDREN))
    run = result["subjects"]["syncmon"]
    assert run["finished"], run["stderr"]
    tally = run["scenarios"]["soak"]
    assert tally["errors"] == 0, tally
    assert tally["children"] >= SHORT_SOAK_CHILDREN
    if result["environment"]["namespace"]:
        assert tally["pid_reuses"] > SHORT_SOAK_CHILDREN // 2, tally
    resources = tally["resources"]
    assert resources["samples"] >= 10, resources
    assert resources["flat"] is True, resources["measures"]
    assert completed.returncode == 0, result["failures"]


POOL_SECONDS = "4"
"""About 10 s with the pool's start and shutdown: a few hundred kills, thousands of tasks."""


def test_pool_scenario_fails_exactly_the_killed_tasks_with_their_cause() -> None:
    """``python -m stress --scenarios pool``: besides no error, the run must have killed
    workers mid-task and reused their pids, or its zero errors would prove nothing."""
    completed, result = run_stress("--scenarios", "pool", "--subjects", "syncmon", "--seconds", POOL_SECONDS)
    run = result["subjects"]["syncmon"]
    assert run["finished"], run["stderr"]
    tally = run["scenarios"]["pool"]
    assert tally["errors"] == 0, tally
    assert tally["kills"] > 0 and tally["task_deaths"] > 0 and tally["tasks"] > tally["task_deaths"], tally
    if result["environment"]["namespace"]:
        assert tally["pid_reuses"] > 0, tally
    assert completed.returncode == 0, result["failures"]
