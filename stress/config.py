"""The harness's knobs, shared by the driver and the workers (which receive them as JSON)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

SUBJECTS = ("syncmon", "syncmon-nopidfd", "contrast")
"""Subject names a worker understands (see :func:`stress.subjects.open_subject`)."""

EXPECTED_TO_FAIL = frozenset({"contrast"})
"""Subjects whose errors are the point of running them: they never fail the run."""

RESERVED_PIDS = 300
"""Once the pid cursor has wrapped, Linux allocates pids from [RESERVED_PIDS, pid_max)."""


def famine_pid_max(threads: int) -> int:
    """A pid_max that leaves barely more pids to recycle than there are threads.

    Every thread holds one or two live children, so only a handful of pids are
    free at any moment, and a pid freed by a reap is the next one a fork gets,
    often within the same millisecond (spawners that met EAGAIN retry at once).
    With many free pids a reused pid only comes back after the pid cursor has
    gone round them all, long after any race window has closed.
    """
    return RESERVED_PIDS + threads + 2


@dataclass(frozen=True)
class Config:
    """How hard and how long to push.  Every scenario is bounded by both seconds and children."""

    seconds: float
    """Wall-clock budget of one scenario on one subject."""
    max_children: int
    """Children budget of one scenario on one subject."""
    threads: int
    """Threads per scenario.  Each has at most a couple of live children at a time."""
    wait_bound: float
    """A wait still unanswered after this many seconds counts as hung."""
    pid_max: int
    """pid_max inside the namespace; pid_max - RESERVED_PIDS pids get recycled.
    The kernel refuses values below RESERVED_PIDS + 1."""
    seed: int
    scenarios: tuple[str, ...]
    subjects: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Config:
        raw = json.loads(text)
        raw["scenarios"] = tuple(raw["scenarios"])
        raw["subjects"] = tuple(raw["subjects"])
        return cls(**raw)

    def worker_timeout(self) -> float:
        """How long the driver lets one worker run before killing it.

        A scenario may overrun its budget by the bounded waits its threads are in
        when it ends: up to three in a row (``stop_continue``: a stop, the death,
        a quick exiter), each at most ``wait_bound``.
        """
        per_scenario = self.seconds + 3 * self.wait_bound + 5.0
        return 30.0 + per_scenario * len(self.scenarios)
