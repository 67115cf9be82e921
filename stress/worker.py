"""The process that runs the scenarios against one subject: ``python -m stress.worker``.

Each subject gets a worker process of its own, because subjects cannot share a
process: the contrast's ``waitid(P_ALL)`` would reap syncmon's children.  The
worker reports on what was its stdout, one JSON object per line
(``progress``, ``scenario``, ``done``); the driver reads them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from types import FrameType
from typing import TextIO

from stress import namespace, procfs, soak
from stress.config import Config
from stress.crew import Crew
from stress.scenarios import PROBE, SCENARIOS, Run, Scenario, Tally
from stress.subjects import Subject, open_subject

PROGRESS_EVERY = 0.5
SETTLE = 2.0


class Channel:
    """JSON lines to the driver, on a private duplicate of fd 1.

    fd 1 itself is pointed at /dev/null: every child inherits it, and a child
    that printed would corrupt the stream.  ``os.dup`` makes the private copy
    close-on-exec, so no child holds the pipe open either.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    @classmethod
    def claim_stdout(cls) -> Channel:
        sys.stdout.flush()
        private = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
        return cls(os.fdopen(private, "w", buffering=1))

    def send(self, kind: str, **fields: object) -> None:
        self._stream.write(json.dumps({"type": kind, **fields}) + "\n")

    def progress(self, scenario: str, tally: Tally, elapsed: float) -> None:
        self.send(
            "progress",
            scenario=scenario,
            elapsed=round(elapsed, 1),
            children=tally.children,
            pid_reuses=tally.pid_reuses,
            errors=tally.errors(),
        )


class ProbeHits:
    """Counts PROBE signals that hit the worker itself.

    A stray kill aimed at a reused pid may find one of our own threads there
    (thread ids are pids, and ``kill(tid)`` signals the whole process).  Left at
    its default action PROBE would end the worker; handled, it is counted as a
    signal that hit the wrong process.  A handled signal is reset to its
    default by exec, so children still die of PROBE.
    """

    def __init__(self) -> None:
        self.count = 0
        signal.signal(PROBE, self._hit)

    def _hit(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1


def execute(
    scenario: Scenario,
    subject: Subject,
    crew: Crew,
    config: Config,
    hits: ProbeHits,
    progress: Callable[[str, Tally, float], None],
) -> Tally:
    """Run ``scenario`` on every thread of ``crew``; then count what it left behind."""
    if scenario.needs_popen and subject.popen_missing:
        return Tally(skipped=subject.popen_missing)
    before, hits_before = procfs.snapshot(), hits.count
    run = Run(subject, config)
    started = time.monotonic()

    def body(index: int) -> None:
        scenario.body(run, random.Random(f"{config.seed}/{scenario.name}/{index}"))

    # Sampled from this thread, which only waits: it adds no thread and no descriptor.
    sampler = soak.Sampler(len(crew.tids)) if scenario.samples_resources else None
    tick = PROGRESS_EVERY if sampler is None else min(PROGRESS_EVERY, soak.SAMPLE_EVERY)
    pending: set[Future[None]] = set(crew.start(body))
    while pending:
        done, pending = wait(pending, timeout=tick)
        for future in done:
            if (error := future.exception()) is not None:
                run.fail(error)
        progress(scenario.name, run.tally, time.monotonic() - started)
        if sampler is not None:
            sampler.maybe_sample(time.monotonic() - started, run.tally.children)
    run.tally.seconds = round(time.monotonic() - started, 2)
    if sampler is not None:
        run.tally.resources = sampler.summary()
    if hits.count > hits_before:
        run.tally.wrong_signals += hits.count - hits_before
        run.note(f"PROBE hit the worker itself {hits.count - hits_before} times")
    _count_leftovers(run, before)
    run.tally.sigchld_blocked = f"{crew.blocking_sigchld()}/{len(crew.tids)}"
    return run.tally


def _count_leftovers(run: Run, before: procfs.Snapshot) -> None:
    """Children and fds that outlived the scenario.

    Every child was awaited, so none should remain; an unreaped dead one (a
    zombie) is a status nobody collected.  What is left is looked at again for
    up to :data:`SETTLE` seconds: a subject may publish a death before it
    finishes tidying up (syncmon resolves the future, then closes the pidfd), and
    a scenario whose last thread saw that death can end in between.  A full
    collection each time, so an fd merely waiting for the cyclic GC is not counted.
    """
    give_up = time.monotonic() + SETTLE
    while True:
        gc.collect()
        left = procfs.leftovers(before, procfs.snapshot())
        if not (left.children or left.fds) or time.monotonic() > give_up:
            break
        time.sleep(0.05)
    run.tally.children_left = len(left.children)
    run.tally.zombies = len(left.zombies)
    run.tally.fds_left = len(left.fds)
    if left.children:
        run.note(f"children left: {left.children} (zombies: {left.zombies})")
    if left.fds:
        run.note(f"fds left: {left.fds}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stress.worker")
    parser.add_argument("--subject", required=True)
    parser.add_argument("--config", required=True, help="Config as JSON")
    parser.add_argument("--wrap-pids", action="store_true", help="in a small pid namespace: wrap first")
    args = parser.parse_args(argv)
    config = Config.from_json(args.config)
    channel = Channel.claim_stdout()
    channel.send("started", pid=os.getpid())  # in a namespace: 2, the child of our init
    # Order matters: the early crew must exist before syncmon is imported (see crew.py).
    crews = {"early": Crew(config.threads, "early")}
    subject = open_subject(args.subject)
    crews["late"] = Crew(config.threads, "late")
    if args.wrap_pids:
        namespace.wrap_pid_cursor()
    hits = ProbeHits()
    for name in config.scenarios:
        scenario = SCENARIOS[name]
        tally = execute(scenario, subject, crews[scenario.crew], config, hits, channel.progress)
        channel.send("scenario", scenario=name, tally=tally.as_dict())
    channel.send("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
