"""Plan the trials, interleaved, and run each one in a fresh worker process.

Interleaving is what makes the comparison fair on a shared, noisy machine: a
neighbour's burst of load, CPU frequency changes or a warming page cache hit
every contender within the same round instead of all the repeats of one of them.
Within a round the contender order is rotated, so nobody is always first (cold)
or always right after the heaviest contender.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.contenders import CONTENDERS

# The directory holding the ``bench`` package: workers run with it as cwd, so that
# ``python -m bench.worker`` and ``import syncmon`` resolve as they do for us.
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Config:
    contenders: list[str]
    workloads: list[str]
    latency_rounds: int = 6
    kills: int = 20
    settle_s: float = 0.15
    gap_ms: tuple[float, float] = (5.0, 25.0)
    throughput_rounds: int = 5
    children: int = 300
    in_flight: int = 16
    sequential_rounds: int = 5
    sequential_children: int = 300
    burst_rounds: int = 3
    burst_sizes: tuple[int, ...] = (250, 1000)
    burst_settle_s: float = 0.3
    idle_rounds: int = 3
    idle_children: int = 50
    idle_lifetime_s: float = 1.0
    trial_timeout_s: float = 180.0
    seed: int = 1


@dataclass(frozen=True)
class Trial:
    workload: str
    group: str  # what the figures are grouped by in the report, e.g. "burst/1000"
    contender: str
    round: int
    params: dict[str, Any] = field(hash=False)


@dataclass
class Outcome:
    trial: Trial
    result: dict[str, Any]

    @property
    def ok(self) -> bool:
        return "error" not in self.result


def _groups(config: Config, workload: str, round_: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every parameter set of ``workload`` measured in round ``round_``."""
    if workload == "latency" and round_ < config.latency_rounds:
        yield (
            "latency",
            {
                "kills": config.kills,
                "settle": config.settle_s,
                "gap_ms": list(config.gap_ms),
                "seed": config.seed * 1000 + round_,  # same kill gaps for all contenders in a round
            },
        )
    elif workload == "throughput" and round_ < config.throughput_rounds:
        yield "throughput", {"total": config.children, "in_flight": config.in_flight}
    elif workload == "sequential" and round_ < config.sequential_rounds:
        yield "sequential", {"n": config.sequential_children}
    elif workload == "burst" and round_ < config.burst_rounds:
        for n in config.burst_sizes:
            yield f"burst/{n}", {"n": n, "settle": config.burst_settle_s}
    elif workload == "idle" and round_ < config.idle_rounds:
        yield "idle", {"n": config.idle_children, "lifetime": config.idle_lifetime_s}


def runs(contender: str, workload: str, params: dict[str, Any]) -> bool:
    """Whether ``contender`` is measured in this workload with these parameters."""
    cls = CONTENDERS[contender]
    if workload not in cls.workloads:
        return False
    return not (workload == "burst" and cls.max_burst is not None and params["n"] > cls.max_burst)


def plan(config: Config) -> list[Trial]:
    rounds = max(
        config.latency_rounds,
        config.throughput_rounds,
        config.sequential_rounds,
        config.burst_rounds,
        config.idle_rounds,
    )
    trials: list[Trial] = []
    k = len(config.contenders)
    for round_ in range(rounds):
        order = config.contenders[round_ % k :] + config.contenders[: round_ % k]
        for workload in config.workloads:
            for group, params in _groups(config, workload, round_):
                trials.extend(
                    Trial(workload, group, name, round_, params) for name in order if runs(name, workload, params)
                )
    return trials


def run_worker(trial: Trial, timeout: float) -> dict[str, Any]:
    spec = json.dumps({"contender": trial.contender, "workload": trial.workload, "params": trial.params})
    # Own session: on timeout the worker and every child it left are one group to kill.
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.worker", spec],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # Not reaped yet, so the group id cannot have been reused.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = out.decode(errors="replace").strip().splitlines()
    if not lines:
        return {"error": f"worker exited with {proc.returncode} and printed nothing"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


Progress = Callable[[int, int, Trial, dict[str, Any], float], None]


def run(config: Config, progress: Progress | None = None) -> list[Outcome]:
    trials = plan(config)
    outcomes = []
    for index, trial in enumerate(trials):
        started = time.monotonic()
        result = run_worker(trial, config.trial_timeout_s)
        outcomes.append(Outcome(trial, result))
        if progress is not None:
            progress(index + 1, len(trials), trial, result, time.monotonic() - started)
    return outcomes


def config_dict(config: Config) -> dict[str, Any]:
    return asdict(config)
