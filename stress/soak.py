"""The soak: a very long ``exit_codes``-style run with the worker's resources sampled throughout.

``python -m stress --soak`` runs one scenario (``soak``) against syncmon for a
million children (``--children N`` for fewer) in the small pid namespace, so
that nearly every child gets a pid some earlier child had.  While it runs, the
worker samples its own resident memory, open descriptors and threads; the
verdict compares the first tenth of the samples with the last tenth.  Leaks
show up there, as growth proportional to the number of children: a
descriptor per thousand children is a thousand descriptors by the end.

What may legitimately vary, and so is allowed as slack:

* descriptors: every live child holds a pidfd, and a thread in an exit wait a
  private duplicate; each soak thread has at most one live child;
* threads: syncmon starts callback threads on demand (up to 16) and lets idle
  ones go;
* memory: CPython's allocator keeps arenas; a few MB of drift is not a leak,
  growth with the child count is (RSS_SLACK_KB, RSS_SLACK_RATIO).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field

CALLBACK_THREADS = 16
RSS_SLACK_KB = 8 * 1024
RSS_SLACK_RATIO = 0.10

SAMPLE_EVERY = 0.1
"""Seconds between samples (the worker's progress loop takes them): a short
soak of a few seconds still gets a few dozen."""


@dataclass(frozen=True)
class Sample:
    seconds: float
    children: int
    rss_kb: int
    fds: int
    threads: int


def take(seconds: float, children: int) -> Sample:
    """The worker's own resources now, from /proc/self."""
    rss_kb = threads = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return Sample(round(seconds, 1), children, rss_kb, len(os.listdir("/proc/self/fd")) - 1, threads)


@dataclass
class Sampler:
    """Samples taken at most every :data:`SAMPLE_EVERY` seconds."""

    crew_threads: int
    samples: list[Sample] = field(default_factory=list)
    _next: float = 0.0

    def maybe_sample(self, seconds: float, children: int) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + SAMPLE_EVERY
            self.samples.append(take(seconds, children))

    def summary(self) -> dict[str, object]:
        """First and last decile of every measure, and whether each stayed flat."""
        if len(self.samples) < 10:
            return {"samples": len(self.samples), "flat": None, "why": "fewer than 10 samples"}
        tenth = len(self.samples) // 10
        first, last = self.samples[:tenth], self.samples[-tenth:]
        slack = {
            "fds": 2 * self.crew_threads,
            "threads": CALLBACK_THREADS,
        }
        measures: dict[str, dict[str, float | bool]] = {}
        for name in ("rss_kb", "fds", "threads"):
            a = [getattr(s, name) for s in first]
            b = [getattr(s, name) for s in last]
            if name == "rss_kb":
                allowed = max(a) * (1 + RSS_SLACK_RATIO) + RSS_SLACK_KB
            else:
                allowed = max(a) + slack[name]
            measures[name] = {
                "first_decile_mean": round(statistics.mean(a), 1),
                "first_decile_max": max(a),
                "last_decile_mean": round(statistics.mean(b), 1),
                "last_decile_max": max(b),
                "allowed_max": round(allowed, 1),
                "flat": max(b) <= allowed,
            }
        return {
            "samples": len(self.samples),
            "children_first_decile_end": first[-1].children,
            "children_last_decile_start": last[0].children,
            "measures": measures,
            "flat": all(m["flat"] for m in measures.values()),
        }
