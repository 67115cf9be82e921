"""Runs one worker per subject, one after the other, and gathers what they report.

Subjects run one at a time.  In separate pid namespaces they could not reach
each other's children, but without a namespace a stray kill from the contrast
could land on syncmon's children and be blamed on syncmon; and one at a time,
each subject has the machine to itself, so the two face the same load.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stress import namespace
from stress.config import Config

ROOT = Path(__file__).resolve().parent.parent
"""The checkout: workers import ``stress`` and ``syncmon`` from here, whatever the cwd."""

Progress = Callable[[str, dict[str, object]], None]


@dataclass
class SubjectRun:
    """Everything one worker said, and how it ended."""

    subject: str
    scenarios: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Scenario name -> the worker's tally, as JSON (see ``scenarios.Tally``)."""
    namespace: dict[str, object] | None = None
    """What our init in the namespace reported (see ``namespace._announce``)."""
    worker_pid: int | None = None
    """The worker's pid as it sees it: not 1, when in a namespace."""
    finished: bool = False
    """The worker reported every scenario and said ``done``."""
    returncode: int | None = None
    timed_out: bool = False
    stderr: str = ""


@dataclass
class Environment:
    """Where the runs happened: in a namespace or not, and the host's pid_max around them."""

    namespace: bool
    why_not: str | None
    host_pid_max_before: int
    host_pid_max_after: int | None = None


def run_all(config: Config, progress: Progress, use_namespace: bool) -> tuple[Environment, list[SubjectRun]]:
    why_not = namespace.unavailable() if use_namespace else "disabled by --no-namespace"
    environment = Environment(
        namespace=why_not is None, why_not=why_not, host_pid_max_before=namespace.read_pid_max()
    )
    runs = [run_worker(subject, config, environment.namespace, progress) for subject in config.subjects]
    environment.host_pid_max_after = namespace.read_pid_max()
    return environment, runs


def run_worker(subject: str, config: Config, in_namespace: bool, progress: Progress) -> SubjectRun:
    """Start the worker for ``subject``, relay its progress, and collect its report."""
    command = [sys.executable, "-m", "stress.worker", "--subject", subject, "--config", config.to_json()]
    if in_namespace:
        command = namespace.wrap([*command, "--wrap-pids"], config.pid_max)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    result = SubjectRun(subject)
    with tempfile.TemporaryFile("w+") as stderr:
        # A session of its own, so that without a namespace an overrunning
        # worker can be killed together with the children it left.
        worker = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
        watchdog = threading.Timer(config.worker_timeout(), _overran, (worker, result))
        watchdog.start()
        try:
            assert worker.stdout is not None
            for line in worker.stdout:
                with contextlib.suppress(json.JSONDecodeError):  # a worker killed mid-line
                    _take(result, json.loads(line), progress)
            result.returncode = worker.wait()
        finally:
            watchdog.cancel()
        stderr.seek(0)
        result.stderr = stderr.read()
    return result


def _overran(worker: subprocess.Popen[str], result: SubjectRun) -> None:
    """Kill the worker's session: unshare (whose ``--kill-child`` takes the namespace
    down with it), or, without a namespace, the worker and its children."""
    result.timed_out = True
    os.killpg(worker.pid, signal.SIGKILL)


def _take(result: SubjectRun, message: dict[str, Any], progress: Progress) -> None:
    kind = message.pop("type")
    if kind == "namespace":
        result.namespace = message
    elif kind == "started":
        result.worker_pid = message["pid"]
    elif kind == "progress":
        progress(result.subject, message)
    elif kind == "scenario":
        result.scenarios[message["scenario"]] = message["tally"]
    elif kind == "done":
        result.finished = True
